"""Atomic file writes (a temporary file or folder in the same place, then a rename over the target),
JSON / JSONL reading and writing, YAML reading that refuses a key written twice, and the one boundary
where OS errors on the user's paths become one-line :class:`UserError` s."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


# What to do about an OS error, by errno; the default covers "a file or folder is in the way".
_OS_ERROR_FIXES = {
    errno.ENOSPC: "free disk space and run the command again",
    errno.EDQUOT: "free disk space (quota exceeded) and run the command again",
    errno.EACCES: "fix the permissions or choose another path",
    errno.EPERM: "fix the permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOENT: "check the path",
}


def os_error_message(error: OSError, action: str, path: str | os.PathLike | None = None) -> str:
    """One line: what failed on which path, why (strerror) and what to do; cache paths name RAISE_SELECT_CACHE."""
    where = Path(path if path is not None else (error.filename or "?"))
    fix = _OS_ERROR_FIXES.get(error.errno, "a file or folder is in the way; choose another path")
    if error.errno not in (errno.ENOSPC, errno.EDQUOT) and _is_within(where, cache_root()):
        fix = "set RAISE_SELECT_CACHE to a writable folder"
    reason = error.strerror or type(error).__name__
    return f"cannot {action} {where}: {reason}; {fix}"


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.absolute().relative_to(folder.absolute())
        return True
    except ValueError:
        return False


@contextlib.contextmanager
def user_path(path: str | os.PathLike, action: str) -> Iterator[None]:
    """Turn OS and decoding errors on a user's path into a one-line :class:`UserError`.

    Wraps every read and write of run folders, caches and input files (``action``: "read", "write").
    """
    try:
        yield
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); convert the file to UTF-8"
        ) from None
    except OSError as error:
        raise UserError(os_error_message(error, action, error.filename or path)) from None


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` with a one-line error when a file is in the way or the place is not writable."""
    folder = Path(folder)
    with user_path(folder, "create the folder"):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Call ``write(file_object)`` on a temp file next to ``path`` and rename it into place."""
    path = Path(path)
    make_dirs(path.parent)
    with user_path(path, "write"):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results should follow the umask like open()
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``folder``; when the block succeeds it replaces ``folder``
    whole (:func:`replace_folder`), when it fails it is removed.

    A reader therefore sees the old folder or the new one, never a mixture or a partial run.
    """
    folder = Path(folder)
    make_dirs(folder.parent)
    with user_path(folder.parent, "write into"):
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield staging
        replace_folder(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def replace_folder(new: Path, folder: Path) -> None:
    """Rename ``new`` to ``folder``; an old ``folder`` is moved aside first (rename(2) cannot replace a
    non-empty folder) and deleted only after. No interruption lands between the two renames."""
    with user_path(folder, "replace"):
        previous = None
        with uninterrupted():
            if folder.exists():
                previous = folder.with_name(f".{folder.name}.old-{os.getpid()}")
                os.replace(folder, previous)
            os.replace(new, folder)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)


_INTERRUPTING_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Defer Ctrl-C, SIGTERM and SIGHUP while the block runs (a few renames that must happen together);
    they are delivered when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTING_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=False, default=_jsonable))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write(path, lambda f: f.writelines(json.dumps(r, default=_jsonable) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line (metrics logs are append-only streams, flushed per line)."""
    with user_path(path, "write"), open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, default=_jsonable) + "\n")
        handle.flush()


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's contents; an unreadable or invalid file is a one-line :class:`UserError`."""
    with user_path(path, "read"):
        text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}); re-run the command that wrote it") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """One value per non-blank line; an unreadable file or invalid line is a one-line :class:`UserError`."""
    rows = []
    with user_path(path, "read"), open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(
                        f"{path} line {number} is not valid JSON; re-run the command that wrote it"
                    ) from None
    return rows


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that sets one key twice: plain YAML keeps the later silently, we refuse it."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark):
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=again)
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key set twice in one mapping (at any depth) is an error."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base" may be overridden key by key
                    continue
                key = self.construct_object(key_node, deep=True)
                with contextlib.suppress(TypeError):  # an unhashable key: the safe loader's own error follows
                    if key in seen:
                        raise DuplicateKeyError(key, seen[key], key_node.start_mark)
                    seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` for a key set twice in one mapping."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def cache_root() -> Path:
    """User cache folder for converted models, testbed models and feature caches.

    ``RAISE_SELECT_CACHE`` overrides it; otherwise ``$XDG_CACHE_HOME/raise-select`` (``~/.cache``).
    """
    env = os.environ.get("RAISE_SELECT_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "raise-select"
