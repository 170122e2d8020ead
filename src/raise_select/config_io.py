"""The config as text: YAML files and ``a.b=value`` overrides in, YAML and the field listing out.

``load_config(path, overrides)`` is the way configs enter the program: it parses, coerces each value
to its field's type (a wrong type or an unknown field is a one-line error) and checks the result
with :func:`raise_select.config.validate`. A config file may name a ``base:`` config (a path relative
to it) whose settings it overrides. ``describe_fields()`` is what ``raise-select config`` prints.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .config import EXPERIMENTAL_FIELDS, Config, validate
from .errors import UserError
from .io_utils import DuplicateKeyError, load_yaml, user_path

# YAML uses "raise" for the RaiseConfig section (``raise`` is a Python keyword).
_YAML_ALIASES = {"raise": "raise_"}


def to_dict(config: Any) -> dict:
    """Dataclass tree -> plain dict with YAML names."""
    data = dataclasses.asdict(config)
    return {("raise" if k == "raise_" else k): v for k, v in data.items()}


def from_dict(cls: type, data: dict | None, where: str = "config") -> Any:
    """Plain dict -> dataclass ``cls``; unknown keys and wrong types are one-line UserErrors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = _YAML_ALIASES.get(key, key) if cls is Config else key
        if name not in known:
            raise UserError(f"unknown field '{where}.{key}'; valid fields: {', '.join(sorted(_yaml_names(cls)))}")
        kwargs[name] = _coerce(hints[name], value, f"{where}.{key}")
    return cls(**kwargs)


def _yaml_names(cls: type) -> list[str]:
    return ["raise" if f.name == "raise_" else f.name for f in dataclasses.fields(cls)]


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"'{where}' must be a mapping of fields, got {value!r}")
        return from_dict(hint, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(
                f"'{where}' must be a list, got {value!r}; write it in brackets, e.g. {where.split('.', 1)[-1]}=[{value}]"
            )
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"'{where}' must be a mapping, got {value!r}")
        if args and args[1] is str:  # names (pool.sources[].fields): a number or a list is no name
            for key, item in value.items():
                if not isinstance(item, str) or not isinstance(key, str):
                    raise UserError(
                        f"'{where}' maps names to names, got {key!r}: {item!r}; quote both, e.g. {{output: answer}}"
                    )
        return {str(k): v for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # finiteness and ranges: validate()
    if hint is float and isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise UserError(f"'{where}' must be {getattr(hint, '__name__', hint)}, got {value!r}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a plain config dict."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form field.path=value (e.g. train.learning_rate=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw) if raw != "" else None
        except DuplicateKeyError as error:
            raise UserError(f"override '{item}' sets {error.key!r} twice; give each key once") from None
        except yaml.YAMLError:
            raise UserError(
                f"override '{item}': the value is not valid YAML; close brackets and quotes "
                "(e.g. compare.seeds=[0,1], pool.system_prompt='a: b')"
            ) from None
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise UserError(
                f"override '{item}': '{key}' is not a field path; write section.field=value (e.g. train.learning_rate=1e-4)"
            )
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or defaults when ``path`` is None), apply overrides, and check the result."""
    data: dict = {}
    if path is not None:
        data = _read_with_base(Path(path), ())
        _check_sections(Config, data, f"config {path}")  # the file's own mistakes, before an override meets them
    data = apply_overrides(data, list(overrides or []))
    config = from_dict(Config, data)
    validate(config)
    return config


def _check_sections(cls: type, data: dict, source: str, prefix: str = "") -> None:
    """Every section (a dataclass field) that ``data`` sets is a mapping, at any depth."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        name = _YAML_ALIASES.get(key, key) if cls is Config else key
        if name in hints and dataclasses.is_dataclass(hints[name]) and value is not None:
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{prefix}{key}' must be a mapping of fields, got {value!r}; fix the file")
            _check_sections(hints[name], value, source, f"{prefix}{key}.")


def load_saved_config(path: str | Path) -> Config:
    """A run folder's ``config.yaml`` (what :func:`dump_config` wrote): a file that is not one (not a
    mapping, a section missing, an unknown field or a wrong type) is reported as damaged, not compared."""
    path = Path(path)
    try:
        data = _read_yaml(path)
        missing = [name for name in _SAVED_SECTIONS if not isinstance(data.get(name), dict)]
        if missing:
            raise UserError(f"it has no {', '.join(missing)} section")
        config = from_dict(Config, data)
    except UserError as error:
        reason = str(error).split(";")[0].removeprefix(f"config {path} ")
        raise UserError(
            f"{path} is damaged ({reason}), so its run cannot be continued; restore the file the command wrote, "
            "or choose another --output"
        ) from None
    return config


_SAVED_SECTIONS = ("model", "pool", "target", "train", "features", "raise")  # in every config.yaml ever written


def recipe_path(name: str) -> Path:
    """A config shipped inside the package (``demo``, ``demo_quick``)."""
    return Path(str(resources.files("raise_select") / "recipes" / f"{name}.yaml"))


def _read_with_base(path: Path, including: tuple[Path, ...]) -> dict:
    """A config file's mapping with its ``base:`` (if any) under it: the file's sections are merged into
    the base's field by field, its lists and values replace the base's. ``base`` is a path relative to
    the file or the name of a recipe shipped in the package."""
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"config {path}: base must be a config file (relative to it) or a recipe name, got {base!r}")
    base_path = path.parent / base if base.endswith((".yaml", ".yml")) or "/" in base else recipe_path(base)
    if base_path.resolve() in {p.resolve() for p in (path, *including)}:
        raise UserError(f"config {path}: base {base} includes itself; remove the loop of base: entries")
    return _merged(_read_with_base(base_path, (path, *including)), data)


