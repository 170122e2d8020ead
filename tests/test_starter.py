"""`raise-select init`: the starter config loads, carries the shipped experiments' settings, keeps files."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import assert_one_line_error
from raise_select.cli import main
from raise_select.config_io import flat_settings, load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"
# The fields a starter sets from its shipped experiment (the pool, the target's size and the comparison are the user's).
# model.precision is the device's choice (the starter: auto), not a result's; raise.proxy_layers is the testbed's
# own cut (the starter names it in a comment: a cut of the user's model must be checked first).
SHARED = ("model.finetune", "train.", "raise.", "features.pca_dim", "features.reference_steps")


def _shared_settings(config) -> dict:
    return {
        name: value
        for name, value in flat_settings(config).items()
        if name.startswith(SHARED)
        and name not in ("raise.policy", "train.eval_every", "train.eval_batch_size", "raise.proxy_layers")
    }


@pytest.mark.parametrize(
    ("model", "pool", "shipped", "finetune"),
    [
        ("synthetic-tiny", ["synthetic"], "synthetic.yaml", "full"),
        ("smollm2", ["gsm8k", "gsm8k_corrupted", "mmlu"], "smollm2_gsm8k_mixed.yaml", "lora"),
    ],
)
def test_init_writes_the_shipped_experiments_settings(model, pool, shipped, finetune, tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    pools = [item for name in pool for item in ("--pool", name)]
    assert main(["init", "--model", model, *pools, "--target", pool[0], "--output", str(path)]) == 0
    assert f"{finetune} fine-tuning" in capsys.readouterr().out
    config = load_config(path)
    assert (config.model.name, config.target.name) == (model, pool[0])
    assert [source.name for source in config.pool.sources] == pool
    assert _shared_settings(config) == _shared_settings(load_config(EXAMPLES / shipped))
    assert config.raise_.clusters == 1 and config.train.budget_steps is not None
    assert config.model.precision == ("auto" if finetune == "lora" else "fp32")
    assert ("oracle" in config.compare.methods) == (pool == ["synthetic"])  # the only labelled pool
    assert config.compare.selector_seeds == [0, 1, 2]
    lines = path.read_text().splitlines()
    for setting in ("finetune", "learning_rate", "budget_steps", "clusters", "episodes", "selector_seeds"):
        assert all("#" in line for line in lines if line.strip().startswith(f"{setting}:")), setting  # says why


def test_init_keeps_an_existing_file(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("my settings\n")
    argv = [
        "init",
        "--model",
        "my/model",
        "--pool",
        "data/pool.jsonl",
        "--target",
        "data/t.jsonl",
        "--output",
        str(path),
    ]
    assert_one_line_error(main(argv), capsys.readouterr(), [str(path), "exists", "--force"])
    assert path.read_text() == "my settings\n"
    assert main([*argv, "--force"]) == 0
    config = load_config(path)
    assert config.model.finetune == "lora" and config.pool.sources[0].name == "data/pool.jsonl"
