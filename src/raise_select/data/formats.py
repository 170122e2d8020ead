"""Load user instruction files into :class:`Example` objects.

Inputs: a ``.jsonl`` file (one JSON object per line; blank lines ignored), a ``.json`` file (a list
of objects), or a folder written by ``datasets`` ``save_to_disk`` (a ``DatasetDict`` contributes
its ``train`` split).

Record formats (``format: auto`` detects one per record, in this order):

=================  ==========================================================================
``messages``       ``messages``: a list of ``{role, content}``. The LAST assistant message is the
                   response; the turns before it are the prompt (turns after it are ignored).
``alpaca``         ``instruction``, optional ``input`` (appended after a blank line), ``output``.
``prompt_response`` ``prompt`` and ``response`` (``completion`` is accepted for ``response``).
=================  ==========================================================================

``SourceConfig.fields`` renames fields: canonical name -> the name in the user's records, e.g.
``{instruction: question, output: answer}``. The canonical names ``id`` and ``answer`` can be
renamed too.

Ids are stable across loads: the record's ``id`` field when present, else ``<tag>/<N>`` where N is
the 1-based line number of a JSONL file or the 0-based row of a JSON list / datasets folder. The
tag is ``SourceConfig.tag`` or the file's stem. A record's ``answer`` field (if it is not used as
the response) is kept in ``meta["answer"]`` so a user file can serve as an exact-match target.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..config import SourceConfig
from ..errors import UserError
from ..io_utils import user_path
from .types import Example

# The roles a conversation may hold: what chat templates (and the plain "Role: text" rendering) know.
CHAT_ROLES = ("system", "user", "assistant")

# What each format needs, for error messages.
_FORMAT_NEEDS = {
    "alpaca": "'instruction' and 'output' (optional 'input')",
    "messages": "'messages' (a list of {role, content} ending in an assistant turn)",
    "prompt_response": "'prompt' and 'response' (or 'completion')",
}


class RecordError(ValueError):
    """A malformed record; the message says what is wrong without the file/line (added by the caller)."""


def load_source_file(
    source: SourceConfig, on_error: str = "raise", system_prompt: str | None = None
) -> tuple[list[Example], list[str]]:
    """Read one user source. Returns the examples and, in ``on_error="skip"`` mode, the
    ``"file:line: reason"`` strings of the records that were dropped.

    Raises :class:`UserError` (one line naming the file and line) for a missing file, an unreadable
    file, a malformed record when ``on_error="raise"``, or a source without usable records.
    """
    path = Path(source.name).expanduser()
    if not path.exists():
        raise UserError(
            f"data file not found: {path}; give an existing .jsonl/.json file or saved `datasets` folder, "
            "or a bundled name (pools: gsm8k, mmlu, humaneval, chat, gsm8k_corrupted, synthetic)"
        )
    tag = source.tag or path.stem
    examples: list[Example] = []
    skipped: list[str] = []
    for where, position, record in _read_records(path, on_error, skipped):
        try:
            if not isinstance(record, Mapping):
                raise RecordError(f"record is a {type(record).__name__}, not a JSON object")
            examples.append(record_to_example(record, source.format, source.fields, tag, position, system_prompt))
        except RecordError as error:
            message = f"{where}: {error}"
            if on_error != "skip":
                raise UserError(f"{message} (or set pool.on_error=skip to drop malformed records)") from None
            skipped.append(message)
    if not examples:
        detail = f"; all {len(skipped)} records were malformed, first: {skipped[0]}" if skipped else ""
        raise UserError(f"{path}: no records found{detail}; a pool file needs at least one record")
    return examples, skipped


def record_to_example(
    record: Mapping[str, Any],
    fmt: str,
    fields: Mapping[str, str],
    tag: str,
    position: int,
    system_prompt: str | None = None,
) -> Example:
    """One record -> :class:`Example`. ``fields`` maps canonical names to the record's names;
    ``position`` is the line/row number used for the id when the record has no ``id``.
    Raises :class:`RecordError` for a malformed record."""

    def name(canonical: str) -> str:
        return fields.get(canonical, canonical)

    if fmt == "auto":
        fmt = _detect_format(record, name)
    if fmt == "messages":
        messages, response = _split_messages(record.get(name("messages")), name("messages"))
    elif fmt == "alpaca":
        instruction = _text_field(record, name("instruction"), fmt, fields)
        extra = record.get(name("input"))
        if extra is not None and not isinstance(extra, str):
            raise RecordError(f"field '{name('input')}' must be a string, got {type(extra).__name__}")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        messages, response = [{"role": "user", "content": prompt}], _text_field(record, name("output"), fmt, fields)
    else:
        response_name = name("response")
        if response_name not in record and "response" not in fields and "completion" in record:
            response_name = "completion"
        prompt = _text_field(record, name("prompt"), fmt, fields)
        messages, response = [{"role": "user", "content": prompt}], _text_field(record, response_name, fmt, fields)
    if not response.strip():
        what = "empty" if not response else "only whitespace"
        raise RecordError(f"the response is {what}; every example needs a response with text to train on")

    meta: dict[str, Any] = {"family": tag}
    answer_name = name("answer")
    used_names = {name(c) for c in ("messages", "instruction", "input", "output", "prompt", "response")}
    if answer_name in record and answer_name not in used_names and record[answer_name] is not None:
        meta["answer"] = str(record[answer_name])
    record_id = record.get(name("id"))
    if record_id is not None and not isinstance(record_id, (str, int)):
        raise RecordError(f"field '{name('id')}' must be a string or integer, got {type(record_id).__name__}")
    return Example(
        id=str(record_id) if record_id is not None else f"{tag}/{position}",
        source=tag,
        messages=tuple(with_system_prompt(messages, system_prompt)),
        response=response,
        meta=meta,
    )


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Put ``system_prompt`` first unless the conversation already has its own system message."""
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def _detect_format(record: Mapping[str, Any], name) -> str:
    for fmt, key in (("messages", "messages"), ("alpaca", "instruction"), ("prompt_response", "prompt")):
        if record.get(name(key)) is not None:  # datasets rows carry every column, absent ones as None
            return fmt
    found = ", ".join(sorted(map(str, record))) or "none"
    needs = "; ".join(f"{fmt} needs {need}" for fmt, need in _FORMAT_NEEDS.items())
    raise RecordError(
        f"record matches no format ({needs}); found fields: {found}; "
        "map your field names with the source's fields: setting, e.g. fields: {instruction: question, output: answer}"
    )


