"""raise-select: RAISE (Reinforced Adaptive Instruction SElection) for LLM instruction tuning.

Data flows one way: pool + target -> features -> selector -> environment -> metrics -> report.

The public API (``import raise_select as rs``)::

    config = rs.load_config(rs.recipe_path("demo_quick"), ["raise.episodes=8"])   # or a YAML file, or rs.Config()
    bench = rs.Workbench.build(config)                  # pool, target, model, tokenized sets (features on demand)
    policy = rs.train_raise_selector(config, "runs/sel", bench=bench)  # PPO; the selector folder
    result = rs.run_finetune(bench, rs.build_selector("random", config), None, budget_steps=8, seed=0)
    rs.run_comparison(config, "runs/cmp"); rs.write_report("runs/cmp")

Callbacks (:class:`Callback`, :class:`CallbackList`, :class:`ProgressBar`) observe and stop both
selector training and fine-tuning runs. Names are imported on first use, so ``import raise_select``
stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# The public names and the module each comes from: the one export list (``__all__`` is made from it;
# the TYPE_CHECKING imports at the end mirror it for type checkers, and tests/test_api.py checks they agree).
_EXPORTS = {
    # configuration
    "Config": "config",
    "load_config": "config_io",
    "dump_config": "config_io",
    "validate": "config",
    "recipe_path": "config_io",
    # the pipeline
    "Workbench": "pipeline",
    "run_finetune": "pipeline",
    "RunResult": "run_folders",
    "train_raise_selector": "experiments",
    "run_comparison": "experiments",
    "write_report": "report",
    # selectors
    "build_selector": "selectors",
    "SELECTORS": "selectors",
    "Selector": "protocol",
    "SelectionContext": "protocol",
    "EnvState": "protocol",
    "RaiseSelector": "selectors.raise_policy",
    "load_artifact": "selector_artifact",
    # selector training, lower level
    "train_policy": "ppo",
    "FineTuneEnv": "environment",
    # callbacks
    "Callback": "callbacks",
    "CallbackList": "callbacks",
    "ProgressBar": "callbacks",
    # errors
    "UserError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .callbacks import Callback, CallbackList, ProgressBar
    from .config import Config, validate
    from .config_io import dump_config, load_config, recipe_path
    from .environment import FineTuneEnv
    from .errors import UserError
    from .experiments import run_comparison, train_raise_selector
    from .pipeline import Workbench, run_finetune
    from .ppo import train_policy
    from .protocol import EnvState, SelectionContext, Selector
    from .report import write_report
    from .run_folders import RunResult
    from .selector_artifact import load_artifact
    from .selectors import SELECTORS, build_selector
    from .selectors.raise_policy import RaiseSelector
