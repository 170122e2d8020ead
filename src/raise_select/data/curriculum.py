"""The curriculum world: a synthetic pool where the right data changes as the model learns.

Same base model, tokenizer and target as the synthetic testbed (:mod:`raise_select.data.synthetic`:
``what is 32+45?`` -> ``77`` on reserved operand pairs), another pool. Its two helpful families
teach the target in two halves, and which half is worth training on depends on the stage:

* ``sum_worded`` (**prerequisite**, plentiful): correct ``+`` questions answered in words,
  ``compute 32+45?`` -> ``the sum is 77.``. Early in a run it teaches what the target needs most,
  answering a ``+`` question in chat with the sum; once that is learned its wording, which the
  target does not use, pulls the answers away from the target's form: it helps early and costs late.
* ``sum_short`` (**finishing**, scarce: a fixed :data:`SCARCE_COUNT` examples): the same questions
  answered as the target answers, ``compute 32+45?`` -> ``77``. Trained on from the start, so few
  examples are repeated for many epochs and memorised before the model has the skill; trained on
  after the prerequisite, a few steps adapt the learned skill to the target's form.
* distractors: the testbed's five word tasks (reverse, sort, count, capitals, repeat);
* corrupted copies: the prerequisite's wording with the difference instead of the sum, and the
  target's form with a random three-digit number. Both must hurt the target when trained on. An
  earlier version drew the random number from the sums' own range (20-99): trained on alone it
  reached a lower validation loss (1.44) than any use of the helpful families, because a model that
  cannot yet add is best served, in cross-entropy, by a calibrated guess of a two-digit number, which
  is what those answers teach. A selector then won the reward with corrupted data and the world no
  longer measured the schedule; three-digit answers teach a wrong length and no sum (3.41 alone,
  worse than random selection).

The two helpful families share their prompts, so a fixed mixture keeps answering "the sum is" a
share of the time to the end of the run, or leaves the skill to the few finishing examples. A
schedule (prerequisite first, finishing examples last: :data:`CURRICULUM_SCHEDULE`, which each
helpful example carries as ``meta["schedule"]`` for the ``scheduled_oracle`` selector) has neither
problem; at the recipe's budget (``recipes/curriculum.yaml``) it beats every fixed mixture of the two
families (``bench/curriculum_premise.py``, pinned cheaply in ``tests/test_curriculum.py``). The pool
is generated in-process, deterministically, in a fraction of a second.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..errors import UserError
from .synthetic import (
    _COMPUTE_OPENINGS,
    _TELL_OPENINGS,
    _correct_sum,
    _difference,
    _family_generators,
    _operand_pairs,
    family_counts,
    labelled_examples,
    synthetic_target,
)
from .types import Example, TargetTask

CURRICULUM_NAME = "synthetic_curriculum"  # the bundled pool source and target
SCARCE_COUNT = 8  # sum_short examples in every pool: scarce, so trained on all run long they are memorised
# The hand-written stage schedule: the share of the run (start, end) in which each helpful family is trained on.
CURRICULUM_SCHEDULE = {"sum_worded": (0.0, 0.6), "sum_short": (0.6, 1.0)}

# Pool families: labels, share of the pool beyond the scarce family, and what they are.
CURRICULUM_FAMILIES: dict[str, dict] = {
    "sum_worded": {
        "helpful": True,
        "corrupted": False,
        "share": 0.3,
        "schedule": CURRICULUM_SCHEDULE["sum_worded"],
        "description": "'compute 32+45?' -> 'the sum is 77.': the skill, in words the target does not use (prerequisite)",
    },
    "sum_short": {
        "helpful": True,
        "corrupted": False,
        "share": 0.0,  # SCARCE_COUNT examples, whatever the pool size
        "schedule": CURRICULUM_SCHEDULE["sum_short"],
        "description": "'compute 32+45?' -> '77': the target's form, scarce (finishing)",
    },
    "sum_worded_difference": {
        "helpful": False,
        "corrupted": True,
        "share": 0.12,
        "description": "'compute 32+45?' -> 'the sum is 13.': the difference, not the sum",
    },
    "sum_short_random": {
        "helpful": False,
        "corrupted": True,
        "share": 0.12,
        "description": "'compute 32+45?' -> '538': a random three-digit number, outside the sums' range (20-99)",
    },
    **{
        family: {"helpful": False, "corrupted": False, "share": 0.092, "description": description}
        for family, description in (
            ("reverse", "reverse a word"),
            ("sort", "sort a word's letters"),
            ("count", "count a word's letters"),
            ("upper", "write a word in capitals"),
            ("repeat", "repeat a word"),
        )
    },
}
_OPENINGS = _COMPUTE_OPENINGS + _TELL_OPENINGS


def _three_digit_number(rng: random.Random, a: int, b: int) -> int:
    """A wrong answer in the target's form that teaches no calibrated guess: the sums are 20-99."""
    return rng.randint(100, 999)


def _generators() -> dict[str, Callable[[random.Random], tuple[str, str]]]:
    """Each family's generator: ``rng -> (prompt, response)``."""
    _, pool_pairs = _operand_pairs()

    def arithmetic(answer: Callable[[random.Random, int, int], int], wording: str):
        def make(rng: random.Random) -> tuple[str, str]:
            a, b = rng.choice(pool_pairs)
            return f"{rng.choice(_OPENINGS)} {a}+{b}?", wording.format(answer(rng, a, b))

        return make

    words = _family_generators()  # the testbed's word tasks, as distractors
    return {
        "sum_worded": arithmetic(_correct_sum, "the sum is {}."),
        "sum_short": arithmetic(_correct_sum, "{}"),
        "sum_worded_difference": arithmetic(_difference, "the sum is {}."),
        "sum_short_random": arithmetic(_three_digit_number, "{}"),
        **{family: words[family] for family in ("reverse", "sort", "count", "upper", "repeat")},
    }


def curriculum_pool(n: int, seed: int = 0) -> list[Example]:
    """``n`` labelled examples in a seeded order (``SCARCE_COUNT`` of them ``sum_short``); ids are
    ``synthetic_curriculum/<family>/<k>``, and example ``k`` of a family is the same for every ``n``."""
    if n <= SCARCE_COUNT:
        raise UserError(
            f"the {CURRICULUM_NAME} pool needs more than {SCARCE_COUNT} examples (got {n}); "
            "raise the source's limit (the recipe uses 1000)"
        )
    counts = family_counts(n - SCARCE_COUNT, CURRICULUM_FAMILIES)
    counts["sum_short"] += SCARCE_COUNT
    return labelled_examples(CURRICULUM_NAME, counts, CURRICULUM_FAMILIES, _generators(), seed)


def curriculum_target(n_validation: int, n_test: int) -> TargetTask:
    """The testbed's target (``what is 32+45?`` -> ``77``, pairs never in the pool) under this world's name."""
    return synthetic_target(n_validation, n_test, name=CURRICULUM_NAME)
