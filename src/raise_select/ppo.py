"""PPO + GAE for the RAISE acquisition function, in one file (CleanRL style).

One PPO iteration = a batch of ``episodes_per_update`` fine-tuning episodes (CleanRL's parallel
environments, here played one after another or on Ray workers): each resets the env to the base
weights and lets the stochastic policy (per-cluster Plackett-Luce draws) choose every decision; then
policy and critic are updated on all the batch's decisions.

An episode depends only on (policy weights, episode seed): its sampler and the env's reset are
seeded from ``(seed, episode number)``, so a batch can be played in any order or place.

Advantages (``raise.baseline``):

* ``group`` [ours]: a per-step baseline from the batch. Episodes of one update share the
  same budget, so decision t of every episode is taken at the same training stage; the baseline of
  episode e at step t is the mean return-to-go of the OTHER episodes at t (leave-one-out). Plugged
  into GAE as the value, ``delta_t = r_t - mean_{e' != e} r_t(e')``: a decision is credited with how
  much more its loss drop was than the batch's at the same step (and, with lambda > 0, the next
  steps'). No critic needs to learn the strong dependence of loss drops on the stage first.
* ``fitted`` [ours, default]: a leave-one-out linear baseline (rllab's linear feature baseline,
  fitted per update): the return-to-go regressed on a basis of the stage features (progress,
  validation loss relative to the start, its latest change) over the OTHER episodes of the batch.
  It also removes what the state explains: a run whose loss is already low has less left to gain,
  so a per-step baseline alone makes good early decisions count against the later ones.
* ``critic``: classic GAE with the learned critic V(s).

Episode head (``raise.head_dims`` > 0, see ``raise_policy``): each episode's head weights are drawn
at its start and stored in its buffer; after the batch, ``head_update`` moves the head's mean. It is
not a PPO parameter: a clipped ratio on a k-dimensional Gaussian lets the mean move only a few
percent of its std per update.

* ``nes``: one separable-NES step (Wierstra et al. 2014; natural gradient of a Gaussian's mean with
  rank-based fitness shaping, as in OpenAI-ES): ``mean += head_learning_rate * std * sum_e u_e eps_e``
  with ``eps_e`` the standardized draw and ``u_e`` the centered rank of episode e's return. With
  ``raise.head_antithetic`` the draws come in mirrored pairs, ``mean + std * eps`` and
  ``mean - std * eps``, played with the same seed (mirrored sampling with common random numbers, as
  in Salimans et al. 2017): the pair's return difference is the head's effect along ``eps``, with
  the sampler's and the environment's noise shared.
* ``regression``: the step uses every decision rather than the batch's whole-episode returns: what a
  decision's reward depends on is the data it trained on, and the draw reaches it only through the
  noisy Plackett-Luce picks. ``response_surface_step`` fits each decision's reward on the mean head
  features of its picks (ridge, one intercept per position in the episode) and moves the mean along
  the fitted slope, ``head_learning_rate * std`` at a time (steepest ascent, Box & Wilson 1951). The
  fit is on this update's decisions only: the reward is not linear in the composition over the whole
  pool, so only a local fit, around where the policy now chooses, points the right way
  (``docs/results.md`` compares the two steps).

The critic is trained whatever the baseline (its value loss is logged); advantages are normalized over
the whole batch. Ratios are clipped per pick (see ``RaiseSelector.pick_log_probs``), and an update
stops early once the approximate KL to the rollout policy exceeds ``target_kl``.

Memory design (the pool size is not bounded by the buffer): the rollout buffer stores, per
decision, ONLY the chosen indices (per group), the 3 stage features, old log-probs, value, reward
and done -- never a [pool_size]-sized array. At update time the availability counts of decision t
are rebuilt from the episode's earlier choices and the scores are recomputed chunk by chunk:

    pass 1 (no graph):  s = F_theta(d') for all candidates            [N] floats (static projection
                                                                       cached per minibatch)
    loss(s)             Plackett-Luce log-probs, entropy, critic       graph over [N] scores only
    pass 2 (chunks):    F_theta(chunk).backward(d loss / d s[chunk])   activations of one chunk

which is the exact gradient (the loss depends on theta only through s) with memory O(N + chunk x hidden).

Outputs in ``output_dir``: ``episodes.jsonl`` (one row per episode, with its update's statistics),
``checkpoint.pt`` (atomic, after every update; ``resume=True`` continues bit-for-bit) and
``selector/`` (the artifact). The method as a whole: ``docs/method.md``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from .callbacks import Callback, with_progress
from .config import RESUMABLE_SELECTOR_TRAINING, RaiseConfig, check_raise_batching
from .errors import UserError
from .io_utils import atomic_write, write_jsonl
from .protocol import SelectionContext
from .run_folders import CHECKPOINT_FILE, EPISODES_FILE, SELECTOR_DIR
from .selector_artifact import (
    RaiseArtifact,
    artifact_from_payload,
    artifact_to_payload,
    save_artifact,
    trained_settings,
)
from .selectors.raise_policy import (
    SCORE_CHUNK_ROWS,
    RaiseSelector,
    SampledDecision,
    availability_feature,
    critic_summary,
)

if TYPE_CHECKING:
    from .environment import FineTuneEnv

CHECKPOINT_FORMAT = "raise-select-ppo-checkpoint-v2"  # v2: a checkpoint per update of several episodes


# -- the maths ------------------------------------------------------------------------------
def compute_gae(
    rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: float, gamma: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimation over one rollout.

    ``dones[t]`` = 1 when the episode ended after decision t (no bootstrap past it);
    ``last_value`` = V of the state after the last decision (unused when it ended the episode).
        delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_t) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
        R_t     = A_t + V(s_t)   (the critic's regression target)
    """
    rewards, values, dones = (np.asarray(a, dtype=np.float64) for a in (rewards, values, dones))
    advantages = np.zeros_like(rewards)
    next_value, next_advantage = float(last_value), 0.0
    for t in reversed(range(len(rewards))):
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        next_advantage = delta + gamma * lam * nonterminal * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Return-to-go G_t = r_t + gamma * G_{t+1} of one whole episode."""
    returns = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = float(rewards[t]) + gamma * running
        returns[t] = running
    return returns


def group_baselines(returns: np.ndarray) -> np.ndarray:
    """[E, T] leave-one-out baselines: for episode e at step t, the mean of the other episodes' G_t."""
    returns = np.asarray(returns, dtype=np.float64)
    count = returns.shape[0]
    if count < 2:
        raise ValueError("a group baseline needs at least two episodes per update")
    return (returns.sum(axis=0, keepdims=True) - returns) / (count - 1)