def _merged(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both_mappings else value
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"config file not found: {path}; pass an existing YAML file (see examples/configs/)")
    with user_path(path, "read the config"):
        text = path.read_text(encoding="utf-8")
    try:
        data = load_yaml(text)
    except DuplicateKeyError as exc:
        raise UserError(
            f"config {path} line {exc.line} sets {exc.key!r} again (first on line {exc.first_line}); YAML would "
            "silently keep the later one: merge the two into one entry"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"config {path}{line} is not valid YAML; fix the syntax") from None
    if data is None:
        raise UserError(f"config {path} is empty; start from one in examples/configs/ (e.g. synthetic.yaml)")
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a YAML mapping of sections (model:, pool:, target:, ...)")
    return data


def flat_settings(config: Config) -> dict[str, Any]:
    """Every field as "section.field" -> value (lists and mappings kept whole), in declaration order."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and key != "fields":
                walk(f"{name}.", value)
            else:
                flat[name] = value

    walk("", to_dict(config))
    return flat


def changed_settings(saved: Config, wanted: Config, may_change: Iterable[str] = ()) -> list[str]:
    """Names of the fields that differ between two configs, except those under a ``may_change`` prefix
    (a section such as "compare" or a field such as "raise.episodes")."""
    before, after = flat_settings(saved), flat_settings(wanted)
    allowed = tuple(may_change)
    return [
        name
        for name in after
        if before.get(name) != after[name] and not any(name == p or name.startswith(f"{p}.") for p in allowed)
    ]


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


@dataclass(frozen=True)
class FieldDoc:
    """One setting as ``raise-select config`` shows it: its override path, annotation, default and help."""

    name: str  # "section.field" with YAML names (raise.episodes); "pool.sources[].name" for list elements
    type: str  # the annotation as written in the dataclass (e.g. "int | None")
    default: Any  # the default value (a list element's field: its dataclass's default)
    help: str


def sections() -> list[str]:
    """The top-level names ``describe_fields`` accepts: the sections (YAML names) and the top-level fields."""
    return _yaml_names(Config)


def describe_fields(section: str | None = None) -> list[FieldDoc]:
    """Every leaf setting in declaration order, with its help; ``section`` keeps one section (YAML name,
    e.g. "raise") or one top-level field (e.g. "seed"). An unknown section is a one-line UserError."""
    if section is not None and section not in sections():
        raise UserError(f"unknown config section '{section}'; valid: {', '.join(sections())}")
    docs: list[FieldDoc] = []

    def walk(cls: type, prefix: str, instance: Any) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yaml_name = "raise" if cls is Config and f.name == "raise_" else f.name
            name = f"{prefix}{yaml_name}"
            value = getattr(instance, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{name}.", value)
                continue
            shown = (
                [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
                if isinstance(value, list)
                else value
            )
            help_text = f.metadata.get("help", "")
            if name in EXPERIMENTAL_FIELDS:
                help_text += f" [experimental: {EXPERIMENTAL_FIELDS[name]}]"
            docs.append(FieldDoc(name, str(f.type), shown, help_text))
            args = typing.get_args(hints[f.name])
            if typing.get_origin(hints[f.name]) is list and args and dataclasses.is_dataclass(args[0]):
                walk(args[0], f"{name}[].", args[0]())

    walk(Config, "", Config())
    if section is not None:
        docs = [d for d in docs if d.name == section or d.name.startswith(f"{section}.")]
    return docs


def format_value(value: Any) -> str:
    """A value as it would be written in YAML or a ``field=value`` override (null, true, [0, 1], ...)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False).strip()
    return text.removesuffix("...").strip()
