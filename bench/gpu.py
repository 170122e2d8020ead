"""A GPU run in one call: step, validation and selection times, and Trainer vs Trainer + RAISE.

    python bench/gpu.py [--device cuda] [--steps 10] [--trainer-steps 40]
    python bench/gpu.py --device cpu --tiny      # a 2-layer model, seconds (the test suite runs it)

Needs only torch and transformers (no asset package): the model is a randomly initialised Llama of
SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 key/value heads, MLP 1536, vocabulary 49152,
tied embeddings) with the synthetic testbed's character tokenizer, fine-tuned with LoRA r=8 (bf16
autocast on a GPU, fp32 on the CPU); the pool is the synthetic testbed's (``demo --quick`` recipe).
Random weights train and evaluate at the same speed as trained ones. Prints:

* seconds per training step (batch 8: forward, backward, AdamW) and per validation pass (the
  target's validation examples), median of ``--steps`` after one warm-up, and the mean tokens per
  example they ran on;
* selection: ``bench/selector_scale.py`` at 100K and 1M candidates (the selector computes on the CPU);
* plain ``transformers.Trainer`` vs ``RaiseTrainer`` steps/s (``bench/trainer_overhead.py``'s
  measurement) on this model.

Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _tiny import TESTBED_OVERRIDES
from step_time import median_seconds
from trainer_overhead import measure as trainer_steps_per_second
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from raise_select.config_io import load_config, recipe_path
from raise_select.data.synthetic import synthetic_model_dir
from raise_select.evaluation import validation_loss
from raise_select.model import training_loss
from raise_select.pipeline import Workbench

SMOLLM2_SHAPE = dict(  # SmolLM2-135M's architecture (its config.json)
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    intermediate_size=1536,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
TINY_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=128,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
BATCH_SIZE = 8


def random_llama(folder: Path, shape: dict) -> Path:
    """A randomly initialised Llama of ``shape`` with the testbed's tokenizer, saved as a Hugging Face folder."""
    tokenizer = AutoTokenizer.from_pretrained(synthetic_model_dir())
    config = LlamaConfig(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps / validation passes (median)")
    parser.add_argument("--trainer-steps", type=int, default=40, help="optimizer steps per Trainer measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="selection pool sizes")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, a cut-down testbed: seconds")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device is visible to torch; run with --device cpu (or on a machine with a GPU)")
    shape, overrides = SMOLLM2_SHAPE, ["pool.sources=[{name: synthetic, limit: 1000}]", "target.n_validation=64"]
    if args.tiny:
        shape, overrides, args.steps, args.trainer_steps = TINY_SHAPE, TESTBED_OVERRIDES, 1, 4
    precision = "bf16" if args.device == "cuda" else "fp32"

    with tempfile.TemporaryDirectory() as workdir:
        folder = random_llama(Path(workdir) / "model", shape)
        config = load_config(
            recipe_path("demo_quick"),
            [
                *overrides,
                f"model.name={folder}",
                "model.finetune=lora",
                "model.lora_r=8",
                f"model.precision={precision}",
                f"model.device={args.device}",
                f"train.batch_size={BATCH_SIZE}",
                "raise.clusters=1",
            ],
        )
        started = time.perf_counter()
        bench = Workbench.build(config, progress=False)
        bench.ensure_features(progress=False)
        setup_seconds = time.perf_counter() - started
        lm = bench.lm
        parameters = sum(p.numel() for p in {id(p): p for p in lm.model.parameters()}.values())
        print(
            f"{'SmolLM2-135M-shaped' if not args.tiny else 'tiny'} random Llama ({parameters / 1e6:.1f}M parameters), "
            f"LoRA r=8, {precision}, on {lm.device} ({torch.cuda.get_device_name() if lm.device.type == 'cuda' else 'CPU'}); "
            f"pool {len(bench.pool)}, validation {len(bench.validation_tokens)}; model + features {setup_seconds:.1f} s"
        )

        optimizer = torch.optim.AdamW(lm.trainable_parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        pool_tokens = bench.pool_tokens

        def train_step() -> None:
            batch = pool_tokens.collate(
                rng.choice(len(pool_tokens), BATCH_SIZE, replace=False), lm.tokenizer.pad_token_id
            )
            loss = training_loss(lm, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step_seconds = median_seconds(train_step, args.steps)
        validation_seconds = median_seconds(
            lambda: validation_loss(lm, bench.validation_tokens, batch_size=config.train.eval_batch_size), args.steps
        )
        mean_tokens = pool_tokens.num_tokens(np.arange(len(pool_tokens))) / len(pool_tokens)
        print(f"\ntraining step (batch {BATCH_SIZE}, {mean_tokens:.0f} tokens per example): {step_seconds:.3f} s")
        print(f"validation pass ({len(bench.validation_tokens)} examples): {validation_seconds:.3f} s")

        print("\nselection (bench/selector_scale.py; the selector computes on the CPU):", flush=True)
        scale = [sys.executable, str(Path(__file__).with_name("selector_scale.py"))]
        scale += ["--tiny"] if args.tiny else ["--sizes", *map(str, args.sizes), "--decisions", "32"]
        subprocess.run(scale, check=True)

        print("\nTrainer steps/s (bench/trainer_overhead.py's measurement):")
        plain = trainer_steps_per_second(bench, args.trainer_steps, 1, None, str(Path(workdir) / "trainer"))
        raise_rate = trainer_steps_per_second(bench, args.trainer_steps, 1, 1, str(Path(workdir) / "trainer"))
        print(f"{'plain Trainer':<40} {plain:>8.2f}")
        print(f"{'Trainer + RAISE, validate every decision':<40} {raise_rate:>8.2f}  ({raise_rate / plain:.2f}x)")


if __name__ == "__main__":
    main()
