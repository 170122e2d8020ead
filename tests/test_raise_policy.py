"""The RAISE selector: Plackett-Luce maths, per-cluster selection, artifacts, feature adaptation."""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import make_context, make_features, make_state
from raise_select.config import RUN_TIME_FIELDS, RaiseConfig
from raise_select.config_io import load_config
from raise_select.errors import UserError
from raise_select.features import STATIC_FEATURE_NAMES, StaticFeatures, with_target_similarity
from raise_select.protocol import Explains, HasClusters, Selector
from raise_select.selector_artifact import METADATA_FILE, WEIGHTS_FILE, load_artifact, save_artifact
from raise_select.selectors.raise_policy import (
    AcquisitionMLP,
    RaiseSelector,
    choose_groups,
    cluster_quotas,
    fused_feature_layout,
    interleave,
    plackett_luce_log_prob,
    stage_features,
)


def make_selector(
    features: StaticFeatures, clusters: int = 2, batch_size: int = 4, seed: int = 0, **config
) -> RaiseSelector:
    selector = RaiseSelector(RaiseConfig(clusters=clusters, hidden_size=16, **config))
    selector.setup(make_context(features=features, batch_size=batch_size, seed=seed))
    selector.reset(seed)
    return selector


@pytest.mark.parametrize("chosen_count", [2, 3])
def test_plackett_luce_log_probs_of_all_ordered_choices_sum_to_one(chosen_count):
    logits = torch.tensor([0.3, -1.2, 2.0, 0.5])
    total = sum(
        math.exp(plackett_luce_log_prob(logits, torch.tensor(order)).item())
        for order in itertools.permutations(range(4), chosen_count)
    )
    assert total == pytest.approx(1.0, abs=1e-5)


def test_plackett_luce_log_prob_matches_hand_computation():
    logits = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # weights 1..4, total 10
    # draw item 3 (weight 4 of 10), then item 0 (weight 1 of the remaining 6)
    expected = math.log(4 / 10) + math.log(1 / 6)
    assert plackett_luce_log_prob(logits, torch.tensor([3, 0])).item() == pytest.approx(expected, abs=1e-6)
    # all items drawn: the last pick has probability 1 (and the gradient stays finite)
    logits.requires_grad_(True)
    plackett_luce_log_prob(logits, torch.tensor([3, 2, 1, 0])).backward()
    assert torch.isfinite(logits.grad).all()


def test_gumbel_top_k_draws_follow_the_plackett_luce_probabilities():
    logits = torch.tensor([0.0, 1.0, -0.5, 0.7])
    members = [torch.arange(4)]
    generator = torch.Generator().manual_seed(0)
    draws = 4000
    counts: dict[tuple, int] = {}
    for _ in range(draws):
        keys = logits - torch.log(-torch.log(torch.rand(4, generator=generator)))
        order = tuple(choose_groups(keys, members, [2])[0].tolist())
        counts[order] = counts.get(order, 0) + 1
    for order in itertools.permutations(range(4), 2):
        expected = math.exp(plackett_luce_log_prob(logits, torch.tensor(order)).item())
        assert counts.get(order, 0) / draws == pytest.approx(expected, abs=0.03)


def test_greedy_selection_is_the_top_b_of_each_cluster():
    features = make_features()
    selector = make_selector(features, clusters=2, batch_size=6)
    state = make_state(120, batch_size=6)
    state.selection_counts[:10] = 2  # availability changes the scores; select() must use it
    for fresh_first in (True, False):
        selector.config.fresh_first = fresh_first
        chosen = selector.select(state)
        scores = selector.pool_scores(stage_features(state), state.selection_counts)
        keys = selector.logits(scores, state.selection_counts).numpy()
        assert len(chosen) == 6 and len(set(chosen.tolist())) == 6
        for cluster in range(2):
            members = np.flatnonzero(selector.clusters == cluster)
            top3 = set(members[np.argsort(-keys[members])[:3]].tolist())
            assert set(chosen[selector.clusters[chosen] == cluster].tolist()) == top3
        assert len(set(selector.clusters[chosen[:2]].tolist())) == 2  # interleaved: each batch mixes clusters
        if fresh_first:  # examples already trained on this episode are passed over while fresh ones remain
            assert not set(chosen.tolist()) & set(range(10))
        else:  # plain greedy: the keys are the scores
            np.testing.assert_allclose(keys, scores.numpy() / selector.config.temperature)


