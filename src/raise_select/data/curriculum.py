"""The curriculum world: a synthetic pool where the right data changes as the model learns.

Same base model, tokenizer and target as the synthetic testbed (:mod:`raise_select.data.synthetic`:
``what is 32+45?`` -> ``77`` on reserved operand pairs), another pool. Its two helpful families
teach the target in two halves, and which half is worth training on depends on the stage:

* ``sum_worded`` (**prerequisite**, plentiful): correct ``+`` questions answered with the sum and
  then words, ``compute 32+45?`` -> ``77 is the sum``. Early in a run it teaches what the target
  needs most, answering a ``+`` question in chat with the sum's digits, at the place the target
  puts them; the longer it is trained on, the surer the model becomes that the digits are followed
  by " is the sum", where the target's answer ends: it helps early and costs late.
* ``sum_short`` (**finishing**, scarce: a fixed :data:`SCARCE_COUNT` examples): the same questions
  answered as the target answers, ``compute 32+45?`` -> ``77``. Alone, its few examples are
  memorised before the model can add in chat; after the prerequisite, a few steps teach the
  answer to end after the digits.
* distractors: four of the testbed's word tasks (reverse, sort, capitals, repeat). Not ``count``:
  its answers are bare numbers, so it teaches the finishing family's lesson (end after a number)
  and would be a helpful family under a distractor's label;
* corrupted copies: the prerequisite's form with the difference instead of the sum
  (``13 is the sum``), and the target's form with a random three-digit number. Both must hurt the
  target when trained on. The random number is drawn outside the sums' range (20-99): answers drawn
  from that range teach a calibrated guess of a two-digit number, which a model that cannot yet add
  is best served by in cross-entropy, and a selector would win the reward with corrupted data.

An earlier version of the world put the prerequisite's words first (``the sum is 77.``). Its
prerequisite taught the skill at the wrong place in the answer, and the validation loss preferred
paths that never used it (target-form guesses from corrupted and distractor families, found by
``bench/head_search.py``). With the digits first, a direct search over family schedules on the
reward (``bench/schedule_search.py``) finds the curriculum, graded, on the shipped base model, and
nothing through corrupted or distractor data that beats the hand-written schedule on another
(docs/results.md, "Curriculum world").

The two helpful families share their prompts, so a fixed mixture keeps a share of " is the sum" to
the end of the run, or leaves the skill to the few finishing examples. A schedule (prerequisite
first, finishing examples last: :data:`CURRICULUM_SCHEDULE`, which each helpful example carries as
``meta["schedule"]`` for the ``scheduled_oracle`` selector) has neither problem; at the recipe's
budget (``recipes/curriculum.yaml``) it beats the best fixed mixture of the two families on average on four base
models (``bench/curriculum_premise.py``, pinned cheaply in ``tests/test_curriculum.py``). The pool is
generated in-process, deterministically, in a fraction of a second.
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
        "description": "'compute 32+45?' -> '77 is the sum': the skill, followed by words the target does not use (prerequisite)",
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
        "description": "'compute 32+45?' -> '13 is the sum': the difference, not the sum",
    },
    "sum_short_random": {
        "helpful": False,
        "corrupted": True,
        "share": 0.12,
        "description": "'compute 32+45?' -> '538': a random three-digit number, outside the sums' range (20-99)",
    },
    **{
        family: {"helpful": False, "corrupted": False, "share": 0.115, "description": description}
        for family, description in (
            ("reverse", "reverse a word"),
            ("sort", "sort a word's letters"),
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
        "sum_worded": arithmetic(_correct_sum, "{} is the sum"),
        "sum_short": arithmetic(_correct_sum, "{}"),
        "sum_worded_difference": arithmetic(_difference, "{} is the sum"),
        "sum_short_random": arithmetic(_three_digit_number, "{}"),
        **{family: words[family] for family in ("reverse", "sort", "upper", "repeat")},
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
