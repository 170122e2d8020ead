"""The run-folder schema: every file name the commands write, the readers of those folders, and
what may be written where (every command checks its ``--output`` here before any expensive work).

A **finetune run folder** (``finetune``; one run of a comparison, see :func:`pipeline.run_finetune`):

========================  =====================================================================
``config.yaml``           the resolved configuration
``summary.json``          method, seed, budget (steps and fraction of full-data steps), pool size, model, target,
                          records dropped by ``pool.on_error=skip`` (count, first reasons)
``metrics.jsonl``         per decision: step, train loss, validation loss, reward, time, tokens
``selections.jsonl``      per decision: chosen indices, ids, sources, families, clusters, labels
``evaluation.json``       validation loss before/after and the test-split metric
``ledger.json``           compute ledger: features, selector training, fine-tuning, in Φ units
``explain.csv``           (RAISE only) acquisition scores of pool examples at several training stages
========================  =====================================================================

A **selector-training folder** (``train-selector``, see :mod:`ppo`): ``config.yaml``,
``episodes.jsonl`` (one row per episode), ``checkpoint.pt`` (what ``--resume`` continues),
``ledger.json`` and ``selector/`` (the trained selector: ``selector.json`` + ``weights.safetensors``,
see :mod:`selector_artifact`).

A **comparison folder** (``compare``, ``demo``): ``config.yaml``, ``selector-s<S>/`` (a
selector-training folder per selector seed S; folders written before selector seeds existed hold one
``selector/`` training instead), ``runs/<method>-<steps>steps-s<seed>/`` (finetune run folders; RAISE's
are ``raise-sel<S>-<steps>steps-s<seed>``), ``results.json`` / ``results.csv`` / ``results.md`` and
``data.json`` (the pool's and the target's fingerprints, labels included: finished runs are reused
only on the same data).
``report`` adds ``report.md`` and ``plots/*.png`` to any of them.

The names' values never change: folders written by earlier versions must still be read.
Every JSON and JSONL file is checked against :data:`FILE_SHAPES` when it is read, so a file edited by
hand or written by another program is a one-line error, never a traceback.

A folder's kind is read from the files it holds:

=====================  ==========================================================================
kind                   recognised by
=====================  ==========================================================================
``finetune``           ``summary.json`` (a finished ``finetune`` run folder)
``selector-training``  ``checkpoint.pt``, ``episodes.jsonl`` or ``selector/selector.json`` (``train-selector``)
``comparison``         ``results.json``, ``runs/``, ``selector-s<seed>/`` trainings, or only
                       ``config.yaml`` and ``data.json`` (``compare``, ``demo``, maybe interrupted)
``selector``           ``selector.json`` (a trained selector itself)
``other``              anything else that is not empty
=====================  ==========================================================================

Rules: a command writes into a missing or empty folder, or into a folder of its own kind —
``finetune`` replaces its run folder whole after the new run has finished (:func:`io_utils.staged_folder`),
``compare`` reuses finished runs, ``train-selector`` needs ``--resume`` or ``--overwrite`` (and
:class:`FolderSwap` keeps the old folder until the first new episode is saved). Anything else is
refused with a one-line error naming ``--resume``/``--overwrite`` or another ``--output``. A folder
that a command would replace or overwrite must hold only the files its kind lists (:func:`foreign_entries`):
files a user put there are never deleted, the command is refused instead.

Every command holds :func:`output_lock` on its folder for its whole duration: a second command
into the same folder is refused, and the temporary siblings an interrupted command left behind
(``.<name>.*.tmp``, ``.<name>.old-<pid>``) are cleaned up (or the old folder put back) when the
next one takes the lock.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import UserError
from .io_utils import load_yaml, make_dirs, os_error_message, read_json, read_jsonl, uninterrupted, user_path

# -- file names (shared by every kind of folder)
CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"  # a comparison's pool and target fingerprints (resume on the same data only)
LEDGER_FILE = "ledger.json"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"

# -- finetune run folder
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
SELECTIONS_FILE = "selections.jsonl"
EVALUATION_FILE = "evaluation.json"
EXPLAIN_FILE = "explain.csv"
LM_EVAL_DIR = "lm_eval"  # target.lm_eval: lm-eval's results, samples and the generated target task
LM_EVAL_PREFIX = "lm_eval "  # result rows' columns of lm-eval scores: "lm_eval <task> <metric>,<filter>"

# -- selector-training folder
EPISODES_FILE = "episodes.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SELECTOR_DIR = "selector"
RESTARTS_DIR = "restarts"  # raise.restarts > 1: one selector-training folder per restart seed
RESTARTS_FILE = "restarts.json"  # each restart's seed and score, and the one kept
SELECTOR_FILE = "selector.json"  # inside SELECTOR_DIR (and any trained-selector folder)
SELECTOR_WEIGHTS_FILE = "weights.safetensors"

# -- comparison folder
RESULTS_JSON, RESULTS_CSV, RESULTS_MD = "results.json", "results.csv", "results.md"
RUNS_DIR = "runs"
SELECTOR_SEED_PREFIX = "selector-s"

SKIPPED_COUNT, SKIPPED_FIRST = "skipped_records", "skipped_reasons"  # summary.json keys (pool.on_error=skip)
SKIPPED_SHOWN = 3  # how many reasons are kept and shown

FINETUNE, SELECTOR_TRAINING, COMPARISON, SELECTOR, OTHER = (
    "finetune",
    "selector-training",
    "comparison",
    "selector",
    "other",
)

# What each kind of folder may hold (a trailing "/": a folder) besides the report's files; anything
# else is a user's file that a replacing or overwriting command must not delete.
_OWN_ENTRIES = {
    FINETUNE: {
        CONFIG_FILE,
        SUMMARY_FILE,
        METRICS_FILE,
        SELECTIONS_FILE,
        EVALUATION_FILE,
        LEDGER_FILE,
        EXPLAIN_FILE,
        LM_EVAL_DIR + "/",
    },
    SELECTOR_TRAINING: {
        CONFIG_FILE,
        EPISODES_FILE,
        CHECKPOINT_FILE,
        LEDGER_FILE,
        SELECTOR_DIR + "/",
        RESTARTS_FILE,
        RESTARTS_DIR + "/",
    },
}
_REPORT_ENTRIES = {REPORT_FILE, PLOTS_DIR + "/"}
_SELECTOR_ENTRIES = {SELECTOR_FILE, SELECTOR_WEIGHTS_FILE}

_DESCRIPTIONS = {
    FINETUNE: "a finetune run folder",
    SELECTOR_TRAINING: "a selector-training folder (train-selector)",
    COMPARISON: "a comparison folder (compare/demo)",
    SELECTOR: "a trained selector",
    OTHER: "a folder of other files",
}


def folder_kind(folder: Path) -> str | None:
    """The kind of run folder ``folder`` is, or None when it is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    with user_path(folder, "read"):
        names = {entry.name for entry in folder.iterdir()}
    if not names:
        return None
    selector_dir = folder / SELECTOR_DIR
    unfinished_training = selector_dir.is_dir() and not (selector_dir / SELECTOR_FILE).is_file()
    restarts_dir = folder / RESTARTS_DIR
    seed_trainings = any(name.startswith(SELECTOR_SEED_PREFIX) and (folder / name).is_dir() for name in names)
    if (
        RESULTS_JSON in names
        or (folder / RUNS_DIR).is_dir()
        or unfinished_training
        or seed_trainings
        or names <= {CONFIG_FILE, DATA_FILE}
    ):
        return COMPARISON  # finished, or interrupted while training its selector or before its first run
    if names & {CHECKPOINT_FILE, EPISODES_FILE} or (selector_dir / SELECTOR_FILE).is_file() or restarts_dir.is_dir():
        return SELECTOR_TRAINING
    if SUMMARY_FILE in names:
        return FINETUNE
    if SELECTOR_FILE in names:
        return SELECTOR
    return OTHER


