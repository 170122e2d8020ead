"""The RAISE selector: a learned, stage-aware acquisition function with per-cluster top-b selection.

Fused feature vector ``d' = H(d, M_{t-1}, t)`` of one candidate (``P`` = ``pca_dim``; 41 columns at
the default P = 32, the paper's has 39). This table is the one place the layout is defined;
:func:`fused_feature_layout` returns it as data and it is saved in every selector folder.

=============  =====================  =========  ====================================================
columns        name                   block      value
=============  =====================  =========  ====================================================
0              response_loss          static     aux-model response loss, z-scored
1              ifd                    static     IFD ratio loss(y|x)/loss(y), z-scored
2              prompt_tokens          static     log1p(prompt tokens), z-scored
3              response_tokens        static     log1p(response tokens), z-scored
4              target_similarity      static     cosine to the target's mean embedding, z-scored [ours]
5 .. 4+P       emb_0 .. emb_{P-1}     static     PCA semantic embedding, z-scored per dimension
5+P            progress               stage      t / T (shared by all candidates)
6+P            validation_ratio       stage      current validation loss / the episode's initial one
7+P            validation_change      stage      (latest - previous validation loss) / initial (0 at t=0)
8+P            availability           dynamic    log1p(times this example was selected this episode)
=============  =====================  =========  ====================================================

Columns 0-4 are ``StaticFeatures.names`` in order: ``features.py`` computes the first four and the
runner appends ``target_similarity`` (:func:`raise_select.features.with_target_similarity`).

Standardization statistics (mean/std of the static block) are fitted on the training pool and
saved with the selector. Deployed with features from a different auxiliary model they are re-fitted
on the new pool (and noted in the provenance): raw difficulty values of different models are on
different scales, and their embedding dimensions are not aligned at all.

Efficiency: the first MLP layer is split as ``W_static x_static + W_stage s + w_avail a + b``; the
static projection ``W_static x_static`` is computed once per episode (weights are fixed within an
episode) for all candidates, and each decision only adds the stage and availability terms.
Greedy decisions go further (:class:`GreedyReference`): the stage term ``W_stage s`` is the same for
every candidate, so each fresh candidate's score is a smooth function of the 3 stage features whose
curvature is bounded by the weights alone. A reference keeps, at one stage ``s0``, every score and
its stage gradient; a decision predicts ``score(s0) + grad . (s - s0)`` (a pass over N x 4 floats) with
a remainder bound, drops the candidates whose prediction lies more than twice that bound below their
cluster's b-th best, and scores only the rest and the already-selected examples exactly. The picks are
those of scoring the whole pool; the reference is rebuilt when the stage has moved too far.

Diversity: k-means (C clusters, on the raw PCA embedding) splits the pool once; a decision of
``n`` indices takes ``b = n / C`` per cluster (the first ``n mod C`` clusters take one more when
``n`` is not a multiple of C). A cluster with fewer members than its quota gives all of them and
the shortfall is a last "fill" group taken from all remaining candidates by score. No example
appears twice within one decision.

Policy: training samples, per cluster, ``b`` items without replacement from ``softmax(F / tau)``
(Plackett-Luce, drawn with Gumbel-top-k) and records the exact log-probability of every pick
(their sum is the ordered subset's); deployment takes the greedy top-b. The entropy bonus uses a cheap estimate: the entropy of
each cluster's first-pick softmax, averaged over clusters.

Episode head [ours] (``raise.head_dims`` = k > 0): the score adds a linear term ``w . x[:k]`` over
the first k static columns (k = 5: the four difficulty columns and ``target_similarity``). In
training, ``w`` is drawn once per episode from ``N(mean, std^2)`` (``std = head_std / sqrt(k)``, so
the term spreads the pool's scores by about ``head_std``) and kept for every decision of that
episode; deployed, ``w = mean``. Why: a near-uniform Plackett-Luce sampler makes every episode's
mix of data almost the same (a binomial draw per pick), so episode returns differ mostly by
fine-tuning noise and PPO gets a faint signal. A per-episode draw makes whole episodes lean one way
or another (State-Dependent Exploration, Rückstieß et al. 2008; gSDE in Stable-Baselines3), so
returns differ by what was chosen. The mean is moved after every update (``ppo.head_update``): by a
separable-NES step from the batch's whole-episode returns, or (``raise.head_update=regression``) along
a ridge fit of every decision's reward on its picks' mean head features; PPO trains ``F_theta`` as before, with each episode's
draw a constant offset of its scores.

Stage head [ours] (``raise.head_stage``): the head's weights depend on the training stage,
``w(p) = w0 + p * w1`` with ``p`` = progress, i.e. the head reads ``[x[:k], p * x[:k]]`` and its
Gaussian has 2k weights (the same per-weight std). The MLP reads the stage too, but PPO barely moves
it; the head is the part that learns, so this is where a preference that changes over the run
(one family early, another late) can be learned. Saved as ``episode_head`` (w0) and
``episode_head_stage`` (w1, per unit of progress) by column name.

Critic ``V(state)`` reads a state summary (:func:`critic_summary`): the 3 stage features, the
fraction of the pool selected so far, mean availability, and mean/std/max of the current
(detached) acquisition scores over the pool.

Ablations (``raise.ablate``, the paper's): a removed feature group is zeroed wherever the policy
or the critic reads it: ``stage`` (the 3 stage features, in the MLP and the critic's summary, and progress in the stage head),
``availability`` (in the MLP, and the critic's fraction used / mean availability), ``difficulty``
(the named static columns, which are also all the episode head reads) and ``semantic`` (the
embedding columns; k-means still clusters the raw embedding, which ``raise.clusters`` ablates).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import pairwise_distances_argmin
from torch import nn
from torch.nn import functional as F

from .._version import __version__
from ..config import RaiseConfig
from ..errors import UserError
from ..features import StaticFeatures
from ..protocol import EnvState, SelectionContext
from ..selector_artifact import RaiseArtifact, load_artifact

logger = logging.getLogger(__name__)

LOG_COLUMNS = ("prompt_tokens", "response_tokens")  # token counts are heavy-tailed: log1p before z-scoring
STAGE_NAMES = ("progress", "validation_ratio", "validation_change")
SUMMARY_SIZE = len(STAGE_NAMES) + 5  # critic input: stage + fraction used, mean availability, score mean/std/max
MINIBATCH_KMEANS_ROWS = 50_000  # above this many rows, MiniBatchKMeans (full k-means gets slow)
KMEANS_INIT = 4  # fixed n_init so clustering is reproducible for a seed
SCORE_CHUNK_ROWS = 65_536  # rows per MLP chunk: bounds activation memory at any pool size
SILU_SLOPE_MAX = 1.0999  # max |silu'(x)| (1.0998 at x = 2.40)
SILU_CURVATURE_MAX = 0.5001  # max |silu''(x)| (0.5 at x = 0)
GREEDY_SCORED_SHARE = 8  # a greedy decision that must score more than 1/8 of the pool rebuilds its reference
GREEDY_SHORTLIST_MIN_POOL = 50_000  # smaller pools are scored whole: a few milliseconds, less than the bookkeeping


def fused_feature_layout(static_names: Sequence[str], pca_dim: int) -> list[dict]:
    """The module docstring's table as data: one {name, block, transform} per fused column.

    ``static_names`` are the features' ``names`` as the selector sees them: the four columns of
    ``features.py`` and the runner's ``target_similarity`` (41 columns in all at ``pca_dim`` 32).
    """
    layout = [
        {"name": name, "block": "static", "transform": "log1p+zscore" if name in LOG_COLUMNS else "zscore"}
        for name in static_names
    ]
    layout += [{"name": f"emb_{i}", "block": "static", "transform": "zscore"} for i in range(pca_dim)]
    layout += [{"name": name, "block": "stage", "transform": "none"} for name in STAGE_NAMES]
    layout.append({"name": "availability", "block": "dynamic", "transform": "log1p"})
    return layout


def embedding_space_id(features: StaticFeatures) -> str:
    """Fingerprint of the embedding space: the same aux model AND the same PCA basis.

    Centroids and embedding statistics transfer only within one space: another model's hidden
    dimensions, or a PCA fitted on another pool (different basis, even sign flips), are not aligned.
    """
    digest = hashlib.sha256(features.aux_model.encode("utf-8"))
    for array in (features.pca_mean, features.pca_components):
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Standardization:
    """Mean/std of the static block, fitted on one pool."""

    difficulty_mean: np.ndarray  # [len(names)] of the (log1p-transformed) difficulty columns
    difficulty_std: np.ndarray
    embedding_mean: np.ndarray  # [pca_dim]
    embedding_std: np.ndarray

    @staticmethod
    def transformed_difficulty(features: StaticFeatures) -> np.ndarray:
        values = np.asarray(features.values, dtype=np.float64).copy()
        for column, name in enumerate(features.names):
            if name in LOG_COLUMNS:
                values[:, column] = np.log1p(np.maximum(values[:, column], 0.0))
        return values

    @classmethod
    def fit_difficulty(cls, features: StaticFeatures) -> tuple[np.ndarray, np.ndarray]:
        return _mean_std(cls.transformed_difficulty(features))

    @staticmethod
    def fit_embedding(features: StaticFeatures) -> tuple[np.ndarray, np.ndarray]:
        return _mean_std(np.asarray(features.embedding, dtype=np.float64))

    def fused_static(self, features: StaticFeatures) -> np.ndarray:
        """[N, len(names) + pca_dim] float32: the static block of the fused vector."""
        difficulty = (self.transformed_difficulty(features) - self.difficulty_mean) / self.difficulty_std
        embedding = (np.asarray(features.embedding, dtype=np.float64) - self.embedding_mean) / self.embedding_std
        fused = np.concatenate([difficulty, embedding], axis=1).astype(np.float32)
        return np.nan_to_num(fused, nan=0.0, posinf=0.0, neginf=0.0)  # a missing value reads as the pool mean

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float32) for k, v in vars(self).items()}


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.where(np.isfinite(values), values, np.nan)
    mean, std = np.nan_to_num(np.nanmean(values, axis=0)), np.nan_to_num(np.nanstd(values, axis=0))
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)  # constant column: no scaling


def fit_clusters(embedding: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """k-means centroids [C, pca_dim] of the embedding (seeded, fixed n_init)."""
    embedding = np.asarray(embedding, dtype=np.float32)
    if clusters == 1:
        return embedding.mean(axis=0, keepdims=True)
    if embedding.shape[0] > MINIBATCH_KMEANS_ROWS:
        kmeans = MiniBatchKMeans(n_clusters=clusters, n_init=KMEANS_INIT, random_state=seed, batch_size=4096)
    else:
        kmeans = KMeans(n_clusters=clusters, n_init=KMEANS_INIT, random_state=seed)
    found = len(embedding)  # fewer rows than clusters: k-means cannot run
    if found >= clusters:
        with warnings.catch_warnings():  # sklearn's own warning for what the error below says
            warnings.simplefilter("ignore", ConvergenceWarning)
            kmeans.fit(embedding)
        found = len(np.unique(kmeans.labels_))
        if found >= clusters:
            return kmeans.cluster_centers_.astype(np.float32)
    raise UserError(
        f"k-means finds only {found} distinct cluster{'s' if found != 1 else ''} in the pool's embeddings (its examples "
        f"are (nearly) identical), fewer than raise.clusters={clusters}; set raise.clusters={max(found, 1)} or fewer "
        "(and a train.batch_size it divides), or use a more varied pool"
    )


def assign_clusters(embedding: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid per row [N] int64 (the same rule in training and deployment)."""
    if centroids.shape[0] == 1:
        return np.zeros(embedding.shape[0], dtype=np.int64)
    return pairwise_distances_argmin(np.asarray(embedding, dtype=np.float32), centroids).astype(np.int64)


