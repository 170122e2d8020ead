"""Shared fixtures: a small synthetic-testbed config; one torch thread (tiny models run faster
single-threaded, and the CI machine has two cores) and the portable CPU kernels (the library's
default, pinned before any test runs an op); slow tests opt-in with RAISE_SLOW=1.

Plain builders and checks shared by several test modules are in ``helpers.py``; test modules import
from there, never from this file or from each other."""

import os

import pytest
import torch

from helpers import SYNTHETIC_OVERRIDES
from raise_select.config_io import load_config
from raise_select.cpu_kernels import pin_cpu_kernels

torch.set_num_threads(1)
pin_cpu_kernels("portable")  # before any test runs an op: every x86-64 machine with AVX2 computes the same numbers


# The longest files first, so that with ``pytest -n 2 --dist loadfile --no-loadscope-reorder`` (make test)
# one worker takes the learning test while the other runs the rest of the suite.
LONGEST_FIRST = ("test_learning.py", "test_bench.py", "test_determinism.py", "test_trainer_integration.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))
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
