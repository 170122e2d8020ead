"""Config loading: YAML + overrides, one-line errors for bad input."""

import dataclasses
import typing
from pathlib import Path

import pytest

from helpers import assert_one_line_error
from raise_select import config as config_module
from raise_select.cli import main
from raise_select.config import Config
from raise_select.config_io import describe_fields, dump_config, load_config
from raise_select.errors import UserError


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(Config()))
    assert load_config(path) == Config()


def test_overrides_parse_values_as_yaml(tmp_path):
    config = load_config(
        None,
        [
            "train.learning_rate=1e-4",
            "raise.clusters=4",
            "compare.seeds=[1,2]",
            "train.budget_steps=7",
            "model.lora_target_modules=[q_proj]",
        ],
    )
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
        (["raise.head_update=cma"], "raise.head_update='cma' is not one of"),
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


def _config_dataclasses() -> list[type]:
    """Every dataclass reachable from Config (the sections and the list element SourceConfig)."""
    found, todo = [], [Config]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.append(cls)
        for hint in typing.get_type_hints(cls).values():
            todo += [t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)]
    return found


def test_every_config_field_has_a_help_text():
    classes = _config_dataclasses()
    declared = [
        obj
        for obj in vars(config_module).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__name__.endswith("Config")
    ]
    assert set(declared) <= set(classes), "a config dataclass is not reachable from Config"
    for cls in classes:
        for f in dataclasses.fields(cls):
            help_text = f.metadata.get("help")
            assert isinstance(help_text, str) and help_text.strip(), f"{cls.__name__}.{f.name} has no help"
    assert all(doc.help.strip() for doc in describe_fields())


def test_config_command_prints_a_section_with_defaults_and_help(capsys):
    assert main(["config", "raise"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert captured.err == ""
    assert lines and all(line.startswith("raise.") for line in lines)
    (episodes,) = [line for line in lines if line.split()[0] == "raise.episodes"]
    assert "(int, default: 32)" in episodes
    assert "K: fine-tuning episodes in all" in episodes
    assert "[ours]" in next(line for line in lines if line.split()[0] == "raise.episodes_per_update")
    assert len(lines) == len(dataclasses.fields(config_module.RaiseConfig))


def test_config_command_lists_every_field_and_refuses_an_unknown_section(capsys):
    assert main(["config"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names[:3] == ["seed", "output", "selector"]
    assert {"model.name", "pool.sources", "pool.sources[].limit", "train.learning_rate", "compare.seeds"} <= set(names)
    assert_one_line_error(
        main(["config", "rais"]),
        capsys.readouterr(),
        ["unknown config section 'rais'", "valid: seed, output, selector, model", "raise"],
    )


def test_experimental_settings_are_real_fields_marked_in_the_config_listing():
    docs = {doc.name: doc.help for doc in describe_fields()}
    for name, reason in config_module.EXPERIMENTAL_FIELDS.items():
        assert docs[name].endswith(f"[experimental: {reason}]"), name
    assert sum("[experimental:" in help_text for help_text in docs.values()) == len(config_module.EXPERIMENTAL_FIELDS)


def test_a_config_names_a_base_and_overrides_a_few_fields(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "seed: 3\ntrain: {batch_size: 4, learning_rate: 0.01}\ncompare: {seeds: [0, 1]}\n"
    )
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {batch_size: 2}\ncompare: {seeds: [5]}\n")
    config = load_config(tmp_path / "child.yaml")
    assert config.seed == 3 and config.train.learning_rate == 0.01  # from the base
    assert config.train.batch_size == 2 and config.compare.seeds == [5]  # a section merges, a list replaces
    (tmp_path / "base.yaml").write_text("base: child.yaml\n")
    with pytest.raises(UserError, match="includes itself"):
        load_config(tmp_path / "child.yaml")


def test_shipped_example_differs_from_its_recipe_in_the_fields_it_names():
    from raise_select.config_io import flat_settings, recipe_path

    example = flat_settings(load_config(Path(__file__).parents[1] / "examples/configs/synthetic.yaml"))
    recipe = flat_settings(load_config(recipe_path("demo_quick")))
    assert sorted(name for name in example if example[name] != recipe[name]) == [
        "compare.budget_steps",
        "compare.methods",
    ]
