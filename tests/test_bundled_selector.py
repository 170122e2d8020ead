"""The selector shipped in the package (smollm2-gsm8k) and the demo that deploys it: it loads by name,
says what it was trained on and what that cost, and fits the demo's pool and features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from raise_select.config import validate
from raise_select.config_io import load_config, recipe_path
from raise_select.data.bundled import build_pool
from raise_select.errors import UserError
from raise_select.experiments import trained_selector_cost
from raise_select.selector_artifact import BUNDLED_SELECTORS, load_artifact, resolve_policy, trained_settings

EXPERIMENT = Path(__file__).parents[1] / "examples" / "configs" / "smollm2_gsm8k_mixed.yaml"


@pytest.fixture(scope="module")
def shipped():
    return load_artifact("smollm2-gsm8k")


def test_bundled_selector_loads_by_name_and_is_small(shipped):
    folder = resolve_policy("smollm2-gsm8k")
    assert sum(f.stat().st_size for f in folder.iterdir()) < 100_000  # tens of KB, like a config
    assert "train-selector" in BUNDLED_SELECTORS["smollm2-gsm8k"]
    assert shipped.config.head_dims == 5 and shipped.config.clusters == 1


def test_bundled_selector_records_its_proxy_training_and_its_cost(shipped):
    provenance = shipped.provenance
    assert provenance["target"] == "gsm8k"
    episodes_on = provenance["episodes_on"]
    assert episodes_on["proxy"] is True and episodes_on["features_from"] == "smollm2"
    experiment = load_config(EXPERIMENT).raise_
    assert (episodes_on["max_length"], episodes_on["decision_interval"]) == (
        experiment.proxy_max_length,
        experiment.proxy_decision_interval,
    )
    # trained with the experiment's settings, so its documented command reproduces it
    assert trained_settings(shipped.config) == trained_settings(experiment)
    phases = provenance["training_cost"]
    assert phases["features"]["phi"] + phases["selector_training"]["phi"] <= 1.0  # issue 8's bound
    assert trained_selector_cost("smollm2-gsm8k").tokens == phases["selector_training"]["tokens"]


def test_the_demo_deploys_the_bundled_selector_on_the_pool_it_was_trained_on(shipped):
    demo = load_config(recipe_path("demo"))
    validate(demo)
    experiment = load_config(EXPERIMENT)
    assert demo.raise_.policy == "smollm2-gsm8k"
    for section in ("pool", "features"):  # what the features and the selector's statistics depend on
        assert getattr(demo, section) == getattr(experiment, section), section
    # the same model; the demo computes in fp32 with the portable kernels (fast and reproducible on any AVX2 CPU)
    arithmetic = {"precision": "fp32", "cpu_kernels": "portable"}
    assert demo.model == dataclasses.replace(experiment.model, **arithmetic)
    assert (demo.target.name, demo.target.n_validation) == (experiment.target.name, experiment.target.n_validation)
    assert shipped.pca_dim == demo.features.pca_dim
    assert build_pool(demo.pool, seed=demo.seed).fingerprint() == shipped.provenance["pool_fingerprint"]


def test_an_unknown_policy_name_is_a_one_line_error():
    with pytest.raises(UserError, match="smollm2-gsm9k is not a raise-select selector"):
        load_artifact("smollm2-gsm9k")
