"""Baseline selectors from the instruction-selection literature, at RAISE's equal step budgets.

Static selectors score the pool once from :class:`~raise_select.features.StaticFeatures`, keep a
FIXED subset of the size the budget allows, and train shuffled epochs over it (the paper's protocol:
3 epochs on a fixed 1 % subset). Dynamic selectors choose anew at every decision: ``sspl`` from
a self-paced easy-to-hard window, ``high_loss`` from the current model's losses.

Every selector that ranks goes through :func:`top_k`, so ties and excluded examples are handled
the same way everywhere.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from ..protocol import EnvState, SelectionContext
from .simple import EpochSampler, RandomSelector, sample_without_replacement

if TYPE_CHECKING:
    from ..features import StaticFeatures

logger = logging.getLogger(__name__)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest finite scores, best first; ties go to the lower index.

    Non-finite scores (``-inf``, ``nan``) mark excluded examples and are never returned, so the
    result can be shorter than ``k``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    eligible = np.flatnonzero(np.isfinite(scores))
    order = eligible[np.argsort(-scores[eligible], kind="stable")]
    return order[:k].astype(np.int64)


def static_subset_size(context: SelectionContext) -> int:
    """Examples a static selector keeps: ``budget_steps * batch_size`` spread over ``static_epochs`` epochs."""
    size = math.ceil(context.budget_steps * context.batch_size / context.static_epochs)
    return int(min(max(size, 1), len(context.pool)))


def _require_features(selector_name: str, context: SelectionContext) -> StaticFeatures:
    if context.features is None:
        raise ValueError(
            f"selector '{selector_name}' needs static features in the SelectionContext (requires_features=True)"
        )
    return context.features


class StaticSubsetSelector:
    """Base of the static baselines: score once, keep the top subset, train shuffled epochs over it.

    Subclasses implement :meth:`scores` (higher = kept first; non-finite = never kept).
    """

    name = "static"
    requires_features = True

    def __init__(self) -> None:
        self.subset: np.ndarray | None = None  # pool indices of the fixed subset, best first
        self.sampler: EpochSampler | None = None

    def scores(self, features: StaticFeatures, context: SelectionContext) -> np.ndarray:
        raise NotImplementedError

    def setup(self, context: SelectionContext) -> None:
        features = _require_features(self.name, context)
        size = static_subset_size(context)
        self.subset = top_k(self.scores(features, context), size)
        if self.subset.size == 0:
            raise UserError(
                f"selector '{self.name}' found no eligible pool example under the auxiliary model; "
                "use a trained auxiliary model (features.aux_model) or another selector"
            )
        if self.subset.size < size:
            logger.warning(
                "selector '%s': only %d eligible examples for a subset of %d; training more epochs over them",
                self.name,
                self.subset.size,
                size,
            )

    def reset(self, seed: int) -> None:
        if self.subset is None:
            raise RuntimeError("call setup(context) before reset(seed)")
        self.sampler = EpochSampler(self.subset, np.random.default_rng(seed))

    def select(self, state: EnvState) -> np.ndarray:
        if self.sampler is None:
            raise RuntimeError("call reset(seed) before select()")
        return self.sampler.draw(state.decision_size)


class LongestSelector(StaticSubsetSelector):
    """Longest responses in tokens ("Long Is More for Alignment")."""

    name = "longest"

    def scores(self, features: StaticFeatures, context: SelectionContext) -> np.ndarray:
        return features.column("response_tokens")


class IFDSelector(StaticSubsetSelector):
    """Highest instruction-following difficulty loss(y|x)/loss(y), ratios >= 1 dropped (Cherry LLM)."""

    name = "ifd"

    def scores(self, features: StaticFeatures, context: SelectionContext) -> np.ndarray:
        ifd = features.column("ifd").astype(np.float64)
        # IFD >= 1: the instruction does not help predict the response, so the pair is dropped.
        return np.where(ifd < 1.0, ifd, -np.inf)


class LowPerplexitySelector(StaticSubsetSelector):
    """Lowest response loss under the base model (easiest, most "fluent" responses)."""

    name = "perplexity_low"

    def scores(self, features: StaticFeatures, context: SelectionContext) -> np.ndarray:
        return -features.column("response_loss").astype(np.float64)


class HighPerplexitySelector(StaticSubsetSelector):
    """Highest response loss under the base model (hardest, least-known responses)."""

    name = "perplexity_high"

    def scores(self, features: StaticFeatures, context: SelectionContext) -> np.ndarray:
        return features.column("response_loss").astype(np.float64)


class TargetedSelector(StaticSubsetSelector):
    """Highest cosine similarity of the instruction embedding to the mean target validation embedding."""

    name = "targeted"

    def scores(self, features: StaticFeatures, context: SelectionContext) -> np.ndarray:
        if context.target_embedding is None or len(context.target_embedding) == 0:
            raise ValueError(
                "selector 'targeted' needs context.target_embedding (the target's validation embeddings in the pool's PCA space)"
            )
        target_mean = np.asarray(context.target_embedding, dtype=np.float64).mean(axis=0)
        embedding = features.embedding.astype(np.float64)
        norms = np.linalg.norm(embedding, axis=1) * np.linalg.norm(target_mean)
        return embedding @ target_mean / np.maximum(norms, 1e-12)


class SelfPacedSelector:
    """Self-paced easy-to-hard (SSPL-style): unused examples among the easiest max(p0, t/T) fraction by base-model loss."""

    name = "sspl"
    requires_features = True

    def __init__(self, start_fraction: float = 0.1):
        # p0: the window the curriculum starts with; it then grows linearly with progress t/T.
        if not 0.0 < start_fraction <= 1.0:
            raise ValueError("start_fraction must be in (0, 1]")
        self.start_fraction = start_fraction
        self.easy_order: np.ndarray | None = None  # pool indices, easiest (lowest loss) first
        self.rng = np.random.default_rng(0)

    def setup(self, context: SelectionContext) -> None:
        features = _require_features(self.name, context)
        self.easy_order = top_k(-features.column("response_loss").astype(np.float64), len(context.pool))

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def window(self, state: EnvState) -> np.ndarray:
        """The candidates at this progress: the easiest max(p0, t/T) fraction, never smaller than one decision."""
        if self.easy_order is None:
            raise RuntimeError("call setup(context) before select()")
        fraction = max(self.start_fraction, state.progress)
        size = max(math.ceil(fraction * self.easy_order.size), min(state.decision_size, self.easy_order.size))
        return self.easy_order[:size]

    def select(self, state: EnvState) -> np.ndarray:
        window = self.window(state)
        count = state.decision_size
        used = state.selection_counts[window] > 0
        unused = self.rng.permutation(window[~used])
        if unused.size >= count:
            return unused[:count]
        # The window is (nearly) exhausted: top up from its already-used examples.
        refill_from = window[used] if used.any() else window
        return np.concatenate([unused, sample_without_replacement(self.rng, refill_from, count - unused.size)])


class HighLossSelector(RandomSelector):
    """Online high loss: the highest current-model losses among candidate_factor x decision_size random candidates."""

    name = "high_loss"
    requires_features = False

    def __init__(self, candidate_factor: int = 4):
        # k: candidates scored per decision, as a multiple of the decision size. Each costs one
        # forward pass of the current model through state.loss_probe, so k trades cost for greed.
        if candidate_factor < 1:
            raise ValueError("candidate_factor must be at least 1")
        super().__init__()  # seeded uniform candidate draws, as RandomSelector
        self.candidate_factor = candidate_factor

    def select(self, state: EnvState) -> np.ndarray:
        if state.loss_probe is None:
            raise ValueError("selector 'high_loss' needs state.loss_probe from the environment")
        count = state.decision_size
        candidate_count = max(min(self.candidate_factor * count, self.pool_size), count)
        candidates = sample_without_replacement(self.rng, np.arange(self.pool_size), candidate_count)
        losses = np.asarray(state.loss_probe(candidates), dtype=np.float64)
        return candidates[top_k(losses, count)]
