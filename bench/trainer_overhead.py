"""Steps per second of plain ``transformers.Trainer`` vs Trainer + RAISE, same model, pool and batches.

    python bench/trainer_overhead.py [--steps N] [--smollm2-steps N] [--skip-smollm2] [--threads K]

Both trainers train ``train.batch_size`` = 8 pool examples (synthetic testbed pool, 256 examples,
48 tokens max) per optimizer step with the same TrainingArguments. Plain Trainer draws them with its
random sampler; RaiseTrainer lets an (untrained, same cost as trained) RAISE selector choose each
step's batch from the current state. RAISE rows differ in how often the validation loss (the
stage feature and reward, 32 target examples) is evaluated: every decision (our environment's
default, ``train.eval_every=1``), every 4th, or only before and after training ("selection
only": the cost of the hooks and of choosing). Steps/s is timed from the end of the first
``--warmup`` steps to the end of the last step (its final evaluation excluded). Prints a table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from raise_select.config_io import load_config
from raise_select.integrations import RaiseTrainer, SelectionSession
from raise_select.pipeline import Workbench
from raise_select.selectors.raise_policy import RaiseSelector

MODELS = {  # name -> overrides on top of the testbed
    "synthetic-tiny (full)": ["model.name=synthetic-tiny", "model.finetune=full"],
    "SmolLM2-135M (LoRA r=8)": ["model.name=smollm2", "model.finetune=lora"],
}
TESTBED = [
    "pool.sources=[{name: synthetic, limit: 256}]",
    "pool.max_length=48",
    "target.name=synthetic",
    "target.n_validation=32",
    "train.batch_size=8",
    "train.learning_rate=1e-4",
    "features.pca_dim=8",
    "raise.clusters=2",
]


class StepClock(TrainerCallback):
    """Wall time from the end of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.started, self.finished, self.steps = warmup, None, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if state.global_step == self.warmup:
            self.started = now
        self.finished, self.steps = now, state.global_step - self.warmup

    @property
    def steps_per_second(self) -> float:
        return self.steps / (self.finished - self.started)


def measure(bench: Workbench, steps: int, warmup: int, eval_every: int | None, output: str) -> float:
    """Steps/s of plain Trainer (eval_every None) or RaiseTrainer validating every ``eval_every`` decisions."""
    bench.config.train.budget_steps = steps
    bench.config.train.eval_every = eval_every or 1
    session = SelectionSession.from_workbench(bench, RaiseSelector(bench.config.raise_), budget_steps=steps)
    args = TrainingArguments(
        output_dir=output,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=steps,
        **session.training_arguments(world_size=1),
    )
    clock = StepClock(warmup)
    if eval_every is None:
        trainer = Trainer(
            model=bench.lm.model,
            args=args,
            train_dataset=session.train_dataset(),
            data_collator=session.collate,
            callbacks=[clock],
        )
    else:
        trainer = RaiseTrainer(model=bench.lm.model, args=args, selection=session, callbacks=[clock])
    trainer.train()
    return clock.steps_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per measurement, synthetic-tiny")
    parser.add_argument("--smollm2-steps", type=int, default=12, help="optimizer steps per measurement, SmolLM2")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repetitions; the best of each is kept")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a small shared CPU)")
    parser.add_argument("--output", default="runs/bench-trainer-overhead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for label, overrides in MODELS.items():
        if args.skip_smollm2 and "SmolLM2" in label:
            continue
        bench = Workbench.build(load_config(None, [*TESTBED, *overrides]))
        steps = args.steps if "tiny" in label else args.smollm2_steps
        variants = {
            "plain Trainer": None,
            "+ RAISE, validate every decision": 1,
            "+ RAISE, validate every 4": 4,
            "+ RAISE, selection only": steps,
        }
        best = {name: 0.0 for name in variants}
        for _ in range(args.repeats):  # alternate, so load changes on a shared machine hit every variant
            for name, eval_every in variants.items():
                best[name] = max(best[name], measure(bench, steps, args.warmup, eval_every, args.output))
        plain = best["plain Trainer"]
        rows += [(label, name, value, value / plain) for name, value in best.items()]

    print(f"\n{'model':<26} {'trainer':<34} {'steps/s':>8} {'ratio':>6}")
    for label, name, value, ratio in rows:
        print(f"{label:<26} {name:<34} {value:>8.2f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
