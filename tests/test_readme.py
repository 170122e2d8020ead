"""The README runs: its "Use from Python" example as written, and its command lines on the testbed.

The command-line block lists every command with its options; each listed option must be one the
parser knows, and each command runs here with tiny settings (``demo`` only parses: it is the
comparison below on a bigger recipe).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import SYNTHETIC_OVERRIDES
from raise_select.cli import build_parser, main
from raise_select.config_io import dump_config, load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(section: str, language: str) -> str:
    text = README.read_text(encoding="utf-8").split(f"## {section}", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", text, re.S).group(1)


def test_the_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it writes runs/py-selector relative to the working directory
    exec(compile(_block("Use from Python", "python"), "README.md (Use from Python)", "exec"), {"__name__": "readme"})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["raise", "random"]
    assert (tmp_path / "runs" / "py-selector" / "selector" / "selector.json").is_file()


def test_the_command_line_block_names_every_command_and_only_real_options():
    commands = build_parser()._subparsers._group_actions[0].choices
    listed = {}
    for line in _block("Command line", "bash").splitlines():
        usage = line.split("#", 1)[0].split()
        if usage[:1] == ["raise-select"]:
            listed[usage[1]] = re.findall(r"--[a-z-]+", " ".join(usage[2:]))
    assert set(listed) == set(commands)
    for command, options in listed.items():
        known = {option for action in commands[command]._actions for option in action.option_strings}
        assert set(options) <= known, (command, set(options) - known)


def test_the_commands_run_on_the_testbed(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(dump_config(load_config(None, list(SYNTHETIC_OVERRIDES))), encoding="utf-8")
    common = ["--config", str(config), "--no-progress"]
    assert main(["list"]) == 0
    assert main(["config", "raise"]) == 0
    assert "raise.head_dims" in capsys.readouterr().out

    run = tmp_path / "run"
    assert (
        main(["finetune", *common, "--output", str(run), "--selector", "random", "--seed", "1", "train.budget_steps=2"])
        == 0
    )
    assert json.loads((run / "summary.json").read_text())["seed"] == 1

    training = tmp_path / "selector-training"
    tiny_training = ["raise.episodes=2", "raise.episodes_per_update=2", "raise.episode_steps=2"]
    assert main(["train-selector", *common, "--output", str(training), *tiny_training]) == 0
    assert main(["train-selector", *common, "--output", str(training), "--overwrite", *tiny_training]) == 0
    policy = training / "selector"
    assert main(["finetune", *common, "--output", str(run), "--selector", "raise", "--policy", str(policy)]) == 0

    comparison = tmp_path / "comparison"
    settings = ["compare.methods=[random, longest]", "compare.seeds=[0]", "compare.budget_steps=[2]"]
    assert main(["compare", *common, "--output", str(comparison), *settings]) == 0
    assert main(["report", str(comparison)]) == 0
    assert (comparison / "report.md").is_file()
    assert build_parser().parse_args(["demo", "--quick", "--no-progress"]).quick
