"""The synthetic testbed: generated data, labels, tokenizer, cached base model, and that it is informative.

The model tests share the user cache (``io_utils.cache_root()``): the one-time pre-training takes
about 30 s on 2 cores, later runs load it in well under a second.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from raise_select.data import synthetic
from raise_select.data.synthetic import (
    SYNTHETIC_FAMILIES,
    synthetic_model_dir,
    synthetic_pool,
    synthetic_target,
    synthetic_tokenizer,
)
from raise_select.data.tokenize import tokenize_examples
from raise_select.errors import UserError

OPERANDS = re.compile(r"(\d+)\+(\d+)\?$")


def test_pool_is_deterministic_with_stable_ids():
    pool = synthetic_pool(300, seed=3)
    assert [e.content_key() for e in pool] == [e.content_key() for e in synthetic_pool(300, seed=3)]
    assert [e.id for e in pool] != [e.id for e in synthetic_pool(300, seed=4)]
    assert len({e.id for e in pool}) == len(pool) == 300
    # Example k of a family does not depend on the pool size: a bigger pool extends a smaller one.
    small = {e.id: e for e in synthetic_pool(100, seed=3)}
    assert all(small[e.id] == e for e in pool if e.id in small)
    assert len(small.keys() & {e.id for e in pool}) == 100


def test_pool_labels_and_shares():
    pool = synthetic_pool(1000, seed=0)
    for example in pool:
        family = example.meta["family"]
        spec = SYNTHETIC_FAMILIES[family]
        assert example.source == f"synthetic/{family}"
        assert re.fullmatch(rf"synthetic/{family}/\d+", example.id)
        assert (example.meta["helpful"], example.meta["corrupted"]) == (spec["helpful"], spec["corrupted"])
        assert [m["role"] for m in example.messages] == ["user"]
    counts = Counter(e.meta["family"] for e in pool)
    assert set(counts) == set(SYNTHETIC_FAMILIES)
    helpful = sum(e.meta["helpful"] for e in pool) / len(pool)
    assert 0.2 <= helpful <= 0.3  # helpful examples are a minority: selection matters
    assert any(e.meta["corrupted"] for e in pool)
    assert not any(e.meta["helpful"] and e.meta["corrupted"] for e in pool)


def test_pool_answers_follow_their_family():
    for example in synthetic_pool(400, seed=1):
        family, response = example.meta["family"], example.response
        if family.startswith("add_"):
            a, b = map(int, OPERANDS.search(example.messages[0]["content"]).groups())
            assert (int(response) == a + b) == example.meta["helpful"]
        elif family == "reverse":
            assert response[::-1] in example.messages[0]["content"]


def test_target_is_deterministic_and_disjoint_from_pool():
    task = synthetic_target(32, 100)
    assert (task.name, task.metric) == ("synthetic", "exact_match")
    assert [e.content_key() for e in task.validation] == [e.content_key() for e in synthetic_target(32, 100).validation]
    target_pairs = set()
    for example in [*task.validation, *task.test]:
        a, b = map(int, OPERANDS.search(example.messages[0]["content"]).groups())
        assert example.meta["answer"] == example.response == str(a + b)
        assert re.search(task.answer_pattern, f" {a + b}<|end|>").group(1) == example.meta["answer"]
        target_pairs.add(frozenset((a, b)))
    assert len(target_pairs) == 132  # validation and test do not overlap
    for example in synthetic_pool(2000, seed=7):
        match = OPERANDS.search(example.messages[0]["content"])
        if match:
            assert frozenset(map(int, match.groups())) not in target_pairs, example.id
    with pytest.raises(UserError):
        synthetic_target(200, 200)


def test_tokenizer_round_trips_and_renders_chat():
    tokenizer = synthetic_tokenizer()
    text = "Hello, World! 32+45 = 77\n\t~{x}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert len(tokenizer) < 128
    messages = [{"role": "user", "content": "what is 32+45?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|bos|><|user|>what is 32+45?<|end|><|assistant|>"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(prompt_ids[:2]) == ["<|bos|>", "<|user|>"]
    assert prompt_ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.fixture(scope="module")
def model_dir():
    return synthetic_model_dir()


def test_model_dir_loads_and_is_reused(model_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False).endswith(
        "<|assistant|>"
    )

    def no_rebuild(folder):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(synthetic, "_build_model", no_rebuild)
    assert synthetic_model_dir() == model_dir


def _mean_response_loss(model, tokenized, pad_token_id) -> float:
    batch = tokenized.collate(np.arange(len(tokenized)), pad_token_id)
    with torch.no_grad():
        return model(**batch).loss.item()


def _validation_loss_after_training(model_dir, tokenizer, examples, validation, steps=15) -> float:
    """Target validation loss after ``steps`` AdamW updates (batch 8, lr 1e-3, full fine-tuning) on ``examples``."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    train = tokenize_examples(examples, tokenizer, max_length=64)
    order = np.random.default_rng(0).permutation(len(train))
    for step in range(steps):
        batch = train.collate(order[(np.arange(8) + 8 * step) % len(train)], tokenizer.pad_token_id)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return _mean_response_loss(model, validation, tokenizer.pad_token_id)


def test_testbed_is_informative(model_dir):
    """Helpful data teaches the target, irrelevant and corrupted data teach it less; the base model flags corrupted answers."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pool = synthetic_pool(600, seed=0)
    by_family = {family: [e for e in pool if e.meta["family"] == family] for family in SYNTHETIC_FAMILIES}
    validation = tokenize_examples(synthetic_target(32, 0).validation, tokenizer, max_length=64)

    def base_loss(family):
        return _mean_response_loss(base, tokenize_examples(by_family[family], tokenizer, 64), tokenizer.pad_token_id)

    assert base_loss("add_compute") + 1.0 < base_loss("add_compute_off_by")
    assert base_loss("add_tell") + 1.0 < base_loss("add_tell_random")

    before = _mean_response_loss(base, validation, tokenizer.pad_token_id)
    helpful = _validation_loss_after_training(model_dir, tokenizer, by_family["add_compute"], validation)
    corrupted = _validation_loss_after_training(model_dir, tokenizer, by_family["add_compute_off_by"], validation)
    irrelevant = _validation_loss_after_training(model_dir, tokenizer, by_family["upper"], validation)
    assert helpful < before - 1.0
    assert helpful + 0.3 < corrupted
    assert helpful + 0.5 < irrelevant
