"""Seconds per training step and per validation evaluation, for the tiny model and SmolLM2.

    python bench/step_time.py [--steps N] [--skip-smollm2] [--threads K] [--tiny]

A training step is what the environment does per update: forward + backward + AdamW on a batch
of 8 x 128 tokens (the first half of each row is prompt, so half the tokens carry loss). A
validation evaluation is ``validation_loss`` over 32 examples of 128 tokens. One warm-up step,
then the median of N timed repetitions (``--tiny``: the tiny model, one repetition). Prints numbers;
asserts nothing.

On a small shared CPU, pass ``--threads 1``: when other processes keep the cores busy, torch's
intra-op threads wait on each other and a step can get 10-50x slower than single-threaded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raise_select.config import ModelConfig
from raise_select.data.tokenize import TokenizedSet
from raise_select.evaluation import validation_loss
from raise_select.model import LoadedModel, load_model, training_loss

BATCH_SIZE = 8
SEQUENCE_LENGTH = 128
VALIDATION_EXAMPLES = 32


def tiny_model_name(workdir: Path) -> tuple[str, str]:
    """synthetic-tiny when the testbed is available, else a 4-layer 128-wide Llama built here."""
    try:
        from raise_select.data.synthetic import synthetic_model_dir

        return "synthetic-tiny", str(synthetic_model_dir())
    except ImportError:
        pass
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i + 3 for i in range(1000 - 3)}}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>")),
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    config = LlamaConfig(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=512,
        vocab_size=len(vocab),
        max_position_embeddings=512,
    )
    folder = workdir / "tiny-llama"
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return "tiny-llama (4x128, 1k vocab)", str(folder)


def random_tokens(lm: LoadedModel, count: int, rng: np.random.Generator) -> TokenizedSet:
    vocab_size = lm.model.get_input_embeddings().num_embeddings
    rows = [rng.integers(3, vocab_size, size=SEQUENCE_LENGTH, dtype=np.int64) for _ in range(count)]
    return TokenizedSet(rows, np.full(count, SEQUENCE_LENGTH // 2, dtype=np.int64))


def median_seconds(action, repetitions: int) -> float:
    action()  # warm-up: allocator, kernels, lazy init
    times = []
    for _ in range(repetitions):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        action()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(label: str, config: ModelConfig, steps: int) -> dict:
    lm = load_model(config, seed=0)
    rng = np.random.default_rng(0)
    train_tokens = random_tokens(lm, BATCH_SIZE, rng)
    batch = train_tokens.collate(range(BATCH_SIZE), lm.tokenizer.pad_token_id)
    validation_tokens = random_tokens(lm, VALIDATION_EXAMPLES, rng)
    optimizer = torch.optim.AdamW(lm.trainable_parameters(), lr=1e-4)

    def train_step() -> None:
        loss = training_loss(lm, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_seconds = median_seconds(train_step, steps)
    eval_seconds = median_seconds(lambda: validation_loss(lm, validation_tokens, batch_size=16), steps)
    return {
        "model": label,
        "setup": f"{config.finetune}{f' r={config.lora_r}' if config.finetune == 'lora' else ''} {config.precision}",
        "step_s": step_seconds,
        "eval_s": eval_seconds,
        "tokens_per_s": BATCH_SIZE * SEQUENCE_LENGTH / step_seconds,
        "device": str(lm.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--skip-smollm2", action="store_true", help="only the tiny model")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model, one repetition: seconds")
    args = parser.parse_args()
    if args.tiny:
        args.skip_smollm2, args.steps = True, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as workdir:
        tiny_label, tiny_path = tiny_model_name(Path(workdir))
        runs = [(tiny_label, ModelConfig(name=tiny_path, finetune="lora", lora_r=8, precision="fp32"))]
        if not args.skip_smollm2:
            runs += [("smollm2", ModelConfig(name="smollm2", lora_r=8, precision=p)) for p in ("bf16", "fp32")]
        rows = [measure(label, config, args.steps) for label, config in runs]

    print(
        f"\nbatch {BATCH_SIZE} x {SEQUENCE_LENGTH} tokens, validation {VALIDATION_EXAMPLES} examples, "
        f"median of {args.steps}, torch threads {torch.get_num_threads()}"
    )
    header = f"{'model':<30} {'setup':<16} {'device':<7} {'s/step':>8} {'s/eval':>8} {'train tok/s':>12}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['model']:<30} {row['setup']:<16} {row['device']:<7} {row['step_s']:>8.3f} "
            f"{row['eval_s']:>8.3f} {row['tokens_per_s']:>12.0f}"
        )


if __name__ == "__main__":
    main()
