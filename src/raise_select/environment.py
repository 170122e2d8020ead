"""The fine-tuning environment: one budgeted fine-tuning run as an RL episode.

``reset()`` puts the model back to its base weights with a fresh optimizer (AdamW, constant learning
rate after ``warmup_steps`` of linear warmup, as transformers' ``constant_with_warmup``);
``step(indices)`` does one optimizer update per ``batch_size`` indices (``decision_interval`` updates per decision), then
evaluates the target's validation loss and returns the reward = the loss decrease. The selector
only sees :class:`~raise_select.protocol.EnvState`; the environment never knows which
selector it serves.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import get_constant_schedule_with_warmup

from .config import TrainConfig
from .data.tokenize import TokenizedSet
from .decisions import DecisionTracker
from .errors import UserError
from .model import LoadedModel, seed_everything, training_loss
from .protocol import EnvState


@dataclass
class StepResult:
    """What one decision did: ``updates`` optimizer steps, then (maybe) one validation evaluation."""

    train_loss: float  # mean training loss over the decision's updates
    validation_loss: float | None  # None when this decision was not evaluated
    reward: float | None  # previous evaluated validation loss - new one (None when not evaluated)
    updates: int
    tokens: int  # training tokens (prompt + response, no padding) processed
    seconds: float  # wall time of the updates and the evaluation
    evaluation_tokens: int = 0  # forward-only tokens of the validation evaluation (0 when not evaluated)


def full_data_steps(pool_size: int, train: TrainConfig) -> int:
    """Optimizer updates of one full-data run: E epochs over the pool at batch size B."""
    return math.ceil(train.full_data_epochs * pool_size / train.batch_size)


def resolve_budget(pool_size: int, train: TrainConfig) -> int:
    """Budget in optimizer updates from ``budget_steps`` or ``budget_fraction`` of full-data steps."""
    if train.batch_size > pool_size:
        raise UserError(
            f"train.batch_size={train.batch_size} is larger than the pool ({pool_size} examples); "
            "lower the batch size or add examples to the pool"
        )
    if train.budget_steps is not None:
        budget = train.budget_steps
        origin = f"train.budget_steps={budget}"
    else:
        full = full_data_steps(pool_size, train)
        budget = int(round(train.budget_fraction * full))
        origin = f"train.budget_fraction={train.budget_fraction} of {full} full-data steps"
    if budget < 1:
        raise UserError(
            f"budget too small: {origin} gives {budget} optimizer updates; raise the budget to at least 1 step"
        )
    check_budget_epochs(budget, pool_size, train, origin)
    return budget


def check_budget_epochs(steps: int, pool_size: int, train: TrainConfig, origin: str) -> None:
    """Refuse a budget of more passes over the pool than ``train.max_budget_epochs`` (hours of
    training that are almost always a typo); the message says how to confirm it."""
    epochs = steps * train.batch_size / pool_size
    if epochs > train.max_budget_epochs:
        raise UserError(
            f"{origin} is {steps} optimizer updates = {epochs:.1f} passes over the {pool_size}-example pool "
            f"(more than train.max_budget_epochs={train.max_budget_epochs:g}); lower the budget, "
            f"or confirm the long run with train.max_budget_epochs={math.ceil(epochs)}"
        )


class FineTuneEnv:
    """Fine-tunes ``lm`` on pool examples chosen from outside, one decision at a time.

    The optimizer updates are its own; the bookkeeping around them (state, counts, evaluations,
    rewards) is the :class:`~raise_select.decisions.DecisionTracker` the Trainer integration uses too.
    """

    def __init__(
        self,
        lm: LoadedModel,
        pool_tokens: TokenizedSet,
        validation_tokens: TokenizedSet,
        train: TrainConfig,
        budget_steps: int,
        evaluate_every: int = 1,
        base_weights: dict[str, torch.Tensor] | None = None,
    ):
        if len(pool_tokens) == 0:
            raise UserError("the pool is empty; give at least one example")
        if train.batch_size > len(pool_tokens):
            raise UserError(
                f"train.batch_size={train.batch_size} is larger than the pool ({len(pool_tokens)} examples); "
                "lower the batch size or add examples"
            )
        self.lm = lm
        self.pool_tokens = pool_tokens
        self.train = train
        self.budget = budget_steps
        self.tracker = DecisionTracker(lm, pool_tokens, validation_tokens, train, budget_steps, evaluate_every)
        # reset() restores exactly these; pass the weights saved at load time when `lm` may have been trained since.
        self._base_weights = base_weights if base_weights is not None else lm.snapshot()
        self._pad_id = lm.tokenizer.pad_token_id
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._started = False
        self._initial_validation_loss: float | None = None

    # -- episode control -------------------------------------------------------------------
    def reset(self, seed: int) -> EnvState:
        """Base weights, fresh optimizer, zero counts; evaluates the base validation loss (cached)."""
        self.lm.restore(self._base_weights)
        seed_everything(seed)  # dropout and any sampling inside the model
        self._optimizer = torch.optim.AdamW(
            self.lm.trainable_parameters(), lr=self.train.learning_rate, weight_decay=self.train.weight_decay
        )
        # transformers' "constant_with_warmup": lr x step / warmup_steps for the first steps, then constant.
        self._scheduler = get_constant_schedule_with_warmup(self._optimizer, self.train.warmup_steps)
        if self._initial_validation_loss is None:  # base weights are the same every episode
            self._initial_validation_loss = self.evaluate()
        self._started = True
        return self.tracker.new_state([self._initial_validation_loss])

    @property
    def state(self) -> EnvState:
        if not self._started:
            raise RuntimeError("call reset() before using the environment")
        return self.tracker.state

    @property
    def done(self) -> bool:
        return self.state.step >= self.state.budget

    # -- one decision ------------------------------------------------------------------------
    def step(self, indices) -> StepResult:
        tracker = self.tracker
        if self.done:
            raise RuntimeError("episode is over: the budget is spent; call reset()")
        indices = tracker.check(indices)
        started = time.perf_counter()
        model = self.lm.model
        model.train()
        losses = []
        for batch_indices in indices.reshape(-1, self.state.batch_size):
            batch = self.pool_tokens.collate(batch_indices, self._pad_id)
            batch = {k: v.to(self.lm.device) for k, v in batch.items()}
            loss = training_loss(self.lm, batch)
            loss.backward()
            if self.train.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.lm.trainable_parameters(), self.train.max_grad_norm)
            self._optimizer.step()
            self._scheduler.step()
            self._optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        tokens = tracker.record_decision(indices)
        self.state.step += len(losses)

        validation, reward, evaluation_tokens = None, None, 0
        if tracker.evaluation_due():
            validation = self.evaluate()
            reward = tracker.record_evaluation(validation)
            evaluation_tokens = tracker.evaluation_tokens()
        return StepResult(
            train_loss=float(np.mean(losses)),
            validation_loss=validation,
            reward=reward,
            updates=len(losses),
            tokens=tokens,
            seconds=time.perf_counter() - started,
            evaluation_tokens=evaluation_tokens,
        )

    # -- measurements offered to selectors ---------------------------------------------------
    def evaluate(self) -> float:
        """Mean validation answer loss of the current model (RAISE's reward signal)."""
        return self.tracker.evaluate()

    def probe_losses(self, indices) -> np.ndarray:
        """Current model's per-example response loss on pool candidates (for online baselines)."""
        return self.tracker.probe_losses(indices)
