"""RAISE learns on the synthetic testbed, where the right answer is known: a success rate over seeds.

RL results vary with the selector-training seed, so one pinned training proves nothing. Five
selector trainings (seeds 0-4, 32 episodes each: half the demo's) on the demo --quick testbed at 24
steps, each deployed greedily, against random selection over three fine-tuning seeds.

Measured on base models pre-trained with three CPU kernel sets (ATEN_CPU_CAPABILITY avx512 / default
/ avx2), per selector seed 0-4:

    avx512   0.479 0.652 0.604 1.194 0.569  mean 0.700 vs random 1.557; helpful-clean 0.79, corrupted 0.09
    default  0.942 0.931 0.826 1.154 1.089  mean 0.988 vs random 1.538; helpful-clean 0.80, corrupted 0.12
    avx2     1.148 1.337 1.157 1.971 1.169  mean 1.356 vs random 1.528; helpful-clean 0.69, corrupted 0.18

(pool: 0.24 helpful-clean, 0.24 corrupted). The thresholds below hold on all three; avx2 is the
tightest (4 of 5 wins, margin 0.17). About 3 to 5 minutes on 2 CPU cores, by machine.
"""

import copy
from dataclasses import replace

import numpy as np
import pytest

from raise_select.config import load_config
from raise_select.experiments import recipe_path, train_raise_selector
from raise_select.io_utils import read_jsonl
from raise_select.pipeline import Workbench, run_finetune
from raise_select.selectors import build_selector

BUDGET = 24  # 6.4 % of full-data steps: at 8 steps (2 %) random's own spread over seeds is as large as RAISE's gain
SELECTOR_SEEDS = (0, 1, 2, 3, 4)
RANDOM_SEEDS = (0, 1, 2)
EPISODES = 32
MARGIN = 0.1  # validation loss (nats/token) by which RAISE's mean over selector seeds must beat random's


@pytest.fixture(scope="module")
def bench():
    config = load_config(
        recipe_path("demo_quick"),
        [f"train.budget_steps={BUDGET}", f"raise.episodes={EPISODES}", "features.cache=false"],
    )
    return Workbench.build(config)


def _shares(run_dir) -> tuple[float, float]:
    """(helpful-and-clean share, corrupted share) of what a run trained on."""
    chosen = [(h, c) for s in read_jsonl(run_dir / "selections.jsonl") for h, c in zip(s["helpful"], s["corrupted"])]
    return float(np.mean([bool(h) and not c for h, c in chosen])), float(np.mean([bool(c) for _, c in chosen]))


@pytest.fixture(scope="module")
def outcomes(bench, tmp_path_factory):
    """Per selector seed: (validation loss, helpful-clean share, corrupted share) of greedy RAISE; random's mean loss."""
    root = tmp_path_factory.mktemp("learning")
    results = {}
    for seed in SELECTOR_SEEDS:
        config = copy.deepcopy(bench.config)
        config.seed = seed
        policy = train_raise_selector(replace(bench, config=config), root / f"selector-s{seed}", progress=False)
        config.raise_.policy = str(policy)
        run = run_finetune(
            bench,
            build_selector("raise", config),
            root / f"raise-s{seed}",
            BUDGET,
            0,
            test_metric=False,
            progress=False,
        )
        results[seed] = (run.validation_loss_final, *_shares(run.output))
    random_losses = [
        run_finetune(
            bench,
            build_selector("random", bench.config),
            root / f"random-{seed}",
            BUDGET,
            seed,
            test_metric=False,
            progress=False,
        ).validation_loss_final
        for seed in RANDOM_SEEDS
    ]
    return results, float(np.mean(random_losses)), root


def test_raise_beats_random_in_at_least_four_of_five_selector_trainings(outcomes):
    results, random_loss, _ = outcomes
    losses = {seed: loss for seed, (loss, _, _) in results.items()}
    print({seed: round(loss, 3) for seed, loss in losses.items()}, "random", round(random_loss, 3))
    wins = [seed for seed, loss in losses.items() if loss < random_loss]
    assert len(wins) >= 4, f"RAISE beat random in selector seeds {wins} only"
    assert np.mean(list(losses.values())) < random_loss - MARGIN


def test_raise_prefers_helpful_clean_examples_and_avoids_corrupted_ones(outcomes, bench):
    results, _, _ = outcomes
    examples = bench.pool.examples
    pool_helpful = float(np.mean([bool(e.meta["helpful"]) and not e.meta["corrupted"] for e in examples]))
    pool_corrupted = float(np.mean([bool(e.meta["corrupted"]) for e in examples]))
    helpful = {seed: share for seed, (_, share, _) in results.items()}
    corrupted = {seed: share for seed, (_, _, share) in results.items()}
    print(
        "helpful-clean share",
        helpful,
        "pool",
        round(pool_helpful, 2),
        "corrupted",
        corrupted,
        "pool",
        round(pool_corrupted, 2),
    )
    assert np.mean(list(helpful.values())) >= 2.0 * pool_helpful
    assert np.mean(list(corrupted.values())) < pool_corrupted


def test_selector_training_logs_every_episode(outcomes):
    _, _, root = outcomes
    rows = read_jsonl(root / "selector-s0" / "episodes.jsonl")
    assert [r["episode"] for r in rows] == list(range(EPISODES))
    assert all(r["updates"] == BUDGET for r in rows)
    assert all(np.isfinite([r["return"], r["policy_loss"], r["value_loss"], r["entropy"]]).all() for r in rows)
