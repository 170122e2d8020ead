"""The decision loop's bookkeeping, kept once for the two places a selector drives training.

:class:`~raise_select.environment.FineTuneEnv` trains the model itself; the Trainer integration's
:class:`~raise_select.integrations.hf_trainer.SelectionSession` lets ``transformers.Trainer`` train
it. Around the training both do the same things, which live here in :class:`DecisionTracker`: the
:class:`~raise_select.protocol.EnvState` a selector reads, the check of the indices it returns, the
pick counts, when to evaluate, the validation loss and the reward (its decrease), and the loss
probe offered to online baselines. :func:`selection_record` and :func:`metrics_record` are the rows
of a run folder's ``selections.jsonl`` and ``metrics.jsonl`` that both write.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import TrainConfig
from .data.tokenize import TokenizedSet
from .data.types import Pool
from .evaluation import per_example_losses, validation_loss
from .model import LoadedModel
from .protocol import EnvState


class DecisionTracker:
    """State, counts, evaluations and rewards of one budgeted run, one decision at a time.

    ``evaluate_every``: the validation loss is measured after every that many decisions and after
    the last one (``train.eval_every``; a selector trained with it gets a reward at each evaluation).
    Under DDP ``shard`` is (rank, world size) and ``sum_over_ranks`` an all-reduce sum: each rank
    scores its share of the validation set (:func:`~raise_select.evaluation.validation_loss`).
    """

    def __init__(
        self,
        lm: LoadedModel,
        pool_tokens: TokenizedSet,
        validation_tokens: TokenizedSet,
        train: TrainConfig,
        budget_steps: int,
        evaluate_every: int = 1,
    ):
        self.lm = lm  # the model being trained, for validation and loss probes
        self.pool_tokens, self.validation_tokens = pool_tokens, validation_tokens
        self.train, self.budget = train, budget_steps
        self.evaluate_every = max(1, evaluate_every)
        self.shard: tuple[int, int] = (0, 1)  # (rank, world size): this process's share of each validation pass
        self.sum_over_ranks: Callable[[np.ndarray], np.ndarray] | None = None
        self.state = self.new_state([])
        self.decisions = 0
        self.tokens = 0  # training tokens (prompt + response, no padding) of the decisions so far

    def new_state(self, validation_history: list[float]) -> EnvState:
        """A fresh episode's state (step 0, no picks); ``validation_history`` starts with the base loss."""
        self.state = EnvState(
            step=0,
            budget=self.budget,
            batch_size=self.train.batch_size,
            decision_interval=self.train.decision_interval,
            validation_history=validation_history,
            selection_counts=np.zeros(len(self.pool_tokens), dtype=np.int64),
            loss_probe=self.probe_losses,
        )
        self.decisions, self.tokens = 0, 0
        return self.state

    @property
    def done(self) -> bool:
        return self.state.step >= self.state.budget

    def check(self, indices, selector_name: str = "selector") -> np.ndarray:
        """The selector's answer as int64 indices; ValueError unless it is ``decision_size`` pool indices."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        expected = self.state.decision_size
        if indices.size != expected:
            raise ValueError(f"{selector_name} returned {indices.size} indices, expected {expected} (decision_size)")
        if indices.min() < 0 or indices.max() >= self.state.pool_size:
            raise ValueError(
                f"{selector_name} returned indices in [{indices.min()}, {indices.max()}], outside the pool "
                f"of {self.state.pool_size}"
            )
        return indices

    def record_decision(self, indices: np.ndarray) -> int:
        """Count a decision's picks; returns its training tokens."""
        np.add.at(self.state.selection_counts, indices, 1)
        self.decisions += 1
        tokens = self.pool_tokens.num_tokens(indices)
        self.tokens += tokens
        return tokens

    def evaluation_due(self) -> bool:
        """After the decision just recorded and trained: is the validation loss measured now?"""
        return self.done or self.decisions % self.evaluate_every == 0

    def record_evaluation(self, validation: float) -> float:
        """Append ``validation`` to the history; returns the reward (the decrease since the last evaluation)."""
        previous = self.state.validation_history[-1]
        self.state.validation_history.append(validation)
        return previous - validation

    def evaluation_tokens(self) -> int:
        """Forward-only tokens of one validation evaluation."""
        return self.validation_tokens.num_tokens(np.arange(len(self.validation_tokens)))

    # -- measurements offered to selectors ---------------------------------------------------
    def evaluate(self) -> float:
        """Mean validation answer loss of the current model (RAISE's reward signal)."""
        return validation_loss(
            self.lm,
            self.validation_tokens,
            batch_size=self.train.eval_batch_size,
            shard=self.shard,
            sum_over_ranks=self.sum_over_ranks,
        )

    def probe_losses(self, indices) -> np.ndarray:
        """Current model's per-example response loss on pool candidates (for online baselines)."""
        indices = np.asarray(indices, dtype=np.int64)
        return per_example_losses(self.lm, self.pool_tokens, indices, batch_size=self.train.eval_batch_size)


def selection_record(pool: Pool, decision: int, step: int, indices: np.ndarray, clusters: np.ndarray | None) -> dict:
    """One ``selections.jsonl`` row: the decision's examples (made at optimizer update ``step``) and their labels."""
    examples = [pool[int(i)] for i in indices]
    return {
        "decision": decision,
        "step": step,
        "indices": [int(i) for i in indices],
        "ids": [e.id for e in examples],
        "sources": [e.source for e in examples],
        "families": [e.meta.get("family") for e in examples],
        "clusters": [int(clusters[i]) for i in indices] if clusters is not None else None,
        "helpful": [e.meta.get("helpful") for e in examples],
        "corrupted": [e.meta.get("corrupted") for e in examples],
    }


def metrics_record(
    decision: int,
    step: int,
    validation_loss: float | None,
    reward: float | None,
    tokens: int,
    train_loss: float | None = None,
    seconds: float | None = None,
    selection_seconds: float | None = None,
) -> dict:
    """One ``metrics.jsonl`` row: after ``decision`` (0: the base model), at optimizer update ``step``.
    ``validation_loss`` and ``reward`` are None on a decision without an evaluation; ``train_loss`` and
    ``seconds`` are None where the loop that trains does not report them (Trainer logs its own)."""
    row = {
        "decision": decision,
        "step": step,
        "train_loss": train_loss,
        "validation_loss": validation_loss,
        "reward": reward,
        "seconds": seconds,
        "tokens": tokens,
    }
    if selection_seconds is not None:
        row["selection_seconds"] = selection_seconds
    return row
