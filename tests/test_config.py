"""Config loading: YAML + overrides, one-line errors for bad input."""

import pytest

from raise_select.config import Config, dump_config, load_config
from raise_select.errors import UserError


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(Config()))
    assert load_config(path) == Config()


def test_overrides_parse_values_as_yaml(tmp_path):
    config = load_config(None, ["train.learning_rate=1e-4", "raise.clusters=4", "compare.seeds=[1,2]",
                                "train.budget_steps=7", "model.lora_target_modules=[q_proj]"])
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.raise_.clusters == 4
    assert config.compare.seeds == [1, 2]
    assert config.train.budget_steps == 7
    assert config.model.lora_target_modules == ["q_proj"]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["train.learnin_rate=1"], "unknown field 'config.train.learnin_rate'"),
        (["train.batch_size=abc"], "'config.train.batch_size' must be int"),
        (["model.precision=fp16"], "model.precision='fp16' is not one of"),
        (["train.batch_size=6", "raise.clusters=4"], "must be a multiple of raise.clusters"),
        (["novalue"], "is not of the form field.path=value"),
        (["train.budget_steps=null", "train.budget_fraction=null"], "set train.budget_steps or train.budget_fraction"),
    ],
)
def test_bad_values_are_one_line_user_errors(overrides, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_config(scalar)