def _text_field(record: Mapping[str, Any], field_name: str, fmt: str, fields: Mapping[str, str]) -> str:
    if field_name not in record:
        renamed = f" (renamed via fields: {dict(fields)})" if fields else ""
        raise RecordError(
            f"missing field '{field_name}'{renamed}; the {fmt} format needs {_FORMAT_NEEDS[fmt]}; "
            "map your field names with the source's fields: setting, e.g. fields: {output: answer}"
        )
    value = record[field_name]
    if not isinstance(value, str):
        raise RecordError(f"field '{field_name}' must be a string, got {type(value).__name__}")
    return value


def _split_messages(messages: Any, field_name: str) -> tuple[list[dict[str, str]], str]:
    if messages is None:
        raise RecordError(
            f"missing field '{field_name}'; the messages format needs {_FORMAT_NEEDS['messages']}; "
            "map your field names with the source's fields: setting, e.g. fields: {messages: conversation}"
        )
    if not isinstance(messages, list):
        raise RecordError(f"field '{field_name}' must be a list of {{role, content}} objects")
    for index, message in enumerate(messages):
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise RecordError(f"{field_name}[{index}] must be an object with string 'role' and 'content'")
        if message["role"] not in CHAT_ROLES:
            raise RecordError(
                f"{field_name}[{index}] has the unknown role {message['role']!r}; "
                f"allowed roles: {', '.join(CHAT_ROLES)}"
            )
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_turns:
        raise RecordError(f"'{field_name}' has no assistant message; the last assistant turn is the trained response")
    last = assistant_turns[-1]
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    return prompt, messages[last]["content"]


def _read_records(path: Path, on_error: str, skipped: list[str]) -> Iterator[tuple[str, int, Any]]:
    """Yield ``(where, position, record)``: ``where`` is "file:line N" / "file:row N" for messages."""
    if path.is_dir():
        yield from _read_dataset_folder(path)
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path, on_error, skipped)
    elif path.suffix == ".json":
        records = _load_json(path)
        yield from ((f"{path}:row {row}", row, record) for row, record in enumerate(records))
    else:
        raise UserError(f"{path}: unsupported file type '{path.suffix}'; use .jsonl, .json or a `datasets` folder")


def _read_jsonl(path: Path, on_error: str, skipped: list[str]) -> Iterator[tuple[str, int, Any]]:
    with user_path(path, "read"), open(path, "rb") as handle:  # bytes: a line that is not UTF-8 is one bad record
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                problem = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else f"bad JSON ({error.msg})"
                message = f"{where}: {problem}; each line must be one JSON object in UTF-8"
                if on_error != "skip":
                    raise UserError(f"{message} (or set pool.on_error=skip to drop malformed records)") from None
                skipped.append(message)
                continue
            yield where, line_number, record


def _load_json(path: Path) -> list:
    with user_path(path, "read"), open(path, encoding="utf-8") as handle:
        try:
            records = json.load(handle)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{path}:{error.lineno}: bad JSON ({error.msg}); a .json pool must be one JSON list"
            ) from None
    if not isinstance(records, list):
        raise UserError(
            f"{path}: a .json pool must be a list of records, got a {type(records).__name__}; "
            "use .jsonl for one record per line"
        )
    return records


def _read_dataset_folder(path: Path) -> Iterator[tuple[str, int, Any]]:
    import datasets  # slow import: only when a datasets folder is used

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise UserError(
            f"{path}: not a folder saved with datasets' save_to_disk ({str(error).splitlines()[0]}); "
            "pass a .jsonl/.json file or a saved dataset"
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise UserError(
                f"{path}: the saved DatasetDict has no 'train' split (splits: {', '.join(dataset)}); save the pool as 'train'"
            )
        dataset = dataset["train"]
    for row, record in enumerate(dataset):
        yield f"{path}:row {row}", row, record
