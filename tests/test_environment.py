"""The fine-tuning environment and finetune runs on the synthetic testbed."""

import json

import numpy as np
import pytest
import torch

from helpers import SYNTHETIC_OVERRIDES
from raise_select.config_io import load_config
from raise_select.environment import FineTuneEnv, full_data_steps, resolve_budget
from raise_select.errors import UserError
from raise_select.io_utils import read_jsonl
from raise_select.pipeline import Workbench, run_finetune
from raise_select.selectors import build_selector


@pytest.fixture(scope="module")
def bench():
    return Workbench.build(load_config(None, list(SYNTHETIC_OVERRIDES)))


def _weights(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def test_reset_restores_base_weights_exactly(bench):
    env = bench.make_env(budget_steps=3)
    before = _weights(bench.lm)
    state = env.reset(seed=0)
    initial = state.validation_loss
    env.step(np.arange(8))
    env.step(np.arange(8, 16))
    assert not all(torch.equal(before[n], p) for n, p in bench.lm.model.named_parameters())
    state = env.reset(seed=0)
    assert all(torch.equal(before[n], p) for n, p in bench.lm.model.named_parameters())
    assert state.step == 0 and state.selection_counts.sum() == 0
    assert state.validation_history == [initial]
    assert env.evaluate() == pytest.approx(initial, abs=0)


def test_step_reward_is_the_validation_loss_decrease(bench):
    env = bench.make_env(budget_steps=2)
    state = env.reset(seed=0)
    result = env.step(np.arange(8))
    assert result.updates == 1 and result.tokens == bench.pool_tokens.num_tokens(np.arange(8))
    assert result.reward == pytest.approx(state.validation_history[0] - state.validation_history[1])
    assert state.selection_counts[:8].tolist() == [1] * 8 and state.step == 1
    assert not env.done
    env.step(np.arange(8))
    assert env.done and state.selection_counts[:8].tolist() == [2] * 8
    with pytest.raises(RuntimeError, match="budget is spent"):
        env.step(np.arange(8))


def test_decision_interval_runs_several_updates_per_decision(bench):
    bench.config.train.decision_interval = 2
    try:
        env = bench.make_env(budget_steps=3)
        state = env.reset(seed=0)
        assert state.decision_size == 16
        assert env.step(np.arange(16)).updates == 2
        assert state.decision_size == 8  # the last decision only has one update left
        with pytest.raises(ValueError, match="expected 8"):
            env.step(np.arange(16))
    finally:
        bench.config.train.decision_interval = 1


def test_same_seed_gives_identical_selections_and_losses(bench, tmp_path):
    for name in ("a", "b"):
        run_finetune(
            bench,
            build_selector("random", bench.config),
            tmp_path / name,
            budget_steps=3,
            seed=7,
            test_metric=False,
            progress=False,
        )
    metrics = [read_jsonl(tmp_path / n / "metrics.jsonl") for n in ("a", "b")]
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    assert strip(metrics[0]) == strip(metrics[1])
    assert read_jsonl(tmp_path / "a" / "selections.jsonl") == read_jsonl(tmp_path / "b" / "selections.jsonl")
    other = run_finetune(
        bench,
        build_selector("random", bench.config),
        tmp_path / "c",
        budget_steps=3,
        seed=8,
        test_metric=False,
        progress=False,
    )
    assert read_jsonl(other.output / "selections.jsonl") != read_jsonl(tmp_path / "a" / "selections.jsonl")


def test_run_folder_contents(bench, tmp_path):
    result = run_finetune(bench, build_selector("full", bench.config), tmp_path, budget_steps=3, seed=0, progress=False)
    for name in ("config.yaml", "summary.json", "metrics.jsonl", "selections.jsonl", "evaluation.json", "ledger.json"):
        assert (tmp_path / name).is_file(), name
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["test"]["metric"] == "exact_match" and evaluation["test"]["n"] == 16
    selections = read_jsonl(tmp_path / "selections.jsonl")
    assert [len(s["ids"]) for s in selections] == [8, 8, 8]
    assert all(s["sources"][0].startswith("synthetic/") for s in selections)
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert ledger["phases"]["finetune"]["tokens"] == result.tokens
    assert ledger["phi"]["steps"] == full_data_steps(len(bench.pool), bench.config.train)


def test_budget_resolution_and_errors(bench):
    train = bench.config.train
    assert full_data_steps(240, train) == 90  # 3 epochs x 240 / 8
    train.budget_steps, train.budget_fraction = None, 0.1
    try:
        assert resolve_budget(240, train) == 9
        train.budget_fraction = 0.001
        with pytest.raises(UserError, match="budget too small"):
            resolve_budget(240, train)
        with pytest.raises(UserError, match="larger than the pool"):
            resolve_budget(4, train)
    finally:
        train.budget_steps, train.budget_fraction = 4, 0.01
    with pytest.raises(UserError, match="larger than the pool"):
        FineTuneEnv(bench.lm, bench.pool_tokens.subset(np.arange(4)), bench.validation_tokens, train, 2)
