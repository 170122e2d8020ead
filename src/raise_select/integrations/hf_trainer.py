"""Deploy a trained RAISE selector (or any baseline) inside ``transformers.Trainer``.

Runnable example (the synthetic testbed; ``examples/hf_trainer.py`` is the full script)::

    from transformers import TrainingArguments
    from raise_select.config_io import load_config
    from raise_select.integrations import RaiseTrainer, SelectionSession
    from raise_select.pipeline import Workbench
    from raise_select.selectors import build_selector

    config = load_config(None, ["model.name=synthetic-tiny", "model.finetune=full", "target.name=synthetic",
                                "pool.sources=[{name: synthetic, limit: 240}]", "train.budget_steps=8"])
    bench = Workbench.build(config)
    session = SelectionSession.from_workbench(bench, build_selector("random", config))
    args = TrainingArguments(output_dir="out", report_to="none", **session.training_arguments())
    RaiseTrainer(model=bench.lm.model, args=args, selection=session).train()

How it hooks in (no copy of Trainer's loop):

* ``get_batch_samples`` — Trainer asks it for each optimizer step's micro-batches. It asks the
  :class:`SelectionSession` for this update's ``train.batch_size`` examples (a new decision every
  ``train.decision_interval`` updates, made from the current model state: zero lag), and gives this
  rank its share: with world size W and gradient accumulation A, rank r trains the r-th contiguous
  slice of B/W examples, as A micro-batches of B/(W*A) (``per_device_train_batch_size``). Trainer's
  token-count normalisation (``num_items_in_batch``, gathered across ranks) and DDP's gradient
  all-reduce make the update the token-weighted mean over all B examples, as in our environment.
* ``get_train_dataloader`` — an index loader of ``budget x A`` placeholders, never read: it only
  tells Trainer that one epoch is the whole budget, so every step takes exactly A micro-batches.
* a callback — ``on_train_begin`` evaluates the base validation loss, ``on_step_end`` the loss
  after each decision (every ``train.eval_every`` decisions) and logs it, with the reward, through
  ``Trainer.log`` (so every ``report_to`` integration receives it); ``on_train_end`` writes the
  compute ledger.
* ``_save_checkpoint`` / ``train(resume_from_checkpoint=...)`` — the session's state (counts,
  validation history, the selector's RNG, the rest of the current decision) is written into every
  checkpoint folder as ``raise_selection.json`` and read back on resume.

DDP: rank 0 decides and broadcasts the decision; each validation pass is sharded, every rank
scoring every W-th example in length order, and the per-example losses summed over ranks, so W
ranks pay 1/W of the pass and all get the one-process validation loss. Every rank keeps the same
state. Only rank 0 writes ``selections.jsonl``, ``metrics.jsonl`` and ``ledger.json`` (the run
folder formats of :mod:`raise_select.pipeline`) into ``output_dir``. ``ledger.json`` has three
phases: ``finetune`` (Trainer's updates: training tokens), ``validation`` (the passes, in training
tokens' equivalent) and ``selection`` (the selector's seconds), each in Φ (one full-data run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..config import TrainConfig
from ..data.tokenize import IGNORE_INDEX, TokenizedSet
from ..data.types import Pool
from ..decisions import DecisionTracker, metrics_record, selection_record
from ..environment import resolve_budget
from ..errors import UserError
from ..io_utils import append_jsonl, read_json, read_jsonl, write_json, write_jsonl
from ..model import LoadedModel
from ..pipeline import PhaseCost, Workbench, forward_token_weight, full_data_cost, ledger
from ..protocol import EnvState, HasClusters, Selector
from ..run_folders import LEDGER_FILE
from ..run_folders import METRICS_FILE as METRICS
from ..run_folders import SELECTIONS_FILE as SELECTIONS
from ..selectors.state import load_selector_state, selector_state

SELECTION_STATE = "raise_selection.json"  # the session's state inside a Trainer checkpoint folder


class SelectionSession:
    """A selector driving a training loop it does not own: decisions, stage state and their logs.

    It plays the part of :class:`~raise_select.environment.FineTuneEnv` minus the optimizer: the
    loop trains, the session decides which examples and measures the validation loss after each
    decision. Build it with :meth:`from_workbench`.
    """

    def __init__(
        self,
        selector: Selector,
        pool: Pool,
        pool_tokens: TokenizedSet,
        validation_tokens: TokenizedSet,
        lm: LoadedModel,
        train: TrainConfig,
        budget_steps: int,
        seed: int,
        validation_token_weight: float = 1 / 3,
    ):
        """``validation_token_weight``: a forward-only token's cost in training tokens, for the ledger
        (:func:`~raise_select.pipeline.forward_token_weight`: 1/3 full fine-tuning, 1/2 LoRA)."""
        self.selector, self.pool, self.pool_tokens = selector, pool, pool_tokens
        self.train, self.budget, self.seed = train, budget_steps, seed
        # state, counts, evaluations and rewards: the same bookkeeping as FineTuneEnv's
        self.tracker = DecisionTracker(lm, pool_tokens, validation_tokens, train, budget_steps, train.eval_every)
        self.pending = np.empty((0, train.batch_size), dtype=np.int64)  # this decision's updates not yet trained
        self.selections: list[dict] = []  # this process's selections.jsonl rows (every rank keeps them)
        self.output: Path | None = None  # where selections.jsonl / metrics.jsonl go (None: not written here)
        self.is_main = True  # decides (rank 0 under DDP)
        self.broadcast: Callable = lambda value: value  # rank 0's value to every rank (identity in one process)
        self.validation_token_weight = validation_token_weight
        # ledger phases besides Trainer's updates; "finetune" holds the seconds of earlier sessions on resume
        self.costs = {"finetune": PhaseCost(), "validation": PhaseCost(), "selection": PhaseCost()}
        self.started: float | None = None  # when this process's training (or resumed part) began
        self.others_at_start = 0.0  # validation and selection seconds before it (earlier sessions')

    @property
    def state(self) -> EnvState:
        return self.tracker.state

    @property
    def decisions(self) -> int:
        return self.tracker.decisions

    @property
    def tokens(self) -> int:
        """Training tokens (prompt + response) of the decisions so far."""
        return self.tracker.tokens

    @property
    def lm(self) -> LoadedModel:
        """The model being trained, for validation and loss probes."""
        return self.tracker.lm

    @lm.setter
    def lm(self, lm: LoadedModel) -> None:
        self.tracker.lm = lm

    @classmethod
    def from_workbench(
        cls,
        bench: Workbench,
        selector: Selector,
        budget_steps: int | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> SelectionSession:
        """Bind ``selector`` to the workbench's pool and target; the model is put back to its base weights."""
        config = bench.config
        seed = config.seed if seed is None else seed
        budget = budget_steps or resolve_budget(len(bench.pool), config.train)
        selector.setup(bench.selection_context(selector, budget, seed, progress=progress))
        bench.lm.restore(bench.base_weights)  # as FineTuneEnv.reset: every run starts from the loaded weights
        selector.reset(seed)
        return cls(
            selector,
            bench.pool,
            bench.pool_tokens,
            bench.validation_tokens,
            bench.lm,
            config.train,
            budget,
            seed,
            validation_token_weight=forward_token_weight(config.model),
        )

    # -- what the training loop must be configured with ----------------------------------------
    def training_arguments(self, world_size: int | None = None, gradient_accumulation_steps: int = 1) -> dict:
        """``TrainingArguments`` / ``SFTConfig`` keywords that reproduce our environment's update rule.

        One AdamW update (torch's, betas 0.9/0.999, eps 1e-8) per ``train.batch_size`` examples at a
        constant learning rate after ``train.warmup_steps`` of linear warm-up, the same weight decay and gradient clipping, the budget
        as ``max_steps``. ``per_device_train_batch_size`` is B / (world_size x accumulation). On a
        CPU model it sets ``use_cpu``, which makes ``torchrun`` on CPU real DDP (gloo).
        ``world_size`` defaults to ``$WORLD_SIZE`` (set by ``torchrun``), else 1.
        """
        if world_size is None:
            world_size = int(os.environ.get("WORLD_SIZE", 1))
        batch_size = self.train.batch_size
        if batch_size % (world_size * gradient_accumulation_steps):
            raise UserError(
                f"train.batch_size={batch_size} is not divisible by world size {world_size} x gradient accumulation "
                f"{gradient_accumulation_steps}; choose a batch size that splits evenly over ranks and micro-batches"
            )
        return {
            "per_device_train_batch_size": batch_size // (world_size * gradient_accumulation_steps),
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "max_steps": self.budget,
            "learning_rate": self.train.learning_rate,
            "weight_decay": self.train.weight_decay,
            "max_grad_norm": self.train.max_grad_norm,
            "lr_scheduler_type": "constant_with_warmup",  # what the native environment uses
            "warmup_steps": self.train.warmup_steps,
            "optim": "adamw_torch",
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
            "adam_epsilon": 1e-8,
            "average_tokens_across_devices": True,  # token-weighted mean over all ranks, as one process would
            "seed": self.seed,
            "use_cpu": self.lm.device.type == "cpu",  # without it, torchrun on CPU silently trains one process per rank
        }

    def train_dataset(self) -> Dataset:
        """Pool row i = example i, for ``Trainer``: rows are indices, :meth:`collate` builds the batch."""
        return _IndexDataset(len(self.pool_tokens))

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The batch our environment trains on: right-padded, labels -100 on prompt and padding."""
        return self.pool_tokens.collate(indices, self.lm.tokenizer.pad_token_id)

    def sft_dataset(self):
        """The pool pre-tokenized for TRL's ``SFTTrainer`` (``input_ids`` and ``labels``; no re-tokenization)."""
        from datasets import Dataset as HFDataset

        rows = {"input_ids": [], "labels": []}
        for ids, prompt_length in zip(self.pool_tokens.input_ids, self.pool_tokens.prompt_lengths):
            rows["input_ids"].append(ids.tolist())
            rows["labels"].append([IGNORE_INDEX] * int(prompt_length) + ids[prompt_length:].tolist())
        return HFDataset.from_dict(rows)

    # -- the loop's events -----------------------------------------------------------------------
    def begin(self) -> dict | None:
        """Before the first update: the base validation loss (nothing on resume)."""
        self.started = time.perf_counter()
        self.others_at_start = self.costs["validation"].seconds + self.costs["selection"].seconds
        if self.state.validation_history:
            return None
        initial = self._validation_pass()
        self.state.validation_history.append(initial)
        self._append(METRICS, metrics_record(0, 0, initial, None, 0))
        return {"raise/validation_loss": initial}

    def next_update(self) -> np.ndarray:
        """The ``batch_size`` pool indices of the next optimizer update (deciding when a decision is used up)."""
        if self.state.step >= self.budget:
            raise RuntimeError("the selection budget is spent")
        if not len(self.pending):
            self._decide()
        return self.pending[0]

    def update_done(self) -> dict | None:
        """After an optimizer update: when it ends a decision, evaluate (every ``eval_every``) and return the log."""
        self.pending = self.pending[1:]
        self.state.step += 1
        if len(self.pending) or not self.tracker.evaluation_due():
            return None
        validation = self._validation_pass()
        reward = self.tracker.record_evaluation(validation)
        self._append(METRICS, metrics_record(self.decisions, self.state.step, validation, reward, self.tokens))
        return {
            "raise/validation_loss": validation,
            "raise/reward": reward,
            "raise/decision": self.decisions,
            "raise/pool_used": float((self.state.selection_counts > 0).mean()),
        }

    def end(self) -> None:
        """After the last update: write ``ledger.json`` (rank 0)."""
        if self.output is None or self.started is None:
            return
        phases = self._costs_so_far()
        seconds_per_token = phases["finetune"].seconds / max(self.tokens, 1)
        write_json(
            self.output / LEDGER_FILE, ledger(full_data_cost(self.pool_tokens, self.train), phases, seconds_per_token)
        )

    def _validation_pass(self) -> float:
        """The current validation loss on every rank (under DDP each rank scores its share)."""
        started = time.perf_counter()
        validation = self.evaluate()
        tokens = self.tracker.evaluation_tokens() * self.validation_token_weight
        self.costs["validation"].add(time.perf_counter() - started, round(tokens))
        return validation

    def _decide(self) -> None:
        started = time.perf_counter()
        chosen = self.broadcast(np.asarray(self.selector.select(self.state), dtype=np.int64) if self.is_main else None)
        self.costs["selection"].add(time.perf_counter() - started, 0)
        indices = self.tracker.check(chosen, f"selector '{self.selector.name}'")
        step = self.state.step
        self.tracker.record_decision(indices)
        self.pending = indices.reshape(-1, self.state.batch_size)
        clusters = self.selector.clusters if isinstance(self.selector, HasClusters) else None
        self.selections.append(selection_record(self.pool, self.decisions, step, indices, clusters))
        self._append(SELECTIONS, self.selections[-1])

    # -- measurements ----------------------------------------------------------------------------
    def evaluate(self) -> float:
        return self.tracker.evaluate()

    def probe_losses(self, indices) -> np.ndarray:
        return self.tracker.probe_losses(indices)

    # -- logs and checkpoints --------------------------------------------------------------------
    def open_logs(self, output: Path | None) -> None:
        """Start this process's logs in ``output``: a fresh run replaces old ones; a resumed one keeps its rows."""
        self.output = Path(output) if output is not None else None
        if self.output is None:
            return
        self.output.mkdir(parents=True, exist_ok=True)
        for name in (SELECTIONS, METRICS):
            path = self.output / name
            if self.decisions == 0 and not self.state.validation_history:
                path.unlink(missing_ok=True)
            elif path.is_file():  # rows written after the checkpoint we resume from are dropped
                write_jsonl(path, [row for row in read_jsonl(path) if row["decision"] <= self.decisions])

    def _append(self, name: str, row: dict) -> None:
        if self.output is not None:
            append_jsonl(self.output / name, row)

    def state_dict(self) -> dict:
        return {
            "selector": self.selector.name,
            "pool_size": self.state.pool_size,
            "budget": self.budget,
            "batch_size": self.train.batch_size,
            "decision_interval": self.train.decision_interval,
            "seed": self.seed,
            "step": self.state.step,
            "decisions": self.decisions,
            "tokens": self.tokens,
            "validation_history": list(self.state.validation_history),
            "selection_counts": self.state.selection_counts.tolist(),
            "pending": self.pending.tolist(),
            "selector_state": selector_state(self.selector),
            "costs": {name: [cost.seconds, cost.tokens] for name, cost in self._costs_so_far().items()},
        }

    def _costs_so_far(self) -> dict[str, PhaseCost]:
        """The ledger's phases until now: ``finetune`` is the time since :meth:`begin` (plus that of the
        runs before a resume) less this run's validation and selection, with the training tokens."""
        costs = {name: PhaseCost(cost.seconds, cost.tokens) for name, cost in self.costs.items()}
        if self.started is not None:
            others = costs["validation"].seconds + costs["selection"].seconds - self.others_at_start
            costs["finetune"].seconds += time.perf_counter() - self.started - others
        costs["finetune"].tokens = self.tokens
        return costs

    def load_state_dict(self, saved: dict, where: str = "checkpoint") -> None:
        """Continue from :meth:`state_dict`; refuses a checkpoint written for another selector, pool or budget."""
        current = self.state_dict()
        for key in ("selector", "pool_size", "budget", "batch_size", "decision_interval", "seed"):
            if saved[key] != current[key]:
                raise UserError(
                    f"{where} was written with {key}={saved[key]!r} but this run has {key}={current[key]!r}; "
                    "resume with the same selector, pool, budget, batch size and seed"
                )
        self.state.step, self.tracker.decisions, self.tracker.tokens = (
            saved["step"],
            saved["decisions"],
            saved["tokens"],
        )
        self.state.validation_history = list(saved["validation_history"])
        self.state.selection_counts = np.asarray(saved["selection_counts"], dtype=np.int64)
        self.pending = np.asarray(saved["pending"], dtype=np.int64).reshape(-1, self.train.batch_size)
        load_selector_state(self.selector, saved["selector_state"])
        for name, (seconds, tokens) in saved.get("costs", {}).items():  # absent in older checkpoints
            self.costs[name] = PhaseCost(seconds, tokens)


