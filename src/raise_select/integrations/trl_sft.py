"""RAISE inside TRL's ``SFTTrainer`` (imported lazily: ``pip install raise-select[trl]``).

``SFTTrainer`` only overrides ``training_step``, ``compute_loss``, ``log`` and ``_save_checkpoint``,
so :class:`~raise_select.integrations.hf_trainer.RaiseTrainerMixin` applies unchanged. The train
dataset defaults to :meth:`SelectionSession.sft_dataset` (the pool pre-tokenized with our
rendering, ``labels`` -100 on the prompt), which SFTTrainer does not re-tokenize; its collator pads.
SFTTrainer's own metrics (entropy, token accuracy) are flushed into whichever ``log`` call comes
first, so they also appear in the per-decision ``raise/*`` log rows.
"""

from __future__ import annotations

from trl import SFTTrainer

from ..errors import UserError
from .hf_trainer import RaiseTrainerMixin, SelectionSession


class RaiseSFTTrainer(RaiseTrainerMixin, SFTTrainer):
    """TRL ``SFTTrainer`` whose every optimizer step trains on what the session's selector chose.

    For CPU runs set ``bf16=False`` and ``gradient_checkpointing=False`` in ``SFTConfig`` (TRL's defaults are True).
    """

    def __init__(self, *args, selection: SelectionSession, **kwargs):
        config = kwargs.get("args")
        if config is not None and getattr(config, "packing", False):
            raise UserError(
                "SFTConfig(packing=True) merges pool examples into rows; RAISE selects single examples, set packing=False"
            )
        kwargs.setdefault("train_dataset", selection.sft_dataset())
        super().__init__(*args, selection=selection, **kwargs)
