"""Use a selector inside the training loops users already have.

:class:`RaiseTrainer` (``transformers.Trainer``), :class:`RaiseTrainerMixin` (put it before any
Trainer subclass) and ``RaiseSFTTrainer`` (TRL's ``SFTTrainer``; needs ``pip install raise-select[trl]``),
all driven by a :class:`SelectionSession`. See :mod:`raise_select.integrations.hf_trainer`.
"""

from __future__ import annotations

from ..errors import UserError
from .hf_trainer import RaiseTrainer, RaiseTrainerMixin, SelectionSession


def __getattr__(name: str):
    if name == "RaiseSFTTrainer":  # TRL is optional: import it only when asked for
        try:
            from .trl_sft import RaiseSFTTrainer
        except ImportError as exc:
            if "trl" not in str(exc):
                raise
            raise UserError("RaiseSFTTrainer needs TRL: pip install raise-select[trl]") from None
        return RaiseSFTTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RaiseSFTTrainer", "RaiseTrainer", "RaiseTrainerMixin", "SelectionSession"]
