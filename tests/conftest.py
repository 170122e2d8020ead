"""Shared fixtures: a small synthetic-testbed config; one torch thread (tiny models run faster
single-threaded, and the CI machine has two cores); slow tests opt-in with RAISE_SLOW=1.

Plain builders and checks shared by several test modules are in ``helpers.py``; test modules import
from there, never from this file or from each other."""

import os

import pytest
import torch

from helpers import SYNTHETIC_OVERRIDES
from raise_select.config_io import load_config

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RAISE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="uses the real SmolLM2 model; set RAISE_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def synthetic_config():
    """A fresh Config for a small synthetic-testbed run (tests may mutate it)."""
    return load_config(None, list(SYNTHETIC_OVERRIDES))