@pytest.mark.parametrize(("repeat_penalty", "head"), [(2.0, True), (1e4, False)])
def test_greedy_shortlist_picks_what_scoring_the_whole_pool_picks(monkeypatch, repeat_penalty, head):
    """select() scores only the shortlisted candidates; over an episode whose stage moves (and rebuilds the
    reference), its picks are exactly choose_groups over the whole pool's logits."""
    monkeypatch.setattr("raise_select.selectors.raise_policy.GREEDY_SHORTLIST_MIN_POOL", 0)
    features = make_features(3000, seed=3)
    selector = make_selector(features, clusters=2, batch_size=8, repeat_penalty=repeat_penalty)
    with torch.no_grad():  # a trained-looking policy: large weights, stage features that matter
        for parameter in selector.policy.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7)) * 0.5)
    selector.refresh_projection()
    if head:
        selector.sample_head(torch.Generator().manual_seed(1))
    twin = copy.deepcopy(selector)  # never selects greedily: its sampler has no cache to be misled by
    built, scored_rows = [], []
    build, score = selector._build_greedy_reference, selector.policy.from_projection
    monkeypatch.setattr(selector, "_build_greedy_reference", lambda *a: built.append(1) or build(*a))
    monkeypatch.setattr(selector.policy, "from_projection", lambda p, *a: scored_rows.append(len(p)) or score(p, *a))
    rng = np.random.default_rng(0)
    state = make_state(3000, batch_size=8, budget=40)
    largest_scored = 0
    for step in range(40):
        state.step = step
        expected_keys = selector.logits(
            selector.pool_scores(stage_features(state), state.selection_counts), state.selection_counts
        )
        expected = interleave([g.numpy() for g in choose_groups(expected_keys, selector.members, cluster_quotas(8, 2))])
        scored_rows.clear()
        chosen = selector.select(state)
        np.testing.assert_array_equal(chosen, expected)
        largest_scored = max(largest_scored, *scored_rows)
        np.add.at(state.selection_counts, chosen, 1)
        state.validation_history.append(state.validation_history[-1] * (1 - 0.05 * rng.uniform()))
    sampled, expected_sample = (s.sample(state, torch.Generator().manual_seed(5)) for s in (selector, twin))
    np.testing.assert_array_equal(sampled.indices, expected_sample.indices)
    torch.testing.assert_close(sampled.log_probs, expected_sample.log_probs, rtol=0, atol=1e-6)
    assert 1 < len(built) < 40  # the reference moved with the stage, and was reused in between
    assert largest_scored <= 3000 // 8 + 40 * 8  # decisions scored a fraction of the pool (and the selected)


def test_stage_gradients_match_autograd_and_the_curvature_bound_holds():
    policy = AcquisitionMLP(static_size=9, hidden_size=16)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.mul_(4.0)  # large weights: strongly curved scores
    projection = policy.project(torch.randn(200, 9, generator=torch.Generator().manual_seed(0)))
    stage = torch.tensor([0.3, 0.9, -0.02])
    scores, gradients = policy.scores_and_stage_gradients(projection, stage)
    moving = stage.clone().requires_grad_(True)
    exact = policy.from_projection(projection, moving, torch.zeros(200))
    (expected,) = torch.autograd.grad(exact.sum(), moving)  # rows are independent: the sum's gradient is each row's
    torch.testing.assert_close(scores, exact.detach())
    torch.testing.assert_close(gradients.sum(0), expected)
    for change in (torch.tensor([0.05, -0.02, 0.01]), torch.tensor([0.5, -0.3, 0.1])):
        with torch.no_grad():
            moved = policy.from_projection(projection, stage + change, torch.zeros(200))
            remainder = (moved - scores - gradients @ change).abs().max()
        assert remainder <= 0.5 * policy.stage_curvature_bound(change)


