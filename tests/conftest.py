"""Shared fixtures: a small synthetic-testbed config; one torch thread (tiny models run faster
single-threaded, and the CI machine has two cores); slow tests opt-in with RAISE_SLOW=1."""

import os

import pytest
import torch

from raise_select.config import load_config

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RAISE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="uses the real SmolLM2 model; set RAISE_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


SYNTHETIC_OVERRIDES = [
    "model.name=synthetic-tiny",
    "model.finetune=full",
    "pool.sources=[{name: synthetic, limit: 240}]",
    "pool.max_length=48",
    "target.name=synthetic",
    "target.n_validation=24",
    "target.n_test=16",
    "target.max_new_tokens=6",
    "train.batch_size=8",
    "train.learning_rate=1e-3",
    "train.budget_steps=4",
    "features.pca_dim=8",
    "raise.clusters=2",
    "raise.episodes_per_update=2",
]


@pytest.fixture
def synthetic_config():
    """A fresh Config for a small synthetic-testbed run (tests may mutate it)."""
    return load_config(None, list(SYNTHETIC_OVERRIDES))


def assert_one_line_error(status: int, captured, expected: list[str]) -> None:
    """The CLI's contract for a user error: status 2, one ``error: ...`` line holding every expected fragment, no stdout."""
    assert status == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert captured.out == ""