def check_output(folder: Path, kind: str, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an ``--output`` the command ``kind`` must not write into (one line, exit 2 in the CLI).

    Also refuses a path that is a file, lies under a file, or cannot be written, before any work.
    """
    folder = Path(folder)
    check_output_path(folder)
    found = folder_kind(folder)
    if found == kind and (kind == FINETUNE or overwrite):  # the command would replace the folder
        foreign = foreign_entries(folder, kind)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise UserError(
                f"--output {folder} holds files {_DESCRIPTIONS[kind]} does not write ({shown}), which replacing "
                "it would delete; move them out of the folder or choose another --output (nothing was written)"
            )
    if kind == SELECTOR_TRAINING:
        if resume and found in (None, SELECTOR_TRAINING):  # another kind: the wrong-kind error below
            if found != SELECTOR_TRAINING or not (
                (folder / CHECKPOINT_FILE).is_file() or (folder / RESTARTS_DIR).is_dir()
            ):
                restart = "--overwrite instead of --resume" if found == SELECTOR_TRAINING else "without --resume"
                raise UserError(
                    f"--resume: no checkpoint in {folder}; pass the --output folder of the interrupted run, "
                    f"or start {restart}"
                )
            return
        if found == SELECTOR_TRAINING and not overwrite:
            raise UserError(
                f"{folder} already holds a selector training; pass --resume to continue it, "
                "--overwrite to replace it, or another --output"
            )
        if found == SELECTOR_TRAINING or found is None:
            return
    elif found in (None, kind):
        return
    raise UserError(
        f"--output {folder} is {_DESCRIPTIONS[found]}, not {_DESCRIPTIONS[kind]}, and is not empty; "
        "choose another --output (nothing was written)"
    )


def foreign_entries(folder: Path, kind: str) -> list[str]:
    """The entries of ``folder`` (relative paths, folders with a trailing "/") that a command of
    ``kind`` and ``report`` do not write: a user's files, which replacing the folder would delete."""
    folder = Path(folder)
    own = _OWN_ENTRIES[kind] | _REPORT_ENTRIES
    foreign = []
    with user_path(folder, "read"):
        for entry in sorted(folder.iterdir()):
            name = entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else "")
            if name not in own and not _is_own_leftover(entry.name, own):
                foreign.append(name)
            elif name == PLOTS_DIR + "/":
                foreign += [f"{name}{p.name}" for p in sorted(entry.iterdir()) if p.suffix != ".png" or not p.is_file()]
            elif name == SELECTOR_DIR + "/":
                foreign += [
                    f"{name}{p.name}" + ("/" if p.is_dir() else "")
                    for p in sorted(entry.iterdir())
                    if not (p.name in _SELECTOR_ENTRIES or _is_own_leftover(p.name, _SELECTOR_ENTRIES))
                ]
    return foreign


