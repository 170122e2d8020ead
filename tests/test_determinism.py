"""The testbed gives the same numbers with 1 and 2 torch threads and with another CPU kernel set.

The testbed model is shipped, so every machine starts from the same weights; what remains is float
rounding, which depends on the thread count and on the kernels torch picks for the CPU (ATen's
``ATEN_CPU_CAPABILITY``, MKL's ``MKL_CBWR``). ``model.cpu_kernels=portable`` (the default) pins both
to the AVX2 set, so a machine whose own choice differs (simulated here by setting the variables to
another set, which the pin overrides with a warning) gives the same numbers. A small ``compare``
(selector training, RAISE deployed, two baselines) runs in a fresh process per setting, from an empty
cache; every validation loss of its ``results.json`` must be identical on an x86-64 CPU with AVX2
(elsewhere torch's own kernels run: within 1e-4 relative).
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
    "1 thread, MKL's compatible path": {"OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"},
}
PINNED = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS")
COMPARE = [
    "pool.sources=[{name: synthetic, limit: 1000}]",  # at this size the features' PCA depends on BLAS threads
    "compare.methods=[raise, random, targeted]",
    "compare.seeds=[0]",
    "compare.budget_steps=[6]",
    "raise.episodes=2",
    "raise.episode_steps=6",
]


def _results(tmp_path, name: str, environment: dict) -> tuple[dict[tuple, float], dict, str]:
    folder = tmp_path / name.replace(" ", "-").replace(",", "").replace("'", "")
    inherited = {k: v for k, v in os.environ.items() if k not in PINNED}
    env = {**inherited, **environment, "RAISE_SELECT_CACHE": str(folder / "cache")}
    folder.mkdir()
    config = folder / "config.yaml"
    config.write_text(dump_config(load_config(None, [*SYNTHETIC_OVERRIDES, *COMPARE])), encoding="utf-8")
    command = [sys.executable, "-m", "raise_select.cli", "compare", "--config", str(config), "--no-progress"]
    completed = subprocess.run(
        [*command, "--output", str(folder / "run")], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads((folder / "run" / "results.json").read_text())
    losses = {(r["method"], r["seed"], r.get("selector_seed")): r["validation_loss"] for r in results["rows"]}
    losses["selector weights"] = (folder / "run" / "selector-s0" / "selector" / "weights.safetensors").read_bytes()
    return losses, results["cpu_kernels"], completed.stderr


def test_testbed_results_agree_across_threads_and_cpu_kernels(tmp_path):
    results = {name: _results(tmp_path, name, environment) for name, environment in SETTINGS.items()}
    reference, kernels, _ = results["1 thread"]
    assert len(reference) == 4
    pinned = kernels["aten"] == "AVX2" and kernels["mkl_cbwr"] == "AVX2"
    assert pinned or kernels["machine"].lower() not in ("x86_64", "amd64"), kernels
    for name, (losses, used, stderr) in results.items():
        assert used == kernels or not pinned, name  # pinned: the same kernel set, whatever the environment said
        overridden = [variable for variable in SETTINGS[name] if variable in PINNED[:2]]
        for variable in overridden if pinned else ():
            assert f"warning: {variable}={SETTINGS[name][variable]} is overridden by model.cpu_kernels" in stderr
        assert losses.keys() == reference.keys(), name
        if pinned:  # the trained selector too: its PPO update's reductions depend on the thread count otherwise
            assert losses["selector weights"] == reference["selector weights"], name
        keys = sorted(set(reference) - {"selector weights"}, key=str)
        np.testing.assert_allclose(
            [losses[k] for k in keys],
            [reference[k] for k in keys],
            rtol=0 if pinned else 1e-4,
            atol=0,
            err_msg=f"{name} vs 1 thread",
        )
