"""Validation loss (RAISE's reward) and the target task's test metric.

The validation loss is evaluated after every decision, so it is a plain batched forward pass:
examples sorted by length into batches (little padding), mean response loss per example, then
the mean over examples (each validation answer counts once, whatever its length).

Test metrics:
- ``multiple_choice``: each candidate in ``meta["choices"]`` is scored by the summed
  log-likelihood of that response given the prompt; the argmax is compared with
  ``meta["answer_index"]``.
- ``exact_match``: batched greedy generation, an answer extracted with the task's
  ``answer_pattern`` (last match, group 1) or else the last number in the text, and compared with
  ``meta["answer"]`` after normalization (strip, drop commas/``$``, numbers compared by value).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.tokenize import TokenizedSet, render_prompt_ids, tokenize_examples
from .data.types import Example, TargetTask
from .errors import UserError
from .model import LoadedModel, map_examples, per_example_loss, sequence_logprob

SAMPLE_GENERATIONS = 5  # generations kept in the exact-match result for the report

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def per_example_losses(
    lm: LoadedModel, tokens: TokenizedSet, indices: Sequence[int] | None = None, batch_size: int = 16
) -> np.ndarray:
    """Mean response loss of each example (no grad, eval mode), in the order of ``indices``."""
    return map_examples(lm, tokens, indices, batch_size, per_example_loss)


def validation_loss(
    lm: LoadedModel,
    tokens: TokenizedSet,
    batch_size: int = 16,
    shard: tuple[int, int] = (0, 1),
    sum_over_ranks: Callable[[np.ndarray], np.ndarray] | None = None,
) -> float:
    """Mean over examples of the per-example response loss: RAISE's reward signal is its decrease.

    ``shard=(rank, world_size)`` with ``sum_over_ranks`` (an all-reduce sum): this process scores only
    its share (:func:`validation_shard`) and every rank gets the mean over all examples, the
    one-process mean up to the float noise of other batch paddings (the per-example losses are summed
    in the same order).
    """
    rank, world_size = shard
    if world_size == 1:
        return float(per_example_losses(lm, tokens, batch_size=batch_size).mean())
    mine = validation_shard(tokens, rank, world_size)
    losses = np.zeros(len(tokens), dtype=np.float64)  # the other ranks' examples stay 0 here
    losses[mine] = per_example_losses(lm, tokens, mine, batch_size=batch_size)
    return float(sum_over_ranks(losses).mean())


def validation_shard(tokens: TokenizedSet, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s share of the validation set: every ``world_size``-th example in length order, so
    the ranks score alike numbers of examples and tokens (each in batches of similar lengths)."""
    return np.argsort(tokens.lengths, kind="stable")[rank::world_size]


def evaluate_test(
    lm: LoadedModel,
    target: TargetTask,
    max_length: int,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    progress: bool = True,
) -> dict:
    """Test loss and the task metric on ``target.test`` (``progress``: show the passes' bars).

    Returns ``{"metric", "n", "test_loss"}`` plus ``"accuracy"`` (multiple_choice) or
    ``"exact_match"`` and ``"samples"`` (a few generations for the report).
    """
    examples = list(target.test)
    if not examples:
        raise UserError(f"target '{target.name}' has no test examples; set target.n_test above 0")
    test_tokens = tokenize_examples(examples, lm.tokenizer, max_length)
    losses = map_examples(
        lm, test_tokens, None, batch_size, per_example_loss, progress="test loss" if progress else None
    )
    result = {"metric": target.metric, "n": len(examples), "test_loss": float(losses.mean())}
    if target.metric == "multiple_choice":
        result["accuracy"] = multiple_choice_accuracy(lm, examples, max_length, batch_size, progress)
    elif target.metric == "exact_match":
        result.update(
            exact_match(lm, examples, target.answer_pattern, max_length, batch_size, max_new_tokens, progress)
        )
    return result


