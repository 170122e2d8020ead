"""RAISE learns on the synthetic testbed, where the right answer is known: a success rate over seeds.

RL results vary with the selector-training seed, so one pinned training proves nothing. Five
selector trainings (seeds 0-4, the demo's recipe: 56 episodes of 12 steps on the model's first
decoder layer, a reward every 4 decisions) on the demo --quick testbed, each deployed greedily for
24 steps, against random, targeted and the oracle over three fine-tuning seeds, on the shipped base
model (the same weights on every machine). The same runs as ``python bench/selector_cost.py
--settings recipe`` (docs/results.md), which gives, per selector seed 0-4: 0.763 0.850 0.809 0.634
1.304 (mean 0.872, 100 % of the random -> oracle gap) against random 1.528, targeted 1.148 and the
oracle 0.869; helpful-clean 0.94 and corrupted 0.06 of the picks (pool 0.24 and 0.24); test exact
match 0.264 against random 0.020 and targeted 0.160.

With the portable CPU kernels (``model.cpu_kernels``, the default, pinned by conftest) every x86-64
machine with AVX2 trains these same five selectors, with any thread count. Elsewhere other kernels
train other selectors (selector training samples its decisions), so the thresholds below hold with
the margins named beside them rather than pinning one training; they were set from draws of the
previous recipe (64 episodes on the whole model, a reward after every decision) made with this CPU's
own choices before the pin: 1.217 0.814 0.911 0.629 1.024 (mean 0.919, 92 %, exact match 0.186)
and, with ``ATEN_CPU_CAPABILITY=default``, 0.938 0.896 1.186 1.040 0.850 (mean 0.982, 83 %),
helpful-clean 0.91, corrupted 0.09, exact match 0.170; the current recipe meets each with the
margin in brackets beside it.
About 2 minutes on 2 CPU cores.
"""

import copy

import numpy as np
import pytest

from raise_select.config_io import load_config, recipe_path
from raise_select.experiments import train_raise_selector
from raise_select.io_utils import read_jsonl
from raise_select.pipeline import Workbench, run_finetune
from raise_select.selectors import build_selector

BUDGET = 24  # 6.4 % of full-data steps: at 8 steps (2 %) random's own spread over seeds is as large as RAISE's gain
SELECTOR_SEEDS = (0, 1, 2, 3, 4)
RANDOM_SEEDS = (0, 1, 2)
SEED_MARGIN = 0.15  # every selector seed below random's mean loss by this much (nats/token; measured >= 0.31; [0.22])
MIN_GAP_CLOSED = 0.65  # of the random -> oracle gap, by RAISE's mean (measured 0.92 and 0.83; [1.00])
MARGIN = 0.08  # RAISE's mean below targeted's (measured 0.23 and 0.17; [0.28])
MIN_HELPFUL = 0.8  # helpful-clean share of what RAISE trains on (pool 0.24; measured 0.93 and 0.91; [0.94])
MAX_CORRUPTED_OF_POOL = 0.5  # corrupted share of what RAISE trains on, relative to the pool's (0.29 and 0.37; [0.26])
EM_MARGIN = 0.1  # RAISE's test exact match above random's (measured 0.17 and 0.15; [0.24])
# Above targeted's by 0.026 and 0.010 with the two kernel sets: within the spread of a 5-seed mean (about 0.03), so
# the test allows that much below targeted rather than fail on a machine whose trainings draw lower.
EM_TARGETED_SLACK = 0.03


@pytest.fixture(scope="module")
def bench():
    config = load_config(
        recipe_path("demo_quick"),
        [f"train.budget_steps={BUDGET}", "features.cache=false"],
    )
    return Workbench.build(config)


def _shares(run_dir) -> tuple[float, float]:
    """(helpful-and-clean share, corrupted share) of what a run trained on."""
    chosen = [(h, c) for s in read_jsonl(run_dir / "selections.jsonl") for h, c in zip(s["helpful"], s["corrupted"])]
    return float(np.mean([bool(h) and not c for h, c in chosen])), float(np.mean([bool(c) for _, c in chosen]))


