"""Validation loss batching, multiple-choice scoring, generation and answer matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import build_tiny_llama, load_tiny
from raise_select.data.tokenize import render_prompt_ids, tokenize_examples
from raise_select.data.types import Example, TargetTask
from raise_select.errors import UserError
from raise_select.evaluation import (
    answers_match,
    evaluate_test,
    extract_answer,
    generate,
    normalize_answer,
    per_example_losses,
    validation_loss,
)
from raise_select.model import LoadedModel, per_example_loss, sequence_logprob


def example(i: int, question: str, response: str, **meta) -> Example:
    return Example(
        id=f"t/{i}", source="t", messages=({"role": "user", "content": question},), response=response, meta=meta
    )


QUESTIONS = ["What is 3+4?", "Spell cat.", "2*8?", "Name a prime number bigger than ten.", "1", "Say hello to the team"]
EXAMPLES = [example(i, q, f"answer {i}: " + "x" * i) for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> LoadedModel:
    return load_tiny(build_tiny_llama(tmp_path_factory.mktemp("tiny-eval")), finetune="full")


@pytest.fixture(scope="module")
def tokens(tiny):
    return tokenize_examples(EXAMPLES, tiny.tokenizer, max_length=64)


def test_per_example_losses_come_back_in_the_callers_order(tiny, tokens):
    order = [4, 0, 5, 2]
    one_by_one = [per_example_loss(tiny, tokens.collate([i], tiny.tokenizer.pad_token_id)).item() for i in order]
    np.testing.assert_allclose(per_example_losses(tiny, tokens, order, batch_size=3), one_by_one, rtol=1e-5)


def test_evaluation_restores_the_training_mode(tiny, tokens):
    tiny.model.train()
    per_example_losses(tiny, tokens)
    assert tiny.model.training
    tiny.model.eval()
    per_example_losses(tiny, tokens)
    assert not tiny.model.training
    tiny.model.train()


def test_validation_loss_is_order_and_batch_size_independent(tiny, tokens):
    reference = validation_loss(tiny, tokens, batch_size=16)
    shuffled = tokens.subset(np.random.default_rng(0).permutation(len(tokens)))
    assert validation_loss(tiny, shuffled, batch_size=2) == pytest.approx(reference, rel=1e-5)
    # A mean over examples, not over tokens: every validation answer weighs the same.
    assert reference == pytest.approx(per_example_losses(tiny, tokens).mean())


def test_multiple_choice_picks_the_most_likely_choice(tiny):
    choices = ["7", "seven, I think", "zzzz", "4"]
    question = example(0, "What is 3+4?", "7", choices=choices, answer_index=0)
    scored = tokenize_examples([example(0, "What is 3+4?", c) for c in choices], tiny.tokenizer, max_length=64)
    logprobs = [sequence_logprob(tiny, scored.collate([i], tiny.tokenizer.pad_token_id)).item() for i in range(4)]
    best, worst = int(np.argmax(logprobs)), int(np.argmin(logprobs))
    assert best != worst
    for answer_index, expected in ((best, 1.0), (worst, 0.0)):
        target = TargetTask(
            name="mc",
            validation=[],
            test=[
                example(
                    0,
                    question.messages[0]["content"],
                    choices[answer_index],
                    choices=choices,
                    answer_index=answer_index,
                )
            ],
            metric="multiple_choice",
        )
        result = evaluate_test(tiny, target, max_length=64, batch_size=3)
        assert result["accuracy"] == expected and result["n"] == 1 and result["metric"] == "multiple_choice"
        assert result["test_loss"] == pytest.approx(
            -logprobs[answer_index] / (len(choices[answer_index]) + 1), rel=1e-5
        )


def test_batched_left_padded_generation_matches_one_at_a_time(tiny):
    prompts = [render_prompt_ids(e, tiny.tokenizer) for e in EXAMPLES[:4]]
    batched = generate(tiny, prompts, batch_size=4, max_new_tokens=6)
    single = [generate(tiny, [p], batch_size=1, max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert all(0 < len(text) <= 6 for text in batched)  # one character per token, eos may stop early


def test_exact_match_scores_greedy_generations(tiny):
    prompts = [render_prompt_ids(e, tiny.tokenizer) for e in EXAMPLES]
    generations = generate(tiny, prompts, max_new_tokens=8)
    # Reference answers: the greedy output itself for even rows, something else for odd rows.
    test = [
        example(i, e.messages[0]["content"], "r", answer=(text.strip() if i % 2 == 0 else "never generated"))
        for i, (e, text) in enumerate(zip(EXAMPLES, generations))
    ]
    target = TargetTask(name="em", validation=[], test=test, metric="exact_match", answer_pattern=r"^([\s\S]+)$")
    result = evaluate_test(tiny, target, max_length=64, batch_size=4, max_new_tokens=8)
    assert result["exact_match"] == pytest.approx(0.5)
    assert len(result["samples"]) == 5
    assert result["samples"][0] == {
        "prompt": QUESTIONS[0],
        "generated": generations[0],
        "extracted": generations[0],
        "answer": generations[0].strip(),
    }


def test_metric_none_reports_only_the_test_loss(tiny):
    result = evaluate_test(tiny, TargetTask(name="n", validation=[], test=EXAMPLES, metric="none"), max_length=64)
    assert set(result) == {"metric", "n", "test_loss"} and result["n"] == len(EXAMPLES)


@pytest.mark.parametrize(
    "text, pattern, expected",
    [
        ("so 3 + 4 = 7.\n#### 7", r"####\s*(\S+)", "7"),
        ("#### 5 then later #### 1,234", r"####\s*([\d,]+)", "1,234"),  # last match wins
        ("The answer is 42 apples, not 41", None, "41"),  # no pattern: the last number
        ("no pattern here, 12 and -3.5", r"####\s*(\S+)", "-3.5"),  # pattern missing: last number
        ("nothing numeric", None, None),
    ],
)
def test_extract_answer(text, pattern, expected):
    assert extract_answer(text, pattern) == expected


@pytest.mark.parametrize(
    "found, reference, same",
    [
        ("18.0", "18", True),
        (" 1,234 ", 1234, True),
        ("$5.", "5", True),
        ("0.50", "0.5", True),
        ("-0", "0", True),
        ("180", "18", False),
        ("Paris", " Paris ", True),
        ("paris", "Paris", False),
        (None, "18", False),
    ],
)
def test_answers_match_after_normalization(found, reference, same):
    assert answers_match(found, reference) is same


def test_normalize_answer_writes_numbers_plainly():
    assert normalize_answer("1.5e3") == "1500" and normalize_answer("007") == "7"


def test_empty_test_split_is_a_user_error(tiny):
    with pytest.raises(UserError, match="no test examples"):
        evaluate_test(tiny, TargetTask(name="e", validation=[], test=[], metric="none"), max_length=64)


def test_no_gradients_are_recorded(tiny, tokens):
    for p in tiny.trainable_parameters():
        p.grad = None
    per_example_losses(tiny, tokens)
    assert all(p.grad is None for p in tiny.trainable_parameters())
    assert torch.is_grad_enabled()
