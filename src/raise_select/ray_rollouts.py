"""Play selector training's episodes on Ray actors (``raise.rollout_workers`` > 0).

The unit of work is one episode: given the policy's weights and the episode's seed, a worker resets
its fine-tuning environment, plays the episode and returns the rollout buffer and its numbers
(:func:`raise_select.ppo.run_episode`). Nothing else goes into an episode, so where and in which
order the episodes of an update are played changes nothing: the driver gathers them in seed order,
runs the PPO update exactly as the in-process path does, and the selector is the same for any number
of workers.

Each worker is a long-lived actor (as in OpenRLHF's and verl's worker groups) that loads the model
once and takes everything else from the object store: the tokenized pool and validation set, the
trainable weights as loaded, the static features and the selection context (:class:`WorkerSetup`),
so no worker recomputes features or re-reads the pool. Per update the driver puts
the selector (weights, standardization, clusters: a few tens of KB) into the object store once; a
worker re-binds its selector when that object changes.

Faults: an actor that dies is restarted by Ray (``max_restarts``) and the episode it was playing is
sent again (``max_task_retries``); the episode depends only on (weights, seed), so the result is
unchanged. The driver notices a restart by the worker's new process id and logs it.

Ray is an optional extra: ``pip install raise-select[ray]``.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from .config import ModelConfig, RaiseConfig, TrainConfig, episode_eval_every
from .data.tokenize import TokenizedSet
from .errors import UserError
from .ppo import RolloutBuffer, run_episode
from .protocol import SelectionContext
from .selector_artifact import artifact_from_payload, artifact_to_payload
from .selectors.raise_policy import RaiseSelector

if TYPE_CHECKING:
    from .pipeline import Workbench

logger = logging.getLogger(__name__)

MAX_RESTARTS = 3  # per worker: restarts after its process died (then its episode is played again)


def import_ray():
    """The ``ray`` module, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise UserError(
            "raise.rollout_workers > 0 needs Ray: pip install raise-select[ray] (or set raise.rollout_workers=0)"
        ) from None
    return ray


@dataclass
class WorkerSetup:
    """What every worker receives once, through the object store: the driver's episode ingredients.

    The data (tokenized pool and validation set, static features, selection context) and the trainable
    weights come from the driver, so every worker plays on exactly what an in-process run plays on;
    only the frozen model files are read on the worker's node (``model.name`` must resolve there).
    """

    model: ModelConfig
    train: TrainConfig
    episode_steps: int
    context: SelectionContext
    pool_tokens: TokenizedSet
    validation_tokens: TokenizedSet
    base_weights: dict[str, torch.Tensor]
    threads: int


class RolloutWorker:
    """A Ray actor's state: one model and fine-tuning environment, kept across updates."""

    def __init__(self, setup: WorkerSetup):
        import transformers

        from .cpu_kernels import pin_cpu_kernels
        from .environment import FineTuneEnv  # the worker imports the model stack itself
        from .model import load_model

        pin_cpu_kernels(setup.model.cpu_kernels)  # a worker process runs the driver's kernel set
        torch.set_num_threads(setup.threads)
        transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per worker and restart is noise
        lm = load_model(setup.model, seed=setup.context.seed)
        missing = sorted(set(setup.base_weights) - {name for name, p in lm.model.named_parameters() if p.requires_grad})
        if missing:
            raise UserError(
                f"the model a rollout worker loaded for {setup.model.name!r} lacks trainable weights the driver "
                f"has ({missing[0]}, ...); every node needs the same model files"
            )
        self.context = setup.context
        self.env = FineTuneEnv(
            lm,
            setup.pool_tokens,
            setup.validation_tokens,
            setup.train,
            setup.episode_steps,
            evaluate_every=setup.train.eval_every,
            base_weights=setup.base_weights,
        )
        self.selector: RaiseSelector | None = None
        self.selector_key: int | None = None

    def pid(self) -> int:
        return os.getpid()

    def play(
        self, selector_payload: tuple[dict, dict], key: int, seed: int, reward_scale: float, mirror: bool = False
    ) -> tuple[RolloutBuffer, dict, int]:
        """One episode with the selector in ``selector_payload`` (re-bound when ``key`` changes)."""
        if key != self.selector_key:
            artifact = artifact_from_payload(*selector_payload, "the driver's selector")
            self.selector = RaiseSelector(artifact.config, artifact)
            self.selector.setup(self.context)
            self.selector_key = key
        started = time.perf_counter()
        buffer, summary = run_episode(self.env, self.selector, seed, reward_scale, mirror)
        return buffer, {**summary, "seconds": time.perf_counter() - started}, os.getpid()


