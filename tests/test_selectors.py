"""Baseline selectors on hand-made pools whose right answer is known, plus the registry."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import replace

import numpy as np
import pytest

from helpers import make_context, make_features, make_state
from raise_select.config import Config
from raise_select.data.types import Example
from raise_select.errors import UserError
from raise_select.protocol import EnvState, Explains, HasClusters, SelectionContext, Selector
from raise_select.selectors import SELECTORS, build_selector
from raise_select.selectors.baselines import (
    HighLossSelector,
    IFDSelector,
    SelfPacedSelector,
    static_subset_size,
    top_k,
)
from raise_select.selectors.simple import EpochSampler, FullDataSelector, OracleSelector, RandomSelector


def state_of(context: SelectionContext, **kwargs) -> EnvState:
    """``make_state`` for the context's pool, batch, budget and decision interval (validation loss 1.0)."""
    return make_state(
        len(context.pool),
        context.batch_size,
        budget=context.budget_steps,
        decision_interval=context.decision_interval,
        validation_loss=1.0,
        **kwargs,
    )


def run_episode(selector: Selector, context: SelectionContext, seed: int = 0, loss_probe=None) -> list[np.ndarray]:
    """Drive ``selector`` like the environment does: one decision at a time, counts updated after each."""
    selector.reset(seed)
    state = state_of(context, loss_probe=loss_probe)
    decisions = []
    while state.step < state.budget:
        indices = selector.select(state)
        assert indices.dtype == np.int64 and indices.shape == (state.decision_size,)
        assert indices.min() >= 0 and indices.max() < len(context.pool)
        np.add.at(state.selection_counts, indices, 1)
        state.step += len(indices) // state.batch_size
        decisions.append(indices)
    return decisions


# -- shared pieces ---------------------------------------------------------------------------------


def test_top_k_breaks_ties_by_index_and_skips_excluded():
    scores = np.array([1.0, 3.0, -np.inf, 3.0, np.nan, 2.0])
    assert top_k(scores, 3).tolist() == [1, 3, 5]
    assert top_k(scores, 10).tolist() == [1, 3, 5, 0]  # only the 4 finite scores


def test_static_subset_size_spreads_the_budget_over_epochs():
    assert static_subset_size(make_context(100, budget_steps=10, batch_size=4)) == 14  # ceil(40 / 3)
    assert static_subset_size(make_context(100, budget_steps=10, batch_size=4, static_epochs=1)) == 40
    assert (
        static_subset_size(make_context(20, budget_steps=10, batch_size=4, static_epochs=1)) == 20
    )  # clipped to the pool


def test_epoch_sampler_continues_across_epoch_boundaries():
    sampler = EpochSampler(np.array([3, 5, 7]), np.random.default_rng(0))
    drawn = np.concatenate([sampler.draw(2) for _ in range(6)])  # 12 draws = 4 epochs of 3
    for epoch in drawn.reshape(4, 3):
        assert sorted(epoch.tolist()) == [3, 5, 7]
    assert sampler.epoch == 3


# -- simple selectors ------------------------------------------------------------------------------


def test_full_data_covers_each_example_once_per_epoch_and_reshuffles():
    context = make_context(10, budget_steps=10, batch_size=3)  # 30 indices = 3 epochs; decisions cross epoch boundaries
    selector = FullDataSelector()
    selector.setup(context)
    drawn = np.concatenate(run_episode(selector, context))
    epochs = drawn.reshape(3, 10)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(10))
    assert len({tuple(epoch) for epoch in epochs}) > 1  # reshuffled between epochs