_ATOMIC_WRITE_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # io_utils.atomic_write's temporary files


def _is_own_leftover(name: str, own: set[str]) -> bool:
    """A temporary file :func:`io_utils.atomic_write` left beside one of ``own`` when it was killed."""
    return name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{o.rstrip('/')}.") for o in own)


# ----------------------------------------------------------------------------- one command per folder

_held_locks: dict[Path, int] = {}  # lock file -> its open descriptor, for the locks this process holds


def lock_path(folder: Path) -> Path:
    """The lock file of a run folder: a hidden sibling, which survives the folder being replaced."""
    folder = Path(folder).resolve()
    return folder.with_name(f".{folder.name}.lock")


def check_output_path(folder: Path) -> None:
    """Refuse an ``--output`` that is a file, lies under a file, or cannot be written (nothing written)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output {folder} is a file; choose a folder path for --output")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(f"--output {folder} lies under the file {existing}; choose a folder path for --output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"--output {folder}: {existing} is not writable; choose another --output or fix its permissions"
        )


@contextlib.contextmanager
def output_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while the block runs (the whole of a command ``command``).

    The lock is ``flock(2)`` on :func:`lock_path`: the kernel releases it when the holder exits, however
    it exits, so a lock file left by a killed run is simply taken over. A second command into the same
    folder gets a one-line error naming the holder (pid, command, start time). Nested holders in one
    process share the lock. Once it is held, what an interrupted earlier command left beside the
    folder is cleaned up (:func:`clean_interrupted`). The lock file is removed when released.
    """
    folder = Path(folder)
    check_output_path(folder)
    path = lock_path(folder)
    if path in _held_locks:  # a command's own step (a comparison's runs): the command holds it already
        yield
        return
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    make_dirs(path.parent)
    descriptor = _acquire(path, folder, command)
    try:
        _held_locks[path] = descriptor
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
        with user_path(path, "write"):
            os.ftruncate(descriptor, 0)
            os.write(descriptor, json.dumps(record).encode())
        clean_interrupted(folder)
        yield
    finally:
        _held_locks.pop(path, None)
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked: a waiting process then sees a new file, not this one
        os.close(descriptor)
        for parent in created:  # parents made for the lock file alone (a refused command) go again
            if not _remove_empty(parent):
                break


