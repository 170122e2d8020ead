"""bench/ablations.py: its variant names, and its --tiny mode end to end (one world, one variant, then its references reused)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "ablations.py"


def _ablations():
    spec = importlib.util.spec_from_file_location("ablations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variant_names_become_overrides():
    ablations = _ablations()
    assert ablations.variant_overrides("raise") == []
    assert ablations.variant_overrides("C4") == ["raise.clusters=4"]
    assert ablations.variant_overrides("head_stage+no_stage+no_semantic") == [
        "raise.head_stage=true",
        "raise.ablate=[stage, semantic]",
    ]
    with pytest.raises(SystemExit, match="unknown variant 'no_stages'"):
        ablations.variant_overrides("no_stages")


def test_the_tiny_mode_runs_and_prints_the_table(tmp_path):
    # an override after --variants applies to every run (argparse hands it to --variants)
    command = [sys.executable, str(SCRIPT), "--tiny", "--worlds", "curriculum"]
    command += ["--variants", "head_stage+no_stage", "raise.hidden_size=16"]
    completed = subprocess.run(
        [*command, "--output", str(tmp_path)], env=dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    table = [line for line in completed.stdout.splitlines() if line.startswith("| curriculum |")]
    assert [line.split("|")[2].strip() for line in table] == ["random", "scheduled_oracle", "RAISE head_stage+no_stage"]
    assert "picks by family per stage" in completed.stdout
    selector = json.loads(
        (tmp_path / "tiny/curriculum/head_stage+no_stage/selector-s0/selector/selector.json").read_text()
    )
    assert selector["config"]["ablate"] == ["stage"] and selector["config"]["head_stage"] is True
    assert selector["config"]["hidden_size"] == 16
    assert set(selector["provenance"]["episode_head_stage"]) == set(selector["provenance"]["episode_head"])

    # other RAISE settings into another folder, reusing the references above: they are not rerun, the same rows
    again = [sys.executable, str(SCRIPT), "--tiny", "--worlds", "curriculum", "--variants", "raise"]
    again += ["raise.hidden_size=8", "--references", str(tmp_path), "--output", str(tmp_path / "second")]
    second = subprocess.run(again, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert not (tmp_path / "second/tiny/curriculum/references").exists()
    assert (tmp_path / "second/tiny/curriculum/raise/selector-s0/selector/selector.json").exists()
    rows = [line for line in second.stdout.splitlines() if line.startswith("| curriculum |")]
    assert rows[:2] == table[:2]  # random and scheduled_oracle, as in the first run