def stage_basis(stages: np.ndarray) -> np.ndarray:
    """[T, 8] regression features of the stage features [progress p, validation ratio v, change c]:
    1, p, p^2, p^3, v, v^2, p v, c (a smooth function of time and of how far training has got)."""
    p, v, c = (np.asarray(stages, dtype=np.float64)[:, i] for i in range(3))
    return np.stack([np.ones_like(p), p, p * p, p**3, v, v * v, p * v, c], axis=1)


def fitted_baselines(
    bases: Sequence[np.ndarray], returns: Sequence[np.ndarray], ridge: float = 1e-3
) -> list[np.ndarray]:
    """Leave-one-out linear baselines: episode e's values come from a ridge regression of the return-to-go
    on the stage basis, fitted on the OTHER episodes of the batch (so no episode is its own baseline)."""
    if len(bases) < 2:
        raise ValueError("a fitted baseline needs at least two episodes per update")
    baselines = []
    for e in range(len(bases)):
        x = np.concatenate([b for k, b in enumerate(bases) if k != e])
        y = np.concatenate([r for k, r in enumerate(returns) if k != e])
        weights = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
        baselines.append(bases[e] @ weights)
    return baselines


def batch_advantages(
    episodes: Sequence[RolloutBuffer], config: RaiseConfig
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per episode: (advantages, critic targets), before normalization; see the module docstring."""
    rewards = [np.array([d.reward for d in buffer.decisions]) for buffer in episodes]
    dones = [np.array([d.done for d in buffer.decisions], dtype=np.float64) for buffer in episodes]
    returns = [discounted_returns(r, config.gamma) for r in rewards]
    if config.baseline == "group":
        lengths = {len(r) for r in rewards}
        if len(lengths) != 1:
            raise ValueError("a group baseline needs episodes of equal length (the same budget)")
        values = list(group_baselines(np.stack(returns)))
    elif config.baseline == "fitted":
        bases = [stage_basis(np.stack([d.stage for d in buffer.decisions])) for buffer in episodes]
        values = fitted_baselines(bases, returns)
    else:
        values = [np.array([d.value for d in buffer.decisions]) for buffer in episodes]
    # Every rollout is one whole episode, so the last decision is terminal and last_value is never used.
    advantages = [
        compute_gae(r, v, d, 0.0, config.gamma, config.gae_lambda)[0] for r, v, d in zip(rewards, values, dones)
    ]
    return advantages, returns


def centered_ranks(values: np.ndarray) -> np.ndarray:
    """Fitness shaping: ranks mapped linearly onto [-0.5, 0.5] (lowest -> -0.5), ties broken by order."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return np.zeros_like(values)
    ranks = np.empty(values.size)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    return ranks / (values.size - 1) - 0.5


def nes_mean_step(
    mean: np.ndarray, std: np.ndarray, samples: np.ndarray, returns: np.ndarray, learning_rate: float
) -> np.ndarray:
    """Separable NES step of a Gaussian's mean (natural gradient, rank-shaped fitness):
    mean + lr * std * sum_e u_e (sample_e - mean) / std, with u = centered_ranks(returns)."""
    utilities = centered_ranks(returns)
    noise = (np.asarray(samples, dtype=np.float64) - mean) / std  # [E, k] standardized draws
    return mean + learning_rate * std * (utilities @ noise)


HEAD_RIDGE = 1.0  # ridge of the response-surface fit, against standardized rewards (see response_surface_step)


def response_surface_step(
    mean: np.ndarray,
    std: np.ndarray,
    compositions: np.ndarray,
    rewards: np.ndarray,
    positions: np.ndarray,
    learning_rate: float,
    ridge: float = HEAD_RIDGE,
) -> np.ndarray:
    """Steepest ascent on a first-order response surface (Box & Wilson 1951), for the head's mean.

    ``compositions[i]`` is decision i's mean head features over its picks, ``rewards[i]`` its reward and
    ``positions[i]`` its index within its episode. The fit: reward ~ intercept[position] + slope . composition,
    by ridge regression with free intercepts (each position is the same training stage in every episode) and
    rewards standardized; then ``mean + lr * std * slope / |slope|``. No step when the rewards or the
    compositions do not vary."""
    x = np.asarray(compositions, dtype=np.float64).copy()
    y = np.asarray(rewards, dtype=np.float64).copy()
    positions = np.asarray(positions)
    for position in np.unique(positions):  # centering per position = one unpenalized intercept each
        rows = positions == position
        x[rows] -= x[rows].mean(axis=0)
        y[rows] -= y[rows].mean()
    scale = y.std()
    if scale == 0.0:
        return np.array(mean, dtype=np.float64)
    slope = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ (y / scale))
    norm = np.linalg.norm(slope)
    if norm == 0.0:
        return np.array(mean, dtype=np.float64)
    return mean + learning_rate * std * slope / norm


