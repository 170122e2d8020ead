"""References on labelled pools that read the families: a hand-written schedule, and fixed family mixtures.

* ``scheduled_oracle`` follows the stage schedule the pool's labels carry: an example with
  ``meta["schedule"] = (start, end)`` is trained on while the run's progress t/T is in
  ``[start, end)`` (the curriculum world, :mod:`raise_select.data.curriculum`, labels its helpful
  families so). It is the ceiling of stage-aware selection on such a pool.
* ``best_static`` trains a fixed mixture of the helpful families (``meta["family"]`` of the examples
  labelled helpful and not corrupted) all run long. Which mixture is found by
  :func:`mixture_grid` + a fine-tuning run per grid point on the validation split, done by the
  comparison (:func:`raise_select.experiments.search_best_static`): the best any static mixture of
  those families can do at that budget, an upper bound that uses the reward's own split.

Neither is a method for unlabelled data; both exist to measure what stage awareness is worth.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import UserError
from ..protocol import EnvState, SelectionContext
from .simple import EpochSampler


def _require_labels(pool, key: str, selector: str, hint: str) -> None:
    missing = sum(key not in example.meta for example in pool.examples)
    if missing == len(pool.examples):
        raise UserError(
            f"selector '{selector}' needs '{key}' labels on the pool ({hint}); use it on a labelled pool such as "
            "synthetic_curriculum, or drop it from compare.methods"
        )


class ScheduledOracleSelector:
    """Scheduled oracle on labelled pools: trains each example only in its labelled stage window (meta["schedule"])."""

    name = "scheduled_oracle"
    requires_features = False

    def __init__(self) -> None:
        self.windows: np.ndarray | None = None  # [pool_size, 2] (start, end) progress; NaN = never
        self.active: tuple[int, ...] = ()
        self.sampler: EpochSampler | None = None
        self.rng = np.random.default_rng(0)

    def setup(self, context: SelectionContext) -> None:
        _require_labels(context.pool, "schedule", self.name, "each helpful example's (start, end) share of the run")
        self.windows = np.array(
            [e.meta.get("schedule", (np.nan, np.nan)) for e in context.pool.examples], dtype=np.float64
        )

    def reset(self, seed: int) -> None:
        if self.windows is None:
            raise RuntimeError("call setup(context) before reset(seed)")
        self.rng = np.random.default_rng(seed)
        self.active, self.sampler = (), None

    def active_indices(self, progress: float) -> np.ndarray:
        """Pool indices whose window holds ``progress`` (the last window's end counts as inside it)."""
        start, end = self.windows[:, 0], self.windows[:, 1]
        inside = (start <= progress) & ((progress < end) | ((end >= 1.0) & (progress >= 1.0)))
        return np.flatnonzero(inside)

    def select(self, state: EnvState) -> np.ndarray:
        if self.windows is None:
            raise RuntimeError("call setup(context) before select()")
        active = self.active_indices(state.progress)
        if active.size == 0:
            raise UserError(
                f"selector '{self.name}': no pool example is scheduled at {state.progress:.0%} of the run; "
                "the pool's schedule labels must cover the whole run"
            )
        if tuple(active) != self.active:  # a new stage: shuffled epochs over its examples
            self.active, self.sampler = tuple(active), EpochSampler(active, self.rng)
        return self.sampler.draw(state.decision_size)


def helpful_families(pool) -> list[str]:
    """The families (``meta["family"]``) of the examples labelled helpful and not corrupted, in pool order."""
    _require_labels(pool, "family", "best_static", "which family each example belongs to")
    families = [e.meta["family"] for e in pool.examples if e.meta.get("helpful") and not e.meta.get("corrupted")]
    if not families:
        raise UserError(
            "selector 'best_static' found no example labelled helpful and not corrupted; drop it from compare.methods"
        )
    return list(dict.fromkeys(families))


def mixture_grid(families: list[str], step: float = 0.1) -> list[dict[str, float]]:
    """Every mixture of ``families`` with proportions in multiples of ``step`` that sum to 1."""
    units = round(1 / step)
    return [
        {family: count / units for family, count in zip(families, counts)}
        for counts in itertools.product(range(units + 1), repeat=len(families))
        if sum(counts) == units
    ]


class FamilyMixtureSelector:
    """Best static mixture on labelled pools: fixed shares of the helpful families all run long (found by a grid search)."""

    name = "best_static"
    requires_features = False

    def __init__(self, proportions: dict[str, float] | None = None) -> None:
        self.proportions = proportions  # family -> share of every decision; set by the comparison's grid search
        self.members: dict[str, np.ndarray] = {}
        self.samplers: dict[str, EpochSampler] = {}
        self.carry: dict[str, float] = {}
        self.rng = np.random.default_rng(0)

    def setup(self, context: SelectionContext) -> None:
        if self.proportions is None:
            raise UserError(
                "selector 'best_static' needs its mixture from a grid search; run it in a comparison "
                "(compare.methods), which searches the mixture first"
            )
        families = [e.meta.get("family") for e in context.pool.examples]
        self.members = {
            family: np.array([i for i, f in enumerate(families) if f == family], dtype=np.int64)
            for family, share in self.proportions.items()
            if share > 0
        }
        empty = [family for family, members in self.members.items() if members.size == 0]
        if empty or not self.members:
            raise UserError(f"selector 'best_static': the pool has no example of family {', '.join(empty) or '?'}")

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.samplers = {family: EpochSampler(members, self.rng) for family, members in self.members.items()}
        self.carry = {family: 0.0 for family in self.members}

    def select(self, state: EnvState) -> np.ndarray:
        if not self.samplers:
            raise RuntimeError("call reset(seed) before select()")
        count = state.decision_size
        total = sum(self.proportions[family] for family in self.members)
        # Error diffusion: each decision gets the integer counts closest to count x share, carrying the
        # rounding error to the next decision, so the run's mixture matches the shares exactly.
        wanted = {family: count * self.proportions[family] / total + self.carry[family] for family in self.members}
        counts = {family: int(np.floor(value)) for family, value in wanted.items()}
        by_remainder = sorted(wanted, key=lambda family: counts[family] - wanted[family])
        for family in by_remainder[: count - sum(counts.values())]:
            counts[family] += 1
        self.carry = {family: wanted[family] - counts[family] for family in self.members}
        picks = np.concatenate([self.samplers[family].draw(counts[family]) for family in self.members])
        return self.rng.permutation(picks)