def test_cluster_smaller_than_its_quota_is_filled_from_the_rest_by_score():
    features = make_features(outliers=1)  # one far-away row forms its own cluster
    selector = make_selector(features, clusters=2, batch_size=6)
    sizes = sorted(int((selector.clusters == c).sum()) for c in range(2))
    assert sizes == [1, 119]
    state = make_state(120, batch_size=6)
    chosen = selector.select(state)
    assert len(chosen) == 6 and len(set(chosen.tolist())) == 6
    assert 119 in chosen  # the lone member is always taken
    scores = selector.pool_scores(stage_features(state), state.selection_counts).numpy()
    big = np.flatnonzero(selector.clusters == selector.clusters[0])
    assert set(chosen[chosen != 119].tolist()) == set(big[np.argsort(-scores[big])[:5]].tolist())
    # the sampler forms the same groups: 3 from the big cluster, 1 lone, 2 filled; log-probs finite
    sampled = selector.sample(state, torch.Generator().manual_seed(0))
    assert sorted(len(g) for g in sampled.groups) == [1, 2, 3]
    assert torch.isfinite(sampled.log_probs).all() and sampled.log_probs[-1] < 0


def test_single_cluster_takes_the_global_top_b():
    features = make_features()
    selector = make_selector(features, clusters=1, batch_size=4)
    state = make_state(120)
    scores = selector.pool_scores(stage_features(state), state.selection_counts).numpy()
    assert set(selector.select(state).tolist()) == set(np.argsort(-scores)[:4].tolist())
    sampled = selector.sample(state, torch.Generator().manual_seed(1))
    assert len(sampled.indices) == 4 and len(set(sampled.indices.tolist())) == 4


def test_quotas_and_interleave():
    assert cluster_quotas(8, 2) == [4, 4] and cluster_quotas(7, 3) == [3, 2, 2]
    groups = [np.array([1, 2, 3]), np.array([7, 8, 9]), np.array([], dtype=np.int64)]
    assert interleave(groups).tolist() == [1, 7, 2, 8, 3, 9]


def test_layout_has_the_documented_columns():
    # The runner's features: the four of features.py, then target_similarity (Workbench appends it).
    features = with_target_similarity(make_features(pca_dim=32), np.ones((3, 32), dtype=np.float32))
    assert features.names == (*STATIC_FEATURE_NAMES, "target_similarity")
    layout = fused_feature_layout(features.names, features.embedding.shape[1])
    assert len(layout) == 41  # the module docstring's count at the default P = 32
    names = [c["name"] for c in layout]
    assert names[:5] == ["response_loss", "ifd", "prompt_tokens", "response_tokens", "target_similarity"]
    assert names[5:37] == [f"emb_{i}" for i in range(32)]
    assert [c["name"] for c in layout[-4:]] == ["progress", "validation_ratio", "validation_change", "availability"]


def test_stage_features():
    state = make_state(10, step=3, budget=6)
    state.validation_history += [1.8, 1.5]
    np.testing.assert_allclose(stage_features(state), [0.5, 0.75, -0.15], rtol=1e-6)


@pytest.mark.parametrize("head_dims", [0, 3])
def test_artifact_round_trip_gives_the_same_scores(tmp_path, head_dims):
    features = make_features()
    trained = make_selector(features, clusters=2, head_dims=head_dims)
    with torch.no_grad():  # make the weights (and the head's mean) differ from a fresh init with the same seed
        for tensor in list(trained.policy.parameters()) + list(trained.policy.buffers()):
            tensor.add_(0.1)
    trained.refresh_projection()
    trained.set_head(None)
    folder = save_artifact(trained.to_artifact({"episodes": 3}), tmp_path / "selector")
    loaded = RaiseSelector.load(folder)
    loaded.setup(make_context(features=features))
    state = make_state(120)
    state.validation_history.append(1.7)
    torch.testing.assert_close(
        loaded.pool_scores(stage_features(state), state.selection_counts),
        trained.pool_scores(stage_features(state), state.selection_counts),
    )
    assert (loaded.clusters == trained.clusters).all() and loaded.adaptation_notes == []
    metadata = json.loads((folder / METADATA_FILE).read_text())
    assert metadata["provenance"]["episodes"] == 3 and metadata["config"]["hidden_size"] == 16
    save_artifact(trained.to_artifact(), folder)  # overwriting an existing folder works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["selector"]


