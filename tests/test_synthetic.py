"""The synthetic testbed: generated data, labels, tokenizer, cached base model, and that it is informative.

The model tests share the user cache (``io_utils.cache_root()``): the one-time pre-training takes
about 30 s on 2 cores, later runs load it in well under a second.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from raise_select.config_io import load_config
from raise_select.data import synthetic
from raise_select.data.synthetic import (
    SYNTHETIC_FAMILIES,
    synthetic_model_dir,
    synthetic_pool,
    synthetic_target,
    synthetic_tokenizer,
)
from raise_select.environment import full_data_steps
from raise_select.errors import UserError
from raise_select.evaluation import per_example_losses
from raise_select.pipeline import Workbench
from raise_select.selectors import build_selector

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
    assert tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    ).endswith("<|assistant|>")

    def no_rebuild(folder):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(synthetic, "_build_model", no_rebuild)
    assert synthetic_model_dir() == model_dir


def _finetune(bench, method: str, steps: int, seed: int) -> float:
    """Final validation loss of ``method`` after ``steps`` updates in the testbed's environment."""
    selector = build_selector(method, bench.config)
    selector.setup(bench.selection_context(selector, steps, seed, progress=False))
    env = bench.make_env(steps, evaluate_every=10**9)  # only the final evaluation
    state = env.reset(seed)
    selector.reset(seed)
    while not env.done:
        env.step(selector.select(state))
    return state.validation_history[-1]


@pytest.fixture(scope="module")
def demo_bench():
    """The demo --quick testbed (1000-example pool, 64 validation examples, warmup 4, lr 1e-3)."""
    from raise_select.config_io import recipe_path

    return Workbench.build(load_config(recipe_path("demo_quick"), ["features.cache=false"]))


def test_base_model_flags_corrupted_answers(demo_bench):
    """Corrupted families reuse the helpful prompts; only their response loss under the base model differs."""
    losses = {family: [] for family in SYNTHETIC_FAMILIES}
    tokens = demo_bench.pool_tokens
    per_example = per_example_losses(demo_bench.lm, tokens, np.arange(len(tokens)), batch_size=64)
    for example, loss in zip(demo_bench.pool.examples, per_example):
        losses[example.meta["family"]].append(loss)
    helpful = max(np.mean(losses["add_compute"]), np.mean(losses["add_tell"]))
    corrupted = min(np.mean(losses["add_compute_difference"]), np.mean(losses["add_tell_random"]))
    assert corrupted > helpful + 2.0


def test_testbed_reproduces_the_papers_premise(demo_bench):
    """At 24 steps (6.4 % of full data) training only on helpful-clean examples beats full data, random does not.

    Means over fine-tuning seeds (full data: seed 0), on the shipped base model: pinned to 1 % (the
    same weights on every machine; thread counts and CPU kernels move these losses by far less),
    and the premise as margins.
    """
    env = demo_bench.make_env(1)
    before = env.reset(0).validation_history[0]
    oracle = np.mean([_finetune(demo_bench, "oracle", 24, seed) for seed in (0, 1, 2)])
    random_ = np.mean([_finetune(demo_bench, "random", 24, seed) for seed in (0, 1, 2)])
    full = _finetune(demo_bench, "full", full_data_steps(len(demo_bench.pool), demo_bench.config.train), 0)
    np.testing.assert_allclose([before, oracle, full, random_], [3.3198, 0.8690, 0.9606, 1.5282], rtol=1e-2)
    assert oracle < before - 2.0
    assert oracle < full - 0.08
    assert full < random_ - 0.5


def test_reference_loss_tells_correct_answers_from_corrupted_ones(demo_bench):
    """Under the reference (the base model tuned on the target's validation split), a correct sum has a lower
    loss than a corrupted one far more often than under the base model (bench/feature_separation.py)."""
    from sklearn.metrics import roc_auc_score

    features = demo_bench.ensure_features(progress=False)
    labels = [example.meta for example in demo_bench.pool.examples]
    clean = np.array([bool(m["helpful"]) and not m["corrupted"] for m in labels])
    pair = clean | np.array([bool(m["corrupted"]) for m in labels])

    def clean_below(name: str) -> float:
        return 1.0 - roc_auc_score(clean[pair], features.column(name)[pair])

    assert clean_below("reference_loss") > 0.95  # 0.965 on the shipped model
    assert clean_below("reference_loss") > clean_below("response_loss") + 0.1  # 0.836
