"""Steps per second of plain ``transformers.Trainer`` vs Trainer + RAISE, same model, pool and batches.

    python bench/trainer_overhead.py [--steps N] [--smollm2-steps N] [--skip-smollm2] [--skip-ddp] [--threads K]
                                     [--eval-every 1 2 4] [--config FILE [field=value ...]] [--tiny [--ddp]]

Both trainers train ``train.batch_size`` = 8 pool examples (synthetic testbed pool, 256 examples,
48 tokens max) per optimizer step with the same TrainingArguments. Plain Trainer draws them with its
random sampler; RaiseTrainer lets an (untrained, same cost as trained) RAISE selector choose each
step's batch from the current state. RAISE rows differ in how often the validation loss (the
stage feature and reward, 32 target examples) is evaluated: only before and after training
("selection only": the cost of the hooks and of choosing), every decision (``train.eval_every=1``),
every 2nd or every 4th (``--eval-every``). The last two rows run both trainers on 2 processes (``torchrun
--nproc_per_node 2``, gloo on a CPU; each rank trains 4 of the 8 examples per step) with the
validation pass after every decision sharded: each rank scores half of it. Steps/s is timed from the
end of the first ``--warmup`` steps to the end of the last step (its final evaluation excluded), on
rank 0. ``--tiny``: the tiny model, 4 steps, one repetition, one process (``--tiny --ddp`` adds the
2-process rows: 25 s more on 2 cores), in seconds. ``--config FILE``: one model, pool, target and batch
size, those of FILE (for example ``examples/configs/smollm2_gsm8k_mixed.yaml``, the SmolLM2 experiment's
160-token mixed pool and its 24 GSM8K validation examples), measured for ``--smollm2-steps`` steps with
one process. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    """Steps/s of plain Trainer (eval_every None) or RaiseTrainer validating every ``eval_every`` decisions
    (on ``$WORLD_SIZE`` processes under torchrun)."""
    bench.config.train.budget_steps = steps
    bench.config.train.eval_every = eval_every or 1
    session = SelectionSession.from_workbench(bench, RaiseSelector(bench.config.raise_), budget_steps=steps)
    args = TrainingArguments(
        output_dir=output,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=steps,
        **session.training_arguments(),
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
    parser.add_argument("--skip-ddp", action="store_true", help="no 2-process rows")
    parser.add_argument("--ddp", action="store_true", help="with --tiny: the 2-process rows too")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a small shared CPU)")
    parser.add_argument("--output", default="runs/bench-trainer-overhead")
    parser.add_argument("--tiny", action="store_true", help="the tiny model, 4 steps, one repetition: seconds")
    parser.add_argument("--eval-every", type=int, nargs="+", default=[1, 2, 4], help="validation schedules measured")
    parser.add_argument("--config", help="measure this config's model, pool and target instead (one process)")
    parser.add_argument("overrides", nargs="*", help="with --config: field.path=value")
    parser.add_argument("--ddp-results", help=argparse.SUPPRESS)  # set on the torchrun processes: rank 0 writes here
    args = parser.parse_args()
    if args.overrides and not args.config:
        parser.error("field=value overrides need --config (the built-in rows use fixed settings)")
    torch.set_num_threads(args.threads)
    if args.ddp_results:
        ddp_worker(args)
        return
    if args.tiny:
        args.skip_smollm2, args.steps, args.warmup, args.repeats = True, 4, 1, 1
        args.skip_ddp = not args.ddp
        with tempfile.TemporaryDirectory() as folder:
            args.output = folder
            overhead_table(args)
    else:
        overhead_table(args)


def models(args: argparse.Namespace) -> dict[str, tuple[str | None, list[str], int]]:
    """The measured models: label -> (config file, overrides, steps per measurement)."""
    if args.config:
        return {Path(args.config).stem: (args.config, args.overrides, args.smollm2_steps)}
    return {
        label: (None, [*TESTBED, *overrides], args.steps if "tiny" in label else args.smollm2_steps)
        for label, overrides in MODELS.items()
        if not (args.skip_smollm2 and "SmolLM2" in label)
    }


def best_of(bench: Workbench, variants: dict[str, int | None], steps: int, args: argparse.Namespace) -> dict:
    """Each variant's best steps/s over ``args.repeats`` alternating repetitions (load changes on a shared
    machine hit every variant)."""
    best = {name: 0.0 for name in variants}
    for _ in range(args.repeats):
        for name, eval_every in variants.items():
            best[name] = max(best[name], measure(bench, steps, args.warmup, eval_every, args.output))
    return best


def overhead_table(args: argparse.Namespace) -> None:
    ddp = {} if args.skip_ddp or args.config else ddp_rows(args)
    rows = []
    for label, (config_file, overrides, steps) in models(args).items():
        bench = Workbench.build(load_config(config_file, overrides))
        schedules = {f"+ RAISE, validate every {'decision' if k == 1 else k}": k for k in args.eval_every if k < steps}
        best = best_of(bench, {"plain Trainer": None, "+ RAISE, selection only": steps, **schedules}, steps, args)
        plain = best["plain Trainer"]
        rows += [(label, name, value, value / plain) for name, value in best.items()]
        if label in ddp:
            plain = ddp[label]["plain Trainer"]
            rows += [(label, f"2 processes: {name}", value, value / plain) for name, value in ddp[label].items()]

    print(f"\n{'model':<26} {'trainer':<58} {'steps/s':>8} {'ratio':>6}")
    for label, name, value, ratio in rows:
        print(f"{label:<26} {name:<58} {value:>8.2f} {ratio:>6.2f}")


def ddp_rows(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The 2-process rows: this script again under torchrun (gloo), rank 0's steps/s per model."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = Path(args.output) / "ddp-results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    forwarded = [arg for arg in sys.argv[1:] if arg not in ("--tiny", "--ddp")]
    if args.tiny:
        forwarded += ["--skip-smollm2", "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", "1"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        __file__,
        *forwarded,
        "--output",
        args.output,
        "--ddp-results",
        str(results),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(command, env=environment, check=True)
    return json.loads(results.read_text())


def ddp_worker(args: argparse.Namespace) -> None:
    """One torchrun process: plain Trainer and RAISE validating (sharded) every decision, per model."""
    measured = {}
    for label, (config_file, overrides, steps) in models(args).items():
        bench = Workbench.build(load_config(config_file, overrides), progress=False)
        variants = {"plain Trainer": None, "+ RAISE, validate every decision (sharded)": 1}
        measured[label] = best_of(bench, variants, steps, args)
    if int(os.environ.get("RANK", 0)) == 0:
        Path(args.ddp_results).write_text(json.dumps(measured))


if __name__ == "__main__":
    main()
