"""How the RAISE selector scales with the pool: selection time per decision and PPO-update memory.

    python bench/selector_scale.py [--sizes 10000 100000 1000000] [--update-epochs 1] [--threads 2]
                                   [--selector smollm2-gsm8k] [--src OTHER_CHECKOUT/src] [--tiny]

Synthetic StaticFeatures (random numbers: the five named columns, pca_dim 32) for each pool size,
each size in its own subprocess so memory figures do not mix. The selector is untrained (hidden 64,
C = 2) or, with ``--selector``, a saved one (the package's ``smollm2-gsm8k``: hidden 64, C = 1). B = 8.
Printed per size:

* setup: standardization + k-means (MiniBatchKMeans above 50K rows) + the static projection cache;
* greedy: milliseconds per deployed decision over one episode of ``--decisions`` decisions (the stage
  moves and the chosen examples are counted as in a run): the first decision (it builds the greedy
  reference), then the median and the mean over the episode, in wall time and in this process's CPU
  time (all its threads; on a busy machine the CPU time is the steadier figure);
* PL sample: median milliseconds per training decision (scores of the whole pool, Gumbel-top-k, exact
  log-probs and the critic);
* PPO update over two episodes of 8 decisions: seconds, and memory as RSS from /proc: the process RSS
  just before the update, and the update's peak RSS (VmHWM after resetting it via
  /proc/self/clear_refs right before the update; ru_maxrss of the whole subprocess when the kernel
  does not allow the reset).

``--src`` measures another checkout's library with the same script (before/after comparisons on one
machine, in one call). ``--tiny``: one 2,000-row pool and a few decisions, in seconds (the test suite
runs it). Targets: greedy selection at 1M candidates under 32 ms per decision on 2 CPU threads, and a
1M-candidate PPO update within 4 GiB.
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
ROLLOUT_EPISODES, ROLLOUT_DECISIONS = 2, 8  # the PPO update's batch: 16 decisions
TINY_SIZE = 2_000


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


def measure(pool_size: int, decisions: int, update_epochs: int, threads: int | None, selector_name: str | None) -> dict:
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)

    from raise_select.config import RaiseConfig
    from raise_select.features import STATIC_FEATURE_NAMES, StaticFeatures, with_column
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
    features = with_column(features, "target_similarity", rng.uniform(-0.2, 0.6, pool_size))
    if selector_name:
        selector = RaiseSelector.load(selector_name)
        config = selector.config
    else:
        config = RaiseConfig(clusters=2, hidden_size=64, minibatch_size=8)
        selector = RaiseSelector(config)
    config.update_epochs = update_epochs
    context = SelectionContext(
        pool=None, batch_size=batch_size, budget_steps=decisions, decision_interval=1, seed=0, features=features
    )
    started = time.perf_counter()
    selector.setup(context)
    setup_seconds = time.perf_counter() - started

    def state_at(step: int, budget: int, counts: np.ndarray) -> EnvState:
        return EnvState(
            step=step,
            budget=budget,
            batch_size=batch_size,
            decision_interval=1,
            validation_history=[2.0] + [2.0 * 0.99**i for i in range(1, step + 1)],
            selection_counts=counts,
        )

    selector.reset(0)
    counts = np.zeros(pool_size, dtype=np.int64)
    greedy, greedy_cpu = [], []
    for step in range(decisions):  # one deployed episode
        started, started_cpu = time.perf_counter(), time.process_time()
        chosen = selector.select(state_at(step, decisions, counts))
        greedy.append(1000 * (time.perf_counter() - started))
        greedy_cpu.append(1000 * (time.process_time() - started_cpu))
        np.add.at(counts, chosen, 1)

    episodes, sampled_ms = [], []
    for episode in range(ROLLOUT_EPISODES):  # the update's batch: the fitted baselines need two episodes or more
        selector.reset(1 + episode)
        generator = torch.Generator().manual_seed(episode)
        buffer = RolloutBuffer()
        if getattr(selector, "has_head", False):
            buffer.head_weights = selector.sample_head(generator)
        counts = np.zeros(pool_size, dtype=np.int64)
        for step in range(ROLLOUT_DECISIONS):
            started = time.perf_counter()
            sampled = selector.sample(state_at(step, ROLLOUT_DECISIONS, counts), generator)
            sampled_ms.append(1000 * (time.perf_counter() - started))
            np.add.at(counts, sampled.indices, 1)
            buffer.add(sampled, reward=float(rng.normal()), done=step == ROLLOUT_DECISIONS - 1)
        episodes.append(buffer)

    optimizer = torch.optim.Adam(list(selector.policy.parameters()) + list(selector.critic.parameters()), lr=3e-4)
    rss_before = _rss_mib("VmRSS")
    peak_is_update_only = _reset_peak_rss()
    started = time.perf_counter()
    ppo_update(selector, optimizer, episodes, config, np.random.default_rng(0))
    update_seconds = time.perf_counter() - started
    peak = _rss_mib("VmHWM") if peak_is_update_only else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "pool_size": pool_size,
        "setup_s": setup_seconds,
        "greedy_first_ms": greedy[0],
        "greedy_median_ms": statistics.median(greedy),
        "greedy_mean_ms": statistics.mean(greedy),
        "greedy_cpu_median_ms": statistics.median(greedy_cpu),
        "greedy_cpu_mean_ms": statistics.mean(greedy_cpu),
        "sample_ms": statistics.median(sampled_ms),
        "update_s": update_seconds,
        "rss_before_mib": rss_before,
        "peak_mib": peak,
        "peak_source": "VmHWM during the update" if peak_is_update_only else "ru_maxrss of the whole subprocess",
        "threads": torch.get_num_threads(),
        "clusters": config.clusters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--decisions", type=int, default=64, help="decisions of the timed greedy episode")
    parser.add_argument(
        "--update-epochs", type=int, default=1, help="PPO epochs in the measured update (time scales linearly)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--selector", help="a saved selector folder or a packaged name (default: untrained, C=2)")
    parser.add_argument(
        "--src", type=Path, default=SRC, help="the library source to measure (default: this checkout's)"
    )
    parser.add_argument("--tiny", action="store_true", help=f"one {TINY_SIZE}-row pool, 8 decisions: seconds")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.sizes, args.decisions = [TINY_SIZE], 8
    if args.child:
        sys.path.insert(0, str(args.src.resolve()))
        row = measure(args.child, args.decisions, args.update_epochs, args.threads, args.selector)
        print(json.dumps(row))
        return

    print(
        f"RAISE selector scale ({args.selector or 'untrained'} selector, B=8, hidden 64, pca_dim 32; greedy: an "
        f"episode of {args.decisions} decisions; PPO update = {args.update_epochs} epoch(s) over "
        f"{ROLLOUT_EPISODES} x {ROLLOUT_DECISIONS} decisions; torch threads: {args.threads or 'default'}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'pool':>9} {'setup s':>8} {'greedy ms: first':>17} {'median':>7} {'mean':>7} {'CPU ms: median':>15} "
        f"{'mean':>7} {'sample ms':>10} "
        f"{'update s':>9} {'RSS before':>11} {'update peak':>12}  peak source"
    )
    for size in args.sizes:
        command = [sys.executable, __file__, "--child", str(size), "--update-epochs", str(args.update_epochs)]
        command += ["--decisions", str(args.decisions), "--src", str(args.src)]
        command += ["--threads", str(args.threads)] if args.threads else []
        command += ["--selector", args.selector] if args.selector else []
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"pool {size}: the measurement failed:\n{child.stderr}")
        row = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"{row['pool_size']:>9} {row['setup_s']:>8.2f} {row['greedy_first_ms']:>17.1f} "
            f"{row['greedy_median_ms']:>7.1f} {row['greedy_mean_ms']:>7.1f} {row['greedy_cpu_median_ms']:>15.1f} "
            f"{row['greedy_cpu_mean_ms']:>7.1f} {row['sample_ms']:>10.1f} "
            f"{row['update_s']:>9.1f} {row['rss_before_mib']:>7.0f} MiB {row['peak_mib']:>8.0f} MiB  {row['peak_source']}"
        )
    print("targets: greedy selection < 32 ms per decision at 1M candidates (2 threads); 1M PPO update peak < 4096 MiB")


if __name__ == "__main__":
    main()
