"""``model.device=cuda``: the model, training steps, validation and a Trainer run on the GPU (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raise_select.integrations import RaiseTrainer, SelectionSession
from raise_select.pipeline import Workbench
from raise_select.selectors.raise_policy import RaiseSelector

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_environment_steps_train_and_evaluate_on_the_gpu(synthetic_config, precision):
    synthetic_config.model.device = "cuda"
    synthetic_config.model.precision = precision
    bench = Workbench.build(synthetic_config, progress=False)
    assert bench.lm.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in bench.lm.model.parameters())
    env = bench.make_env(2)
    env.reset(0)
    before = [p.detach().clone() for p in bench.lm.trainable_parameters()]
    result = env.step(np.arange(synthetic_config.train.batch_size))
    assert np.isfinite(result.train_loss) and np.isfinite(result.validation_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, bench.lm.trainable_parameters()))


def test_raise_trainer_runs_on_the_gpu(synthetic_config, tmp_path):
    from transformers import TrainingArguments

    synthetic_config.model.device = "cuda"
    bench = Workbench.build(synthetic_config, progress=False)
    session = SelectionSession.from_workbench(bench, RaiseSelector(synthetic_config.raise_), budget_steps=3)
    arguments = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", save_strategy="no", **session.training_arguments(world_size=1)
    )
    RaiseTrainer(model=bench.lm.model, args=arguments, selection=session).train()
    assert session.decisions == 3
    assert len(session.state.validation_history) == 4
