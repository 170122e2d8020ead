"""The data types every stage shares: an instruction example, a pool, a target task.

An :class:`Example` is format-neutral: the loaders in :mod:`raise_select.data.formats` turn
Alpaca, chat ``messages`` and ``prompt``/``response`` records into it, and
:mod:`raise_select.data.tokenize` renders it with the tokenizer's chat template.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One instruction: the prompt as chat messages, the response the loss is computed on."""

    id: str  # stable across runs: "<source>/<split>/<row>" for bundled data, "<tag>/<line>" or the record's id for files
    source: str  # source tag, e.g. "gsm8k", "mmlu", "my_pool", "synthetic/add"
    messages: tuple[
        Mapping[str, str], ...
    ]  # prompt turns (system/user/assistant...), ending before the trained response
    response: str  # the assistant answer: the only tokens that carry loss
    meta: Mapping[str, Any] = field(
        default_factory=dict
    )  # labels: family, helpful, corrupted, answer, choices, answer_index

    def content_key(self) -> str:
        return json.dumps([self.id, self.source, list(map(dict, self.messages)), self.response], sort_keys=True)


@dataclass
class Pool:
    """The instruction pool: examples in a fixed order (indices into it are what selectors return)."""

    examples: list[Example]
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" for records dropped in skip mode

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]

    @property
    def sources(self) -> list[str]:
        return [e.source for e in self.examples]

    def fingerprint(self) -> str:
        """Hash of ids and contents: the feature cache key's pool part."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(example.content_key().encode("utf-8"))
        return digest.hexdigest()[:16]

    def labels(self, key: str, default: Any = None) -> list[Any]:
        return [e.meta.get(key, default) for e in self.examples]


@dataclass
class TargetTask:
    """Validation examples (reward), test examples (task metric) and how to score the test."""

    name: str
    validation: Sequence[Example]
    test: Sequence[Example]
    metric: str  # exact_match | multiple_choice | none
    answer_pattern: str | None = None  # regex with one group extracting the answer for exact_match


def examples_fingerprint(examples: Sequence[Example]) -> str:
    """Hash of the examples' ids, contents and labels (``meta``), in order: everything in the data a
    finished run's numbers depend on, oracles' and schedules' labels included (a comparison's resume check)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.content_key().encode("utf-8"))
        digest.update(json.dumps(dict(example.meta), sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()[:16]