def _remove_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
        return True
    except OSError:  # not empty (the command wrote there) or already gone
        return False


def _acquire(path: Path, folder: Path, command: str) -> int:
    """Open and lock ``path``; retry when the holder removed it between our open and our lock."""
    while True:
        with user_path(path, "create the lock file"):
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(os_error_message(error, "lock", path)) from None
            raise UserError(_busy_message(folder, path, command)) from None
        try:
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)  # the previous holder removed the file it had locked: lock the new one


def _busy_message(folder: Path, path: Path, command: str) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder["started"])))
        who = f"raise-select {holder['command']} (pid {holder['pid']} on {holder['host']}, started {started})"
    except (OSError, ValueError, KeyError, TypeError):
        who = "another raise-select command (just starting)"
    if command == "report":
        return f"{folder} is in use by {who}; wait for it to finish or stop it (nothing was written)"
    return (
        f"--output {folder} is in use by {who}; wait for it to finish or stop it, or choose another --output "
        "(nothing was written)"
    )


def _forget_locks_in_child() -> None:
    """A forked child must not keep its parent's locks alive after the parent exits."""
    for descriptor in _held_locks.values():
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _held_locks.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def clean_interrupted(folder: Path) -> None:
    """Remove what an interrupted command left beside ``folder`` (call with its lock held): staging
    folders ``.<name>.*.tmp`` of an unfinished run, and ``.<name>.old-<pid>``, the previous folder
    moved aside while it was replaced, which is put back when ``folder`` is missing or empty; and in
    ``folder``, the temporary files ``.<file>.*.tmp`` of unfinished atomic writes (and a report's staged plots)."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return
    if folder_kind(folder) not in (None, OTHER):  # only in a folder of ours: a user's own files stay as they are
        with user_path(folder, "clean up"):
            for path in folder.iterdir():
                if _ATOMIC_WRITE_LEFTOVER.fullmatch(path.name) and path.is_file():
                    path.unlink()
                elif _ATOMIC_WRITE_LEFTOVER.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)  # a report's staged plots
    name = re.escape(folder.name)
    staging, moved_aside = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp"), re.compile(rf"\.{name}\.old-\d+")
    with user_path(folder.parent, "clean up"):
        for path in sorted(folder.parent.iterdir()):
            if not path.is_dir() or path.is_symlink():
                continue
            if staging.fullmatch(path.name):
                shutil.rmtree(path)
            elif moved_aside.fullmatch(path.name):
                if folder_kind(folder) is None:  # interrupted before the new folder had anything: the old comes back
                    if folder.exists():
                        folder.rmdir()
                    os.replace(path, folder)
                else:
                    shutil.rmtree(path)


_LEFTOVER_OF = re.compile(r"\.(.+)\.(?:[a-z0-9_]{8}\.tmp|old-\d+|lock)")  # group 1: the folder it belongs to


def interrupted_parts(comparison: Path) -> list[Path]:
    """The folders of a comparison (its selector trainings and runs) that a killed command left
    temporary siblings or a lock file of: taking their lock (:func:`output_lock`) cleans them up."""
    comparison = Path(comparison)
    parts = set()
    for parent in (comparison, comparison / RUNS_DIR):
        if parent.is_dir():
            with user_path(parent, "read"):
                for entry in parent.iterdir():
                    match = _LEFTOVER_OF.fullmatch(entry.name)
                    if match and (entry.is_dir() or entry.name.endswith(".lock")):
                        parts.add(parent / match.group(1))
    return sorted(parts)


class FolderSwap:
    """Replace ``folder`` in place, keeping its old contents until :meth:`commit`.

    The old folder (if any) is moved to a hidden sibling and ``folder`` starts empty; ``commit()``
    deletes the old contents (call it once the new run has its first result), ``rollback()`` removes
    what the new run wrote and puts the old folder back. For runs that must write in place (PPO
    checkpoints that ``--resume`` reads after a kill), where a staged sibling would not do.

    As a context manager (``with FolderSwap(folder) as swap:``) it rolls back when the block raises
    before ``commit()``, and commits when the block ends normally.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.previous: Path | None = None
        with user_path(self.folder, "replace"), uninterrupted():
            if self.folder.exists():
                self.previous = self.folder.with_name(f".{self.folder.name}.old-{os.getpid()}")
                os.replace(self.folder, self.previous)
            self.folder.mkdir(parents=True)
        self.done = False

    def __enter__(self) -> FolderSwap:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.rollback()

    def commit(self) -> None:
        if not self.done and self.previous is not None:
            shutil.rmtree(self.previous, ignore_errors=True)
        self.done = True

    def rollback(self) -> None:
        if self.done:
            return
        with uninterrupted():
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.previous is not None:
                os.replace(self.previous, self.folder)
        self.done = True


