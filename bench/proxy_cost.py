"""Which proxy for selector training on SmolLM2: fewer layers, or shorter examples?

    python bench/proxy_cost.py [--lengths 160 96 64] [--steps 4]

On the demo's pool (recipes/demo.yaml) with SmolLM2-135M + LoRA (bf16 autocast, batch 8):

1. the mean response loss of 16 pool examples when the decoder keeps only some of its 30 layers
   (a proxy must still be a language model for its rewards to mean anything);
2. seconds per LoRA training step (median of ``--steps`` after one warm-up) and per validation pass
   (the demo's 24 GSM8K validation examples) when examples are cut to each of ``--lengths`` tokens.

Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from raise_select.config import ModelConfig
from raise_select.config_io import load_config, recipe_path
from raise_select.data.bundled import build_pool, build_target
from raise_select.data.tokenize import tokenize_examples
from raise_select.evaluation import validation_loss
from raise_select.model import load_model, training_loss

LAYER_SUBSETS = {
    "all 30": list(range(30)),
    "first 8": list(range(8)),
    "first 4 + last 4": [*range(4), *range(26, 30)],
    "first 2 + last 6": [*range(2), *range(24, 30)],
    "first 6 + last 6": [*range(6), *range(24, 30)],
    "every third (10)": list(range(0, 30, 3)),
    "every second (15)": list(range(0, 30, 2)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[160, 96, 64])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    config = load_config(recipe_path("demo"))
    pool = build_pool(config.pool, seed=0)
    target = build_target(config.target, seed=0)

    print("## Base response loss with a subset of SmolLM2's decoder layers (16 pool examples)\n")
    lm = load_model(ModelConfig(name="smollm2", finetune="full", precision="bf16"))
    tokens = tokenize_examples(pool.examples, lm.tokenizer, config.pool.max_length)
    batch = tokens.collate(np.arange(0, len(pool), len(pool) // 16)[:16], lm.tokenizer.pad_token_id)
    layers = lm.model.model.layers
    print("| layers kept | loss (nats/token) |\n|---|---|")
    for label, keep in LAYER_SUBSETS.items():
        lm.model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
        for position, layer in enumerate(lm.model.model.layers):
            layer.self_attn.layer_idx = position
        lm.model.config.num_hidden_layers = len(keep)
        with torch.no_grad():
            print(f"| {label} | {float(training_loss(lm, batch)):.2f} |")

    print("\n## Seconds per LoRA step (batch 8) and per validation pass (24 examples) by example length\n")
    lm = load_model(ModelConfig(name="smollm2", finetune="lora", precision="bf16"))
    optimizer = torch.optim.AdamW(lm.trainable_parameters(), lr=5e-4)
    print("| max tokens | mean pool tokens | step s | validation s |\n|---|---|---|---|")
    for length in args.lengths:
        pool_tokens = tokenize_examples(pool.examples, lm.tokenizer, length)
        validation = tokenize_examples(list(target.validation), lm.tokenizer, length)
        rng = np.random.default_rng(0)
        times = []
        for _ in range(args.steps + 1):
            batch = pool_tokens.collate(rng.choice(len(pool_tokens), 8, replace=False), lm.tokenizer.pad_token_id)
            started = time.perf_counter()
            training_loss(lm, batch).backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        validation_loss(lm, validation, batch_size=config.train.eval_batch_size)
        evaluation = time.perf_counter() - started
        mean_tokens = pool_tokens.num_tokens(np.arange(len(pool_tokens))) / len(pool_tokens)
        print(f"| {length} | {mean_tokens:.0f} | {statistics.median(times[1:]):.2f} | {evaluation:.2f} |")


if __name__ == "__main__":
    main()
