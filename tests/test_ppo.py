"""PPO for RAISE: GAE and the clipped objective by hand, rollout memory, learning on a bandit, resume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from helpers import make_context, make_features, make_state
from raise_select.config import RaiseConfig
from raise_select.errors import UserError
from raise_select.io_utils import read_jsonl
from raise_select.ppo import (
    CHECKPOINT_FILE,
    EPISODES_FILE,
    SELECTOR_DIR,
    Callback,
    batch_advantages,
    centered_ranks,
    clipped_surrogate_loss,
    collect_rollouts,
    compute_gae,
    episode_seed,
    fitted_baselines,
    group_baselines,
    nes_mean_step,
    ppo_update,
    response_surface_step,
    run_episode,
    stage_basis,
    train_policy,
    update_episodes,
)
from raise_select.protocol import EnvState
from raise_select.selector_artifact import load_artifact
from raise_select.selectors.raise_policy import RaiseSelector

POOL_SIZE, BATCH_SIZE, BUDGET = 120, 4, 7


@dataclass
class FakeStepResult:
    train_loss: float
    validation_loss: float
    reward: float
    updates: int
    tokens: int
    seconds: float
    evaluation_tokens: int = 0


class BanditEnv:
    """FineTuneEnv's interface; validation loss drops by 0.02 per "good" example trained on.

    The good examples are the 20 % with the highest response_loss, so the best policy is known:
    score by that feature. A little seeded noise keeps the rewards from being trivially exact.
    """

    def __init__(self, features, decision_interval: int = 1):
        response_loss = features.column("response_loss")
        self.good = response_loss >= np.quantile(response_loss, 0.8)
        self.decision_interval = decision_interval
        self._state: EnvState | None = None
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> EnvState:
        self._rng = np.random.default_rng(seed)
        self._state = make_state(POOL_SIZE, batch_size=BATCH_SIZE, budget=BUDGET)
        self._state.decision_interval = self.decision_interval
        return self._state

    @property
    def state(self) -> EnvState:
        return self._state

    @property
    def done(self) -> bool:
        return self._state.step >= self._state.budget

    def step(self, indices: np.ndarray) -> FakeStepResult:
        state = self._state
        assert len(indices) == state.decision_size and len(set(indices.tolist())) == len(indices)
        np.add.at(state.selection_counts, indices, 1)
        updates = len(indices) // state.batch_size
        state.step += updates
        previous = state.validation_history[-1]
        validation = previous - 0.02 * self.good[indices].sum() + 0.002 * self._rng.normal()
        state.validation_history.append(validation)
        return FakeStepResult(1.0, validation, previous - validation, updates, 10 * len(indices), 0.0)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny matrices: a second OpenMP thread only adds contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fast_config(**overrides) -> RaiseConfig:
    settings = dict(
        clusters=2,
        hidden_size=16,
        episodes=4,
        episodes_per_update=2,
        update_epochs=2,
        minibatch_size=2,
        learning_rate=3e-3,
        target_kl=None,
    )
    settings.update(overrides)
    return RaiseConfig(**settings)


def test_gae_matches_a_hand_computed_three_step_example():
    rewards, values, dones = [1.0, 0.0, 2.0], [0.5, 0.4, 0.3], [0, 0, 1]
    gamma, lam = 0.9, 0.8
    # deltas: d2 = 2 - 0.3 = 1.7 (terminal); d1 = 0 + 0.9*0.3 - 0.4 = -0.13; d0 = 1 + 0.9*0.4 - 0.5 = 0.86
    # A2 = 1.7; A1 = -0.13 + 0.72*1.7 = 1.094; A0 = 0.86 + 0.72*1.094 = 1.64768
    advantages, returns = compute_gae(rewards, values, dones, last_value=99.0, gamma=gamma, lam=lam)
    np.testing.assert_allclose(advantages, [1.64768, 1.094, 1.7], atol=1e-9)
    np.testing.assert_allclose(returns, [2.14768, 1.494, 2.0], atol=1e-9)
    # not done at the end: bootstrap from last_value: d2 = 2 + 0.9*1.0 - 0.3 = 2.6
    advantages, _ = compute_gae(rewards, values, [0, 0, 0], last_value=1.0, gamma=gamma, lam=lam)
    assert advantages[2] == pytest.approx(2.6)


def test_clipped_objective_matches_hand_computation():
    eps = 0.2
    cases = [  # (ratio, advantage, loss = -min(r A, clip(r) A))
        (1.1, 2.0, -2.2),  # inside the range: unclipped
        (1.5, 2.0, -2.4),  # positive advantage, ratio above 1 + eps: clipped to 1.2
        (0.5, 2.0, -1.0),  # positive advantage, ratio low: min picks the unclipped r A
        (0.5, -1.0, 0.8),  # negative advantage, ratio below 1 - eps: clipped to 0.8
        (1.5, -1.0, 1.5),  # negative advantage, ratio high: unclipped (pessimistic)
    ]
    for ratio, advantage, expected in cases:
        loss = clipped_surrogate_loss(torch.tensor([ratio]), advantage, eps)
        assert loss.item() == pytest.approx(expected)
    # per-cluster factors are clipped separately, then averaged
    loss = clipped_surrogate_loss(torch.tensor([1.1, 1.5]), 2.0, eps)
    assert loss.item() == pytest.approx((-2.2 - 2.4) / 2)


def test_rollout_buffer_stores_no_pool_sized_arrays():
    features = make_features()
    selector = RaiseSelector(fast_config())
    selector.setup(make_context(features=features))
    env = BanditEnv(features, decision_interval=2)
    buffer, summary = run_episode(env, selector, 0, 100.0)
    assert len(buffer) == 4 and summary["updates"] == BUDGET  # decisions of 2, 2, 2 and 1 updates
    for decision in buffer.decisions:
        for name, value in vars(decision).items():
            assert np.size(value) <= 2 * BATCH_SIZE, f"{name} has {np.size(value)} entries"
    assert buffer.decisions[-1].done and not buffer.decisions[0].done
    # availability counts are rebuilt from earlier choices and match the env's
    np.testing.assert_array_equal(buffer.counts_before(len(buffer), POOL_SIZE), env.state.selection_counts)


def test_first_update_recomputes_the_rollout_log_probs_exactly():
    features = make_features()
    config = fast_config(update_epochs=1, minibatch_size=100)
    selector = RaiseSelector(config)
    selector.setup(make_context(features=features))
    env = BanditEnv(features, decision_interval=2)
    buffers = [run_episode(env, selector, seed, 100.0)[0] for seed in (0, 1)]
    optimizer = torch.optim.Adam(list(selector.policy.parameters()) + list(selector.critic.parameters()), lr=1e-2)
    # one minibatch holding every decision: all ratios are computed before the only optimizer step
    stats = ppo_update(selector, optimizer, buffers, config, np.random.default_rng(0))
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7) and stats["clip_fraction"] == 0.0
    assert np.isfinite(list(stats.values())).all()


def good_share_of_greedy_choices(selector: RaiseSelector, env: BanditEnv) -> float:
    selector.reset(0)
    chosen = selector.select(make_state(POOL_SIZE, batch_size=BATCH_SIZE, budget=BUDGET))
    return float(env.good[chosen].mean())


def test_policy_learns_to_pick_the_good_examples(tmp_path):
    features = make_features()
    env = BanditEnv(features)
    # A bandit: each reward depends only on its own decision, so gamma = 0 is the right discount.
    config = fast_config(episodes=20, episodes_per_update=4, update_epochs=8, learning_rate=1e-2, gamma=0.0)
    artifact = train_policy(env, make_context(features=features), config, tmp_path, seed=0, progress=False)
    selector = RaiseSelector(config, artifact)
    selector.setup(make_context(features=features))
    share = good_share_of_greedy_choices(selector, env)
    assert share >= 0.75  # the pool share of good examples is 0.2
    rows = read_jsonl(tmp_path / EPISODES_FILE)
    assert np.mean([r["return"] for r in rows[-5:]]) > np.mean([r["return"] for r in rows[:5]])


@pytest.mark.parametrize("head_dims", [0, 3])
def test_resume_gives_the_same_weights_and_rows(tmp_path, head_dims):
    features = make_features()
    config = fast_config(episodes=4, head_dims=head_dims)

    class Recorder(Callback):
        def __init__(self):
            self.episodes = []

        def on_episode_end(self, episode, summary):
            self.episodes.append(episode)

    uninterrupted = train_policy(
        BanditEnv(features), make_context(features=features), config, tmp_path / "a", seed=3, progress=False
    )
    first, second = Recorder(), Recorder()
    train_policy(
        BanditEnv(features),
        make_context(features=features),
        config,
        tmp_path / "b",
        seed=3,
        progress=False,
        max_updates=1,
        callbacks=[first],
    )
    torch.manual_seed(1234)  # global RNG state of the "new process" must not matter
    np.random.seed(1234)
    resumed = train_policy(
        BanditEnv(features),
        make_context(features=features),
        config,
        tmp_path / "b",
        seed=3,
        progress=False,
        resume=True,
        callbacks=[second],
    )
    assert first.episodes == [0, 1] and second.episodes == [2, 3]
    for name, tensor in uninterrupted.tensors.items():
        torch.testing.assert_close(resumed.tensors[name], tensor, rtol=0, atol=0)

    def without_timing(rows):
        return [
            {k: v for k, v in row.items() if k not in ("seconds", "update_seconds", "wall_seconds")} for row in rows
        ]

    assert without_timing(read_jsonl(tmp_path / "a" / EPISODES_FILE)) == without_timing(
        read_jsonl(tmp_path / "b" / EPISODES_FILE)
    )
    assert len(read_jsonl(tmp_path / "b" / EPISODES_FILE)) == 4
    saved = load_artifact(tmp_path / "b" / SELECTOR_DIR)
    assert saved.provenance["episodes"] == 4 and saved.provenance["seed"] == 3


def test_resume_errors_and_early_stop(tmp_path):
    features = make_features()
    config = fast_config(episodes=4)
    with pytest.raises(UserError, match="no checkpoint"):
        train_policy(
            BanditEnv(features), make_context(features=features), config, tmp_path, seed=0, resume=True, progress=False
        )

    class StopAfterFirst(Callback):
        def on_episode_end(self, episode, summary):
            return False

    train_policy(
        BanditEnv(features),
        make_context(features=features),
        config,
        tmp_path,
        seed=0,
        progress=False,
        callbacks=[StopAfterFirst()],
    )
    assert len(read_jsonl(tmp_path / EPISODES_FILE)) == config.episodes_per_update  # stops after the first update
    with pytest.raises(UserError, match="raise.hidden_size"):
        train_policy(
            BanditEnv(features),
            make_context(features=features),
            fast_config(episodes=4, hidden_size=8),
            tmp_path,
            seed=0,
            resume=True,
            progress=False,
        )
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable raise-select checkpoint"):
        train_policy(
            BanditEnv(features), make_context(features=features), config, tmp_path, seed=0, resume=True, progress=False
        )


def test_group_baseline_is_the_leave_one_out_mean_return_by_hand():
    returns = np.array([[3.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    # episode 0, step 0: mean of 1 and 2 = 1.5; episode 2, step 1: mean of 1 and 0 = 0.5
    np.testing.assert_allclose(group_baselines(returns), [[1.5, 1.0], [2.5, 1.5], [2.0, 0.5]])
    with pytest.raises(ValueError):
        group_baselines(returns[:1])


def test_fitted_baseline_predicts_returns_that_are_a_function_of_the_stage_exactly():
    rng = np.random.default_rng(0)
    stages = [np.column_stack([np.arange(6) / 6, rng.uniform(0.5, 1.0, 6), rng.normal(0, 0.1, 6)]) for _ in range(3)]
    weights = np.array([0.3, -1.0, 0.5, 0.2, 2.0, -0.5, 1.0, 0.7])
    returns = [stage_basis(s) @ weights for s in stages]
    for baseline, target in zip(fitted_baselines([stage_basis(s) for s in stages], returns, ridge=1e-9), returns):
        np.testing.assert_allclose(baseline, target, atol=1e-5)
    # leave-one-out: an episode's own return never enters its baseline
    noisy = [r + (5.0 if k == 0 else 0.0) for k, r in enumerate(returns)]
    np.testing.assert_allclose(
        fitted_baselines([stage_basis(s) for s in stages], noisy, ridge=1e-9)[0], returns[0], atol=1e-5
    )


def test_group_advantage_credits_each_step_against_the_other_episodes_at_that_step():
    @dataclass
    class Decision:
        reward: float
        done: bool
        value: float = 0.0

    @dataclass
    class Episode:
        decisions: list

    rewards = [[1.0, 0.0], [0.0, 2.0], [2.0, 1.0]]
    episodes = [Episode([Decision(r, t == 1) for t, r in enumerate(row)]) for row in rewards]
    # lambda = 0: A_t = r_t - mean of the other episodes' r_t (gamma = 1)
    advantages, returns = batch_advantages(episodes, fast_config(baseline="group", gae_lambda=0.0, gamma=1.0))
    np.testing.assert_allclose(advantages, [[0.0, -1.5], [-1.5, 1.5], [1.5, 0.0]])
    np.testing.assert_allclose(returns, [[1.0, 0.0], [2.0, 2.0], [3.0, 1.0]])
    # lambda = 1: A_t = G_t - mean of the other episodes' G_t
    advantages, _ = batch_advantages(episodes, fast_config(baseline="group", gae_lambda=1.0, gamma=1.0))
    np.testing.assert_allclose(advantages, [[-1.5, -1.5], [0.0, 1.5], [1.5, 0.0]])


@pytest.mark.parametrize("head_dims", [0, 3])
def test_an_episode_depends_only_on_the_weights_and_its_seed(head_dims):
    features = make_features()
    selector = RaiseSelector(fast_config(head_dims=head_dims))
    selector.setup(make_context(features=features))
    seeds = [episode_seed(7, k) for k in range(3)]
    forward = collect_rollouts(BanditEnv(features), selector, seeds, 1.0)
    backward = collect_rollouts(BanditEnv(features), selector, seeds[::-1], 1.0)[::-1]
    for (a, _), (b, _) in zip(forward, backward):
        if head_dims:
            np.testing.assert_array_equal(a.head_weights, b.head_weights)
        for x, y in zip(a.decisions, b.decisions):
            np.testing.assert_array_equal(x.chosen, y.chosen)
            np.testing.assert_array_equal(x.old_log_probs, y.old_log_probs)
            assert x.reward == y.reward
    assert len({episode_seed(7, k) for k in range(100)} | {episode_seed(8, k) for k in range(100)}) == 200


def test_update_stops_early_when_the_policy_leaves_the_trust_region():
    features = make_features()
    config = fast_config(update_epochs=50, minibatch_size=2, learning_rate=5e-2, target_kl=0.01)
    selector = RaiseSelector(config)
    selector.setup(make_context(features=features))
    env = BanditEnv(features)
    buffers = [run_episode(env, selector, seed, 100.0)[0] for seed in (0, 1)]
    optimizer = torch.optim.Adam(list(selector.policy.parameters()) + list(selector.critic.parameters()), lr=5e-2)
    stats = ppo_update(selector, optimizer, buffers, config, np.random.default_rng(0))
    assert stats["early_stopped"] == 1
    assert 1 <= stats["optimizer_steps"] < 50 * 7  # 7 decisions per episode, 2 per minibatch


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(episodes=5, episodes_per_update=2), "multiple of raise.episodes_per_update"),
        (dict(episodes=0, episodes_per_update=2), "multiple of raise.episodes_per_update"),
        (dict(episodes=4, episodes_per_update=1, baseline="group"), "episodes_per_update >= 2"),
        (
            dict(episodes=6, episodes_per_update=3, head_dims=3, head_antithetic=True),
            "an even raise.episodes_per_update",
        ),
        (dict(episodes=4, episodes_per_update=2, head_dims=0, head_antithetic=True), "raise.head_dims >= 1"),
    ],
)
def test_batching_errors_are_one_line(tmp_path, overrides, fragment):
    features = make_features()
    with pytest.raises(UserError, match=fragment):
        train_policy(
            BanditEnv(features),
            make_context(features=features),
            fast_config(**overrides),
            tmp_path,
            seed=0,
            progress=False,
        )


def test_centered_ranks_and_the_nes_step_by_hand():
    np.testing.assert_allclose(centered_ranks(np.array([3.0, 1.0, 2.0])), [0.5, -0.5, 0.0])
    np.testing.assert_allclose(centered_ranks(np.array([5.0, -1.0, 0.0, 7.0])), [1 / 6, -0.5, -1 / 6, 0.5])
    assert centered_ranks(np.array([4.0])).tolist() == [0.0]
    # utilities u = [0.5, -0.5, 0]; standardized draws [[1, 0], [-1, 1], [0, -1]]; u @ draws = [1, -0.5]
    mean, std = np.zeros(2), np.array([1.0, 2.0])
    samples = np.array([[1.0, 0.0], [-1.0, 2.0], [0.0, -2.0]])
    step = nes_mean_step(mean, std, samples, np.array([3.0, 1.0, 2.0]), learning_rate=0.5)
    np.testing.assert_allclose(step, [0.5, -0.5])  # 0.5 * std * [1, -0.5]
    # only the order of the returns matters (fitness shaping): a huge outlier changes nothing
    np.testing.assert_allclose(nes_mean_step(mean, std, samples, np.array([300.0, 1.0, 2.0]), 0.5), step)


def test_antithetic_pairs_share_a_seed_and_mirror_the_head_draw():
    seeds, mirrored = update_episodes(7, range(4, 8), antithetic=True)
    assert seeds == [episode_seed(7, 4)] * 2 + [episode_seed(7, 6)] * 2
    assert mirrored == [False, True, False, True]
    assert update_episodes(7, range(4, 8), antithetic=False) == ([episode_seed(7, k) for k in range(4, 8)], [False] * 4)

    features = make_features()
    selector = RaiseSelector(fast_config(head_dims=3, head_antithetic=True))
    selector.setup(make_context(features=features))
    mean = np.array([0.5, -1.0, 2.0])
    with torch.no_grad():
        selector.policy.head_mean.copy_(torch.tensor(mean, dtype=torch.float32))
    # Common random numbers: after the head draw, both generators are in the same state, so the
    # pair's Plackett-Luce draws use the same uniforms.
    plain_generator, mirror_generator = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    selector.sample_head(plain_generator)
    selector.sample_head(mirror_generator, mirror=True)
    assert torch.equal(plain_generator.get_state(), mirror_generator.get_state())

    (plain, _), (mirror, _) = collect_rollouts(BanditEnv(features), selector, seeds[:2], 1.0, mirrored[:2])
    np.testing.assert_allclose((plain.head_weights + mirror.head_weights) / 2, mean, atol=1e-6)
    std = selector.policy.head_std.numpy().astype(np.float64)
    eps = (plain.head_weights - mean) / std
    assert np.abs(eps).max() > 0.1
    # NES on the pair by hand: ranks [-0.5, 0.5], draws [eps, -eps] -> mean - lr * std * eps
    samples = np.stack([plain.head_weights, mirror.head_weights])
    step = nes_mean_step(mean, std, samples, np.array([1.0, 2.0]), learning_rate=0.5)
    np.testing.assert_allclose(step, mean - 0.5 * std * eps, rtol=1e-5)


def test_the_response_surface_step_by_hand():
    """Two positions (intercepts removed by centering), one feature carries the reward, ridge 1."""
    compositions = np.array([[1.0, 0.0], [-1.0, 0.0], [2.0, 5.0], [0.0, 5.0]])
    rewards = np.array([3.0, 1.0, 12.0, 10.0])  # reward = 1 * feature 0 + a per-position intercept
    positions = np.array([0, 0, 1, 1])
    # centered per position: x = [[1, 0], [-1, 0], [1, 0], [-1, 0]], y = [1, -1, 1, -1], std(y) = 1;
    # slope = (x'x + I)^-1 x'y = [4 / 5, 0] -> unit direction [1, 0]
    mean, std = np.array([0.5, -0.5]), np.array([2.0, 2.0])
    step = response_surface_step(mean, std, compositions, rewards, positions, learning_rate=0.25)
    np.testing.assert_allclose(step, [0.5 + 0.25 * 2.0, -0.5])
    # Feature 1 is 0 at position 0 and 5 at position 1, where the rewards are 10 higher: a stage effect,
    # which the per-position intercepts absorb (no weight on feature 1 above). Scale and intercepts do
    # not matter: the fit is on rewards centered per position and standardized.
    np.testing.assert_allclose(
        response_surface_step(mean, std, compositions, 1000 * rewards + 7 * positions, positions, 0.25), step
    )
    # a feature that moves with the reward within a position gets weight: x = [[1, 1], [-1, -1], [1, 0], [-1, 0]]
    # -> x'x + I = [[5, 2], [2, 3]], x'y = [4, 2] -> slope [8/11, 2/11]
    tilted = np.array([[1.0, 1.0], [-1.0, -1.0], [2.0, 5.0], [0.0, 5.0]])
    direction = response_surface_step(mean, std, tilted, rewards, positions, 0.25) - mean
    np.testing.assert_allclose(direction, 0.5 * np.array([8.0, 2.0]) / np.hypot(8.0, 2.0))
    # nothing to fit: no step
    np.testing.assert_array_equal(
        response_surface_step(mean, std, compositions, np.array([2.0, 2.0, 5.0, 5.0]), positions, 0.25), mean
    )


def test_the_regression_head_finds_the_paying_feature_on_most_seeds(tmp_path):
    """Two head updates (8 episodes) on the bandit, 10 selector seeds: the fit of every decision's reward on
    its picks' features must point the head's mean at response_loss (column 0) on at least 8. Measured:
    10 of 10 (NES with the same settings: 8 of 10)."""
    features = make_features()
    config = fast_config(
        head_dims=4, head_std=3.0, episodes=8, episodes_per_update=4, gamma=0.0, head_update="regression"
    )
    found = 0
    for seed in range(10):
        artifact = train_policy(
            BanditEnv(features),
            make_context(features=features),
            config,
            tmp_path / str(seed),
            seed=seed,
            progress=False,
        )
        mean = artifact.tensors["policy.head_mean"].numpy()
        found += int(mean[0] > 0 and np.argmax(np.abs(mean)) == 0)
    assert found >= 8, found


@pytest.mark.parametrize(
    "antithetic, head_update",
    [(False, "nes"), (True, "nes"), (False, "regression")],
    ids=["nes", "mirrored", "regression"],
)
def test_the_episode_head_learns_which_feature_pays(tmp_path, antithetic, head_update):
    """On the bandit the good examples are the top 20 % by response_loss (static column 0): the head's
    mean must put its largest weight there, and greedy choices must be mostly good."""
    features = make_features()
    env = BanditEnv(features)
    config = fast_config(
        head_dims=4,
        head_std=3.0,
        episodes=24,
        episodes_per_update=4,
        gamma=0.0,
        head_antithetic=antithetic,
        head_update=head_update,
    )
    artifact = train_policy(env, make_context(features=features), config, tmp_path, seed=0, progress=False)
    mean = artifact.tensors["policy.head_mean"].numpy()
    assert mean[0] > 0 and np.argmax(np.abs(mean)) == 0, mean
    saved = load_artifact(tmp_path / SELECTOR_DIR).provenance["episode_head"]  # readable in selector.json
    assert list(saved) == ["response_loss", "ifd", "prompt_tokens", "response_tokens"]
    np.testing.assert_allclose(list(saved.values()), mean, atol=1e-4)
    rows = read_jsonl(tmp_path / EPISODES_FILE)
    assert all(row["head_step"] > 0 for row in rows)
    selector = RaiseSelector(config, artifact)
    selector.setup(make_context(features=features))
    assert good_share_of_greedy_choices(selector, env) >= 0.75  # the pool share of good examples is 0.2