def stage_features(state: EnvState) -> np.ndarray:
    """[3] float32: progress, validation loss relative to the episode's first, its latest change."""
    history = state.validation_history
    initial = history[0] if history[0] else 1.0
    change = (history[-1] - history[-2]) / initial if len(history) > 1 else 0.0
    return np.array([state.progress, history[-1] / initial, change], dtype=np.float32)


def availability_feature(counts: np.ndarray) -> torch.Tensor:
    """[N] float32 log1p(selection counts)."""
    return torch.from_numpy(np.asarray(counts, dtype=np.float32)).log1p()


def critic_summary(stage: torch.Tensor, availability: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """[SUMMARY_SIZE] critic input: stage, fraction of the pool used, mean availability, score mean/std/max."""
    scores = scores.detach()  # the critic reads the policy's scores but does not train them
    used = (availability > 0).float().mean()
    return torch.cat(
        [stage, torch.stack([used, availability.mean(), scores.mean(), scores.std(correction=0), scores.max()])]
    )


class AcquisitionMLP(nn.Module):
    """F_theta(d') -> score, applied row-wise; the first layer is split so its static part can be cached.

    SiLU activations: smooth like tanh, but several times cheaper on CPU at pool scale.
    """

    def __init__(
        self,
        static_size: int,
        hidden_size: int,
        head_dims: int = 0,
        head_std: float = 1.0,
        head_stage: bool = False,
        ablate: Sequence[str] = (),
    ):
        super().__init__()
        self.ablate = frozenset(ablate)  # "stage" / "availability": that input is read as zeros
        self.static_layer = nn.Linear(static_size, hidden_size)  # W_static x_static + b
        self.dynamic_layer = nn.Linear(len(STAGE_NAMES) + 1, hidden_size, bias=False)  # [W_stage | w_avail]
        self.hidden_layer = nn.Linear(hidden_size, hidden_size)
        self.output_layer = nn.Linear(hidden_size, 1)
        if head_dims:  # the episode head's Gaussian N(mean, std^2) over its k weights (ppo.head_update, not Adam)
            size = 2 * head_dims if head_stage else head_dims  # the stage head: [w0 | w1]
            self.register_buffer("head_mean", torch.zeros(size))
            self.register_buffer("head_std", torch.full((size,), head_std / math.sqrt(head_dims)))

    def project(self, fused_static: torch.Tensor) -> torch.Tensor:
        """[n, hidden] static part of the first layer."""
        return self.static_layer(fused_static)

    def from_projection(
        self, projection: torch.Tensor, stage: torch.Tensor, availability: torch.Tensor
    ) -> torch.Tensor:
        """[n] scores from a (cached) static projection + the stage and availability terms."""
        weight = self.dynamic_layer.weight  # [hidden, 3 + 1]
        if "stage" in self.ablate:
            stage = torch.zeros_like(stage)
        if "availability" in self.ablate:
            availability = torch.zeros_like(availability)
        hidden = projection + weight[:, : len(STAGE_NAMES)] @ stage  # the stage term is shared by all candidates
        # Availability is 0 except for the few examples already chosen this episode: add its term sparsely.
        chosen = availability.nonzero().squeeze(1)
        hidden = hidden.index_add_(0, chosen, availability[chosen, None] * weight[:, -1])
        hidden = F.silu(self.hidden_layer(F.silu(hidden)))
        return self.output_layer(hidden).squeeze(-1)

    def forward(self, fused_static: torch.Tensor, stage: torch.Tensor, availability: torch.Tensor) -> torch.Tensor:
        return self.from_projection(self.project(fused_static), stage, availability)

    def scores_and_stage_gradients(
        self, projection: torch.Tensor, stage: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[n] scores at zero availability and [n, 3] their gradients with respect to the stage features."""
        stage_weight = self.dynamic_layer.weight[:, : len(STAGE_NAMES)]
        first = projection + stage_weight @ stage
        second = self.hidden_layer(F.silu(first))
        scores = self.output_layer(F.silu(second)).squeeze(-1)
        hidden_gradient = (silu_slope(second) * self.output_layer.weight) @ self.hidden_layer.weight
        return scores, (hidden_gradient * silu_slope(first)) @ stage_weight

    def stage_curvature_bound(self, stage_change: torch.Tensor) -> float:
        """A bound on |d^2/dt^2 score(s0 + t stage_change)| over t, for any candidate and availability.

        The stage term moves every candidate's first-layer pre-activation along the same ``shift``. With
        |silu'| <= 1.1 and |silu''| <= 0.5: d^2 score / dt^2 = sum_j w_j [silu''(u_j) ((W_h (silu'(z) * shift))_j)^2
        + silu'(u_j) (W_h (silu''(z) * shift^2))_j], bounded term by term with |W_h|.
        """
        with torch.no_grad():
            shift = (self.dynamic_layer.weight[:, : len(STAGE_NAMES)] @ stage_change).abs()
            hidden_weight = self.hidden_layer.weight.abs()
            first_order = hidden_weight @ (SILU_SLOPE_MAX * shift)
            second_order = hidden_weight @ (SILU_CURVATURE_MAX * shift**2)
            per_unit = SILU_CURVATURE_MAX * first_order**2 + SILU_SLOPE_MAX * second_order
            return float(self.output_layer.weight.abs().squeeze(0) @ per_unit)


def silu_slope(x: torch.Tensor) -> torch.Tensor:
    """d silu(x) / dx = sigmoid(x) (1 + x (1 - sigmoid(x)))."""
    sigmoid = torch.sigmoid(x)
    return sigmoid * (1 + x * (1 - sigmoid))


class Critic(nn.Module):
    """V_phi(state summary) -> expected (scaled) return."""

    def __init__(self, hidden_size: int, ablate: Sequence[str] = ()):
        super().__init__()
        # summary positions an ablated group fills: the stage features; fraction used and mean availability
        groups = {"stage": range(len(STAGE_NAMES)), "availability": range(len(STAGE_NAMES), len(STAGE_NAMES) + 2)}
        self.zeroed = [i for group in ablate for i in groups.get(group, ())]
        self.net = nn.Sequential(
            nn.Linear(SUMMARY_SIZE, hidden_size),
            nn.Tanh(),
            nn.Linear(hidden_size, hidden_size),
            nn.Tanh(),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        if self.zeroed:
            summary = summary.clone()
            summary[self.zeroed] = 0.0
        return self.net(summary).squeeze(-1)


def cluster_quotas(decision_size: int, clusters: int) -> list[int]:
    """b per cluster: decision_size / C, the first (decision_size mod C) clusters take one more."""
    base, extra = divmod(decision_size, clusters)
    return [base + (c < extra) for c in range(clusters)]


def choose_groups(keys: torch.Tensor, members: list[torch.Tensor], quotas: list[int]) -> list[torch.Tensor]:
    """Per cluster, the top-``quota`` members by ``keys`` in descending order; then the fill group.

    Returns C + 1 index tensors (the last is the fill group, usually empty). With keys = scores this
    is greedy deployment; with keys = scores / tau + Gumbel noise it is a Plackett-Luce sample whose
    draw order is the descending key order.
    """
    taken = torch.zeros(keys.shape[0], dtype=torch.bool)
    groups, shortfall = [], 0
    for cluster_members, quota in zip(members, quotas):
        count = min(quota, cluster_members.numel())
        picked = cluster_members[torch.topk(keys[cluster_members], count).indices]
        taken[picked] = True
        groups.append(picked)
        shortfall += quota - count
    remaining = (~taken).nonzero().squeeze(1)
    groups.append(remaining[torch.topk(keys[remaining], shortfall).indices])
    return groups


def plackett_luce_pick_log_probs(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """[k] log-probability of each draw of ``chosen`` (positions into ``logits``), in order, without replacement.

    log p_k = z_k - logsumexp(z over items not yet drawn before pick k); the set still available at
    pick k is (never drawn) + (chosen_k .. chosen_last), summed without subtraction. Their sum is the
    exact log-probability of the ordered draw.
    """
    chosen_logits = logits[chosen]
    # logsumexp of chosen_k .. chosen_last for every k (reverse cumulative)
    tail = torch.logcumsumexp(chosen_logits.flip(0), dim=0).flip(0)
    never_drawn = torch.ones_like(logits, dtype=torch.bool)
    never_drawn[chosen] = False
    if never_drawn.any():  # logsumexp of an empty set would give a NaN gradient
        tail = torch.logaddexp(tail, torch.logsumexp(logits[never_drawn], dim=0))
    return chosen_logits - tail


def plackett_luce_log_prob(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Exact log-probability of drawing ``chosen`` in this order without replacement (sum of the picks')."""
    return plackett_luce_pick_log_probs(logits, chosen).sum()


