"""How the RAISE selector scales with the pool: selection time per decision and PPO-update memory.

    python bench/selector_scale.py [--sizes 10000 100000 1000000] [--update-epochs 1]

Synthetic StaticFeatures (random numbers, pca_dim 32, hidden 64, C = 2, B = 8) for each pool size,
each size in its own subprocess so memory figures do not mix. Printed per size:

* setup: standardization + k-means (MiniBatchKMeans above 50K rows) + the static projection cache;
* greedy select / PL sample: median milliseconds per decision (scores of the whole pool + per-cluster
  top-b; the sampler adds Gumbel noise, exact log-probs and the critic);
* PPO update over a rollout of 16 decisions: seconds, and memory as RSS from /proc: the process RSS
  just before the update, and the update's peak RSS (VmHWM after resetting it via
  /proc/self/clear_refs right before the update; ru_maxrss of the whole subprocess when the kernel
  does not allow the reset).

Targets: selection under 2 % of a SmolLM2 training step (~3.4 s, so < 68 ms) at 100K candidates,
and a 1M-candidate PPO update within 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROLLOUT_DECISIONS = 16
TIMED_DECISIONS = 20


def _rss_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5 = reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def measure(pool_size: int, update_epochs: int, threads: int | None) -> dict:
    sys.path.insert(0, str(SRC))
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)

    from raise_select.config import RaiseConfig
    from raise_select.features import STATIC_FEATURE_NAMES, StaticFeatures
    from raise_select.ppo import RolloutBuffer, ppo_update
    from raise_select.protocol import EnvState, SelectionContext
    from raise_select.selectors.raise_policy import RaiseSelector

    rng = np.random.default_rng(0)
    pca_dim, batch_size = 32, 8
    features = StaticFeatures(
        names=STATIC_FEATURE_NAMES,
        values=np.column_stack(
            [
                rng.gamma(2.0, 1.0, pool_size),
                rng.uniform(0.2, 1.2, pool_size),
                rng.integers(5, 500, pool_size),
                rng.integers(1, 800, pool_size),
            ]
        ).astype(np.float32),
        embedding=rng.normal(size=(pool_size, pca_dim)).astype(np.float32),
        pca_mean=np.zeros(64, np.float32),
        pca_components=rng.normal(size=(pca_dim, 64)).astype(np.float32),
        key=f"synthetic-{pool_size}",
        aux_model="synthetic",
    )
    config = RaiseConfig(clusters=2, hidden_size=64, update_epochs=update_epochs, minibatch_size=8)
    context = SelectionContext(
        pool=None, batch_size=batch_size, budget_steps=ROLLOUT_DECISIONS, decision_interval=1, seed=0, features=features
    )
    selector = RaiseSelector(config)
    started = time.perf_counter()
    selector.setup(context)
    setup_seconds = time.perf_counter() - started

    def state_at(step: int, counts: np.ndarray) -> EnvState:
        return EnvState(
            step=step,
            budget=ROLLOUT_DECISIONS,
            batch_size=batch_size,
            decision_interval=1,
            validation_history=[2.0] + [2.0 - 0.01 * i for i in range(1, step + 1)],
            selection_counts=counts,
        )

    counts = np.zeros(pool_size, dtype=np.int64)
    greedy, sampled_ms = [], []
    for step in range(TIMED_DECISIONS):
        started = time.perf_counter()
        selector.select(state_at(step % ROLLOUT_DECISIONS, counts))
        greedy.append(1000 * (time.perf_counter() - started))

    generator = torch.Generator().manual_seed(0)
    buffer = RolloutBuffer()
    for step in range(ROLLOUT_DECISIONS):
        started = time.perf_counter()
        sampled = selector.sample(state_at(step, counts), generator)
        sampled_ms.append(1000 * (time.perf_counter() - started))
        np.add.at(counts, sampled.indices, 1)
        buffer.add(sampled, reward=float(rng.normal()), done=step == ROLLOUT_DECISIONS - 1)

    optimizer = torch.optim.Adam(list(selector.policy.parameters()) + list(selector.critic.parameters()), lr=3e-4)
    rss_before = _rss_mib("VmRSS")
    peak_is_update_only = _reset_peak_rss()
    started = time.perf_counter()
    ppo_update(selector, optimizer, buffer, config, np.random.default_rng(0))
    update_seconds = time.perf_counter() - started
    peak = _rss_mib("VmHWM") if peak_is_update_only else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "pool_size": pool_size,
        "setup_s": setup_seconds,
        "greedy_ms": statistics.median(greedy),
        "sample_ms": statistics.median(sampled_ms),
        "update_s": update_seconds,
        "update_decisions": update_epochs * ROLLOUT_DECISIONS,
        "rss_before_mib": rss_before,
        "peak_mib": peak,
        "peak_source": "VmHWM during the update" if peak_is_update_only else "ru_maxrss of the whole subprocess",
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--update-epochs", type=int, default=1, help="PPO epochs in the measured update (time scales linearly)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 is steadier on a busy machine)"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.update_epochs, args.threads)))
        return

    print(
        f"RAISE selector scale (C=2, B=8, hidden 64, pca_dim 32; PPO update = {args.update_epochs} epoch(s) "
        f"over {ROLLOUT_DECISIONS} decisions, minibatch 8; torch threads: {args.threads or 'default'}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'pool':>9} {'setup s':>8} {'greedy ms':>10} {'sample ms':>10} {'update s':>9} {'RSS before':>11} "
        f"{'update peak':>12}  peak source"
    )
    for size in args.sizes:
        command = [sys.executable, __file__, "--child", str(size), "--update-epochs", str(args.update_epochs)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"{row['pool_size']:>9} {row['setup_s']:>8.2f} {row['greedy_ms']:>10.1f} {row['sample_ms']:>10.1f} "
            f"{row['update_s']:>9.1f} {row['rss_before_mib']:>8.0f} MiB {row['peak_mib']:>8.0f} MiB  {row['peak_source']}"
        )
    print("targets: selection < 68 ms at 100K (2 % of a ~3.4 s SmolLM2 step); 1M-candidate PPO update peak < 4096 MiB")


if __name__ == "__main__":
    main()