def head_update(selector: RaiseSelector, episodes: Sequence[RolloutBuffer], config: RaiseConfig) -> dict[str, float]:
    """Move the episode head's mean by one step (``raise.head_update``) from the batch; returns statistics."""
    policy = selector.policy
    mean, std = policy.head_mean.numpy().astype(np.float64), policy.head_std.numpy().astype(np.float64)
    if config.head_update == "regression":
        decisions = [(t, d) for buffer in episodes for t, d in enumerate(buffer.decisions)]
        compositions = np.stack([selector.head_composition(d.chosen, d.stage) for _, d in decisions])
        rewards = np.array([d.reward for _, d in decisions])
        positions = np.array([t for t, _ in decisions])
        new_mean = response_surface_step(mean, std, compositions, rewards, positions, config.head_learning_rate)
    else:
        samples = np.stack([buffer.head_weights for buffer in episodes])
        returns = np.array([sum(d.reward for d in buffer.decisions) for buffer in episodes])
        new_mean = nes_mean_step(mean, std, samples, returns, config.head_learning_rate)
    policy.head_mean.copy_(torch.from_numpy(new_mean.astype(np.float32)))
    selector.set_head(None)
    return {"head_step": float(np.linalg.norm(new_mean - mean)), "head_mean_norm": float(np.linalg.norm(new_mean))}


