"""Wall time per PPO update of selector training, in-process and on 1, 2, ... Ray rollout workers.

    python bench/ray_scaling.py [--model testbed|smollm2] [--workers 0 1 2] [--updates 2]
                                [--episodes-per-update 4] [--episode-steps N] [field=value ...]

For each worker count it trains a selector (``raise.rollout_workers=N``; 0 = in-process) for
``--updates`` PPO updates and prints, per update, the elapsed seconds (collection on the workers +
the PPO update on the driver) and the episodes' own seconds summed over workers, then the speed-up
of the mean update over the in-process run. Start-up (Ray, the workers loading the model) is
printed apart: it is paid once per training, not per update. The selectors must come out identical
(checked: the printed weight checksums agree).

testbed: the demo --quick recipe (24-step episodes of the 3-layer model). smollm2: the demo recipe
(SmolLM2-135M + LoRA, bf16 autocast), 8-step episodes by default. Each worker uses
``raise.worker_cpus`` torch threads (default 1); the in-process run uses the same count, so all runs
compute the same numbers. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raise_select.config_io import load_config, recipe_path
from raise_select.experiments import train_raise_selector
from raise_select.io_utils import read_jsonl
from raise_select.pipeline import Workbench
from raise_select.selector_artifact import load_artifact

RECIPES = {"testbed": ("demo_quick", 24), "smollm2": ("demo", 8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RECIPES), default="testbed")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--episodes-per-update", type=int, default=4)
    parser.add_argument("--episode-steps", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="config field=value overrides")
    args = parser.parse_args()

    recipe, default_steps = RECIPES[args.model]
    steps = args.episode_steps or default_steps
    config = load_config(
        recipe_path(recipe),
        [
            f"raise.episode_steps={steps}",
            f"raise.episodes_per_update={args.episodes_per_update}",
            f"raise.episodes={args.updates * args.episodes_per_update}",
            *args.overrides,
        ],
    )
    torch.set_num_threads(config.raise_.worker_cpus)
    bench = Workbench.build(config)
    bench.ensure_features(progress=False)
    print(
        f"{args.model}: {len(bench.pool)} pool examples, {steps}-step episodes, {args.episodes_per_update} episodes per "
        f"update, {args.updates} updates, {config.raise_.worker_cpus} torch thread(s) per worker"
    )
    print(
        f"{'workers':>7} {'start-up s':>10} {'update wall s (each)':>28} {'mean':>7} {'episode s':>10} {'speed-up':>8} "
        f"{'weights checksum':>18}"
    )
    baseline = None
    root = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    try:
        for workers in args.workers:
            bench.config.raise_.rollout_workers = workers
            started = time.perf_counter()
            selector_dir = train_raise_selector(bench.config, root / f"w{workers}", progress=False, bench=bench)
            total = time.perf_counter() - started
            rows = read_jsonl(selector_dir.parent / "episodes.jsonl")
            per_update = [sum(r["wall_seconds"] for r in rows if r["update"] == u) for u in range(args.updates)]
            episode_seconds = sum(r["seconds"] for r in rows)
            mean = float(np.mean(per_update))
            baseline = mean if baseline is None else baseline
            checksum = sum(float(t.double().sum()) for t in load_artifact(selector_dir).tensors.values())
            print(
                f"{workers:>7} {total - sum(per_update):>10.1f} {' '.join(f'{s:.1f}' for s in per_update):>28} "
                f"{mean:>7.1f} {episode_seconds:>10.1f} {baseline / mean:>7.2f}x {checksum:>18.10f}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