# ----------------------------------------------------------------------------- a finetune run's result


@dataclass
class RunResult:
    """The numbers of one fine-tuning run (:func:`pipeline.run_finetune`; also written to its folder)."""

    method: str
    seed: int
    budget_steps: int
    validation_loss_initial: float
    validation_loss_final: float
    test: dict | None
    steps: int
    tokens: int
    seconds: float
    output: Path | None  # the run folder (None: run without one)


def skipped_records_note(count: int, first: list[str]) -> str:
    """One line on the records ``pool.on_error=skip`` dropped (stderr, report)."""
    problems = [reason.split("; ")[0] for reason in first[:SKIPPED_SHOWN]]  # "file:line: problem", without the fix
    shown = " | ".join(problems) + (" | ..." if count > len(problems) else "")
    return f"pool.on_error=skip dropped {count} malformed record{'s' if count != 1 else ''} from the pool: {shown}"


# ----------------------------------------------------------------------------- naming


def restart_dir(output: Path, seed: int) -> Path:
    """Where a selector training with ``raise.restarts`` > 1 trains its restart of seed ``seed``."""
    return Path(output) / RESTARTS_DIR / f"seed-{seed}"


def selector_training_dir(output: Path, selector_seed: int) -> Path:
    """Where a comparison trains (or finds) its RAISE selector for one selector seed."""
    return Path(output) / f"{SELECTOR_SEED_PREFIX}{selector_seed}"


def best_static_file(output: Path, steps: int) -> Path:
    """Where a comparison keeps its ``best_static`` grid search at one budget (reused on resume)."""
    return Path(output) / f"best-static-{steps}steps.json"


def comparison_run_dir(output: Path, method: str, steps: int, seed: int, selector_seed: int | None = None) -> Path:
    """A comparison's finetune run folder: ``runs/<method>[-sel<S>]-<steps>steps-s<seed>``."""
    name = method if selector_seed is None else f"{method}-sel{selector_seed}"
    return Path(output) / RUNS_DIR / f"{name}-{steps}steps-s{seed}"


def selector_trainings(comparison: Path) -> list[Path]:
    """A comparison's selector-training folders that hold episodes: ``selector-s*`` in name order,
    then the single ``selector/`` of folders written before selector seeds existed."""
    comparison = Path(comparison)
    candidates = sorted(comparison.glob(f"{SELECTOR_SEED_PREFIX}*")) + [comparison / SELECTOR_DIR]
    return [folder for folder in candidates if (folder / EPISODES_FILE).is_file()]


# ----------------------------------------------------------------------------- reading

