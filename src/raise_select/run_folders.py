"""What may be written where: every command checks its ``--output`` here before any expensive work.

A folder's kind is read from the files the commands write (see :mod:`pipeline` and :mod:`experiments`):

=====================  ==========================================================================
kind                   recognised by
=====================  ==========================================================================
``finetune``           ``summary.json`` (a finished ``finetune`` run folder)
``selector-training``  ``checkpoint.pt``, ``episodes.jsonl`` or ``selector/selector.json`` (``train-selector``)
``comparison``         ``results.json``, ``runs/``, ``selector-s<seed>/`` trainings, or only
                       ``config.yaml`` (``compare``, ``demo``, maybe interrupted)
``selector``           ``selector.json`` (a trained selector itself)
``other``              anything else that is not empty
=====================  ==========================================================================

Rules: a command writes into a missing or empty folder, or into a folder of its own kind —
``finetune`` replaces its run folder whole after the new run has finished (:func:`io_utils.staged_folder`),
``compare`` reuses finished runs, ``train-selector`` needs ``--resume`` or ``--overwrite`` (and
:class:`FolderSwap` keeps the old folder until the first new episode is saved). Anything else is
refused with a one-line error naming ``--resume``/``--overwrite`` or another ``--output``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import UserError
from .io_utils import make_dirs, user_path

FINETUNE, SELECTOR_TRAINING, COMPARISON, SELECTOR, OTHER = "finetune", "selector-training", "comparison", "selector", "other"

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
    selector_dir = folder / "selector"
    unfinished_training = selector_dir.is_dir() and not (selector_dir / "selector.json").is_file()
    seed_trainings = any(name.startswith("selector-s") and (folder / name).is_dir() for name in names)
    if ("results.json" in names or (folder / "runs").is_dir() or unfinished_training or seed_trainings
            or names == {"config.yaml"}):
        return COMPARISON  # finished, or interrupted while training its selector or before its first run
    if names & {"checkpoint.pt", "episodes.jsonl"} or (folder / "selector" / "selector.json").is_file():
        return SELECTOR_TRAINING
    if "summary.json" in names:
        return FINETUNE
    if "selector.json" in names:
        return SELECTOR
    return OTHER


def check_output(folder: Path, kind: str, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse an ``--output`` the command ``kind`` must not write into (one line, exit 2 in the CLI).

    Also refuses a path that is a file, lies under a file, or cannot be written, before any work.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output {folder} is a file; choose a folder path for --output")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(f"--output {folder} lies under the file {existing}; choose a folder path for --output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--output {folder}: {existing} is not writable; choose another --output or fix its permissions")
    found = folder_kind(folder)
    if kind == SELECTOR_TRAINING:
        if resume:
            if found != SELECTOR_TRAINING or not (folder / "checkpoint.pt").is_file():
                raise UserError(f"--resume: no checkpoint in {folder}; pass the --output folder of the interrupted run, "
                                "or start without --resume")
            return
        if found == SELECTOR_TRAINING and not overwrite:
            raise UserError(f"{folder} already holds a selector training; pass --resume to continue it, "
                            "--overwrite to replace it, or another --output")
        if found == SELECTOR_TRAINING or found is None:
            return
    elif found in (None, kind):
        return
    raise UserError(f"--output {folder} is {_DESCRIPTIONS[found]}, not {_DESCRIPTIONS[kind]}, and is not empty; "
                    "choose another --output (nothing was written)")


class FolderSwap:
    """Replace ``folder`` in place, keeping its old contents until :meth:`commit`.

    The old folder (if any) is moved to a hidden sibling and ``folder`` starts empty; ``commit()``
    deletes the old contents (call it once the new run has its first result), ``rollback()`` removes
    what the new run wrote and puts the old folder back. For runs that must write in place (PPO
    checkpoints that ``--resume`` reads after a kill), where a staged sibling would not do.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.previous: Path | None = None
        with user_path(self.folder, "replace"):
            if self.folder.exists():
                self.previous = self.folder.with_name(f".{self.folder.name}.old-{os.getpid()}")
                os.replace(self.folder, self.previous)
        make_dirs(self.folder)
        self.done = False

    def commit(self) -> None:
        if not self.done and self.previous is not None:
            shutil.rmtree(self.previous, ignore_errors=True)
        self.done = True

    def rollback(self) -> None:
        if self.done:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.previous is not None:
            os.replace(self.previous, self.folder)
        self.done = True