class RayRollouts:
    """:class:`raise_select.ppo.Rollouts` on ``settings.rollout_workers`` Ray actors.

    ``settings.ray_address`` None starts a local Ray instance on 127.0.0.1 (shut down by
    :meth:`close`); ``"auto"`` or an address joins a running cluster. A Ray already initialized in
    this process is used as it is (and left running).
    """

    def __init__(self, settings: RaiseConfig, setup: WorkerSetup):
        if settings.rollout_workers < 1:
            raise ValueError("RayRollouts needs raise.rollout_workers >= 1")
        ray = import_ray()
        self.ray, self.workers, self.started_ray = ray, settings.rollout_workers, False
        if not ray.is_initialized():
            if settings.ray_address is None:
                cpus = max(settings.rollout_workers * settings.worker_cpus, os.cpu_count() or 1)
                # A cluster of this machine alone, reachable from it alone.
                ray.init(
                    num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1"
                )
            else:
                ray.init(address=settings.ray_address, logging_level=logging.WARNING)
            self.started_ray = True
        setup = ray.put(setup)
        actor_class = ray.remote(RolloutWorker).options(
            num_cpus=settings.worker_cpus,
            num_gpus=settings.worker_gpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS,
        )
        self.actors = [actor_class.remote(setup) for _ in range(self.workers)]
        self.restarts = 0  # worker processes that died and were replaced
        self._setup_ref = setup  # kept alive: a restarted actor is rebuilt from it
        self._key = 0
        try:
            self._pids = self._get([actor.pid.remote() for actor in self.actors])  # every worker is up
        except BaseException:
            self.close()
            raise

    def _get(self, refs):
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayActorError as exc:
            # Ray's message ends with the worker's own exception ("UserError: unknown model ...") when it raised one.
            lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
            cause = lines[-1] if lines else type(exc).__name__
            raise UserError(
                f"a rollout worker could not start or died {MAX_RESTARTS + 1} times ({cause}); "
                f"see the Ray logs, or set raise.rollout_workers=0"
            ) from None

    def collect(
        self,
        selector: RaiseSelector,
        seeds: Sequence[int],
        reward_scale: float,
        mirrored: Sequence[bool] | None = None,
    ) -> list[tuple[RolloutBuffer, dict]]:
        self._key += 1
        payload = self.ray.put(artifact_to_payload(selector.to_artifact()))
        waiting = list(enumerate(zip(seeds, mirrored or [False] * len(seeds))))
        idle = list(range(self.workers))
        running: dict = {}  # object ref -> (episode position, worker)
        results: list[tuple[RolloutBuffer, dict] | None] = [None] * len(seeds)
        while waiting or running:
            while waiting and idle:
                (position, (seed, mirror)), worker = waiting.pop(0), idle.pop(0)
                running[self.actors[worker].play.remote(payload, self._key, seed, reward_scale, mirror)] = (
                    position,
                    worker,
                )
            done, _ = self.ray.wait(list(running), num_returns=1)
            for ref in done:
                position, worker = running.pop(ref)
                buffer, summary, pid = self._get(ref)
                buffer = copy.deepcopy(buffer)  # writable arrays (what comes out of the object store is read-only)
                if pid != self._pids[worker]:
                    self.restarts += 1
                    logger.warning(
                        "rollout worker %d was restarted (process %d died); its episode was played again",
                        worker,
                        self._pids[worker],
                    )
                    self._pids[worker] = pid
                results[position] = (buffer, {**summary, "worker": worker})
                idle.append(worker)
        return results

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()


def make_rollouts(bench: Workbench, context: SelectionContext, episode_steps: int) -> RayRollouts:
    """Ray rollouts of ``bench.config.raise_.rollout_workers`` workers playing ``bench``'s episodes."""
    config = bench.config
    base_weights = {
        name: weight.detach().cpu() for name, weight in bench.base_weights.items()
    }  # any worker can read them
    setup = WorkerSetup(
        config.model,
        replace(config.train, eval_every=episode_eval_every(config)),  # the episodes' schedule
        episode_steps,
        context,
        bench.pool_tokens,
        bench.validation_tokens,
        base_weights,
        config.raise_.worker_cpus,
    )
    return RayRollouts(config.raise_, setup)