def _run(bench, method: str, config, root, name: str, seed: int) -> dict:
    run = run_finetune(
        bench, build_selector(method, config), root / name, BUDGET, seed, test_metric=True, progress=False
    )
    helpful, corrupted = _shares(run.output)
    return {
        "loss": run.validation_loss_final,
        "exact_match": run.test["exact_match"],
        "helpful": helpful,
        "corrupted": corrupted,
    }


@pytest.fixture(scope="module")
def outcomes(bench, tmp_path_factory):
    """Greedy RAISE per selector seed, and the baselines over fine-tuning seeds."""
    root = tmp_path_factory.mktemp("learning")
    raise_runs = {}
    for seed in SELECTOR_SEEDS:
        config = copy.deepcopy(bench.config)
        config.seed = seed
        policy = train_raise_selector(config, root / f"selector-s{seed}", progress=False, bench=bench)
        config.raise_.policy = str(policy)
        raise_runs[seed] = _run(bench, "raise", config, root, f"raise-s{seed}", 0)
    baselines = {
        method: [_run(bench, method, bench.config, root, f"{method}-{seed}", seed) for seed in RANDOM_SEEDS]
        for method in ("random", "targeted", "oracle")
    }
    means = {m: {k: float(np.mean([r[k] for r in runs])) for k in runs[0]} for m, runs in baselines.items()}
    print({seed: {k: round(v, 3) for k, v in r.items()} for seed, r in raise_runs.items()})
    print({m: {k: round(v, 3) for k, v in r.items()} for m, r in means.items()})
    return raise_runs, means, root


def test_raise_beats_random_in_every_selector_training_and_closes_most_of_the_gap(outcomes):
    runs, baselines, _ = outcomes
    losses = [r["loss"] for r in runs.values()]
    random_loss, oracle_loss = baselines["random"]["loss"], baselines["oracle"]["loss"]
    assert max(losses) < random_loss - SEED_MARGIN, f"RAISE per selector seed {losses}, random {random_loss}"
    gap_closed = (random_loss - np.mean(losses)) / (random_loss - oracle_loss)
    assert gap_closed >= MIN_GAP_CLOSED
    assert np.mean(losses) < baselines["targeted"]["loss"] - MARGIN


def test_raise_prefers_helpful_clean_examples_and_avoids_corrupted_ones(outcomes, bench):
    runs, _, _ = outcomes
    pool_corrupted = float(np.mean([bool(e.meta["corrupted"]) for e in bench.pool.examples]))
    assert np.mean([r["helpful"] for r in runs.values()]) >= MIN_HELPFUL
    assert np.mean([r["corrupted"] for r in runs.values()]) < MAX_CORRUPTED_OF_POOL * pool_corrupted


def test_raise_exact_match_is_above_random_and_targeted(outcomes):
    """The task metric, which RAISE's reward (the validation loss) does not read."""
    runs, baselines, _ = outcomes
    exact_match = np.mean([r["exact_match"] for r in runs.values()])
    assert exact_match > baselines["random"]["exact_match"] + EM_MARGIN
    assert exact_match > baselines["targeted"]["exact_match"] - EM_TARGETED_SLACK  # 0.186, 0.170, [0.264]


def test_selector_training_logs_every_episode(outcomes, bench):
    _, _, root = outcomes
    rows = read_jsonl(root / "selector-s0" / "episodes.jsonl")
    assert [r["episode"] for r in rows] == list(range(bench.config.raise_.episodes))
    assert all(r["updates"] == bench.config.raise_.episode_steps for r in rows)
    assert all(np.isfinite([r["return"], r["policy_loss"], r["value_loss"], r["entropy"]]).all() for r in rows)