def clipped_surrogate_loss(ratio: torch.Tensor, advantage: torch.Tensor | float, clip_coef: float) -> torch.Tensor:
    """PPO's clipped objective as a loss: -mean( min(r A, clip(r, 1 - eps, 1 + eps) A) ).

    For RAISE, ``ratio`` holds one entry per pick of a decision (each pick is one factor of the
    action): every factor is clipped on its own, then they are averaged.
    """
    unclipped = -advantage * ratio
    clipped = -advantage * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    return torch.max(unclipped, clipped).mean()


# -- rollout storage ------------------------------------------------------------------------
@dataclass
class StoredDecision:
    """What PPO keeps about one decision: sizes are O(decision_size), never O(pool_size)."""

    chosen: np.ndarray  # [decision_size] int64 pool indices: the groups concatenated, each in draw order
    group_sizes: np.ndarray  # [C + 1] int64 (the last group fills clusters smaller than their quota)
    stage: np.ndarray  # [3] float32 stage features at decision time
    old_log_probs: np.ndarray  # [decision_size] float32 per-pick Plackett-Luce log-prob under the rollout policy
    value: float  # V(s_t) under the rollout critic
    reward: float  # scaled reward of the decision
    done: bool  # the episode ended after this decision


class RolloutBuffer:
    """The decisions of one episode, in order (and the episode head's draw, when the policy has one)."""

    def __init__(self) -> None:
        self.decisions: list[StoredDecision] = []
        self.head_weights: np.ndarray | None = None  # [k] float32 head weights drawn for this episode

    def add(self, sampled: SampledDecision, reward: float, done: bool) -> None:
        self.decisions.append(
            StoredDecision(
                chosen=np.concatenate(sampled.groups).astype(np.int64),
                group_sizes=np.array([len(g) for g in sampled.groups], dtype=np.int64),
                stage=sampled.stage.astype(np.float32),
                old_log_probs=sampled.log_probs.numpy().astype(np.float32),
                value=sampled.value,
                reward=reward,
                done=done,
            )
        )

    def __len__(self) -> int:
        return len(self.decisions)

    def groups(self, t: int) -> list[torch.Tensor]:
        decision = self.decisions[t]
        return list(torch.from_numpy(decision.chosen).split(decision.group_sizes.tolist()))

    def counts_before(self, t: int, pool_size: int) -> np.ndarray:
        """Selection counts at decision t, rebuilt from the episode's earlier choices."""
        if t == 0:
            return np.zeros(pool_size, dtype=np.int64)
        return np.bincount(np.concatenate([d.chosen for d in self.decisions[:t]]), minlength=pool_size)


