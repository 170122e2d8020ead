"""The command-line options shared by ``examples/hf_trainer.py`` and ``examples/trl_sft.py``.

Both default to the synthetic testbed (``recipes/demo_quick.yaml``: synthetic-tiny, full
fine-tuning, a 1000-example generated pool, the addition target), which runs in well under a
minute on a CPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import resources

from ..config import Config, SourceConfig
from ..config_io import load_config
from ..errors import UserError
from ..pipeline import Workbench
from ..selectors import build_selector
from .hf_trainer import SelectionSession


def script_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config (default: the synthetic testbed, recipes/demo_quick.yaml)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--policy", help="trained RAISE selector folder (raise-select train-selector)")
    choice.add_argument(
        "--selector", help="a baseline instead of RAISE: random, longest, ifd, targeted, ... (default: random)"
    )
    parser.add_argument(
        "--output", default="runs/trainer", help="Trainer output_dir: checkpoints, selections.jsonl, metrics.jsonl"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, help="optimizer steps (the selection budget; default: the config's)")
    parser.add_argument("--model", help="model.name: synthetic-tiny, smollm2 or a local folder")
    parser.add_argument("--pool", help="pool file or datasets folder, or a bundled source name")
    parser.add_argument("--target", help="target.name: a bundled target or a JSONL file")
    parser.add_argument(
        "--grad-accum", type=int, default=1, help="gradient accumulation steps (micro-batches per update)"
    )
    parser.add_argument("--report-to", default="none", help="Trainer report_to: none, tensorboard, wandb, ...")
    parser.add_argument("overrides", nargs="*", help="config overrides: field.path=value (e.g. train.batch_size=16)")
    return parser


def config_from_arguments(args: argparse.Namespace) -> Config:
    config_path = args.config or resources.files("raise_select") / "recipes" / "demo_quick.yaml"
    config = load_config(config_path, args.overrides)
    config.seed = args.seed
    config.selector = "raise" if args.policy else (args.selector or "random")
    config.raise_.policy = args.policy or config.raise_.policy
    if args.max_steps is not None:
        config.train.budget_steps = args.max_steps
    if args.model:
        config.model.name = args.model
    if args.pool:
        config.pool.sources = [SourceConfig(name=args.pool)]
    if args.target:
        config.target.name = args.target
    return config


def check_report_to(report_to: str) -> None:
    """``--report-to tensorboard`` needs an event writer (Trainer uses TensorBoard's or tensorboardX)."""
    if "tensorboard" not in report_to.split(","):
        return
    for module in ("tensorboardX", "tensorboard"):
        try:
            __import__(module)
            return
        except ImportError:
            continue
    raise UserError("--report-to tensorboard needs tensorboardX: pip install raise-select[tensorboard]")


def session_from_arguments(args: argparse.Namespace) -> tuple[Workbench, SelectionSession]:
    """Build the selector first (a bad name or policy fails before the model loads), then pool, target and model."""
    config = config_from_arguments(args)
    selector = build_selector(config.selector, config)
    bench = Workbench.build(config)
    return bench, SelectionSession.from_workbench(bench, selector)


def run_script(description: str, train: Callable) -> None:
    """Parse the options, build the session, call ``train(args, bench, session)`` (which returns the
    trainer after training), and print the result on rank 0; a UserError is one line and exit status 2."""
    try:
        args = script_arguments(description).parse_args()
        check_report_to(args.report_to)
        bench, session = session_from_arguments(args)
        trainer = train(args, bench, session)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    if trainer.is_world_process_zero():
        history = session.state.validation_history
        print(
            f"validation loss {history[0]:.4f} -> {history[-1]:.4f} after {session.state.step} steps; "
            f"selections: {args.output}/selections.jsonl"
        )
