"""RAISE inside transformers.Trainer / TRL SFTTrainer: same decisions and losses as our own loop,
resume, DDP (torchrun, 2 CPU processes), logging, and the one-line errors."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from helpers import SYNTHETIC_OVERRIDES
from raise_select.config_io import load_config
from raise_select.errors import UserError
from raise_select.experiments import train_raise_selector
from raise_select.integrations import RaiseTrainer, SelectionSession
from raise_select.io_utils import read_jsonl
from raise_select.pipeline import Workbench, run_finetune
from raise_select.selectors import build_selector

BUDGET = 6


@pytest.fixture(scope="module")
def overrides():
    return [*SYNTHETIC_OVERRIDES, f"train.budget_steps={BUDGET}"]


@pytest.fixture(scope="module")
def policy(overrides, tmp_path_factory):
    """A RAISE selector trained briefly (2 PPO episodes) on the testbed."""
    config = load_config(None, [*overrides, "raise.episodes=2", "raise.minibatch_size=4", "raise.update_epochs=1"])
    return train_raise_selector(config, tmp_path_factory.mktemp("selector"), progress=False)


@pytest.fixture(scope="module")
def bench(overrides, policy):
    return Workbench.build(load_config(None, [*overrides, f"raise.policy={policy}"]))


def _session(bench, name="raise"):
    return SelectionSession.from_workbench(bench, build_selector(name, bench.config))


def _trainer(
    bench,
    session,
    output,
    trainer_class=RaiseTrainer,
    args_class=TrainingArguments,
    accumulation=1,
    callbacks=(),
    **arguments,
):
    arguments = {
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        **arguments,
        **session.training_arguments(gradient_accumulation_steps=accumulation),
    }
    trainer = trainer_class(
        model=bench.lm.model,
        args=args_class(output_dir=str(output), **arguments),
        selection=session,
        processing_class=bench.lm.tokenizer,
    )
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def _native(bench, name, output):
    run_finetune(
        bench, build_selector(name, bench.config), output, BUDGET, bench.config.seed, test_metric=False, progress=False
    )
    return read_jsonl(output / "selections.jsonl"), [
        row["validation_loss"] for row in read_jsonl(output / "metrics.jsonl")
    ]


def _logged(output):
    return read_jsonl(output / "selections.jsonl"), [
        row["validation_loss"] for row in read_jsonl(output / "metrics.jsonl")
    ]


def _weights(bench):
    return {name: p.detach().clone() for name, p in bench.lm.model.named_parameters()}


@pytest.mark.parametrize("decision_interval, accumulation", [(1, 1), (2, 2)])
def test_trainer_reproduces_native_finetune(bench, tmp_path, decision_interval, accumulation):
    """Same selector, seed, pool and budget: decision-by-decision equal selections.jsonl, validation losses within float noise."""
    bench.config.train.decision_interval = decision_interval
    try:
        native_selections, native_losses = _native(bench, "raise", tmp_path / "native")
        native_weights = _weights(bench)
        _trainer(bench, _session(bench), tmp_path / "trainer", accumulation=accumulation).train()
    finally:
        bench.config.train.decision_interval = 1
    selections, losses = _logged(tmp_path / "trainer")
    assert len(selections) == -(-BUDGET // decision_interval)
    _check_ledger(bench, tmp_path / "trainer", tmp_path / "native", len(losses))
    assert selections == native_selections
    assert len(losses) == len(native_losses) and losses[0] == native_losses[0]  # same base weights, same evaluation
    assert losses == pytest.approx(native_losses, rel=1e-4)
    assert losses[-1] < losses[0] - 0.1  # it trained
    # Per weight tensor, relative to its norm: Adam divides each coordinate's update by its own gradient scale,
    # so a coordinate whose gradients are tiny carries the summation-order noise of gradient accumulation
    # further than its tensor does (one of 32768 moved by 1.6e-4 on the shipped testbed model; tensors: at most 2e-5).
    for name, value in _weights(bench).items():
        difference = (value - native_weights[name]).norm() / native_weights[name].norm()
        assert difference < 1e-4, name


def _check_ledger(bench, trainer_output, native_output, evaluations):
    """The Trainer path's ledger.json: the native run's schema, its training tokens, and the validation passes."""
    ledger = json.loads((trainer_output / "ledger.json").read_text())
    native = json.loads((native_output / "ledger.json").read_text())
    assert ledger.keys() == native.keys() and ledger["phi"].keys() == native["phi"].keys()
    assert [ledger["phi"][key] for key in ("steps", "tokens")] == [native["phi"][key] for key in ("steps", "tokens")]
    assert list(ledger["phases"]) == ["finetune", "validation", "selection"]
    assert ledger["phases"]["finetune"].keys() == native["phases"]["finetune"].keys()
    assert ledger["phases"]["finetune"]["tokens"] == native["phases"]["finetune"]["tokens"]
    validation_tokens = int(bench.validation_tokens.lengths.sum())
    assert ledger["phases"]["validation"]["tokens"] == evaluations * round(validation_tokens / 3)  # forward: 1/3
    assert ledger["phases"]["validation"]["phi"] == ledger["phases"]["validation"]["tokens"] / ledger["phi"]["tokens"]
    assert ledger["phases"]["selection"]["seconds"] > 0 and ledger["phases"]["selection"]["tokens"] == 0


def test_deploying_on_another_validation_schedule_is_one_warning_line(bench, policy, caplog):
    """The selector records the schedule it was trained on (the fixture's: every decision); a deployment on
    another one warns once, naming what changes; selectors saved before the record count as every decision."""
    from raise_select.selector_artifact import load_artifact

    assert load_artifact(policy).provenance["eval_every"] == 1
    bench.config.train.eval_every = 3
    try:
        with caplog.at_level("WARNING"):
            _session(bench)
            _session(bench)  # the same selector and schedule again: no second line
    finally:
        bench.config.train.eval_every = 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "every 1 update and runs with one every 3 updates (train.eval_every=3" in warnings[0]
    assert "up to 2 updates old" in warnings[0] and "set train.eval_every=1 to deploy it as trained" in warnings[0]
    caplog.clear()
    selector = build_selector("raise", bench.config)
    del selector.artifact.provenance["eval_every"]  # as in a selector saved before the schedule was recorded
    selector.artifact.provenance["note"] = "older"
    with caplog.at_level("WARNING"):
        SelectionSession.from_workbench(bench, selector)  # deployed every decision, as it was trained: silent
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_the_schedule_warning_counts_updates_not_decisions(bench, caplog):
    """Proxy episodes of 2 updates per decision, a pass every 2nd decision: every 4 updates, as a deployment
    with train.eval_every=4 at one update per decision validates, so that is silent; eval_every=2 is not."""
    from raise_select.pipeline import warn_on_schedule_change

    selector = build_selector("raise", bench.config)
    selector.artifact.provenance.update({"eval_every": 2, "decision_interval": 2, "note": "proxy"})
    with caplog.at_level("WARNING"):
        warn_on_schedule_change(selector, 4, 1)
        warn_on_schedule_change(selector, 2, 2)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    with caplog.at_level("WARNING"):
        warn_on_schedule_change(selector, 2, 1)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "every 4 updates and runs with one every 2 updates" in warning
    assert "up to 1 update old (trained: 3)" in warning and "set train.eval_every=4 to deploy it as trained" in warning


def test_a_selector_trains_and_deploys_on_one_validation_schedule(overrides, tmp_path, caplog):
    """train.eval_every=2: the training episodes evaluate (and reward) every 2nd decision, the selector records
    it, a deployment every 2nd decision is silent, and a resume on another schedule is refused."""
    from raise_select.experiments import check_resume
    from raise_select.selector_artifact import load_artifact

    settings = [*overrides, "raise.episodes=2", "raise.minibatch_size=4", "raise.update_epochs=1"]
    config = load_config(None, [*settings, "train.eval_every=2"])
    policy = train_raise_selector(config, tmp_path / "selector", progress=False)
    assert load_artifact(policy).provenance["eval_every"] == 2
    assert load_artifact(policy).provenance["decision_interval"] == 1
    with caplog.at_level("WARNING"):
        deployed = Workbench.build(load_config(None, [*settings, "train.eval_every=2", f"raise.policy={policy}"]))
        _session(deployed)
    validation_tokens = int(deployed.validation_tokens.lengths.sum())
    for episode in read_jsonl(tmp_path / "selector" / "episodes.jsonl"):  # a pass after decisions 2, 4 and 6
        assert episode["decisions"] == BUDGET and episode["evaluation_tokens"] == BUDGET // 2 * validation_tokens
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    with pytest.raises(UserError, match="different train.eval_every"):
        check_resume(tmp_path / "selector", load_config(None, settings))


def test_sft_trainer_reproduces_native_finetune(bench, tmp_path):
    trl = pytest.importorskip("trl")
    from raise_select.integrations import RaiseSFTTrainer

    native_selections, native_losses = _native(bench, "raise", tmp_path / "native")
    trainer = _trainer(
        bench,
        _session(bench),
        tmp_path / "sft",
        RaiseSFTTrainer,
        trl.SFTConfig,
        accumulation=2,
        bf16=False,
        activation_checkpointing=False,
    )
    trainer.train()
    selections, losses = _logged(tmp_path / "sft")
    assert selections == native_selections
    # Two micro-batches per update sum the gradient in another order than one batch: by the last of the 7
    # passes the losses drift by about 1e-4 relative (measured 1.15e-4 at lr 1e-3); the picks must not move.
    assert losses == pytest.approx(native_losses, rel=3e-4)
    assert any("loss" in row for row in trainer.state.log_history)


@pytest.mark.parametrize("name", ["random", "full", "sspl"])
def test_selector_state_round_trip_continues_the_sequence(bench, name):
    """Generators and epoch samplers saved mid-run: a fresh selector given the state draws what the original draws."""
    from raise_select.selectors.state import load_selector_state, selector_state

    state = _session(bench, name).state
    original = _session(bench, name).selector
    for _ in range(3):
        original.select(state)
    saved = json.loads(json.dumps(selector_state(original)))  # what a checkpoint holds
    assert saved
    restored = _session(bench, name).selector
    load_selector_state(restored, saved)
    for _ in range(40):  # past an epoch boundary of the full-data sampler (240 examples, 8 a draw)
        assert np.array_equal(restored.select(state), original.select(state))


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_from_checkpoint_continues_the_same_sequence(bench, tmp_path):
    """Stop after 4 steps (checkpoint at 3, so one logged step is replayed), resume: same as an uninterrupted run."""
    bench.config.train.eval_every = 2  # the checkpoint falls between two evaluations
    try:
        _trainer(bench, _session(bench, "random"), tmp_path / "whole").train()
        whole_selections, whole_losses = _logged(tmp_path / "whole")
        whole_weights = _weights(bench)
        _trainer(
            bench,
            _session(bench, "random"),
            tmp_path / "parts",
            save_strategy="steps",
            save_steps=3,
            callbacks=[_StopAt(4)],
        ).train()
        assert len(read_jsonl(tmp_path / "parts" / "selections.jsonl")) == 4
        checkpoint = tmp_path / "parts" / "checkpoint-3"
        assert json.loads((checkpoint / "raise_selection.json").read_text())["step"] == 3
        shutil.rmtree(tmp_path / "parts" / "checkpoint-4", ignore_errors=True)
        bench.lm.restore(bench.base_weights)  # the resumed trainer must load the checkpoint's weights itself
        _trainer(bench, _session(bench, "random"), tmp_path / "parts", save_strategy="steps", save_steps=3).train(
            resume_from_checkpoint=str(checkpoint)
        )
    finally:
        bench.config.train.eval_every = 1
    selections, losses = _logged(tmp_path / "parts")
    assert [row["decision"] for row in selections] == list(range(1, BUDGET + 1))
    assert selections == whole_selections
    assert losses == pytest.approx(whole_losses, rel=1e-6)
    for name, value in _weights(bench).items():
        torch.testing.assert_close(value, whole_weights[name], rtol=1e-5, atol=1e-6)


def test_resume_refuses_another_selector_and_a_foreign_checkpoint(bench, tmp_path):
    _trainer(bench, _session(bench, "random"), tmp_path / "run", save_strategy="steps", save_steps=BUDGET).train()
    checkpoint = tmp_path / "run" / f"checkpoint-{BUDGET}"
    with pytest.raises(UserError, match="selector='random'.*resume with the same selector"):
        _trainer(bench, _session(bench, "full"), tmp_path / "run").train(resume_from_checkpoint=str(checkpoint))
    (checkpoint / "raise_selection.json").unlink()
    with pytest.raises(UserError, match="has no raise_selection.json"):
        _trainer(bench, _session(bench, "random"), tmp_path / "run").train(resume_from_checkpoint=str(checkpoint))


def test_logs_reach_report_to_and_keep_the_trainer_loss(bench, tmp_path):
    pytest.importorskip("tensorboardX")
    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer = _trainer(
        bench, _session(bench, "random"), tmp_path / "run", callbacks=[Recorder()], report_to=["tensorboard"]
    )
    trainer.train()
    validation = [row["raise/validation_loss"] for row in seen if "raise/validation_loss" in row]
    assert validation == pytest.approx(_logged(tmp_path / "run")[1])
    assert sum("raise/reward" in row for row in seen) == BUDGET
    assert sum("loss" in row for row in seen) == BUDGET  # Trainer's own per-step loss log still happens
    events = b"".join(path.read_bytes() for path in (tmp_path / "run").rglob("events.out.tfevents*"))
    assert b"raise/validation_loss" in events and b"raise/reward" in events


def test_misconfigured_trainer_is_one_line_user_error(bench, tmp_path):
    session = _session(bench, "random")
    arguments = {**session.training_arguments(), "per_device_train_batch_size": 4}
    with pytest.raises(UserError, match="train.batch_size=8"):
        RaiseTrainer(
            model=bench.lm.model,
            args=TrainingArguments(output_dir=str(tmp_path), report_to="none", **arguments),
            selection=session,
        )
    with pytest.raises(UserError, match="row i must be pool example i"):
        RaiseTrainer(
            model=bench.lm.model,
            args=TrainingArguments(output_dir=str(tmp_path), report_to="none", **session.training_arguments()),
            selection=session,
            train_dataset=list(range(10)),
        )
    with pytest.raises(UserError, match="not divisible by world size 3"):
        session.training_arguments(world_size=3)


def test_sft_trainer_without_trl_names_the_extra(monkeypatch):
    import raise_select.integrations as integrations

    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "raise_select.integrations.trl_sft", raising=False)
    with pytest.raises(UserError, match=r"pip install raise-select\[trl\]") as error:
        _ = integrations.RaiseSFTTrainer  # the lazy attribute raises
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("script", ["hf_trainer.py", "trl_sft.py"])
def test_example_scripts_run_from_a_fresh_clone(script, tmp_path):
    """With no option and nothing trained or written before (an empty working directory): the testbed and
    the random baseline, written to runs/trainer."""
    if script == "trl_sft.py":
        pytest.importorskip("trl")
    path = Path(__file__).parents[1] / "examples" / script
    command = [sys.executable, str(path), "--max-steps", "3"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    finished = subprocess.run(command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "validation loss" in finished.stdout
    selections = read_jsonl(tmp_path / "runs" / "trainer" / "selections.jsonl")
    assert [row["decision"] for row in selections] == [1, 2, 3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_ranks_agree_and_together_train_the_single_process_examples(bench, overrides, policy, tmp_path):
    """torchrun, 2 gloo processes: identical decisions on both ranks and to the single-process run, the union of
    their micro-batches is each update's batch of the single-process run, equal final weights on both ranks, and
    each validation pass split between the ranks with the single-process loss."""
    single = _session(bench)
    trained = []
    trainer = _trainer(bench, single, tmp_path / "single")

    def recording_collate(indices):
        trained.append([int(i) for i in indices])
        return single.collate(indices)

    trainer.data_collator = recording_collate
    trainer.train()

    worker = Path(__file__).with_name("trainer_ddp_worker.py")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(worker),
        str(tmp_path / "ddp"),
        "raise",
        str(policy),
        *overrides,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    assert ranks[0]["decisions"] == ranks[1]["decisions"] == [row["indices"] for row in single.selections]
    assert ranks[0]["validation_history"] == ranks[1]["validation_history"]
    assert len(ranks[0]["validation_history"]) == BUDGET + 1
    for rank in ranks:  # sharded = scored whole, at every decision (same weights)
        assert rank["validation_history"] == pytest.approx(rank["validation_unsharded"], rel=1e-6)
    # DDP's gradient all-reduce sums in another order than one process: the weights, so losses, drift apart slightly
    assert ranks[0]["validation_history"] == pytest.approx(single.state.validation_history, rel=1e-4)
    validation_size = len(bench.validation_tokens)
    for shards in zip(ranks[0]["validation_scored"], ranks[1]["validation_scored"]):  # one pass: half each
        assert sorted(shards[0] + shards[1]) == list(range(validation_size))
        assert [len(shard) for shard in shards] == [validation_size // 2] * 2
    assert [len(rank["validation_scored"]) for rank in ranks] == [BUDGET + 1] * 2
    assert [len(rank["trained"]) for rank in ranks] == [BUDGET, BUDGET]  # one micro-batch of B/2 per update
    for update, batch in enumerate(trained):
        halves = [rank["trained"][update] for rank in ranks]
        assert [len(h) for h in halves] == [4, 4] and set(halves[0]).isdisjoint(halves[1])
        assert sorted(halves[0] + halves[1]) == sorted(batch)
    assert read_jsonl(tmp_path / "ddp" / "selections.jsonl") == single.selections  # written once, by rank 0
    weights = [torch.load(tmp_path / "ddp" / f"weights-rank{r}.pt") for r in range(2)]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
