"""Does the reward tell clean GSM8K from its corrupted copies? Episodes that train on one source only.

    python bench/reward_by_source.py [--steps 6] [--seeds 0 1 2] [--max-length 96] [--decision-interval 2]

On the SmolLM2 experiment's set-up (examples/configs/smollm2_gsm8k_mixed.yaml: SmolLM2 + LoRA, the
mixed pool, GSM8K validation loss as the reward), plays episodes of ``--steps`` updates whose batches
are drawn (without repeats, seeded) from one pool source only, and prints the episode return (the
validation-loss drop) per source: mean ± std over ``--seeds``. ``--max-length`` and
``--decision-interval`` set the proxy's example length and updates per reward (the defaults are the
experiment's proxy; pass 160 and 1 for the tuned model itself). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from raise_select.config_io import load_config
from raise_select.pipeline import Workbench

CONFIG = Path(__file__).parents[1] / "examples" / "configs" / "smollm2_gsm8k_mixed.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--decision-interval", type=int, default=2)
    parser.add_argument("--sources", nargs="+", default=["gsm8k", "gsm8k_corrupted", "mmlu", "chat", "humaneval"])
    args = parser.parse_args()
    config = load_config(
        CONFIG,
        [
            "raise.proxy_max_length=null",
            "raise.proxy_decision_interval=null",
            f"pool.max_length={args.max_length}",
            f"train.decision_interval={args.decision_interval}",
        ],
    )
    bench = Workbench.build(config)
    env = bench.make_env(args.steps, evaluate_every=1)
    sources = np.array([example.source for example in bench.pool.examples])
    decision = config.train.batch_size * args.decision_interval
    print(f"episodes of {args.steps} updates, examples cut to {args.max_length} tokens, M = {args.decision_interval}\n")
    print("| source | return per seed | mean ± std |\n|---|---|---|")
    for source in args.sources:
        members = np.flatnonzero(sources == source)
        returns = []
        for seed in args.seeds:
            order = np.random.default_rng(seed).permutation(members)
            env.reset(seed)
            total, position = 0.0, 0
            while not env.done:
                chosen = np.resize(order[position:], decision)  # wraps around when the source is small
                position += decision
                total += env.step(chosen).reward or 0.0
            returns.append(total)
        per_seed = " / ".join(f"{r:.4f}" for r in returns)
        print(f"| {source} | {per_seed} | {np.mean(returns):.4f} ± {np.std(returns):.4f} |", flush=True)


if __name__ == "__main__":
    main()