def episode_seed(seed: int, episode: int) -> int:
    """The seed of episode ``episode`` of a training seeded ``seed`` (env reset and sampler)."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


def update_episodes(seed: int, episodes: range, antithetic: bool) -> tuple[list[int], list[bool]]:
    """(seeds, mirrored) of one update's episodes. Antithetic: episodes 2i and 2i+1 share episode 2i's seed
    (common random numbers: the same head noise, sampler noise and env reset) and the second mirrors the draw."""
    if not antithetic:
        return [episode_seed(seed, k) for k in episodes], [False] * len(episodes)
    return [episode_seed(seed, k - k % 2) for k in episodes], [k % 2 == 1 for k in episodes]


def run_episode(
    env: FineTuneEnv, selector: RaiseSelector, seed: int, reward_scale: float, mirror: bool = False
) -> tuple[RolloutBuffer, dict]:
    """Play one fine-tuning episode with the stochastic policy; returns the buffer and the episode's numbers.

    The result depends only on the selector's weights, ``seed`` (env reset, head draw and Plackett-Luce
    sampler) and ``mirror`` (the head draw reflected through its mean; see ``raise.head_antithetic``).
    """
    env.reset(seed)
    selector.reset(seed)
    generator = torch.Generator().manual_seed(seed)
    buffer = RolloutBuffer()
    if selector.has_head:  # the episode's first action: its head weights, kept for every decision
        buffer.head_weights = selector.sample_head(generator, mirror=mirror)
    episode_return, updates, tokens, evaluation_tokens = 0.0, 0, 0, 0
    while not env.done:
        sampled = selector.sample(env.state, generator)
        result = env.step(sampled.indices)
        # A decision without a validation evaluation has reward 0; its effect lands on the next evaluated one.
        reward = float(result.reward) if result.reward is not None else 0.0
        buffer.add(sampled, reward * reward_scale, env.done)
        episode_return += reward
        updates += int(result.updates)
        tokens += int(result.tokens)
        evaluation_tokens += int(result.evaluation_tokens)
    history = env.state.validation_history
    summary = {
        "return": episode_return,
        "validation_loss_initial": float(history[0]),
        "validation_loss_final": float(history[-1]),
        "updates": updates,
        "tokens": tokens,
        "evaluation_tokens": evaluation_tokens,  # forward-only: the rewards' validation passes
        "decisions": len(buffer),
    }
    return buffer, summary


def collect_rollouts(
    env: FineTuneEnv,
    selector: RaiseSelector,
    seeds: Sequence[int],
    reward_scale: float,
    mirrored: Sequence[bool] | None = None,
) -> list[tuple[RolloutBuffer, dict]]:
    """One PPO update's batch of episodes, played in-process one after another (the unit of work)."""
    rollouts = []
    for seed, mirror in zip(seeds, mirrored or [False] * len(seeds)):
        started = time.perf_counter()
        buffer, summary = run_episode(env, selector, seed, reward_scale, mirror)
        rollouts.append((buffer, {**summary, "seconds": time.perf_counter() - started}))
    return rollouts


class Rollouts(Protocol):
    """Plays one PPO update's episodes with the selector's current weights.

    ``collect`` returns one ``(buffer, summary)`` per seed, in the order of ``seeds``; a summary holds
    at least :func:`run_episode`'s numbers and ``seconds`` (the time spent on that episode, wherever it
    ran). ``mirrored[i]`` (default: all False) plays episode i with its head draw mirrored.
    Implementations: :class:`InProcessRollouts` and ``ray_rollouts.RayRollouts``.
    """

    def collect(
        self,
        selector: RaiseSelector,
        seeds: Sequence[int],
        reward_scale: float,
        mirrored: Sequence[bool] | None = None,
    ) -> list[tuple[RolloutBuffer, dict]]: ...

    def close(self) -> None: ...


class InProcessRollouts:
    """``raise.rollout_workers=0``: the episodes are played one after another on ``env``, in this process."""

    def __init__(self, env: FineTuneEnv):
        self.env = env

    def collect(
        self,
        selector: RaiseSelector,
        seeds: Sequence[int],
        reward_scale: float,
        mirrored: Sequence[bool] | None = None,
    ) -> list[tuple[RolloutBuffer, dict]]:
        return collect_rollouts(self.env, selector, seeds, reward_scale, mirrored)

    def close(self) -> None:
        pass