class _IndexDataset(Dataset):
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return int(index)


class _SelectionCallback(TrainerCallback):
    """Validation loss before training and after each decision, logged through ``Trainer.log``."""

    def __init__(self, trainer: RaiseTrainerMixin):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        return self._log(self.trainer.selection.begin(), control)

    def on_step_end(self, args, state, control, **kwargs):
        return self._log(self.trainer.selection.update_done(), control)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.selection.end()

    def _log(self, logs: dict | None, control):
        if logs:
            should_log = control.should_log  # Trainer.log clears it; this step's own loss log must still happen
            self.trainer.log(logs)
            control.should_log = should_log
        return control


def _broadcast_from_main(value):
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _sum_over_ranks(values: np.ndarray) -> np.ndarray:
    """Element-wise sum over the ranks, in float64 (on the device gloo or NCCL reduces on)."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
    tensor = torch.from_numpy(np.asarray(values, dtype=np.float64)).to(device)
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().numpy()


class RaiseTrainerMixin:
    """Put before a ``Trainer`` subclass: ``class MyTrainer(RaiseTrainerMixin, Trainer)``; pass ``selection=``.

    The train dataset's row i must be pool example i (the defaults: :meth:`SelectionSession.train_dataset`
    with :meth:`SelectionSession.collate`; for TRL, :meth:`SelectionSession.sft_dataset`).
    """

    def __init__(self, *args, selection: SelectionSession, **kwargs):
        self.selection = selection
        super().__init__(*args, **kwargs)
        self._check_selection_setup()
        world_size = self.args.world_size
        selection.is_main = self.args.process_index == 0
        if world_size > 1:
            selection.broadcast = _broadcast_from_main
            selection.tracker.shard = (self.args.process_index, world_size)
            selection.tracker.sum_over_ranks = _sum_over_ranks
        if selection.lm.model is not self.model:  # validate the model this trainer trains
            selection.lm = replace(selection.lm, model=self.model, device=self.args.device)
        self.add_callback(_SelectionCallback(self))

    def _check_selection_setup(self) -> None:
        args, selection = self.args, self.selection
        if args.max_steps > 0 and args.max_steps != selection.budget:
            raise UserError(
                f"max_steps={args.max_steps} differs from the selection budget {selection.budget} steps; "
                "leave max_steps unset or use SelectionSession.training_arguments()"
            )
        args.max_steps = selection.budget
        per_update = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        if per_update != selection.train.batch_size:
            raise UserError(
                f"per_device_train_batch_size x gradient_accumulation_steps x world size = {per_update} but "
                f"train.batch_size={selection.train.batch_size}; use SelectionSession.training_arguments(world_size, ...)"
            )
        if self.train_dataset is None or len(self.train_dataset) != len(selection.pool_tokens):
            rows = None if self.train_dataset is None else len(self.train_dataset)
            raise UserError(
                f"the train dataset has {rows} rows but the pool has {len(selection.pool_tokens)}; row i "
                "must be pool example i (use session.train_dataset() or session.sft_dataset(), no packing)"
            )

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise UserError(
                    f"no checkpoint to resume from in {self.args.output_dir}; train without resume_from_checkpoint"
                )
        if resume_from_checkpoint:
            state_file = Path(resume_from_checkpoint) / SELECTION_STATE
            if not state_file.is_file():
                raise UserError(
                    f"{resume_from_checkpoint} has no {SELECTION_STATE}; resume from a checkpoint a RaiseTrainer wrote"
                )
            self.selection.load_state_dict(read_json(state_file), where=str(resume_from_checkpoint))
        elif self.selection.state.validation_history:
            raise UserError("this selection session already ran; build a new SelectionSession for another run")
        self.selection.open_logs(self.args.output_dir if self.selection.is_main else None)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        # Never read (get_batch_samples builds the batches): it only makes one epoch = the budget, A micro-batches a step.
        return DataLoader(_IndexDataset(self.selection.budget * self.args.gradient_accumulation_steps), batch_size=1)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        accumulation, world_size = self.args.gradient_accumulation_steps, self.args.world_size
        if num_batches != accumulation or self.selection.state.step != self.state.global_step:
            raise RuntimeError(
                f"selection out of step with Trainer: update {self.selection.state.step} vs global step "
                f"{self.state.global_step}, {num_batches} micro-batches vs accumulation {accumulation}"
            )
        update = self.selection.next_update()
        share = update.reshape(world_size, accumulation, -1)[self.args.process_index]  # this rank's micro-batches
        batches = [self.data_collator([self.train_dataset[int(i)] for i in micro]) for micro in share]
        return batches, self._get_num_items_in_batch(batches, device)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            write_json(folder / SELECTION_STATE, self.selection.state_dict())


class RaiseTrainer(RaiseTrainerMixin, Trainer):
    """``transformers.Trainer`` whose every optimizer step trains on what the session's selector chose."""

    def __init__(self, *args, selection: SelectionSession, **kwargs):
        kwargs.setdefault("train_dataset", selection.train_dataset())
        kwargs.setdefault("data_collator", selection.collate)
        super().__init__(*args, selection=selection, **kwargs)
