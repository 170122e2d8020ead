"""Selectors that need no features: uniform random batches, and full-data epochs over the pool.

:class:`EpochSampler` (shuffled epochs over a fixed index set) is shared with the static-subset
baselines in :mod:`raise_select.selectors.baselines`, which train epochs over a fixed subset.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..protocol import EnvState, SelectionContext


def sample_without_replacement(rng: np.random.Generator, candidates: np.ndarray, count: int) -> np.ndarray:
    """``count`` uniform draws from ``candidates``, without replacement as far as the set allows.

    When ``count`` exceeds the set, whole shuffled copies are concatenated, so every candidate
    appears at most once more than any other.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.size == 0:
        raise ValueError("no candidates to sample from")
    rounds = -(-count // candidates.size)  # ceil
    return np.concatenate([rng.permutation(candidates) for _ in range(rounds)])[:count]


class EpochSampler:
    """Shuffled epochs over a fixed index set, reshuffled every epoch.

    ``draw(count)`` continues where the last draw stopped; a draw that crosses an epoch boundary
    finishes the current epoch and continues into the next (so one draw may repeat an example
    only if it spans an epoch boundary).
    """

    def __init__(self, indices: np.ndarray, rng: np.random.Generator):
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size == 0:
            raise ValueError("EpochSampler needs at least one index")
        self.rng = rng
        self.epoch = 0  # completed epochs
        self._order = rng.permutation(self.indices)
        self._position = 0

    def draw(self, count: int) -> np.ndarray:
        parts = []
        while count > 0:
            if self._position == self._order.size:
                self.epoch += 1
                self._order = self.rng.permutation(self.indices)
                self._position = 0
            take = min(count, self._order.size - self._position)
            parts.append(self._order[self._position : self._position + take])
            self._position += take
            count -= take
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


class RandomSelector:
    """Uniform random batches: each decision draws without replacement from the whole pool."""

    name = "random"
    requires_features = False

    def __init__(self) -> None:
        self.pool_size = 0
        self.rng = np.random.default_rng(0)

    def setup(self, context: SelectionContext) -> None:
        self.pool_size = len(context.pool)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def select(self, state: EnvState) -> np.ndarray:
        return sample_without_replacement(self.rng, np.arange(self.pool_size), state.decision_size)


class FullDataSelector:
    """Full data: shuffled epochs over the whole pool (the 100 % reference when the budget allows)."""

    name = "full"
    requires_features = False

    def __init__(self) -> None:
        self.pool_size = 0
        self.sampler: EpochSampler | None = None

    def setup(self, context: SelectionContext) -> None:
        self.pool_size = len(context.pool)

    def reset(self, seed: int) -> None:
        self.sampler = EpochSampler(np.arange(self.pool_size), np.random.default_rng(seed))

    def select(self, state: EnvState) -> np.ndarray:
        if self.sampler is None:
            raise RuntimeError("call reset(seed) before select()")
        return self.sampler.draw(state.decision_size)


class OracleSelector:
    """Oracle ceiling on labelled pools: shuffled epochs over the examples labelled helpful and not corrupted.

    Needs pool labels (``meta["helpful"]`` / ``meta["corrupted"]``, as the synthetic testbed has);
    it is the reference RAISE's "gap closed" is measured against, not a method a user can run on
    unlabelled data.
    """

    name = "oracle"
    requires_features = False

    def __init__(self) -> None:
        self.helpful: np.ndarray | None = None
        self.sampler: EpochSampler | None = None

    def setup(self, context: SelectionContext) -> None:
        self.helpful = oracle_indices(context.pool)

    def reset(self, seed: int) -> None:
        self.sampler = EpochSampler(self.helpful, np.random.default_rng(seed))

    def select(self, state: EnvState) -> np.ndarray:
        if self.sampler is None:
            raise RuntimeError("call reset(seed) before select()")
        return self.sampler.draw(state.decision_size)


def oracle_indices(pool) -> np.ndarray:
    """Pool indices labelled helpful and not corrupted; a one-line error for a pool without labels."""
    labelled = [e for e in pool.examples if "helpful" in e.meta and "corrupted" in e.meta]
    if len(labelled) < len(pool.examples):
        raise UserError(
            f"the oracle selector needs 'helpful' and 'corrupted' labels on every pool example "
            f"({len(pool.examples) - len(labelled)} of {len(pool.examples)} have none); use it on a labelled pool "
            "such as the synthetic testbed, or drop it from compare.methods"
        )
    indices = np.array(
        [i for i, e in enumerate(pool.examples) if e.meta["helpful"] and not e.meta["corrupted"]], dtype=np.int64
    )
    if indices.size == 0:
        raise UserError(
            "the oracle selector found no example labelled helpful and not corrupted in the pool; drop it from compare.methods"
        )
    return indices