def test_random_is_reproducible_per_seed_and_has_no_repeats_within_a_decision():
    context = make_context(50, budget_steps=5, batch_size=8)
    selector = RandomSelector()
    selector.setup(context)
    first = run_episode(selector, context, seed=3)
    again = run_episode(selector, context, seed=3)
    other = run_episode(selector, context, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert all(len(set(decision.tolist())) == len(decision) for decision in first)


# -- static subset selectors -----------------------------------------------------------------------


def static_subset(name: str, context: SelectionContext) -> set[int]:
    """Set up the named selector and return every index it trains on in one episode."""
    selector = build_selector(name, Config())
    selector.setup(context)
    return set(np.concatenate(run_episode(selector, context)).tolist())


def test_longest_trains_exactly_on_the_k_longest():
    lengths = np.array([5, 40, 12, 33, 8, 50, 21, 7, 45, 3], dtype=float)
    context = make_context(
        10, make_features(10, fill="constant", response_tokens=lengths), budget_steps=6, batch_size=2
    )  # subset of 4
    assert static_subset("longest", context) == {5, 8, 1, 3}


def test_ifd_keeps_the_highest_ratios_below_one():
    ifd = np.array([0.2, 1.5, 0.9, 1.0, 0.95, 0.1, 0.6, 2.0])
    context = make_context(8, make_features(8, fill="constant", ifd=ifd), budget_steps=3, batch_size=3)  # subset of 3
    assert static_subset("ifd", context) == {4, 2, 6}


def test_ifd_with_too_few_eligible_examples_warns_and_with_none_fails(caplog):
    context = make_context(
        4, make_features(4, fill="constant", ifd=np.array([1.2, 0.8, 1.0, 3.0])), budget_steps=3, batch_size=3
    )
    selector = IFDSelector()
    with caplog.at_level(logging.WARNING):
        selector.setup(context)
    assert selector.subset.tolist() == [1] and "only 1 eligible" in caplog.text
    with pytest.raises(UserError, match="no eligible pool example"):
        IFDSelector().setup(
            make_context(3, make_features(3, fill="constant", ifd=np.array([1.0, 1.1, 4.0])), batch_size=2)
        )


def test_perplexity_selectors_take_the_low_and_high_ends():
    loss = np.array([2.0, 0.5, 3.5, 1.0, 0.1, 2.5, 4.0, 1.5])
    context = make_context(8, make_features(8, fill="constant", response_loss=loss), budget_steps=3, batch_size=3)
    assert static_subset("perplexity_low", context) == {4, 1, 3}
    assert static_subset("perplexity_high", context) == {6, 2, 5}


def test_targeted_picks_the_examples_nearest_the_target_mean():
    angles = np.deg2rad([0, 90, 180, 10, 45, 270, 350, 100])
    embedding = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.arange(1, 9)[:, None]  # norms must not matter
    target = np.array([[1.0, 0.2], [1.0, -0.2]])  # mean points at 0 degrees
    context = make_context(
        8, make_features(8, fill="constant", embedding=embedding), budget_steps=3, batch_size=3, target_embedding=target
    )
    assert static_subset("targeted", context) == {0, 3, 6}
    with pytest.raises(ValueError, match="target_embedding"):
        build_selector("targeted", Config()).setup(
            make_context(8, make_features(8, fill="constant", embedding=embedding), batch_size=2)
        )


def test_static_selectors_need_features():
    with pytest.raises(ValueError, match="static features"):
        build_selector("longest", Config()).setup(make_context(8, batch_size=2))


# -- dynamic selectors -----------------------------------------------------------------------------


def test_sspl_starts_at_the_easy_end_and_widens_with_progress():
    n = 100
    loss = np.random.default_rng(0).permutation(n).astype(float)  # example i has difficulty rank loss[i]
    context = make_context(n, make_features(n, fill="constant", response_loss=loss), budget_steps=10, batch_size=4)
    selector = SelfPacedSelector(start_fraction=0.1)
    selector.setup(context)
    decisions = run_episode(selector, context)
    ranks = [loss[d] for d in decisions]
    assert all(r.max() < 10 for r in ranks[:2])  # easiest 10 % while t/T <= 0.1
    assert ranks[5].max() < 50  # t/T = 0.5
    assert max(r.max() for r in ranks[5:]) >= 10  # the window has widened past p0
    first_twenty = np.concatenate(decisions[:5])
    assert len(set(first_twenty.tolist())) == 20  # not-yet-used examples first


def test_sspl_refills_from_used_examples_when_the_window_is_exhausted():
    n = 20
    loss = np.arange(n, dtype=float)
    context = make_context(n, make_features(n, fill="constant", response_loss=loss), budget_steps=10, batch_size=4)
    selector = SelfPacedSelector(start_fraction=0.1)
    selector.setup(context)
    selector.reset(0)
    counts = np.zeros(n, dtype=np.int64)
    counts[[0, 1]] = 1  # window at t=0 is the 4 easiest (one decision); two of them already used
    chosen = selector.select(state_of(context, counts=counts))
    assert sorted(chosen.tolist()) == [0, 1, 2, 3]


def test_high_loss_keeps_the_highest_probed_losses():
    n = 64
    hidden_loss = np.random.default_rng(1).normal(size=n)
    probed: list[np.ndarray] = []

    def probe(indices: np.ndarray) -> np.ndarray:
        probed.append(np.asarray(indices))
        return hidden_loss[indices]

    context = make_context(n, budget_steps=2, batch_size=3)
    selector = HighLossSelector(candidate_factor=4)
    selector.setup(context)
    selector.reset(0)
    chosen = selector.select(state_of(context, loss_probe=probe))
    candidates = probed[-1]
    assert len(set(candidates.tolist())) == 12  # 4 x decision_size distinct candidates
    expected = candidates[np.argsort(-hidden_loss[candidates])[:3]]
    assert chosen.tolist() == expected.tolist()
    with pytest.raises(ValueError, match="loss_probe"):
        selector.select(state_of(context))


# -- registry and the protocol ---------------------------------------------------------------------


def test_every_selector_respects_decision_sizes_including_the_last_partial_one():
    n = 30
    rng = np.random.default_rng(0)
    features = make_features(
        n,
        fill="constant",
        response_loss=rng.random(n),
        ifd=rng.random(n),
        response_tokens=rng.integers(1, 50, n),
        embedding=rng.normal(size=(n, 3)),
    )
    # budget 7 updates at M=3: decisions of 3, 3 and 1 update(s) of batch 2 -> 6, 6, 2 indices
    context = make_context(
        n, features, budget_steps=7, batch_size=2, decision_interval=3, target_embedding=rng.normal(size=(4, 3))
    )
    # the family-reading references need family and schedule labels (as the curriculum world has)
    context.pool.examples[:] = [
        replace(e, meta={**e.meta, "family": f"f{i % 2}", "schedule": (0.0, 0.5) if i % 2 else (0.5, 1.0)})
        for i, e in enumerate(context.pool.examples)
    ]
    for name in SELECTORS:
        if name == "raise":
            continue
        selector = build_selector(name, Config())
        assert isinstance(selector, Selector) and selector.name == name
        assert not isinstance(selector, (Explains, HasClusters)), name  # the run folder has no explain.csv / clusters
        if name == "best_static":
            selector.proportions = {"f0": 0.5, "f1": 0.5}
        selector.setup(context)
        decisions = run_episode(selector, context, loss_probe=lambda indices: rng.random(len(indices)))
        assert [len(d) for d in decisions] == [6, 6, 2], name


def test_registry_errors_are_one_line_user_errors():
    with pytest.raises(UserError, match="unknown selector 'nope'; valid selectors: raise, random, full"):
        build_selector("nope", Config())
    with pytest.raises(UserError, match="--selector raise needs --policy PATH"):
        build_selector("raise", Config())
    assert all(description and "\n" not in description for description in SELECTORS.values())


def test_raise_loads_the_policy_lazily(monkeypatch):
    loaded = []

    class FakeRaiseSelector:
        @classmethod
        def load(cls, path):
            loaded.append(path)
            return cls()

    fake_module = types.ModuleType("raise_select.selectors.raise_policy")
    fake_module.RaiseSelector = FakeRaiseSelector
    monkeypatch.setitem(sys.modules, "raise_select.selectors.raise_policy", fake_module)
    config = Config()
    config.raise_.policy = "runs/selector"
    assert isinstance(build_selector("raise", config), FakeRaiseSelector) and loaded == ["runs/selector"]


def test_oracle_trains_only_on_helpful_clean_examples_and_needs_labels():
    n = 30
    context = make_context(n, None, budget_steps=6, batch_size=4)
    oracle = OracleSelector()
    oracle.setup(context)
    chosen = np.concatenate(run_episode(oracle, context))
    assert set(chosen.tolist()) == {i for i in range(n) if i % 3 == 0 and i % 15 != 0}  # 8 examples, 3 epochs
    unlabelled = make_context(n, None, budget_steps=6, batch_size=4)
    unlabelled.pool.examples[4] = Example(
        id="toy/x", source="toy", messages=({"role": "user", "content": "q"},), response="a"
    )
    with pytest.raises(
        UserError, match="needs 'helpful' and 'corrupted' labels on every pool example \\(1 of 30 have none\\)"
    ):
        OracleSelector().setup(unlabelled)
