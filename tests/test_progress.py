"""progress=False (Python) and --no-progress (command line) print nothing on stderr: no bar of ours, and
none of the libraries' (loading weights, pre-training the testbed model, test loss, generation)."""

from __future__ import annotations

import pytest

import raise_select as rs
from helpers import SYNTHETIC_OVERRIDES
from raise_select.cli import main
from raise_select.config_io import dump_config
from raise_select.data import synthetic

VARIANT = "model.name=synthetic-tiny@seed3"  # built in the cache, unlike the shipped model


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty model and feature cache and a testbed model variant, so it is pre-trained (briefly) inside the run."""
    monkeypatch.setenv("RAISE_SELECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic, "_PRETRAIN_STEPS", 3)
    return tmp_path


def test_progress_false_prints_nothing(empty_cache, capfd):
    config = rs.load_config(None, [*SYNTHETIC_OVERRIDES, VARIANT])  # exact match on the test split: a generation pass
    bench = rs.Workbench.build(config, progress=False)
    result = rs.run_finetune(bench, rs.build_selector("ifd", config), None, 2, seed=0, progress=False)
    assert result.steps == 2 and result.test is not None and "exact_match" in result.test
    assert capfd.readouterr().err == ""


def test_no_progress_prints_nothing_on_stderr(empty_cache, capfd):
    config_file, output = empty_cache / "config.yaml", empty_cache / "run"
    config_file.write_text(dump_config(rs.load_config(None, [*SYNTHETIC_OVERRIDES, VARIANT])), encoding="utf-8")
    code = main(
        ["finetune", "--config", str(config_file), "--selector", "ifd", "--output", str(output), "--no-progress"]
    )
    captured = capfd.readouterr()
    assert code == 0 and (output / "evaluation.json").is_file()
    assert captured.err == ""
    assert "validation loss" in captured.out