def test_selector_json_holds_no_run_time_settings_and_old_folders_still_load(tmp_path):
    trained = make_selector(make_features(), policy="somewhere/selector", rollout_workers=3, worker_gpus=0.5)
    folder = save_artifact(trained.to_artifact(), tmp_path / "selector")
    metadata = json.loads((folder / METADATA_FILE).read_text())
    assert not set(RUN_TIME_FIELDS) & set(metadata["config"]) and metadata["config"]["hidden_size"] == 16
    # A folder written before run-time settings were left out: they are ignored on load.
    metadata["config"].update(policy="old/path", rollout_workers=4, ray_address="auto", worker_cpus=2, worker_gpus=1.0)
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    loaded = load_artifact(folder)
    assert loaded.config == RaiseConfig(clusters=2, hidden_size=16)
    RaiseSelector.load(folder).setup(make_context(features=make_features()))


def test_features_from_another_aux_model_refit_statistics_and_clusters(tmp_path):
    trained = make_selector(make_features())
    folder = save_artifact(trained.to_artifact(), tmp_path / "selector")
    other = replace(make_features(80, seed=3), aux_model="aux-b")
    deployed = RaiseSelector.load(folder)
    deployed.setup(make_context(features=other))
    assert len(deployed.adaptation_notes) == 2  # difficulty statistics and embedding space
    fused = deployed.fused_static.numpy()
    np.testing.assert_allclose(fused.mean(axis=0), 0.0, atol=1e-5)  # standardized on the new pool
    assert set(deployed.clusters.tolist()) == {0, 1}
    assert len(deployed.select(make_state(80))) == 4


