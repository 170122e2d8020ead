"""The testbed gives the same numbers with 1 and 2 torch threads and with another CPU kernel set.

The testbed model is shipped, so every machine starts from the same weights; what remains is float
rounding, which depends on the thread count and on the kernels torch picks for the CPU
(``ATEN_CPU_CAPABILITY``). A small ``compare`` (selector training, RAISE deployed, two baselines)
runs in a fresh process per setting, from an empty cache; every validation loss of its
``results.json`` must agree within 1e-4 relative.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from helpers import SYNTHETIC_OVERRIDES
from raise_select.config_io import dump_config, load_config

SETTINGS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "1 thread, default kernels": {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
}
COMPARE = [
    "compare.methods=[raise, random, targeted]",
    "compare.seeds=[0]",
    "compare.budget_steps=[6]",
    "raise.episodes=2",
    "raise.episode_steps=6",
]


def _results(tmp_path, name: str, environment: dict) -> dict[tuple, float]:
    folder = tmp_path / name.replace(" ", "-").replace(",", "")
    inherited = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}
    env = {**inherited, **environment, "RAISE_SELECT_CACHE": str(folder / "cache")}
    folder.mkdir()
    config = folder / "config.yaml"
    config.write_text(dump_config(load_config(None, [*SYNTHETIC_OVERRIDES, *COMPARE])), encoding="utf-8")
    command = [sys.executable, "-m", "raise_select.cli", "compare", "--config", str(config), "--no-progress"]
    completed = subprocess.run(
        [*command, "--output", str(folder / "run")], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = json.loads((folder / "run" / "results.json").read_text())["rows"]
    return {(r["method"], r["seed"], r.get("selector_seed")): r["validation_loss"] for r in rows}


def test_testbed_results_agree_across_threads_and_cpu_kernels(tmp_path):
    results = {name: _results(tmp_path, name, environment) for name, environment in SETTINGS.items()}
    reference = results["1 thread"]
    assert len(reference) == 3
    for name, losses in results.items():
        assert losses.keys() == reference.keys(), name
        keys = sorted(reference, key=str)
        np.testing.assert_allclose(
            [losses[k] for k in keys], [reference[k] for k in keys], rtol=1e-4, err_msg=f"{name} vs 1 thread"
        )