_NUMBER, _TEXT, _INTEGER, _LIST, _MAPPING = (int, float), (str,), (int,), (list,), (dict,)
_REQUIRED = "*required"  # in a shape: the keys that must be present (the others may be missing)
_RESULT_ROW = {
    _REQUIRED: ("method",),
    "method": _TEXT,
    "run_dir": _TEXT,
    "test_metric": _TEXT,
    **dict.fromkeys(("budget", "validation_loss", "validation_loss_initial", "test_score", "test_loss"), _NUMBER),
    **dict.fromkeys(("budget_steps", "seed", "steps", "selector_seed"), _INTEGER),
    **dict.fromkeys(("tokens", "seconds"), _NUMBER),
}
# What the readers rely on in each JSON file (a JSONL file: in each line): a mapping, and the type of
# each key they read (None is always allowed; a missing key too: older folders lack some).
# A key naming a list of mappings ("rows") maps to that row's own key types.
FILE_SHAPES: dict[str, dict[str, tuple | dict]] = {
    SUMMARY_FILE: {
        "method": _TEXT,
        "model": _TEXT,
        "target": _TEXT,
        **dict.fromkeys(("seed", "budget_steps", "batch_size", "pool_size", SKIPPED_COUNT), _INTEGER),
        "budget_fraction": _NUMBER,
        SKIPPED_FIRST: _LIST,
    },
    EVALUATION_FILE: {"validation_loss_initial": _NUMBER, "validation_loss_final": _NUMBER, "test": _MAPPING},
    LEDGER_FILE: {"phi": _MAPPING, "phases": _MAPPING},
    DATA_FILE: {"pool": _TEXT, "target": _TEXT},
    RESULTS_JSON: {
        "rows": _RESULT_ROW,
        "summary": {
            _REQUIRED: ("method",),
            "method": _TEXT,
            "test_metric": _TEXT,
            "n_seeds": _INTEGER,
            **dict.fromkeys(("budget", "validation_loss_mean", "validation_loss_std", "test_score_mean"), _NUMBER),
        },
        "selector_seeds": _LIST,
        "oracle_gap": _LIST,
        "ledger": _MAPPING,
    },
    METRICS_FILE: {
        **dict.fromkeys(("decision", "step"), _INTEGER),
        **dict.fromkeys(("train_loss", "validation_loss", "reward", "seconds", "tokens"), _NUMBER),
    },
    SELECTIONS_FILE: {
        **dict.fromkeys(("decision", "step"), _INTEGER),
        **dict.fromkeys(("indices", "ids", "sources", "families", "clusters", "labels"), _LIST),
    },
    EPISODES_FILE: {
        **dict.fromkeys(("episode", "update", "decisions"), _INTEGER),
        **dict.fromkeys(("return", "validation_loss_initial", "validation_loss_final", "seconds", "tokens"), _NUMBER),
    },
    SELECTOR_FILE: {"provenance": _MAPPING, "config": _MAPPING, "feature_layout": _LIST},
}


def check_shape(path: Path, value, shape: dict | None = None, where: str = "") -> None:
    """Refuse a run-folder file whose content does not have the shape :data:`FILE_SHAPES` gives it."""
    path = Path(path)
    shape = FILE_SHAPES[path.name] if shape is None else shape
    if not isinstance(value, dict):
        raise _misshapen(path, f"{where or 'it'} is a JSON {_json_type(value)}, not an object")
    missing = [key for key in shape.get(_REQUIRED, ()) if value.get(key) is None]
    if missing:
        raise _misshapen(path, f"{where}has no {missing[0]!r}")
    for key, kinds in shape.items():
        item = value.get(key)
        if item is None or key == _REQUIRED:
            continue
        if isinstance(kinds, dict):  # a list of mappings
            if not isinstance(item, list):
                raise _misshapen(path, f"{where}{key!r} is a JSON {_json_type(item)}, not a list")
            for index, row in enumerate(item):
                check_shape(path, row, kinds, f"{where}{key}[{index}] ")
        elif isinstance(item, bool) or not isinstance(item, kinds):
            expected = {_NUMBER: "a number", _TEXT: "a string", _INTEGER: "an integer", _LIST: "a list"}.get(
                kinds, "an object"
            )
            raise _misshapen(path, f"{where}{key!r} is {str(json.dumps(item))[:40]}, not {expected}")


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def _misshapen(path: Path, problem: str) -> UserError:
    return UserError(
        f"{path} is not the file raise-select writes ({problem.strip()}); re-run the command that wrote it, "
        "or restore the file"
    )


def read_shaped_json(path: Path) -> dict:
    """A run folder's JSON file, checked against :data:`FILE_SHAPES`."""
    data = read_json(path)
    check_shape(path, data)
    return data