def test_broken_selector_folders_are_one_line_user_errors(tmp_path):
    folder = save_artifact(make_selector(make_features()).to_artifact(), tmp_path / "selector")
    weights = (folder / WEIGHTS_FILE).read_bytes()
    metadata = (folder / METADATA_FILE).read_text()

    def assert_rejected(fragment: str) -> None:
        with pytest.raises(UserError) as error:
            load_artifact(folder)
        message = str(error.value)
        assert "is not a raise-select selector" in message and fragment in message and "\n" not in message

    (folder / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    assert_rejected("truncated or corrupt")
    (folder / WEIGHTS_FILE).write_bytes(weights)
    (folder / METADATA_FILE).write_text(metadata[:40])
    assert_rejected("not valid JSON")
    (folder / METADATA_FILE).write_text(json.dumps({"format": "something-else", "version": 1}))
    assert_rejected("format 'something-else'")
    (folder / METADATA_FILE).write_text(metadata.replace('"version": 1', '"version": 99'))
    assert_rejected("version 99")
    (folder / WEIGHTS_FILE).unlink()
    (folder / METADATA_FILE).write_text(metadata)
    assert_rejected("no weights.safetensors")
    with pytest.raises(UserError, match="no such folder"):
        load_artifact(tmp_path / "missing")


def test_explain_rows():
    selector = make_selector(make_features())
    assert isinstance(selector, Selector) and isinstance(selector, Explains) and isinstance(selector, HasClusters)
    assert selector.clusters.shape == (120,)  # a cluster for every pool example
    rows = selector.explain(max_rows=50)
    assert len(rows) == 50
    assert {"index", "cluster", "response_loss", "emb_0", "score@0", "score@0.5", "score@1"} <= set(rows[0])
    assert any(row["score@0"] != row["score@1"] for row in rows)  # the stage moves the scores


def test_a_finite_repeat_penalty_repeats_an_example_only_when_it_is_that_much_better():
    features = make_features()
    selector = make_selector(features, clusters=1, batch_size=4)
    state = make_state(120, batch_size=4)
    scores = selector.pool_scores(stage_features(state), state.selection_counts).numpy()
    top = np.argsort(-scores)
    state.selection_counts[top[:4]] = 1  # the four best were trained on once already
    gap = float(scores[top[0]] - scores[top[4]])  # best used one over best fresh one
    for penalty, repeats in ((1e4, False), (0.5 * gap, True)):
        selector.config.repeat_penalty = penalty
        keys = selector.logits(torch.from_numpy(scores), state.selection_counts).numpy()
        np.testing.assert_allclose(keys, scores - penalty * state.selection_counts, rtol=1e-6)
        chosen = set(selector.select(state).tolist())
        assert (top[0] in chosen) == repeats
        assert chosen.isdisjoint(top[:4]) == (not repeats)


def test_the_episode_head_adds_a_linear_term_sampled_in_training_and_its_mean_when_deployed():
    features = make_features()
    plain = make_selector(features)
    selector = make_selector(features, head_dims=3, head_std=2.0)
    head = selector.policy.head_mean
    assert head.shape == (3,) and torch.allclose(selector.policy.head_std, torch.full((3,), 2.0 / 3**0.5))
    state = make_state(120)
    stage = stage_features(state)
    base = plain.pool_scores(stage, state.selection_counts)  # the same seed: the same MLP
    torch.testing.assert_close(selector.pool_scores(stage, state.selection_counts), base)  # mean 0 at init
    head.copy_(torch.tensor([1.0, -2.0, 0.5]))
    selector.reset(0)
    expected = base + selector.fused_static[:, :3] @ head
    torch.testing.assert_close(selector.pool_scores(stage, state.selection_counts), expected)
    chosen = selector.select(state)
    weights = selector.sample_head(torch.Generator().manual_seed(5))  # training: a draw, kept until the next reset
    assert weights.shape == (3,) and not np.allclose(weights, head.numpy())
    torch.testing.assert_close(
        selector.pool_scores(stage, state.selection_counts),
        base + selector.fused_static[:, :3] @ torch.from_numpy(weights),
    )
    np.testing.assert_array_equal(weights, selector.sample_head(torch.Generator().manual_seed(5)))
    selector.reset(1)
    np.testing.assert_array_equal(selector.select(state), chosen)
    with pytest.raises(UserError, match="raise.head_dims=5 exceeds the 4 named static feature columns"):
        make_selector(features, head_dims=5)  # the head never reads the embedding
    assert make_selector(features).head_dims == len(features.names)  # None: every named column


def test_a_saved_selector_reads_its_own_columns_by_name(tmp_path):
    """A run may compute more named columns (reference_loss) than a selector was trained on: it reads its own."""
    features = make_features()
    trained = make_selector(features, head_dims=None)
    folder = save_artifact(trained.to_artifact(), tmp_path / "selector")
    extra = np.random.default_rng(1).normal(size=(features.values.shape[0], 1)).astype(np.float32)
    wider = replace(features, names=(*features.names, "reference_loss"), values=np.hstack([features.values, extra]))
    loaded = RaiseSelector.load(folder)
    loaded.setup(make_context(features=wider))
    assert loaded.head_dims == len(features.names) and loaded.features.names == features.names
    state = make_state(120)
    torch.testing.assert_close(
        loaded.pool_scores(stage_features(state), state.selection_counts),
        trained.pool_scores(stage_features(state), state.selection_counts),
    )
    trained_wide = make_selector(wider)
    wide_folder = save_artifact(trained_wide.to_artifact(), tmp_path / "wide")
    with pytest.raises(UserError, match="selector expects features .*reference_loss.*set features.reference_steps > 0"):
        RaiseSelector.load(wide_folder).setup(make_context(features=features))


def test_without_a_stage_head_the_picks_are_those_of_the_static_head():
    """Pinned picks (greedy, then a seeded head draw and Plackett-Luce sample): raise.head_stage=false changes nothing.
    Pinned before the stage head existed, with the head_std of the time."""
    selector = make_selector(make_features(), head_dims=3, seed=3, head_std=2.0)
    state = make_state(120)
    assert selector.select(state).tolist() == [79, 39, 99, 50]
    selector.sample_head(torch.Generator().manual_seed(1))
    assert selector.sample(state, torch.Generator().manual_seed(7)).indices.tolist() == [89, 52, 80, 51]


def test_the_stage_head_weights_are_w0_plus_progress_times_w1(tmp_path):
    features = make_features()
    plain = make_selector(features, head_dims=0)
    selector = make_selector(features, head_dims=3, head_std=2.0, head_stage=True)
    head = selector.policy.head_mean
    assert head.shape == (6,) and torch.allclose(selector.policy.head_std, torch.full((6,), 2.0 / 3**0.5))
    w0, w1 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-3.0, 0.0, 1.0])
    head.copy_(torch.cat([w0, w1]))
    selector.reset(0)
    x = selector.fused_static[:, :3]
    state = make_state(120)
    for progress, weights in ((0.0, w0), (1.0, w0 + w1), (0.25, w0 + 0.25 * w1)):
        stage = np.array([progress, 1.0, 0.0], dtype=np.float32)
        base = plain.pool_scores(stage, state.selection_counts)  # the same seed: the same MLP
        torch.testing.assert_close(selector.pool_scores(stage, state.selection_counts), base + x @ weights)
    chosen = np.array([0, 5, 7])
    composition = selector.head_composition(chosen, np.array([0.5, 1.0, 0.0]))  # the regression update's features
    np.testing.assert_allclose(composition, np.concatenate([x[chosen].mean(0), 0.5 * x[chosen].mean(0)]), rtol=1e-6)

    folder = save_artifact(selector.to_artifact(), tmp_path / "selector")
    provenance = json.loads((folder / METADATA_FILE).read_text())["provenance"]
    names = list(features.names[:3])
    assert provenance["episode_head"] == dict(zip(names, w0.tolist()))
    assert provenance["episode_head_stage"] == dict(zip(names, w1.tolist()))
    loaded = RaiseSelector.load(folder)
    loaded.setup(make_context(features=features))
    assert loaded.config.head_stage
    stage = np.array([0.6, 0.9, -0.1], dtype=np.float32)
    torch.testing.assert_close(
        loaded.pool_scores(stage, state.selection_counts), selector.pool_scores(stage, state.selection_counts)
    )