def multiple_choice_accuracy(
    lm: LoadedModel, examples: Sequence[Example], max_length: int, batch_size: int = 16, progress: bool = True
) -> float:
    """Fraction of examples whose highest-likelihood choice is ``meta["answer_index"]``."""
    candidates = [dataclasses.replace(e, response=choice) for e in examples for choice in e.meta["choices"]]
    candidate_tokens = tokenize_examples(candidates, lm.tokenizer, max_length)
    logprobs = map_examples(
        lm, candidate_tokens, None, batch_size, sequence_logprob, progress="choices" if progress else None
    )
    boundaries = np.cumsum([len(e.meta["choices"]) for e in examples])[:-1]
    correct = [
        int(np.argmax(choice_logprobs)) == int(example.meta["answer_index"])
        for example, choice_logprobs in zip(examples, np.split(logprobs, boundaries))
    ]
    return float(np.mean(correct))


def exact_match(
    lm: LoadedModel,
    examples: Sequence[Example],
    answer_pattern: str | None,
    max_length: int,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    progress: bool = True,
) -> dict:
    """Greedy-generate an answer for each prompt; ``{"exact_match": fraction, "samples": [...]}``."""
    prompts = [render_prompt_ids(e, lm.tokenizer)[-max_length:] for e in examples]
    generations = generate(lm, prompts, batch_size, max_new_tokens, progress)
    extracted = [extract_answer(text, answer_pattern) for text in generations]
    correct = [answers_match(found, example.meta["answer"]) for found, example in zip(extracted, examples)]
    samples = [
        {
            "prompt": example.messages[-1]["content"] if example.messages else "",
            "generated": text,
            "extracted": found,
            "answer": str(example.meta["answer"]),
        }
        for example, text, found in list(zip(examples, generations, extracted))[:SAMPLE_GENERATIONS]
    ]
    return {"exact_match": float(np.mean(correct)), "samples": samples}


@torch.no_grad()
def generate(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    batch_size: int = 16,
    max_new_tokens: int = 128,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches, stop at eos), decoded."""
    tokenizer = lm.tokenizer
    eos_ids = _eos_token_ids(lm)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    texts: list[str] = [""] * len(prompts)
    was_training = lm.model.training
    lm.model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", leave=False, disable=not progress):
            positions = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in positions)
            input_ids = torch.full((len(positions), width), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(positions), width), dtype=torch.long)
            for row, i in enumerate(positions):  # left padding: every prompt ends at the same column
                input_ids[row, width - len(prompts[i]) :] = torch.as_tensor(prompts[i], dtype=torch.long)
                attention_mask[row, width - len(prompts[i]) :] = 1
            with lm.autocast():
                output = lm.model.generate(
                    input_ids=input_ids.to(lm.device),
                    attention_mask=attention_mask.to(lm.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=eos_ids,
                    pad_token_id=tokenizer.pad_token_id,
                )
            for row, i in enumerate(positions):
                texts[i] = tokenizer.decode(output[row, width:], skip_special_tokens=True)
    finally:
        lm.model.train(was_training)
    return texts


def _eos_token_ids(lm: LoadedModel) -> list[int]:
    """The tokenizer's eos plus the generation config's (chat models often end turns with another token)."""
    ids = {lm.tokenizer.eos_token_id}
    configured = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def extract_answer(text: str, answer_pattern: str | None = None) -> str | None:
    """The answer in a generation: the pattern's group 1 at its last match, else the last number."""
    if answer_pattern:
        matches = list(re.finditer(answer_pattern, text))
        if matches:
            return matches[-1].group(1)
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: object) -> str:
    """Canonical form for comparison: stripped, no commas or ``$``, numbers by value ("18.0" -> "18")."""
    text = str(answer).strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if not number.is_finite():
        return text
    canonical = format(number.normalize(), "f")
    return "0" if canonical in ("-0", "0") else canonical


def answers_match(found: str | None, reference: object) -> bool:
    return found is not None and normalize_answer(found) == normalize_answer(reference)
