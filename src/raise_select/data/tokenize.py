"""Render examples with the tokenizer's chat template and build loss-masked batches.

Rendering of one example (``prompt_ids + response_ids``):

* prompt: ``apply_chat_template(messages, add_generation_prompt=True)`` as text, tokenized with
  ``add_special_tokens=False`` (the template writes its own special tokens). For SmolLM2 this is
  ``<|im_start|>system ...<|im_end|>\\n<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``.
* response: ``tokenizer(response, add_special_tokens=False)`` followed by the end-of-turn token,
  ``tokenizer.eos_token_id`` (SmolLM2: ``<|im_end|>``), so the model learns to stop. This equals
  the template's rendering of the full conversation except the newline the template writes after
  ``<|im_end|>``, which is never trained (generation stops at the end-of-turn token).
* a tokenizer without a chat template gets a plain rendering, one ``Role: content`` line per turn
  then ``Assistant: `` (e.g. ``"User: What is 2+2?\\nAssistant: "``), tokenized with
  ``add_special_tokens=True`` so a BOS token is added where the tokenizer uses one.

``drop_prompt=True`` renders the response after the generation prompt alone (no system or user
turn; SmolLM2: ``<|im_start|>assistant\\n``; plain rendering: ``Assistant: ``): the unconditioned
loss(y) of the IFD feature.

Truncation (``max_length``): when prompt + response is longer, the prompt is left-truncated
(keeping its end, i.e. the generation prompt) to ``max(max_length - len(response), max_length // 2)``
tokens, so it loses only what is needed but never claims more than half the budget from a long
response; then the response's end is cut to fit. Every example keeps at least one response token.

Loss masking: prompt tokens and padding carry label -100; response tokens (and the end-of-turn
token) carry their ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .types import Example

IGNORE_INDEX = -100  # label value that cross-entropy skips (torch and transformers convention)


@dataclass
class TokenizedSet:
    """Token ids of rendered examples and where each response starts."""

    input_ids: list[np.ndarray]  # int64 ids per example: rendered prompt + response (+ end-of-turn token)
    prompt_lengths: np.ndarray  # int64 [N]: leading tokens of each example that carry no loss
    lengths: np.ndarray = field(init=False)  # int64 [N]: total tokens per example

    def __post_init__(self) -> None:
        self.prompt_lengths = np.asarray(self.prompt_lengths, dtype=np.int64)
        self.lengths = np.array([len(ids) for ids in self.input_ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def response_lengths(self) -> np.ndarray:
        return self.lengths - self.prompt_lengths

    def num_tokens(self, indices: Sequence[int] | np.ndarray) -> int:
        """Total tokens (prompt + response) of the examples at ``indices``."""
        return int(self.lengths[np.asarray(indices, dtype=np.int64)].sum())

    def collate(self, indices: Sequence[int] | np.ndarray, pad_token_id: int) -> dict[str, torch.Tensor]:
        """A right-padded batch: ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            raise ValueError("collate needs at least one index")
        width = int(self.lengths[indices].max())
        input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
        for row, index in enumerate(indices):
            ids = torch.tensor(self.input_ids[index])  # a copy: the ids may be read-only (Ray's object store)
            length, prompt_length = len(ids), int(self.prompt_lengths[index])
            input_ids[row, :length] = ids
            attention_mask[row, :length] = 1
            labels[row, prompt_length:length] = ids[prompt_length:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def subset(self, indices: Sequence[int] | np.ndarray) -> TokenizedSet:
        indices = np.asarray(indices, dtype=np.int64)
        return TokenizedSet([self.input_ids[i] for i in indices], self.prompt_lengths[indices])


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer,
    max_length: int,
    drop_prompt: bool = False,
    progress: bool = False,
) -> TokenizedSet:
    """Render and tokenize ``examples`` (see the module docstring for rendering and truncation)."""
    if max_length < 2:
        raise UserError(
            f"pool.max_length={max_length} is too small; use at least 2 (one prompt and one response token)"
        )
    if not examples:
        return TokenizedSet([], np.zeros(0, dtype=np.int64))
    if drop_prompt:
        prompt_texts = [_render_prompt_text((), tokenizer)] * len(examples)
    else:
        prompt_texts = [
            _render_prompt_text(example.messages, tokenizer)
            for example in tqdm(examples, desc="rendering prompts", disable=not progress)
        ]
    # One batched call each: the fast tokenizer encodes a list in parallel.
    prompt_ids = tokenizer(prompt_texts, add_special_tokens=not _has_chat_template(tokenizer))["input_ids"]
    response_ids = tokenizer([example.response for example in examples], add_special_tokens=False)["input_ids"]
    end_of_turn = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]

    input_ids, prompt_lengths = [], []
    for prompt, response in zip(prompt_ids, response_ids):
        prompt, response = _truncate(list(prompt), list(response) + end_of_turn, max_length)
        input_ids.append(np.asarray(prompt + response, dtype=np.int64))
        prompt_lengths.append(len(prompt))
    return TokenizedSet(input_ids, np.asarray(prompt_lengths, dtype=np.int64))


def render_prompt_ids(example: Example, tokenizer) -> list[int]:
    """The prompt's token ids ending with the generation prompt: the input for generation."""
    text, add_special_tokens = render_prompt_text(example, tokenizer)
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def render_prompt_text(example: Example, tokenizer) -> tuple[str, bool]:
    """The prompt as text, and whether tokenizing it adds the tokenizer's special tokens (not after a chat
    template, which writes them itself): what :func:`render_prompt_ids` tokenizes."""
    return _render_prompt_text(example.messages, tokenizer), not _has_chat_template(tokenizer)


def _truncate(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Apply the module's truncation rule; a no-op when prompt + response fits."""
    keep_prompt = min(len(prompt), max(max_length - len(response), max_length // 2))
    return prompt[len(prompt) - keep_prompt :], response[: max_length - keep_prompt]


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_prompt_text(messages: Sequence[Mapping[str, str]], tokenizer) -> str:
    messages = [dict(message) for message in messages]
    if not _has_chat_template(tokenizer):
        turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
        return f"{turns}Assistant: "
    if not messages:
        return _generation_prompt_text(tokenizer)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _generation_prompt_text(tokenizer) -> str:
    """An empty conversation's prompt: what ``add_generation_prompt`` alone adds (``<|im_start|>assistant\\n``).

    transformers refuses to render an empty conversation, so render one empty user turn with and
    without the generation prompt and keep the difference; a template where one is not a prefix of
    the other keeps the whole empty-turn rendering.
    """
    probe = [{"role": "user", "content": ""}]
    with_prompt = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
    without = tokenizer.apply_chat_template(probe, add_generation_prompt=False, tokenize=False)
    return with_prompt[len(without) :] if with_prompt.startswith(without) else with_prompt
