"""Selector training on a proxy (raise.proxy_layers / proxy_max_length / proxy_model /
proxy_validation_size): the episodes run
on the cheaper model, the static features are the tuned model's, the saved selector records what it
was trained on, the ledger charges the proxy's tokens in the tuned model's Φ, and the selector
deploys on the tuned model without re-fitting anything."""

from __future__ import annotations

import pytest

from helpers import SYNTHETIC_OVERRIDES
from raise_select.config_io import load_config
from raise_select.environment import FineTuneEnv
from raise_select.errors import UserError
from raise_select.experiments import run_comparison, train_raise_selector
from raise_select.io_utils import read_json, read_jsonl
from raise_select.pipeline import Workbench, run_finetune
from raise_select.selector_artifact import load_artifact
from raise_select.selectors.raise_policy import RaiseSelector, embedding_space_id

TRAIN_OVERRIDES = [*SYNTHETIC_OVERRIDES, "raise.episodes=2", "raise.episodes_per_update=2"]


@pytest.fixture(scope="module")
def bench():
    return Workbench.build(load_config(None, TRAIN_OVERRIDES))


def _train(bench: Workbench, output, *overrides: str):
    config = load_config(None, [*TRAIN_OVERRIDES, *overrides])
    return train_raise_selector(config, output, progress=False, bench=bench)


@pytest.fixture(scope="module")
def proxy_training(bench, tmp_path_factory):
    output = tmp_path_factory.mktemp("proxy") / "train"
    return output, _train(bench, output, "raise.proxy_layers=1", "raise.proxy_max_length=32")


def test_episodes_run_on_the_proxy_and_the_selector_records_it(bench, proxy_training):
    output, selector_dir = proxy_training
    episodes_on = load_artifact(selector_dir).provenance["episodes_on"]
    assert episodes_on["proxy"] is True
    assert episodes_on["num_layers"] == 1 and episodes_on["max_length"] == 32
    assert "layers=1" in episodes_on["model"]
    assert 0 < episodes_on["size_ratio"] < 1  # one of three decoder layers, same embedding
    assert episodes_on["parameters"] == round(episodes_on["size_ratio"] * bench.lm.parameter_count())
    assert episodes_on["features_from"] == "synthetic-tiny"
    # The episodes' validation loss is the one-layer model's, far from the tuned model's base loss.
    rows = read_jsonl(output / "episodes.jsonl")
    base_loss = bench.make_env(4).evaluate()
    assert all(abs(row["validation_loss_initial"] - base_loss) > 0.1 for row in rows)


def test_the_proxy_shares_the_tuned_models_features(bench, proxy_training):
    _, selector_dir = proxy_training
    artifact = load_artifact(selector_dir)
    features = bench.ensure_features(progress=False)
    assert artifact.aux_model == features.aux_model
    assert artifact.embedding_space == embedding_space_id(features)


def test_ledger_charges_proxy_tokens_in_the_tuned_models_phi(bench, proxy_training):
    output, selector_dir = proxy_training
    episodes_on = load_artifact(selector_dir).provenance["episodes_on"]
    rows = read_jsonl(output / "episodes.jsonl")
    assert all(row["evaluation_tokens"] > 0 for row in rows)
    expected = sum(
        round((row["tokens"] + row["evaluation_tokens"] / 3) * episodes_on["size_ratio"]) for row in rows
    )  # full fine-tuning: a forward-only token is 1/3 of a training token
    ledger = read_json(output / "ledger.json")
    assert ledger["phi"] == bench.phi()  # the tuned model's Φ
    assert ledger["phases"]["selector_training"]["tokens"] == expected
    assert ledger["phases"]["selector_training"]["phi"] == pytest.approx(expected / bench.phi()["tokens"])


