"""The curriculum world: its pool and labels, the scheduled oracle and best static mixture, and its premise."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from raise_select.config_io import load_config, recipe_path
from raise_select.data.curriculum import (
    CURRICULUM_FAMILIES,
    CURRICULUM_SCHEDULE,
    SCARCE_COUNT,
    curriculum_pool,
    curriculum_target,
)
from raise_select.data.synthetic import synthetic_pool
from raise_select.data.types import Pool
from raise_select.errors import UserError
from raise_select.protocol import EnvState, SelectionContext
from raise_select.selectors import build_selector
from raise_select.selectors.mixtures import FamilyMixtureSelector, helpful_families, mixture_grid


def test_pool_is_deterministic_labelled_and_keeps_the_finishing_family_scarce():
    pool = curriculum_pool(1000, seed=0)
    assert [e.content_key() for e in pool] == [e.content_key() for e in curriculum_pool(1000, seed=0)]
    counts = Counter(e.meta["family"] for e in pool)
    assert set(counts) == set(CURRICULUM_FAMILIES) and len(pool) == 1000
    assert counts["sum_short"] == SCARCE_COUNT == Counter(e.meta["family"] for e in curriculum_pool(2000))["sum_short"]
    for example in pool:
        spec = CURRICULUM_FAMILIES[example.meta["family"]]
        assert example.id.startswith(f"synthetic_curriculum/{example.meta['family']}/")
        assert (example.meta["helpful"], example.meta["corrupted"]) == (spec["helpful"], spec["corrupted"])
        assert example.meta.get("schedule") == CURRICULUM_SCHEDULE.get(example.meta["family"])
    worded = next(e for e in pool if e.meta["family"] == "sum_worded")
    a, b = map(int, worded.messages[0]["content"].split()[-1].rstrip("?").split("+"))
    assert worded.response == f"{a + b} is the sum"  # the skill's digits where the target puts them, then words
    assert "count" not in counts  # its bare-number answers would teach the finishing family's lesson
    target = curriculum_target(64, 100)
    assert target.name == "synthetic_curriculum" and target.validation[0].response.isdigit()
    with pytest.raises(UserError, match="more than 8"):
        curriculum_pool(SCARCE_COUNT)


def _context(pool: list, budget: int = 20) -> SelectionContext:
    return SelectionContext(pool=Pool(pool), batch_size=4, budget_steps=budget, decision_interval=1, seed=0)


def _state(step: int, budget: int, pool_size: int) -> EnvState:
    return EnvState(step, budget, 4, 1, [1.0], np.zeros(pool_size, dtype=np.int64))


def test_scheduled_oracle_follows_the_schedule():
    examples = curriculum_pool(300)
    selector = build_selector("scheduled_oracle", load_config(recipe_path("curriculum")))
    selector.setup(_context(examples))
    selector.reset(0)
    for step in range(20):
        families = {examples[i].meta["family"] for i in selector.select(_state(step, 20, len(examples)))}
        assert families == ({"sum_worded"} if step / 20 < 0.6 else {"sum_short"}), step
    with pytest.raises(UserError, match="schedule"):
        selector.setup(_context(synthetic_pool(100)))


def test_best_static_trains_its_mixture_exactly_and_needs_a_search():
    examples = curriculum_pool(300)
    assert sorted(helpful_families(Pool(examples))) == ["sum_short", "sum_worded"]
    grid = mixture_grid(["a", "b"])
    assert len(grid) == 11 and all(abs(sum(m.values()) - 1) < 1e-9 for m in grid)
    assert len(mixture_grid(["a", "b", "c"], step=0.5)) == 6
    selector = FamilyMixtureSelector({"sum_worded": 0.3, "sum_short": 0.7})
    selector.setup(_context(examples))
    selector.reset(0)
    picks = np.concatenate([selector.select(_state(step, 20, len(examples))) for step in range(20)])
    shares = Counter(examples[i].meta["family"] for i in picks)
    assert shares == {"sum_worded": 24, "sum_short": 56}  # 30 % / 70 % of 80 picks, exactly
    with pytest.raises(UserError, match="grid search"):
        build_selector("best_static", load_config(recipe_path("curriculum"))).setup(_context(examples))


def test_bundled_names_build_the_world():
    from raise_select.config import PoolConfig, SourceConfig, TargetConfig
    from raise_select.data.bundled import build_pool, build_target

    pool = build_pool(PoolConfig(sources=[SourceConfig(name="synthetic_curriculum", limit=200)]))
    assert len(pool) == 200 and pool[0].id.startswith("synthetic_curriculum/")
    target = build_target(TargetConfig(name="synthetic_curriculum", n_validation=8, n_test=4))
    assert (target.name, target.metric, len(target.validation)) == ("synthetic_curriculum", "exact_match", 8)


def test_compare_searches_the_best_static_mixture_and_reuses_it(tmp_path):
    from raise_select.experiments import run_comparison
    from raise_select.io_utils import read_json
    from raise_select.run_folders import best_static_file

    config = load_config(
        recipe_path("curriculum"),
        [
            "pool.sources=[{name: synthetic_curriculum, limit: 100}]",
            "target.n_validation=8",
            "train.budget_steps=3",
            "train.warmup_steps=1",
            "compare.methods=[best_static, scheduled_oracle]",
            "compare.budget_steps=[3]",
            "compare.seeds=[0]",
            "compare.test_metric=false",
        ],
    )
    rows = run_comparison(config, tmp_path / "cmp", progress=False)["rows"]
    search = read_json(best_static_file(tmp_path / "cmp", 3))
    assert len(search["grid"]) == 11 and search["seeds"] == [0]
    best = min(search["grid"], key=lambda row: row["validation_loss"])
    assert search["best"] == best["proportions"]
    # the comparison's best_static run is the grid's best mixture, replayed at the same seed
    row = next(r for r in rows if r["method"] == "best_static")
    assert row["validation_loss"] == pytest.approx(best["validation_loss"], abs=1e-6)


def test_the_schedule_beats_fixed_mixtures_on_the_shipped_model():
    """The world's premise, pinned cheaply: at fine-tuning seed 0 the scheduled oracle ends 0.32 below
    the best static mixture of the full grid (60 % prerequisite) and 0.13 below this seed's own best
    mixture (70 %) (bench/curriculum_premise.py; docs/results.md has every seed and four base models)."""
    from raise_select.pipeline import Workbench, run_finetune

    config = load_config(recipe_path("curriculum"), ["train.eval_every=24"])
    bench = Workbench.build(config, progress=False)

    def final_loss(selector) -> float:
        return run_finetune(bench, selector, None, 24, 0, test_metric=False, progress=False).validation_loss_final

    scheduled = final_loss(build_selector("scheduled_oracle", config))
    grid_best, seed_best = (
        final_loss(FamilyMixtureSelector({"sum_worded": w, "sum_short": 1 - w})) for w in (0.6, 0.7)
    )
    assert scheduled < grid_best - 0.25 and scheduled < seed_best - 0.08, (scheduled, grid_best, seed_best)
