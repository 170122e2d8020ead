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
from .errors import UserError
from .evaluation import per_example_losses, validation_loss
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
    """Fine-tunes ``lm`` on pool examples chosen from outside, one decision at a time."""

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
        self.validation_tokens = validation_tokens
        self.train = train
        self.budget = budget_steps
        self.evaluate_every = max(1, evaluate_every)
        # reset() restores exactly these; pass the weights saved at load time when `lm` may have been trained since.
        self._base_weights = base_weights if base_weights is not None else lm.snapshot()
        self._pad_id = lm.tokenizer.pad_token_id
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._state: EnvState | None = None
        self._decisions = 0
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
        self._decisions = 0
        self._state = EnvState(
            step=0,
            budget=self.budget,
            batch_size=self.train.batch_size,
            decision_interval=self.train.decision_interval,
            validation_history=[self._initial_validation_loss],
            selection_counts=np.zeros(len(self.pool_tokens), dtype=np.int64),
            loss_probe=self.probe_losses,
        )
        return self._state

    @property
    def state(self) -> EnvState:
        if self._state is None:
            raise RuntimeError("call reset() before using the environment")
        return self._state

    @property
    def done(self) -> bool:
        return self.state.step >= self.state.budget

    # -- one decision ------------------------------------------------------------------------
    def step(self, indices) -> StepResult:
        state = self.state
        if self.done:
            raise RuntimeError("episode is over: the budget is spent; call reset()")
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        expected = state.decision_size
        if indices.size != expected:
            raise ValueError(f"selector returned {indices.size} indices, expected {expected} (decision_size)")
        if indices.min() < 0 or indices.max() >= len(self.pool_tokens):
            raise ValueError("selector returned an index outside the pool")
        started = time.perf_counter()
        model = self.lm.model
        model.train()
        losses, tokens = [], 0
        for batch_indices in indices.reshape(-1, state.batch_size):
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
            tokens += self.pool_tokens.num_tokens(batch_indices)
        np.add.at(state.selection_counts, indices, 1)
        state.step += len(losses)
        self._decisions += 1

        validation, reward, evaluation_tokens = None, None, 0
        if self.done or self._decisions % self.evaluate_every == 0:
            previous = state.validation_history[-1]
            validation = self.evaluate()
            reward = previous - validation
            state.validation_history.append(validation)
            evaluation_tokens = self.validation_tokens.num_tokens(np.arange(len(self.validation_tokens)))
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
        return validation_loss(self.lm, self.validation_tokens, batch_size=self.train.eval_batch_size)

    def probe_losses(self, indices) -> np.ndarray:
        """Current model's per-example response loss on pool candidates (for online baselines)."""
        indices = np.asarray(indices, dtype=np.int64)
        return per_example_losses(self.lm, self.pool_tokens, indices, batch_size=self.train.eval_batch_size)