def read_shaped_jsonl(path: Path) -> list[dict]:
    """A run folder's JSONL file, each line checked against :data:`FILE_SHAPES`."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, 1):
        check_shape(path, row, where=f"line {number} ")
    return rows


def read_config(folder: Path) -> dict:
    """A folder's ``config.yaml`` as plain data ({} when it has none); invalid YAML is a UserError."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return {}
    with user_path(path, "read"):
        text = path.read_text(encoding="utf-8")
    try:
        data = load_yaml(text)
    except yaml.YAMLError:  # a duplicate key too: the file was edited by hand
        raise UserError(f"{path} is not valid YAML; re-run the command that wrote it") from None
    if data is not None and not isinstance(data, dict):
        raise UserError(
            f"{path} is a YAML {type(data).__name__}, not the mapping of settings its command writes; "
            "re-run the command that wrote it"
        )
    return data or {}


def read_optional_json(path: Path) -> dict:
    """A JSON file of a run folder, or {} when it is missing (optional files of older or partial folders)."""
    return read_shaped_json(path) if Path(path).is_file() else {}


def read_explain(path: Path) -> list[dict] | None:
    """``explain.csv`` rows as dicts of strings, or None when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return None
    with user_path(path, "read"), open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def read_episodes(folder: Path) -> list[dict]:
    """A selector-training folder's ``episodes.jsonl`` rows ([] when it has none)."""
    path = Path(folder) / EPISODES_FILE
    return read_shaped_jsonl(path) if path.is_file() else []


def read_selector_metadata(selector_dir: Path) -> dict:
    """A trained selector's ``selector.json`` as plain data ({} when missing), without loading its weights."""
    return read_optional_json(Path(selector_dir) / SELECTOR_FILE)


def load_run(folder: Path) -> dict | None:
    """One finetune run folder as plain data, or None when it is no run folder (no ``metrics.jsonl``).

    Keys: path, config, summary, metrics, selections, evaluation, ledger ({} or [] when the file is
    missing) and explain (None when missing).
    """
    folder = Path(folder)
    if not (folder / METRICS_FILE).is_file():
        return None
    selections = folder / SELECTIONS_FILE
    return {
        "path": folder,
        "config": read_config(folder),
        "summary": read_optional_json(folder / SUMMARY_FILE),
        "metrics": read_shaped_jsonl(folder / METRICS_FILE),
        "selections": read_shaped_jsonl(selections) if selections.is_file() else [],
        "evaluation": read_optional_json(folder / EVALUATION_FILE),
        "ledger": read_optional_json(folder / LEDGER_FILE),
        "explain": read_explain(folder / EXPLAIN_FILE),
    }


# evaluation.json's "test" key holding the score of each test metric (evaluation.evaluate_test)
_TEST_SCORE_KEYS = {"exact_match": "exact_match", "multiple_choice": "accuracy"}


def result_row(run: dict, method: str, root: Path | None = None) -> dict:
    """One run as a row of a comparison's results (``results.json`` rows, ``results.csv`` lines).

    ``run`` is :func:`load_run`'s. Budget and seed come from ``summary.json``; the final validation
    loss from ``evaluation.json``, else the last one in ``metrics.jsonl``; the test score is the value
    of the metric ``evaluation.json`` names (None for ``none`` or no test); steps, tokens and seconds
    are ``metrics.jsonl``'s last row. Missing values are None. ``run_dir`` (the folder relative to
    ``root``) is added when ``root`` is given.
    """
    summary, evaluation, metrics = run["summary"], run["evaluation"], run["metrics"]
    test = evaluation.get("test") or {}
    metric = test.get("metric")
    score_key = _TEST_SCORE_KEYS.get(metric)
    losses = [m["validation_loss"] for m in metrics if m.get("validation_loss") is not None]
    last = metrics[-1] if metrics else {}
    row = {
        "method": method,
        "budget": summary.get("budget_fraction"),
        "budget_steps": summary.get("budget_steps"),
        "seed": summary.get("seed"),
        "validation_loss": evaluation.get("validation_loss_final", losses[-1] if losses else None),
        "validation_loss_initial": evaluation.get("validation_loss_initial", losses[0] if losses else None),
        "test_metric": metric,
        "test_score": test.get(score_key) if score_key else None,
        "test_loss": test.get("test_loss"),
        "steps": last.get("step"),
        "tokens": last.get("tokens"),
        "seconds": last.get("seconds"),
    }
    row.update({LM_EVAL_PREFIX + name: score for name, score in (test.get("lm_eval") or {}).items()})
    if root is not None:
        row["run_dir"] = str(Path(run["path"]).relative_to(root))
    return row