def test_truncated_episodes_process_fewer_tokens(bench, tmp_path, proxy_training):
    output, _ = proxy_training
    _train(bench, tmp_path / "plain")
    plain = read_jsonl(tmp_path / "plain" / "episodes.jsonl")
    proxy = read_jsonl(output / "episodes.jsonl")
    assert sum(r["tokens"] for r in proxy) < sum(r["tokens"] for r in plain)
    assert load_artifact(tmp_path / "plain" / "selector").provenance["episodes_on"]["proxy"] is False


def test_a_validation_subset_rewards_the_episodes_on_its_examples_only(bench, tmp_path):
    _train(bench, tmp_path / "plain")
    selector_dir = _train(bench, tmp_path / "subset", "raise.proxy_validation_size=6")
    plain = read_jsonl(tmp_path / "plain" / "episodes.jsonl")
    subset = read_jsonl(tmp_path / "subset" / "episodes.jsonl")
    # Same model and examples: the training tokens match; every validation pass reads 6 of the 24 examples.
    assert [r["tokens"] for r in subset] == [r["tokens"] for r in plain]
    six = bench.validation_tokens.num_tokens(range(6))
    assert all(
        r["evaluation_tokens"] % six == 0 and 0 < r["evaluation_tokens"] < p["evaluation_tokens"]
        for r, p in zip(subset, plain, strict=True)
    )
    first_six = FineTuneEnv(
        bench.lm,
        bench.pool_tokens,
        bench.validation_tokens.subset(range(6)),
        bench.config.train,
        4,
        base_weights=bench.base_weights,
    )
    base_loss = bench.make_env(4).reset(0).validation_history[0]
    assert plain[0]["validation_loss_initial"] == pytest.approx(base_loss, abs=1e-6)
    assert subset[0]["validation_loss_initial"] == pytest.approx(first_six.reset(0).validation_history[0], abs=1e-6)
    assert subset[0]["validation_loss_initial"] != pytest.approx(base_loss, abs=1e-3)
    artifact = load_artifact(selector_dir)
    assert artifact.provenance["episodes_on"]["validation_examples"] == 6
    assert artifact.config.proxy_validation_size == 6  # a trained setting: a resume may not change it
    # Deployment reads the whole validation set.
    selector = RaiseSelector.load(selector_dir)
    result = run_finetune(bench, selector, tmp_path / "run", 4, seed=0, test_metric=False, progress=False)
    assert result.validation_loss_initial == pytest.approx(base_loss, abs=1e-6)


def test_a_validation_subset_larger_than_the_validation_set_is_a_one_line_error(bench, tmp_path):
    with pytest.raises(UserError, match="raise.proxy_validation_size=25 is more than the target's 24 validation"):
        _train(bench, tmp_path / "out", "raise.proxy_validation_size=25")
    assert not (tmp_path / "out" / "selector").exists()


def test_a_proxy_trained_selector_deploys_on_the_tuned_model(bench, proxy_training, tmp_path):
    _, selector_dir = proxy_training
    selector = RaiseSelector.load(selector_dir)
    result = run_finetune(bench, selector, tmp_path / "run", 4, seed=0, test_metric=False, progress=False)
    assert selector.adaptation_notes == []  # same features, same statistics and centroids: nothing re-fitted
    assert result.steps == 4


def test_too_many_proxy_layers_is_a_one_line_error_before_any_output(bench, tmp_path):
    with pytest.raises(UserError, match="raise.proxy_layers=9 but model 'synthetic-tiny' has 3 decoder layers"):
        _train(bench, tmp_path / "out", "raise.proxy_layers=9")
    assert not (tmp_path / "out" / "selector").exists()


def test_full_seeds_limit_the_full_data_runs(tmp_path):
    overrides = [*SYNTHETIC_OVERRIDES, "compare.methods=[full, random]", "compare.seeds=[0, 1]"]
    config = load_config(None, [*overrides, "compare.full_seeds=[1]", "compare.budget_steps=[2]", "target.n_test=2"])
    config.compare.test_metric = False
    results = run_comparison(config, tmp_path / "cmp", progress=False)
    assert sorted((r["method"], r["seed"]) for r in results["rows"]) == [("full", 1), ("random", 0), ("random", 1)]
