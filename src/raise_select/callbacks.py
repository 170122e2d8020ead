"""Callbacks: named events of selector training and fine-tuning runs (Stable-Baselines3 style).

Subclass :class:`Callback` and override the events you need; pass a list of them as ``callbacks=``
to :func:`raise_select.ppo.train_policy` / :func:`raise_select.experiments.train_raise_selector`
(selector training) or :func:`raise_select.pipeline.run_finetune` (a fine-tuning run). Every
callback in the list sees every event; an ``on_..._end`` step event that returns ``False`` stops the
loop after the current step (selector training: after the current PPO update, which is saved).
Callbacks observe; none steers the loop except by that False. Progress bars are one
(:class:`ProgressBar`), and so is the writing of a fine-tuning run's per-decision rows
(:class:`RunFolderRows`); :func:`progress_bars` switches off the bars of the libraries a run calls
(model loading, pre-training the testbed model) when a run has none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tqdm.auto as tqdm_auto
from tqdm.auto import tqdm

from .io_utils import append_jsonl
from .run_folders import METRICS_FILE, SELECTIONS_FILE

if TYPE_CHECKING:
    from .run_folders import RunResult
    from .selector_artifact import RaiseArtifact


class Callback:
    """Override the events you need; the defaults do nothing."""

    # -- selector training (PPO) ---------------------------------------------------------------
    def on_train_start(self, start_episode: int, total_episodes: int) -> None:
        """Before the first episode of this call (``start_episode`` > 0 when resuming)."""

    def on_episode_end(self, episode: int, summary: dict) -> bool | None:
        """After each episode's PPO update and checkpoint, with its ``episodes.jsonl`` row; False stops."""

    def on_train_end(self, artifact: RaiseArtifact) -> None:
        """After the selector folder is written."""

    # -- fine-tuning runs ------------------------------------------------------------------------
    def on_run_start(self, method: str, total_decisions: int) -> None:
        """Before the first decision of a run of selector ``method``."""

    def on_selection(self, decision: int, selection: dict) -> None:
        """After each decision's examples were chosen and trained on, with its ``selections.jsonl`` row."""

    def on_decision_end(self, decision: int, metrics: dict) -> bool | None:
        """After each decision's updates (and evaluation), with its ``metrics.jsonl`` row; False stops."""

    def on_run_end(self, result: RunResult) -> None:
        """After the run's evaluation, with its numbers."""


class CallbackList(Callback):
    """Runs every callback on every event, in order; a step event stops when any of them returned False."""

    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.callbacks = list(callbacks)

    def _all(self, event: str, *args: Any) -> bool:
        results = [getattr(callback, event)(*args) for callback in self.callbacks]  # every one runs
        return all(result is not False for result in results)

    def on_train_start(self, start_episode: int, total_episodes: int) -> None:
        self._all("on_train_start", start_episode, total_episodes)

    def on_episode_end(self, episode: int, summary: dict) -> bool:
        return self._all("on_episode_end", episode, summary)

    def on_train_end(self, artifact: RaiseArtifact) -> None:
        self._all("on_train_end", artifact)

    def on_run_start(self, method: str, total_decisions: int) -> None:
        self._all("on_run_start", method, total_decisions)

    def on_selection(self, decision: int, selection: dict) -> None:
        self._all("on_selection", decision, selection)

    def on_decision_end(self, decision: int, metrics: dict) -> bool:
        return self._all("on_decision_end", decision, metrics)

    def on_run_end(self, result: RunResult) -> None:
        self._all("on_run_end", result)


class ProgressBar(Callback):
    """A tqdm bar: episodes of selector training (return, KL, seconds per episode) or decisions of a run."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_start(self, start_episode: int, total_episodes: int) -> None:
        self.bar = tqdm(total=total_episodes, initial=start_episode, desc="train-selector", unit="episode")

    def on_episode_end(self, episode: int, summary: dict) -> None:
        self.bar.set_postfix(
            {
                "return": f"{summary['return']:.4f}",
                "kl": f"{summary.get('approx_kl', 0.0):.3f}",
                "s/ep": f"{summary['seconds']:.1f}",
            },
            refresh=False,
        )
        self.bar.update(1)

    def on_train_end(self, artifact: RaiseArtifact) -> None:
        self.close()

    def on_run_start(self, method: str, total_decisions: int) -> None:
        self.bar = tqdm(total=total_decisions, desc=f"finetune[{method}]", unit="decision")
        self.validation_loss = float("nan")

    def on_decision_end(self, decision: int, metrics: dict) -> None:
        if metrics.get("validation_loss") is not None:  # None on decisions without an evaluation (train.eval_every)
            self.validation_loss = metrics["validation_loss"]
        self.bar.set_postfix(train=f"{metrics['train_loss']:.3f}", val=f"{self.validation_loss:.3f}", refresh=False)
        self.bar.update(1)

    def on_run_end(self, result: RunResult) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunFolderRows(Callback):
    """Appends a fine-tuning run's rows to its folder: ``selections.jsonl`` (one per decision) and
    ``metrics.jsonl`` (``initial``, the base model's row, is written at once; then one per decision)."""

    def __init__(self, folder: Path, initial: dict):
        self.selections, self.metrics = Path(folder) / SELECTIONS_FILE, Path(folder) / METRICS_FILE
        append_jsonl(self.metrics, initial)

    def on_selection(self, decision: int, selection: dict) -> None:
        append_jsonl(self.selections, selection)

    def on_decision_end(self, decision: int, metrics: dict) -> None:
        append_jsonl(self.metrics, metrics)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Within it, with ``enabled`` False, the bars of the libraries we call are off too: transformers'
    (loading weights) and every ``tqdm.auto`` bar created inside (building the testbed model). Our own
    bars take an explicit flag instead; this covers code that shows a bar without asking."""
    if enabled:
        yield
        return
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    library_tqdm = tqdm_auto.tqdm

    class SilentTqdm(library_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

    tqdm_auto.tqdm = SilentTqdm
    try:
        yield
    finally:
        tqdm_auto.tqdm = library_tqdm
        if shown:
            transformers_logging.enable_progress_bar()


def with_progress(callbacks: Sequence[Callback], progress: bool) -> CallbackList:
    """The callbacks to run: the user's, plus a :class:`ProgressBar` first when ``progress``."""
    return CallbackList(([ProgressBar()] if progress else []) + list(callbacks))
