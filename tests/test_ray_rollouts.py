"""Selector training on Ray actors (raise.rollout_workers): the same selector as in-process, faults, resume.

One local Ray instance (2 CPUs, 127.0.0.1, no dashboard) serves the whole module and is shut down at
its end. About a minute on 2 CPU cores, most of it the workers importing torch and transformers.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import SYNTHETIC_OVERRIDES, assert_one_line_error
from raise_select.cli import main
from raise_select.config import ModelConfig
from raise_select.config_io import dump_config, load_config
from raise_select.errors import UserError
from raise_select.experiments import train_raise_selector
from raise_select.io_utils import read_json, read_jsonl
from raise_select.pipeline import Workbench
from raise_select.ppo import EPISODES_FILE, SELECTOR_DIR, train_policy
from raise_select.ray_rollouts import RayRollouts, WorkerSetup, make_rollouts
from raise_select.selector_artifact import load_artifact
from raise_select.selectors.raise_policy import RaiseSelector

ray = pytest.importorskip("ray", reason="the [ray] extra is part of [test]; install it with pip install -e .[test]")

EPISODE_STEPS = 6


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bench():
    config = load_config(
        None, SYNTHETIC_OVERRIDES + [f"raise.episode_steps={EPISODE_STEPS}", "raise.episodes=4", "features.cache=false"]
    )
    return Workbench.build(config)


def _without_worker_details(rows):
    return [
        {k: v for k, v in row.items() if k not in ("seconds", "update_seconds", "wall_seconds", "worker")}
        for row in rows
    ]


def test_two_workers_train_the_same_selector_as_one_process(local_ray, bench, serial, tmp_path):
    bench.config.raise_.rollout_workers = 2  # the user's path: train-selector with raise.rollout_workers=2
    try:
        selector_dir = train_raise_selector(bench.config, tmp_path, progress=False, bench=bench)
    finally:
        bench.config.raise_.rollout_workers = 0
    rows = read_jsonl(tmp_path / EPISODES_FILE)
    np.testing.assert_allclose([r["return"] for r in rows], [r["return"] for r in serial[1]], rtol=0, atol=1e-6)
    _assert_same_training(load_artifact(selector_dir).tensors, rows, serial)  # every weight and every logged number
    assert {r["worker"] for r in rows} == {0, 1}  # both workers played
    # the ledger counts the workers' time (compute) and the elapsed time
    phase = read_json(tmp_path / "ledger.json")["phases"]["selector_training"]
    assert phase["seconds"] == pytest.approx(sum(r["seconds"] + r["update_seconds"] for r in rows), abs=1e-2)
    assert phase["wall_seconds"] == pytest.approx(sum(r["wall_seconds"] for r in rows), abs=1e-2)


def _engine(bench, workers: int = 2):
    """Ray rollouts of ``workers`` workers on ``bench`` and the selection context they play in."""
    config = bench.config
    context = bench.selection_context(RaiseSelector(config.raise_), EPISODE_STEPS, config.seed, progress=False)
    bench.config.raise_.rollout_workers = workers
    try:
        engine = make_rollouts(bench, context, EPISODE_STEPS)
    finally:
        bench.config.raise_.rollout_workers = 0
    return engine, context


@pytest.fixture(scope="module")
def serial(bench, tmp_path_factory):
    """The in-process selector training every Ray variant below must reproduce: (tensors, rows)."""
    config = bench.config
    context = bench.selection_context(RaiseSelector(config.raise_), EPISODE_STEPS, config.seed, progress=False)
    output = tmp_path_factory.mktemp("serial")
    artifact = train_policy(
        bench.make_env(EPISODE_STEPS, evaluate_every=1),
        context,
        config.raise_,
        output,
        seed=config.seed,
        progress=False,
    )
    return artifact.tensors, read_jsonl(output / EPISODES_FILE)


def _assert_same_training(tensors, rows, serial) -> None:
    expected_tensors, expected_rows = serial
    for name, tensor in expected_tensors.items():
        torch.testing.assert_close(tensors[name], tensor, rtol=0, atol=0, msg=name)
    assert _without_worker_details(rows) == _without_worker_details(expected_rows)


class KillFirstWorker:
    """Rollouts that SIGKILL worker 0's process shortly after the first update's episodes were handed out."""

    def __init__(self, engine: RayRollouts):
        self.engine, self.victim, self.killer = engine, None, None

    def collect(self, selector, seeds, reward_scale, mirrored=None):
        if self.killer is None:
            self.victim = self.engine._pids[0]

            def kill():
                time.sleep(0.05)  # worker 0 is inside its first episode (each takes a few tenths of a second)
                os.kill(self.victim, signal.SIGKILL)

            self.killer = threading.Thread(target=kill)
            self.killer.start()
        return self.engine.collect(selector, seeds, reward_scale, mirrored)

    def close(self):
        self.engine.close()


def test_a_worker_killed_during_an_episode_is_replaced_and_training_gives_the_same_selector(
    local_ray, bench, serial, tmp_path
):
    engine, context = _engine(bench)
    faulty = KillFirstWorker(engine)
    try:
        artifact = train_policy(
            None, context, bench.config.raise_, tmp_path, seed=bench.config.seed, progress=False, rollouts=faulty
        )
        faulty.killer.join()
        assert engine.restarts == 1 and engine._pids[0] != faulty.victim
    finally:
        faulty.close()
    _assert_same_training(artifact.tensors, read_jsonl(tmp_path / EPISODES_FILE), serial)


def test_resume_on_another_number_of_workers(local_ray, bench, serial, tmp_path):
    """Half the updates on two Ray workers, the rest in-process after a 'crash': the uninterrupted serial result."""
    config = bench.config.raise_
    engine, context = _engine(bench)
    try:
        train_policy(
            None, context, config, tmp_path, seed=bench.config.seed, progress=False, max_updates=1, rollouts=engine
        )
    finally:
        engine.close()
    assert len(read_jsonl(tmp_path / EPISODES_FILE)) == config.episodes_per_update
    resumed = train_policy(
        bench.make_env(EPISODE_STEPS, evaluate_every=1),
        context,
        config,
        tmp_path,
        seed=bench.config.seed,
        progress=False,
        resume=True,
    )
    _assert_same_training(resumed.tensors, read_jsonl(tmp_path / EPISODES_FILE), serial)
    assert (tmp_path / SELECTOR_DIR).is_dir()


def test_proxy_episodes_on_workers_train_the_same_selector_as_in_process(local_ray, bench, tmp_path):
    """raise.proxy_layers on Ray: each worker loads the one-layer proxy, not the tuned model. With mirrored
    head draws (raise.head_antithetic), which the workers must receive."""
    trained = {}
    for workers in (0, 2):
        config = dataclasses.replace(bench.config, raise_=dataclasses.replace(bench.config.raise_))
        config.raise_.proxy_layers, config.raise_.episodes, config.raise_.rollout_workers = 1, 2, workers
        config.raise_.episodes_per_update, config.raise_.head_antithetic = 2, True
        output = tmp_path / f"workers{workers}"
        selector_dir = train_raise_selector(config, output, progress=False, bench=bench)
        trained[workers] = (load_artifact(selector_dir), read_jsonl(output / EPISODES_FILE))
    (serial_artifact, serial_rows), (ray_artifact, ray_rows) = trained[0], trained[2]
    assert ray_artifact.provenance["episodes_on"]["num_layers"] == 1
    assert _without_worker_details(ray_rows) == _without_worker_details(serial_rows)
    for name, tensor in serial_artifact.tensors.items():
        torch.testing.assert_close(ray_artifact.tensors[name], tensor, rtol=0, atol=0)


def test_a_worker_that_cannot_load_the_model_is_one_line_error(local_ray, bench, tmp_path):
    context = bench.selection_context(RaiseSelector(bench.config.raise_), EPISODE_STEPS, 0, progress=False)
    engine_setup = WorkerSetup(
        ModelConfig(name=str(tmp_path / "no-model"), finetune="full"),
        bench.config.train,
        EPISODE_STEPS,
        context,
        bench.pool_tokens,
        bench.validation_tokens,
        bench.base_weights,
        1,
    )
    with pytest.raises(UserError, match="rollout worker could not start.*unknown model"):
        RayRollouts(dataclasses.replace(bench.config.raise_, rollout_workers=2), engine_setup)


def test_without_ray_the_error_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    (tmp_path / "config.yaml").write_text(dump_config(load_config(None, SYNTHETIC_OVERRIDES)), encoding="utf-8")
    status = main(
        [
            "train-selector",
            "--config",
            str(tmp_path / "config.yaml"),
            "--output",
            str(tmp_path / "out"),
            "--no-progress",
            "raise.rollout_workers=2",
        ]
    )
    captured = capsys.readouterr()
    # Ray's log monitor may still forward, late, the worker log of an earlier test's dead actor: not ours.
    err = "\n".join(line for line in captured.err.splitlines() if "(RolloutWorker pid=" not in line)
    assert_one_line_error(
        status, SimpleNamespace(out=captured.out, err=err), ["raise.rollout_workers", "pip install raise-select[ray]"]
    )
    assert not (tmp_path / "out").exists()  # failed before anything was written
