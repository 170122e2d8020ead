"""Every script in bench/ runs its ``--tiny`` mode and prints its figures: an API change that breaks a bench
breaks the build. The scripts run as subprocesses, two at a time (each is mostly imports)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"
# What each script's tiny run must print: a line of its figures (a header, then a number on the same line or after).
FIGURES = {
    "comparison_breakdown": "## Validation loss by step",
    "curriculum_premise": "| base model | method | validation loss",
    "family_alone": "| family | label | validation loss",
    "feature_separation": "P(clean < corrupted)",
    "gpu": "training step (batch",
    "head_search": "| head | fine-tunings searched |",
    "lm_eval_crosscheck": "ours exact match",
    "proxy_cost": "| max tokens |",
    "ray_scaling": "speed-up",
    "reward_by_source": "| source |",
    "reward_signal": "Per episode",
    "selector_learning": "| RAISE selector seed |",
    "selector_cost": "| method | selector training, Φ |",
    "schedule_search": "| schedule | validation loss |",
    "selector_scale": "greedy ms",
    "step_time": "s/step",
    "steps_to_full": "fraction of full-data steps",
    "trainer_overhead": "plain Trainer",
}
EXTRA_ARGUMENTS = {"gpu": ["--device", "cpu"]}
NEEDS_EXTRA = {"lm_eval_crosscheck": ("lm_eval", "eval")}  # script: (module, the extra that installs it)
COVERED_ELSEWHERE = {"ablations": "tests/test_ablations.py runs its --tiny mode and checks its table"}
ALL_SCRIPTS = sorted(path.stem for path in BENCH.glob("*.py") if not path.name.startswith("_"))
SCRIPTS = [script for script in ALL_SCRIPTS if script not in COVERED_ELSEWHERE]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    cache = tmp_path_factory.mktemp("bench-cache")
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
        "RAISE_SELECT_CACHE": str(cache),
    }

    def run(script: str) -> subprocess.CompletedProcess | None:
        if script in NEEDS_EXTRA and importlib.util.find_spec(NEEDS_EXTRA[script][0]) is None:
            return None
        command = [sys.executable, str(BENCH / f"{script}.py"), "--tiny", *EXTRA_ARGUMENTS.get(script, [])]
        return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, cwd=cache)

    # The shared feature cache is written atomically, so concurrent runs at worst compute a feature set twice.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(SCRIPTS, pool.map(run, SCRIPTS)))


def test_every_bench_script_declares_its_tiny_figures():
    assert set(SCRIPTS) == set(FIGURES), "add the new bench script's --tiny output marker to FIGURES"
    assert set(ALL_SCRIPTS) == set(SCRIPTS) | set(COVERED_ELSEWHERE)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_tiny_mode_runs_and_prints_its_figures(tiny_runs, script):
    if script in NEEDS_EXTRA and importlib.util.find_spec(NEEDS_EXTRA[script][0]) is None:
        pytest.skip(f"needs the [{NEEDS_EXTRA[script][1]}] extra")
    finished = tiny_runs[script]
    assert finished.returncode == 0, finished.stderr[-3000:]
    marker = FIGURES.get(script)
    assert marker is not None and marker in finished.stdout, finished.stdout[-3000:]
    after = finished.stdout[finished.stdout.index(marker) :]
    assert re.search(r"\d+\.\d+", after), f"no figures after {marker!r}:\n{after[-2000:]}"
