"""Selectors: the learned RAISE policy and the baselines it is compared against.

``SELECTORS`` maps every name the CLI accepts to a one-line description (taken from each class's
docstring); :func:`build_selector` constructs one by name. The ``Selector`` protocol and what a
selector reads (``SelectionContext``, ``EnvState``) are in :mod:`raise_select.protocol`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UserError
from .baselines import (
    HighLossSelector,
    HighPerplexitySelector,
    IFDSelector,
    LongestSelector,
    LowPerplexitySelector,
    SelfPacedSelector,
    TargetedSelector,
)
from .mixtures import FamilyMixtureSelector, ScheduledOracleSelector
from .simple import FullDataSelector, OracleSelector, RandomSelector

if TYPE_CHECKING:
    from ..config import Config
    from ..protocol import Selector

_BASELINE_CLASSES = (
    RandomSelector,
    FullDataSelector,
    LongestSelector,
    IFDSelector,
    LowPerplexitySelector,
    HighPerplexitySelector,
    TargetedSelector,
    SelfPacedSelector,
    HighLossSelector,
    OracleSelector,
    ScheduledOracleSelector,
    FamilyMixtureSelector,
)

SELECTORS: dict[str, str] = {
    "raise": "the learned RAISE policy: a PPO-trained acquisition function scoring every candidate at every step",
    **{cls.name: cls.__doc__.strip().splitlines()[0] for cls in _BASELINE_CLASSES},
}


def build_selector(name: str, config: Config) -> Selector:
    """Construct the selector called ``name`` (see :data:`SELECTORS`)."""
    if name == "raise":
        if config.raise_.policy is None:
            raise UserError("--selector raise needs --policy PATH (train one with raise-select train-selector)")
        from .raise_policy import RaiseSelector  # lazy: pulls in the policy network and PPO code

        return RaiseSelector.load(config.raise_.policy)
    for cls in _BASELINE_CLASSES:
        if cls.name == name:
            return cls()
    raise UserError(f"unknown selector '{name}'; valid selectors: {', '.join(SELECTORS)}")