def test_an_ablated_feature_group_reaches_neither_the_policy_nor_the_critic():
    features = make_features()
    state = make_state(120)
    counts = state.selection_counts.copy()
    counts[:10] = 2
    early, late = np.array([0.0, 1.0, 0.0], dtype=np.float32), np.array([0.9, 0.7, -0.1], dtype=np.float32)

    def scores(selector, stage, selection_counts):
        return selector.pool_scores(stage, selection_counts)

    full = make_selector(features, fresh_first=False)
    assert not torch.allclose(scores(full, early, counts), scores(full, late, counts))
    assert not torch.allclose(scores(full, early, counts), scores(full, early, 0 * counts))
    for no_stage in (
        make_selector(features, fresh_first=False, ablate=["stage"]),
        make_selector(features, fresh_first=False, ablate=["stage"], head_dims=3, head_stage=True),
    ):
        if no_stage.config.head_stage:
            no_stage.policy.head_mean.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0, -2.0, 0.5]))  # w1 only
            no_stage.reset(0)
        torch.testing.assert_close(scores(no_stage, early, counts), scores(no_stage, late, counts))
    summary = torch.arange(8, dtype=torch.float32)
    assert no_stage.critic(summary) == no_stage.critic(torch.cat([torch.tensor([5.0, -1.0, 2.0]), summary[3:]]))
    no_availability = make_selector(features, fresh_first=False, ablate=["availability"])
    torch.testing.assert_close(scores(no_availability, late, counts), scores(no_availability, late, 0 * counts))
    named = len(features.names)
    no_difficulty = make_selector(features, ablate=["difficulty"])
    assert (
        no_difficulty.fused_static[:, :named].abs().sum() == 0 and no_difficulty.fused_static[:, named:].abs().sum() > 0
    )
    no_semantic = make_selector(features, ablate=["semantic"])
    assert no_semantic.fused_static[:, named:].abs().sum() == 0 and no_semantic.fused_static[:, :named].abs().sum() > 0
    with pytest.raises(UserError, match="raise.ablate"):
        load_config(None, ["raise.ablate=[stages]"])