# -- the update -----------------------------------------------------------------------------
def _decision_backward(
    selector: RaiseSelector,
    buffer: RolloutBuffer,
    t: int,
    advantage: float,
    target_return: float,
    config: RaiseConfig,
    weight: float,
) -> dict[str, float]:
    """Accumulate ``weight`` x (this decision's PPO loss) gradients into policy and critic; return its stats."""
    policy, critic, fused_static = selector.policy, selector.critic, selector.fused_static
    stored = buffer.decisions[t]
    counts = buffer.counts_before(t, fused_static.shape[0])
    stage, availability = torch.from_numpy(stored.stage), availability_feature(counts)

    selector.set_head(buffer.head_weights)  # the episode's draw: a constant offset of the scores here
    scores = selector.pool_scores(stored.stage, counts)  # pass 1: no graph, static projection cached per minibatch
    scores.requires_grad_(True)
    logits = selector.logits(scores, counts)

    new_log_probs = selector.pick_log_probs(logits, buffer.groups(t))
    log_ratio = new_log_probs - torch.from_numpy(stored.old_log_probs)
    ratio = log_ratio.exp()  # one importance ratio per pick
    policy_loss = clipped_surrogate_loss(ratio, advantage, config.clip_coef)
    entropy = selector.entropy(logits)
    value = critic(critic_summary(stage, availability, scores))
    value_loss = 0.5 * (value - target_return) ** 2
    loss = policy_loss - config.entropy_coef * entropy + config.value_coef * value_loss
    (weight * loss).backward()  # critic grads, and d loss / d scores in scores.grad

    chunks = zip(
        fused_static.split(SCORE_CHUNK_ROWS), availability.split(SCORE_CHUNK_ROWS), scores.grad.split(SCORE_CHUNK_ROWS)
    )
    for x, a, score_grad in chunks:
        policy(x, stage, a).backward(score_grad)  # pass 2: chain rule into theta, one chunk at a time

    with torch.no_grad():
        return {
            "policy_loss": float(policy_loss),
            "value_loss": float(value_loss),
            "entropy": float(entropy),
            "approx_kl": float(((ratio - 1) - log_ratio).mean()),  # k3 estimator of KL(old || new) per pick
            "clip_fraction": float(((ratio - 1).abs() > config.clip_coef).float().mean()),
        }


def ppo_update(
    selector: RaiseSelector,
    optimizer: torch.optim.Optimizer,
    episodes: Sequence[RolloutBuffer],
    config: RaiseConfig,
    rng: np.random.Generator,
) -> dict[str, float]:
    """update_epochs passes over the batch's decisions in shuffled minibatches; returns mean statistics.

    Stops early (``early_stopped`` = 1) once a minibatch's mean approximate KL exceeds ``target_kl``.
    """
    advantages, returns = batch_advantages(episodes, config)
    flat = np.concatenate(advantages)
    if config.normalize_advantages and flat.size > 1:
        mean, std = flat.mean(), flat.std()
        advantages = [(a - mean) / (std + 1e-8) for a in advantages]
    decisions = [(e, t) for e, buffer in enumerate(episodes) for t in range(len(buffer))]

    stats = defaultdict(list)
    early_stopped = False
    minibatches = 0
    for _ in range(config.update_epochs):
        order = rng.permutation(len(decisions))
        for start in range(0, len(order), config.minibatch_size):
            minibatch = [decisions[i] for i in order[start : start + config.minibatch_size]]
            optimizer.zero_grad(set_to_none=True)
            selector.refresh_projection()  # weights are fixed within a minibatch
            kls = []
            for e, t in minibatch:  # one decision at a time: only one pool-sized graph alive
                decision_stats = _decision_backward(
                    selector,
                    episodes[e],
                    t,
                    float(advantages[e][t]),
                    float(returns[e][t]),
                    config,
                    weight=1.0 / len(minibatch),
                )
                for key, number in decision_stats.items():
                    stats[key].append(number)
                kls.append(decision_stats["approx_kl"])
            if config.target_kl is not None and np.mean(kls) > config.target_kl:
                early_stopped = True  # this minibatch's gradient is dropped: the policy left the trust region
                break
            # Clipped separately: early on the critic's value errors are large and would shrink the policy's step.
            torch.nn.utils.clip_grad_norm_(selector.policy.parameters(), config.max_grad_norm)
            torch.nn.utils.clip_grad_norm_(selector.critic.parameters(), config.max_grad_norm)
            optimizer.step()
            minibatches += 1
        if early_stopped:
            break
    selector.refresh_projection()  # the next rollout scores with the updated weights
    selector.set_head(None)
    summary = {key: float(np.mean(numbers)) for key, numbers in stats.items()}
    if selector.has_head:
        summary.update(head_update(selector, episodes, config))
    summary.update(optimizer_steps=minibatches, early_stopped=int(early_stopped))
    return summary


