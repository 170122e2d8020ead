"""The contract between the environment and the selectors: what each side may read of the other.

Neither side imports the other; both import this module. A selector never touches the model: it
is given a :class:`SelectionContext` once per run (the pool, optional static features, the budget)
and, before each decision, the environment's :class:`EnvState` (step, budget, validation history,
selection counts, and a ``loss_probe`` the environment offers for online baselines). The
environment never knows which selector it serves.

Every selector is a :class:`Selector`. Two optional protocols let a runner read more of a selector
without knowing which one it is (``isinstance(selector, Explains)``):

- :class:`HasClusters`: the selector assigns every pool example to a cluster (the run's
  ``selections.jsonl`` then records each chosen example's cluster);
- :class:`Explains`: the selector can say why it scores examples as it does (the run's
  ``explain.csv``).

RAISE (:class:`~raise_select.selectors.raise_policy.RaiseSelector`) implements both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .data.types import Pool
    from .features import StaticFeatures

DEFAULT_STATIC_EPOCHS = 3  # the paper's static baselines train 3 epochs on their fixed subset


@dataclass
class EnvState:
    """What the environment exposes to a selector before each decision."""

    step: int  # optimizer updates done so far in this episode
    budget: int  # optimizer updates in the whole episode (T * decision_interval)
    batch_size: int  # examples per optimizer update (B)
    decision_interval: int  # optimizer updates per decision (M); a decision returns M * B indices
    validation_history: list[float]  # validation loss after reset (index 0) and after every evaluation
    selection_counts: np.ndarray  # [pool_size] times each example was trained on this episode
    loss_probe: Callable[[np.ndarray], np.ndarray] | None = (
        None  # current model's per-example response loss (costs forward passes)
    )

    @property
    def pool_size(self) -> int:
        return int(self.selection_counts.shape[0])

    @property
    def progress(self) -> float:
        """t / T in [0, 1]."""
        return self.step / max(self.budget, 1)

    @property
    def validation_loss(self) -> float:
        return self.validation_history[-1]

    @property
    def decision_size(self) -> int:
        """Indices the next decision must return (fewer on the last decision if the budget is not a multiple of M)."""
        updates = min(self.decision_interval, self.budget - self.step)
        return updates * self.batch_size


@dataclass
class SelectionContext:
    """Run-level information given to a selector once, before the first episode."""

    pool: Pool
    batch_size: int
    budget_steps: int
    decision_interval: int
    seed: int
    features: StaticFeatures | None = None  # set when the selector's requires_features is True
    target_embedding: np.ndarray | None = None  # [n_validation, pca_dim] target validation embeddings (same PCA space)
    # Epochs a static selector spreads its budget over: it keeps budget_steps * batch_size / static_epochs
    # examples. Runs set it to train.full_data_epochs (a static subset trains as many epochs as full data).
    static_epochs: int = DEFAULT_STATIC_EPOCHS


@runtime_checkable
class Selector(Protocol):
    """Chooses which pool examples the next optimizer update(s) train on."""

    name: str
    requires_features: bool  # the runner computes static features and puts them in the context

    def setup(self, context: SelectionContext) -> None:
        """Prepare for a run: called once per run, before its first episode, with the run's pool,
        features and budget; build here whatever holds for every episode (rankings, subsets, clusters).

        It is not called per episode: per-episode state belongs in :meth:`reset`, which the runner
        calls after ``setup`` and before every episode. Calling ``setup`` again with another context
        prepares the selector for that run. A context the selector cannot serve (missing features, a
        pool too small for one decision) is a one-line ``UserError`` raised here, before any training.
        """

    def reset(self, seed: int) -> None:
        """Called at the start of every episode, after the environment's reset."""

    def select(self, state: EnvState) -> np.ndarray:
        """Return ``state.decision_size`` pool indices (int64) for the next decision."""


@runtime_checkable
class HasClusters(Protocol):
    """A selector that assigns every pool example to a cluster."""

    clusters: np.ndarray | None  # [pool_size] int cluster of each pool example, set by setup (None before)


@runtime_checkable
class Explains(Protocol):
    """A selector that can explain its scores: rows for the run folder's ``explain.csv``."""

    def explain(self) -> list[dict]:
        """One dict per (sampled) pool example: ``index``, optionally ``cluster``, and score columns."""