def first_pick_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits): the entropy estimate of a Plackett-Luce group (its first draw)."""
    log_p = torch.log_softmax(logits, dim=0)
    return -(log_p.exp() * log_p).sum()


@dataclass
class SampledDecision:
    """One stochastic decision: what the env trains on, and what PPO stores about it."""

    indices: np.ndarray  # [decision_size] for env.step, groups interleaved round-robin
    groups: list[np.ndarray]  # C + 1 groups of pool indices in draw order (last = fill group)
    log_probs: torch.Tensor  # [decision_size] log-probability of every pick, groups concatenated in draw order
    value: float  # critic's estimate at this state
    stage: np.ndarray  # [3] stage features the decision was made with


@dataclass
class GreedyReference:
    """Greedy decisions' cache: every candidate's fresh logit and its stage gradient at one stage.

    Rows are grouped by cluster (``order``: the clusters' members concatenated), so a cluster is a slice.
    Valid while the policy's weights, the episode head and the projection are unchanged: the selector
    drops it whenever they change (``refresh_projection``, ``set_head``).
    """

    stage: np.ndarray  # [3] the stage the logits were computed at (zero availability)
    order: torch.Tensor  # [N] pool indices, cluster by cluster
    bounds: list[int]  # [C + 1] where each cluster's rows start in ``order`` (and the end)
    logits: torch.Tensor  # [N] logits at ``stage`` with nothing selected, rows in ``order``
    stage_gradients: torch.Tensor  # [N, 3] d logit / d stage at ``stage``, rows in ``order``


class RaiseSelector:
    """RAISE: score every candidate with F_theta(d') and take the top-b per k-means cluster.

    Build it untrained for PPO (``RaiseSelector(config)``) or from a saved folder
    (``RaiseSelector.load(path)``); ``setup(context)`` binds it to a pool's features.
    """

    name = "raise"
    requires_features = True

    def __init__(self, config: RaiseConfig, artifact: RaiseArtifact | None = None):
        self.config = artifact.config if artifact is not None else config
        self.artifact = artifact
        self.policy: AcquisitionMLP | None = None
        self.critic: Critic | None = None
        self.features: StaticFeatures | None = None
        self.standardization: Standardization | None = None
        self.centroids: np.ndarray | None = None
        self.head_dims = 0  # k columns the episode head reads (raise.head_dims resolved against the features in setup)
        self.clusters: np.ndarray | None = None  # [N] cluster of each pool example (read by run reports)
        self.members: list[torch.Tensor] = []  # pool indices of each cluster
        self.local_position: torch.Tensor | None = None  # [N] position of each example within its cluster
        self.fused_static: torch.Tensor | None = None  # [N, static columns] standardized static block
        self.adaptation_notes: list[str] = []  # what setup re-fitted for this pool (logged, saved in provenance)
        self._projection: torch.Tensor | None = None  # cached W_static x_static, refreshed by reset()
        self._head_offset: torch.Tensor | None = None  # [N] episode head's scores x[:k] . w (None without a head)
        self._greedy_reference: GreedyReference | None = None  # greedy decisions' cache (dropped on weight changes)
        self._head_stage_offset: torch.Tensor | None = None  # [N] x[:k] . w1, times progress (raise.head_stage)
        self._context: SelectionContext | None = None
        self._pool_fingerprint: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> RaiseSelector:
        artifact = load_artifact(path)
        return cls(artifact.config, artifact)

    # -- binding to a pool -------------------------------------------------------------------
    def setup(self, context: SelectionContext) -> None:
        features = context.features
        if features is None:
            raise UserError(
                "the raise selector needs static features; the run did not compute them (requires_features)"
            )
        if self.artifact is not None:
            features = self._artifact_columns(features)
        pool_size = features.values.shape[0]
        largest_decision = context.batch_size * context.decision_interval
        if largest_decision > pool_size:
            raise UserError(
                f"one decision takes batch_size x decision_interval = {largest_decision} examples but the pool has "
                f"{pool_size}; lower train.batch_size or train.decision_interval"
            )
        if self.config.clusters > pool_size:
            raise UserError(
                f"raise.clusters={self.config.clusters} exceeds the pool size {pool_size}; use fewer clusters"
            )
        self._context, self.features, self._pool_fingerprint = context, features, None
        static_size = len(features.names) + features.embedding.shape[1]
        self.head_dims = len(features.names) if self.config.head_dims is None else self.config.head_dims
        if self.head_dims > len(features.names):  # the head reads named columns, never the embedding
            raise UserError(
                f"raise.head_dims={self.head_dims} exceeds the {len(features.names)} named static feature "
                f"columns ({', '.join(features.names)}); use at most {len(features.names)}"
            )
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's torch RNG
            torch.manual_seed(context.seed)
            self.policy = AcquisitionMLP(
                static_size,
                self.config.hidden_size,
                self.head_dims,
                self.config.head_std,
                self.config.head_stage,
                self.config.ablate,
            )
            self.critic = Critic(self.config.hidden_size, self.config.ablate)
        if self.artifact is None:
            self._fit_to_pool(features, context.seed)
        else:
            self._adapt_artifact(features, context.seed)
            for prefix, module in (("policy.", self.policy), ("critic.", self.critic)):
                state = {k[len(prefix) :]: v for k, v in self.artifact.tensors.items() if k.startswith(prefix)}
                try:
                    module.load_state_dict(state)
                except RuntimeError:
                    raise UserError(
                        f"selector weights do not fit this setup (expected {static_size} static feature columns, "
                        f"hidden size {self.config.hidden_size}); retrain with `raise-select train-selector`"
                    ) from None
        self.fused_static = torch.from_numpy(self.standardization.fused_static(features))
        named = len(features.names)  # an ablated static group reads as zeros (its pool mean)
        if "difficulty" in self.config.ablate:
            self.fused_static[:, :named] = 0.0
        if "semantic" in self.config.ablate:
            self.fused_static[:, named:] = 0.0
        self.clusters = assign_clusters(features.embedding, self.centroids)
        self.members = [torch.from_numpy(np.flatnonzero(self.clusters == c)) for c in range(self.config.clusters)]
        self.local_position = torch.empty(pool_size, dtype=torch.long)
        for cluster_members in self.members:
            self.local_position[cluster_members] = torch.arange(cluster_members.numel())
        self.refresh_projection()
        self.set_head(None)

    def _fit_to_pool(self, features: StaticFeatures, seed: int) -> None:
        self.standardization = Standardization(
            *Standardization.fit_difficulty(features), *Standardization.fit_embedding(features)
        )
        self.centroids = fit_clusters(features.embedding, self.config.clusters, seed)

    def _artifact_columns(self, features: StaticFeatures) -> StaticFeatures:
        """The difficulty columns the saved selector was trained on, by name (a run may compute more)."""
        artifact = self.artifact
        missing = [name for name in artifact.static_names if name not in features.names]
        if missing or features.embedding.shape[1] != artifact.pca_dim:
            fix = f"set features.pca_dim={artifact.pca_dim}"
            if "reference_loss" in missing:
                fix = "set features.reference_steps > 0 (the selector was trained with a reference_loss column)"
            raise UserError(
                f"selector expects features {list(artifact.static_names)} with pca_dim={artifact.pca_dim}, got "
                f"{list(features.names)} with pca_dim={features.embedding.shape[1]}; {fix}"
            )
        return features.select(artifact.static_names)

    def _adapt_artifact(self, features: StaticFeatures, seed: int) -> None:
        """Reuse the saved statistics/centroids where they are valid for these features; re-fit the rest."""
        artifact = self.artifact
        saved = artifact.standardization
        self.adaptation_notes = []
        difficulty = (saved["difficulty_mean"], saved["difficulty_std"])
        if features.aux_model != artifact.aux_model:
            difficulty = Standardization.fit_difficulty(features)
            self.adaptation_notes.append(
                f"difficulty statistics re-fitted on this pool (aux model {features.aux_model!r}, trained with {artifact.aux_model!r})"
            )
        embedding = (saved["embedding_mean"], saved["embedding_std"])
        self.centroids = artifact.centroids
        if embedding_space_id(features) != artifact.embedding_space:
            # Another model's (or another PCA fit's) embedding dimensions are not aligned with the training ones:
            # saved embedding statistics and centroids mean nothing here.
            embedding = Standardization.fit_embedding(features)
            self.centroids = fit_clusters(features.embedding, self.config.clusters, seed)
            self.adaptation_notes.append(
                f"embedding space differs from training: embedding statistics re-fitted, k-means re-run with C={self.config.clusters}"
            )
        self.standardization = Standardization(*difficulty, *embedding)
        for note in self.adaptation_notes:
            logger.warning("raise selector: %s", note)

    # -- scoring -----------------------------------------------------------------------------
    def refresh_projection(self) -> None:
        """Recompute the cached static projection (call after the policy's weights changed)."""
        with torch.no_grad():
            self._projection = torch.cat(
                [self.policy.project(chunk) for chunk in self.fused_static.split(SCORE_CHUNK_ROWS)]
            )
        self._greedy_reference = None

    def reset(self, seed: int) -> None:
        # PPO updates the weights between episodes, so the per-episode cache is rebuilt here.
        self.refresh_projection()
        self.set_head(None)

    # -- the episode head ----------------------------------------------------------------------
    @property
    def has_head(self) -> bool:
        return self.head_dims > 0

    def set_head(self, weights: np.ndarray | None) -> None:
        """Score with these episode-head weights from now on (None: the learned mean, as deployed)."""
        if not self.has_head:
            return
        with torch.no_grad():
            w = self.policy.head_mean.detach() if weights is None else torch.as_tensor(weights, dtype=torch.float32)
            columns = self.fused_static[:, : self.head_dims]
            self._head_offset = columns @ w[: self.head_dims]
            if self.config.head_stage:
                self._head_stage_offset = columns @ w[self.head_dims :]
        self._greedy_reference = None

    def head_composition(self, chosen: np.ndarray, stage: np.ndarray) -> np.ndarray:
        """[head size] float64: the mean head features of these picks, ``[x, progress * x]`` with a stage head."""
        mean = self.fused_static[:, : self.head_dims].numpy()[chosen].mean(axis=0, dtype=np.float64)
        return np.concatenate([mean, float(stage[0]) * mean]) if self.config.head_stage else mean

    def sample_head(self, generator: torch.Generator, mirror: bool = False) -> np.ndarray:
        """Training: draw this episode's head weights from N(mean, std^2) and score with them from now on.

        ``mirror``: the same draw reflected through the mean, ``mean - std * eps`` (antithetic sampling).
        """
        mean, std = self.policy.head_mean, self.policy.head_std
        noise = torch.randn(mean.shape, generator=generator)
        weights = (mean - std * noise if mirror else mean + std * noise).numpy().astype(np.float32)
        self.set_head(weights)
        return weights

    def pool_scores(self, stage: np.ndarray, counts: np.ndarray) -> torch.Tensor:
        """[N] acquisition scores with the cached projection (no gradient): F_theta(d') plus the episode head's term."""
        stage_tensor, availability = torch.from_numpy(stage), availability_feature(counts)
        with torch.no_grad():
            scores = torch.cat(
                [
                    self.policy.from_projection(projection, stage_tensor, avail)
                    for projection, avail in zip(
                        self._projection.split(SCORE_CHUNK_ROWS), availability.split(SCORE_CHUNK_ROWS)
                    )
                ]
            )
            if self._head_offset is None:
                return scores
            if self._head_stage_offset is None:
                return scores + self._head_offset
            progress = 0.0 if "stage" in self.config.ablate else float(stage[0])  # the stage head reads it too
            return scores + self._head_offset + progress * self._head_stage_offset  # w(p) = w0 + p * w1

    def pick_log_probs(self, logits: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
        """[decision_size] Plackett-Luce log-probability of every pick, groups concatenated in draw order.

        Each cluster group is one draw over its members; the fill group draws from all candidates the
        cluster groups left. PPO clips a ratio per pick (as token-level PPO does per token): the ratio
        of a whole b-item draw is a product of b factors and leaves any trust region after tiny steps.
        """
        log_probs = [
            plackett_luce_pick_log_probs(logits[cluster_members], self.local_position[group])
            for cluster_members, group in zip(self.members, groups[:-1])
        ]
        fill = groups[-1]
        if fill.numel():
            taken = torch.zeros(logits.shape[0], dtype=torch.bool)
            taken[torch.cat(list(groups[:-1]))] = True
            remaining = (~taken).nonzero().squeeze(1)  # sorted, so positions are found by binary search
            log_probs.append(plackett_luce_pick_log_probs(logits[remaining], torch.searchsorted(remaining, fill)))
        return torch.cat(log_probs)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean first-pick entropy over clusters."""
        return torch.stack([first_pick_entropy(logits[m]) for m in self.members]).mean()

    # -- decisions ---------------------------------------------------------------------------
    def logits(self, scores: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        """Policy logits: scores / tau, minus ``repeat_penalty`` x (times selected) when ``fresh_first``.

        [ours] A sampler over thousands of candidates almost never repeats an example, so PPO never
        learns what a repeat is worth, and greedy deployment would re-pick the same top-b every
        step. With ``fresh_first`` both prefer examples not yet trained on this episode: with a huge
        penalty (1e4, exp(-1e4) == 0 in float32) every fresh example comes before any repeat; with a
        few logit units an example scored that much better than the best fresh one is trained on
        again, instead of the worst of the pool late in an episode. The penalty is a finite logit
        offset, so Plackett-Luce log-probabilities stay exact and finite.
        """
        logits = scores / self.config.temperature
        if self.config.fresh_first:
            logits = logits - self.config.repeat_penalty * torch.from_numpy(counts).to(logits.dtype)
        return logits

    def select(self, state: EnvState) -> np.ndarray:
        """Deployment: greedy top-b per cluster (scoring only the candidates that can still be picked)."""
        quotas = cluster_quotas(state.decision_size, self.config.clusters)
        groups = None
        fits = all(quota <= members.numel() for quota, members in zip(quotas, self.members))  # else: a fill group
        # The shortlist's bound covers the MLP's stage inputs; a stage head or ablated inputs score the whole pool.
        shortlist = self._head_stage_offset is None and not self.config.ablate
        if fits and shortlist and state.pool_size >= GREEDY_SHORTLIST_MIN_POOL:
            groups = self._shortlisted_greedy_groups(state, quotas)
        if groups is None:
            keys = self.logits(self.pool_scores(stage_features(state), state.selection_counts), state.selection_counts)
            groups = choose_groups(keys, self.members, quotas)
        return interleave([g.numpy() for g in groups])

    def _build_greedy_reference(self, stage: np.ndarray) -> GreedyReference:
        """Logits and stage gradients of the whole pool at ``stage``, as if nothing was selected yet."""
        order = torch.cat(self.members)
        stage_tensor = torch.from_numpy(stage)
        with torch.no_grad():
            parts = [
                self.policy.scores_and_stage_gradients(self._projection[rows], stage_tensor)
                for rows in order.split(SCORE_CHUNK_ROWS)
            ]
        scores, gradients = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if self._head_offset is not None:
            scores = scores + self._head_offset[order]
        bounds = np.cumsum([0] + [m.numel() for m in self.members]).tolist()
        temperature = self.config.temperature
        return GreedyReference(stage.copy(), order, bounds, scores / temperature, gradients / temperature)

    def _shortlisted_greedy_groups(self, state: EnvState, quotas: list[int]) -> list[torch.Tensor] | None:
        """``choose_groups`` of the whole pool's logits, computed from the candidates that can be picked.

        Returns None when even a fresh reference leaves too many candidates (the caller scores the pool).
        """
        stage, counts = stage_features(state), state.selection_counts
        used = np.flatnonzero(counts)
        for _ in range(2):
            if self._greedy_reference is None:
                self._greedy_reference = self._build_greedy_reference(stage)
            candidates = self._greedy_candidates(self._greedy_reference, stage, used, quotas)
            if candidates is not None:
                break
            self._greedy_reference = None  # the stage moved too far from the reference: rebuild it here
        else:
            return None
        rows = torch.from_numpy(np.union1d(candidates.numpy(), used))
        row_counts = counts[rows.numpy()]
        with torch.no_grad():
            scores = self.policy.from_projection(
                self._projection[rows], torch.from_numpy(stage), availability_feature(row_counts)
            )
            if self._head_offset is not None:
                scores = scores + self._head_offset[rows]
        keys = self.logits(scores, row_counts)
        row_clusters = torch.from_numpy(self.clusters[rows.numpy()])
        groups = []
        for cluster, quota in enumerate(quotas):
            local = (row_clusters == cluster).nonzero().squeeze(1)
            groups.append(rows[local[torch.topk(keys[local], quota).indices]])
        groups.append(torch.empty(0, dtype=torch.long))  # no fill group: every cluster can meet its quota
        return groups

    def _greedy_candidates(
        self, reference: GreedyReference, stage: np.ndarray, used: np.ndarray, quotas: list[int]
    ) -> torch.Tensor | None:
        """Pool indices of the fresh candidates that can be among this stage's top-b of their cluster.

        A fresh candidate's logit at ``stage`` is its reference logit plus gradient . (stage - s0), within
        ``remainder`` (Taylor's bound with :meth:`AcquisitionMLP.stage_curvature_bound`). One whose
        prediction lies more than 2 x remainder below its cluster's b-th best fresh prediction is beaten
        by those b. None when the survivors exceed 1/GREEDY_SCORED_SHARE of the pool.
        """
        stage_change = torch.from_numpy(stage - reference.stage)
        with torch.no_grad():
            curvature = self.policy.stage_curvature_bound(stage_change) / self.config.temperature
            predicted = torch.addmv(reference.logits, reference.stage_gradients, stage_change)
        remainder = 0.5 * curvature
        if used.size:  # already-selected examples are scored exactly; they do not set the thresholds
            cluster_start = torch.tensor(reference.bounds[:-1])[torch.from_numpy(self.clusters[used])]
            predicted[cluster_start + self.local_position[torch.from_numpy(used)]] = -math.inf
        survivors = []
        for cluster, quota in enumerate(quotas):
            start, end = reference.bounds[cluster], reference.bounds[cluster + 1]
            if quota == 0:
                continue
            cluster_predicted = predicted[start:end]
            best = torch.topk(cluster_predicted, quota).values
            quota_best = float(best[-1])
            if not math.isfinite(quota_best):  # fewer fresh members than the quota: every member competes
                survivors.append(reference.order[start:end])
                continue
            # float32 rounding of the two computations, far below any score gap that matters
            threshold = quota_best - 2 * remainder - 1e-4 * (1.0 + abs(quota_best))
            survivors.append(reference.order[start:end][cluster_predicted >= threshold])
        candidates = torch.cat(survivors)
        if candidates.numel() > max(len(reference.order) // GREEDY_SCORED_SHARE, 4 * sum(quotas)):
            return None
        return candidates

    def sample(self, state: EnvState, generator: torch.Generator) -> SampledDecision:
        """Training: a Plackett-Luce draw per cluster (Gumbel-top-k) with its exact log-probabilities."""
        stage = stage_features(state)
        scores = self.pool_scores(stage, state.selection_counts)
        logits = self.logits(scores, state.selection_counts)
        uniform = torch.rand(logits.shape, generator=generator).clamp_(min=1e-20)
        gumbel_keys = logits - torch.log(-torch.log(uniform))
        groups = choose_groups(gumbel_keys, self.members, cluster_quotas(state.decision_size, self.config.clusters))
        with torch.no_grad():
            log_probs = self.pick_log_probs(logits, groups)
            value = self.critic(
                critic_summary(torch.from_numpy(stage), availability_feature(state.selection_counts), scores)
            )
        arrays = [g.numpy() for g in groups]
        return SampledDecision(interleave(arrays), arrays, log_probs, float(value), stage)

    # -- reporting and saving ------------------------------------------------------------------
    def explain(self, stage_points: Sequence[float] = (0.0, 0.5, 1.0), max_rows: int = 5000) -> list[dict]:
        """Scores at several training stages (zero availability, validation at its initial value), per example.

        Rows: index, cluster, every static fused feature's raw value by name, and ``score@<p>``. Pools
        larger than ``max_rows`` are subsampled (fixed seed, sorted indices).
        """
        features = self.features
        pool_size = features.values.shape[0]
        self.set_head(None)  # the deployed head: its learned mean
        rows_index = np.arange(pool_size)
        if pool_size > max_rows:
            rows_index = np.sort(np.random.default_rng(0).choice(pool_size, max_rows, replace=False))
        counts = np.zeros(pool_size, dtype=np.int64)
        scores = {
            f"score@{point:g}": self.pool_scores(np.array([point, 1.0, 0.0], dtype=np.float32), counts).numpy()
            for point in stage_points
        }
        names = list(features.names) + [f"emb_{i}" for i in range(features.embedding.shape[1])]
        raw = np.concatenate([features.values, features.embedding], axis=1)
        rows = []
        for index in rows_index:
            row = {"index": int(index), "cluster": int(self.clusters[index])}
            row.update({name: float(value) for name, value in zip(names, raw[index])})
            row.update({key: float(values[index]) for key, values in scores.items()})
            rows.append(row)
        return rows

    def to_artifact(self, provenance: dict | None = None) -> RaiseArtifact:
        features = self.features
        tensors = {f"policy.{k}": v.detach().clone() for k, v in self.policy.state_dict().items()}
        tensors.update({f"critic.{k}": v.detach().clone() for k, v in self.critic.state_dict().items()})
        if self._pool_fingerprint is None:  # hashing a large pool takes a while: once per setup
            pool = self._context.pool
            self._pool_fingerprint = pool.fingerprint() if pool is not None else None
        record = {
            "pool_fingerprint": self._pool_fingerprint,
            "pool_size": int(features.values.shape[0]),
            "features_key": features.key,
            "aux_model": features.aux_model,
            "seed": self._context.seed,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "library_version": __version__,
            "adaptation_notes": list(self.adaptation_notes),
            **(provenance or {}),
        }
        if self.has_head:  # the deployed head's weights by column name: what the selector learned to prefer, readable
            names = [layout["name"] for layout in fused_feature_layout(features.names, features.embedding.shape[1])]
            mean = self.policy.head_mean.tolist()
            record["episode_head"] = {name: round(float(w), 4) for name, w in zip(names, mean[: self.head_dims])}
            if self.config.head_stage:  # w1: the change of each weight from progress 0 to progress 1
                record["episode_head_stage"] = {
                    name: round(float(w), 4) for name, w in zip(names, mean[self.head_dims :])
                }
        return RaiseArtifact(
            config=self.config,
            tensors=tensors,
            feature_layout=fused_feature_layout(features.names, features.embedding.shape[1]),
            static_names=tuple(features.names),
            pca_dim=int(features.embedding.shape[1]),
            standardization=self.standardization.as_dict(),
            centroids=np.asarray(self.centroids, dtype=np.float32),
            aux_model=features.aux_model,
            embedding_space=embedding_space_id(features),
            provenance=record,
        )


def interleave(groups: Sequence[np.ndarray]) -> np.ndarray:
    """Round-robin over groups (rank 0 of every group, then rank 1, ...).

    With M updates per decision the env splits the indices into consecutive batches; interleaving
    keeps every batch mixed across clusters instead of one cluster per batch.
    """
    ranks = np.concatenate([np.arange(len(g)) for g in groups])
    order = np.argsort(ranks, kind="stable")
    return np.concatenate(groups).astype(np.int64)[order]