# -- callbacks ------------------------------------------------------------------------------
# -- checkpoints ----------------------------------------------------------------------------
def _rng_states(minibatch_rng: np.random.Generator) -> dict:
    # JSON strings for Python/NumPy states keep the checkpoint loadable with torch.load(weights_only=True).
    numpy_global = np.random.get_state(legacy=False)
    numpy_global["state"]["key"] = numpy_global["state"]["key"].tolist()
    return {
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps(numpy_global),
        "torch": torch.get_rng_state(),
        "minibatch": json.dumps(minibatch_rng.bit_generator.state),
    }


def _restore_rng_states(states: dict, minibatch_rng: np.random.Generator) -> None:
    version, internal, gauss = json.loads(states["python"])
    random.setstate((version, tuple(internal), gauss))
    numpy_global = json.loads(states["numpy"])
    numpy_global["state"]["key"] = np.array(numpy_global["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_global)
    torch.set_rng_state(states["torch"])
    minibatch_rng.bit_generator.state = json.loads(states["minibatch"])


def _comparable_config(config: RaiseConfig) -> dict:
    """The settings a checkpoint must share with the resumed run: those the selector stores, but those a
    resume may change (``config.RESUMABLE_SELECTOR_TRAINING``: the episode count)."""
    return {k: v for k, v in trained_settings(config).items() if f"raise.{k}" not in RESUMABLE_SELECTOR_TRAINING}


def save_checkpoint(
    path: Path,
    selector: RaiseSelector,
    optimizer: torch.optim.Optimizer,
    episode: int,
    rows: list[dict],
    seed: int,
    rng_states: dict,
) -> None:
    metadata, tensors = artifact_to_payload(selector.to_artifact())
    payload = {
        "format": CHECKPOINT_FORMAT,
        "episode": episode,  # episodes completed
        "seed": seed,
        "rows": rows,
        "selector_metadata": metadata,
        "selector_tensors": tensors,
        "optimizer": optimizer.state_dict(),
        "rng": rng_states,
    }
    atomic_write(path, lambda handle: torch.save(payload, handle), mode="wb")


# A damaged checkpoint cannot be continued: the training starts again, in place or elsewhere.
_RESTART = "it cannot be continued: train again with --overwrite instead of --resume, or into another --output"


def load_checkpoint(path: Path, config: RaiseConfig, seed: int) -> dict:
    """Read and check a checkpoint for resuming (the same config and seed, except the episode count)."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; start without --resume (or pass the interrupted run's --output)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise UserError(
            f"{path} is not a readable raise-select checkpoint ({type(exc).__name__}); {_RESTART}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a raise-select PPO checkpoint; {_RESTART}")
    saved = payload["selector_metadata"]["config"]
    defaults = trained_settings(RaiseConfig())  # a setting added since the checkpoint was written had its default
    changed = sorted(k for k, v in _comparable_config(config).items() if saved.get(k, defaults.get(k)) != v)
    if changed or payload["seed"] != seed:
        what = ", ".join(f"raise.{k}" for k in changed) or f"seed ({payload['seed']} vs {seed})"
        raise UserError(f"checkpoint {path} was written with a different {what}; resume with the original settings")
    played = int(payload["episode"])
    if config.episodes < played:
        raise UserError(
            f"--resume: {path.parent} has already played {played} episodes, more than raise.episodes="
            f"{config.episodes}; pass raise.episodes={played} or more (only raise.episodes may grow), "
            "or train into a new --output"
        )
    return payload


# -- entry point ----------------------------------------------------------------------------
def train_policy(
    env: FineTuneEnv,
    context: SelectionContext,
    config: RaiseConfig,
    output_dir: str | Path,
    seed: int,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    max_updates: int | None = None,
    progress: bool = True,
    provenance: dict | None = None,
    rollouts: Rollouts | None = None,
) -> RaiseArtifact:
    """Train the RAISE selector with PPO for ``config.episodes`` episodes and write ``output_dir/selector/``.

    Episodes are played in batches of ``config.episodes_per_update``, one PPO update per batch, by
    ``rollouts`` (default: :class:`InProcessRollouts` on ``env``; ``env`` may be None when given).
    Where they are played changes nothing in the result.
    ``seed`` seeds the policy init, k-means, minibatch order, and episode k's env reset and sampler
    (:func:`episode_seed`). ``max_updates`` stops after that many completed updates (as if killed;
    the checkpoint allows ``resume=True`` later). ``provenance`` adds entries (e.g. the model name)
    to the saved selector's provenance. Returns the artifact that was saved.
    """
    check_raise_batching(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = output_dir / CHECKPOINT_FILE
    checkpoint = load_checkpoint(checkpoint_path, config, seed) if resume else None

    selector_state = None
    if checkpoint is not None:
        selector_state = artifact_from_payload(
            checkpoint["selector_metadata"], checkpoint["selector_tensors"], checkpoint_path
        )
        selector_state.config = config  # the same except (maybe) the episode count, checked above
    selector = RaiseSelector(config, artifact=selector_state)
    selector.setup(dataclasses.replace(context, seed=seed))
    parameters = list(selector.policy.parameters()) + list(selector.critic.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, eps=1e-5)
    minibatch_rng = np.random.default_rng(seed)
    rows: list[dict] = []
    start = 0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        _restore_rng_states(checkpoint["rng"], minibatch_rng)
        rows, start = list(checkpoint["rows"]), int(checkpoint["episode"])

    rollouts = rollouts if rollouts is not None else InProcessRollouts(env)
    per_update = config.episodes_per_update
    total_updates = config.episodes // per_update
    stop = total_updates if max_updates is None else min(total_updates, start // per_update + max_updates)
    events = with_progress(callbacks, progress)
    events.on_train_start(start, config.episodes)
    for update in range(start // per_update, stop):
        episodes = range(update * per_update, (update + 1) * per_update)
        started = time.perf_counter()
        seeds, mirrored = update_episodes(seed, episodes, config.head_antithetic)
        played = rollouts.collect(selector, seeds, config.reward_scale, mirrored)
        collect_seconds = time.perf_counter() - started
        started = time.perf_counter()
        update_stats = ppo_update(selector, optimizer, [buffer for buffer, _ in played], config, minibatch_rng)
        update_seconds = time.perf_counter() - started
        # seconds: the episode's own time (summed over workers: compute); wall_seconds: this row's share of the
        # update's elapsed time (collection, wherever it ran, plus the PPO update).
        new_rows = [
            {
                "episode": k,
                "update": update,
                **summary,
                "update_seconds": update_seconds / per_update,
                "wall_seconds": (collect_seconds + update_seconds) / per_update,
                **update_stats,
            }
            for k, (_, summary) in zip(episodes, played)
        ]
        rows.extend(new_rows)
        write_jsonl(output_dir / EPISODES_FILE, rows)
        save_checkpoint(checkpoint_path, selector, optimizer, episodes.stop, rows, seed, _rng_states(minibatch_rng))
        if not all([events.on_episode_end(row["episode"], row) for row in new_rows]):
            break  # every row's event ran; stop after this (saved) update

    artifact = selector.to_artifact({"episodes": len(rows), **(provenance or {})})
    save_artifact(artifact, output_dir / SELECTOR_DIR)
    events.on_train_end(artifact)
    return artifact
