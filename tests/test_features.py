"""Static features on a tiny random Llama: values checked against independent computations, and the cache."""

from __future__ import annotations

import logging
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import build_tiny_llama, load_tiny
from raise_select import features as features_module
from raise_select.config import FeatureConfig
from raise_select.data.tokenize import tokenize_examples
from raise_select.data.types import Example
from raise_select.features import STATIC_FEATURE_NAMES, compute_static_features, embed_examples, feature_cache_key
from raise_select.model import LoadedModel, per_example_loss

MAX_LENGTH = 96
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " \n"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A random 2-layer Llama with a character-level tokenizer (no chat template: plain rendering)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


def tiny_lm(folder: Path, lora: bool = False) -> LoadedModel:
    """The tiny Llama in training mode, as the fine-tuning code leaves it (features must switch to eval and back);
    with ``lora``, wrapped in a fresh LoRA (B = 0), which computes the same function."""
    return load_tiny(folder, finetune="lora" if lora else "full", lora_target_modules=["q_proj", "v_proj"])


EXAMPLES = [
    Example(id=f"toy/{i}", source="toy", messages=({"role": "user", "content": prompt},), response=response)
    for i, (prompt, response) in enumerate(
        [
            ("What is 2+2?", "4"),
            ("Name a colour.", "Blue, like the sky."),
            ("Add 17 and 25.", "17 + 25 = 42"),
            ("Say hi", "Hi!"),
            ("Spell cat backwards.", "tac"),
            ("Count to five.", "1, 2, 3, 4, 5"),
            ("Is ice cold?", "Yes."),
            ("Capital of France?", "Paris is the capital of France."),
            ("Double 21.", "42"),
            ("A long question about nothing in particular, really?", "Indeed."),
        ]
    )
]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One torch thread for these tiny forwards: with the cores busy, 2-thread OpenMP sync made them ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm(tiny_folder) -> LoadedModel:
    return tiny_lm(tiny_folder)


def compute(lm, cache_dir, fingerprint="pool-a", **config) -> features_module.StaticFeatures:
    return compute_static_features(
        lm,
        EXAMPLES,
        FeatureConfig(batch_size=4, **config),
        MAX_LENGTH,
        fingerprint,
        cache_dir=cache_dir,
        progress=False,
    )


@pytest.fixture(scope="module")
def computed(lm, tmp_path_factory) -> tuple[features_module.StaticFeatures, Path]:
    """Features at pca_dim=4, computed once, and their cache file (tests copy it)."""
    folder = tmp_path_factory.mktemp("features")
    features = compute(lm, folder, pca_dim=4)
    return features, folder / f"{features.key}.npz"


@pytest.fixture
def cache_dir(computed, tmp_path) -> Path:
    """A fresh cache folder holding the cache file of ``computed``."""
    shutil.copy(computed[1], tmp_path)
    return tmp_path


def single_loss(lm, examples, drop_prompt=False) -> np.ndarray:
    """Each example's loss from its own unpadded batch of one."""
    tokens = tokenize_examples(examples, lm.tokenizer, MAX_LENGTH, drop_prompt=drop_prompt)
    with torch.no_grad():
        return np.array([per_example_loss(lm, tokens.collate([i], 0)).item() for i in range(len(examples))])


def test_features_match_independent_computations(lm, computed):
    features, _ = computed
    n = len(EXAMPLES)
    assert features.names == STATIC_FEATURE_NAMES
    assert features.values.shape == (n, 4) and features.values.dtype == np.float32
    assert features.embedding.shape == (n, 4) and features.pca_components.shape == (4, 64)
    assert features.aux_model == lm.name  # the model the features describe
    assert lm.model.training  # restored after the eval-mode passes

    lm.model.eval()
    conditioned = single_loss(lm, EXAMPLES)
    unconditioned = single_loss(lm, EXAMPLES, drop_prompt=True)
    lm.model.train()
    np.testing.assert_allclose(features.column("response_loss"), conditioned, rtol=1e-4)
    np.testing.assert_allclose(features.column("ifd"), conditioned / unconditioned, rtol=1e-4)

    # Character tokenizer, no chat template: the prompt is "User: <content>\nAssistant: ", the response gets <eos>.
    prompt_chars = [len(f"User: {e.messages[0]['content']}\nAssistant: ") for e in EXAMPLES]
    assert features.column("prompt_tokens").tolist() == prompt_chars
    assert features.column("response_tokens").tolist() == [len(e.response) + 1 for e in EXAMPLES]


def test_embedding_is_the_prompt_mean_of_the_last_hidden_state(lm, computed):
    hidden = embed_examples(lm, EXAMPLES, MAX_LENGTH, batch_size=3)
    assert hidden.shape == (len(EXAMPLES), 64)
    tokens = tokenize_examples(EXAMPLES, lm.tokenizer, MAX_LENGTH)
    lm.model.eval()
    with torch.no_grad():
        for i in (0, 9):  # shortest and longest prompt: padding must not leak in
            ids = torch.from_numpy(tokens.input_ids[i])[None]
            last = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            np.testing.assert_allclose(hidden[i], last[: tokens.prompt_lengths[i]].mean(0).numpy(), atol=1e-5)
    lm.model.train()

    features, _ = computed
    np.testing.assert_allclose(features.embedding, features.project(hidden), atol=1e-5)
    assert features.embedding[:, 0].var() >= features.embedding[:, 3].var()  # components by explained variance


def test_peft_wrapped_model_gives_the_base_features(computed, tiny_folder, tmp_path):
    base, _ = computed
    wrapped = compute(
        tiny_lm(tiny_folder, lora=True), tmp_path, pca_dim=4
    )  # fresh LoRA (B = 0) computes the same function
    np.testing.assert_allclose(wrapped.values, base.values, rtol=1e-5)
    np.testing.assert_allclose(np.abs(wrapped.embedding), np.abs(base.embedding), atol=1e-4)


def test_pca_dims_beyond_the_pool_rank_are_zero(lm, tmp_path):
    features = compute(lm, tmp_path, pca_dim=32)  # 10 examples: at most 9 directions
    assert features.embedding.shape == (len(EXAMPLES), 32)
    assert np.all(features.embedding[:, 9:] == 0) and np.all(features.pca_components[9:] == 0)
    assert np.abs(features.embedding[:, :9]).sum(axis=0).min() > 0


def forward_counter(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = features_module._forward_pass

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features_module, "_forward_pass", counting)
    return calls


def test_cache_hit_skips_the_forward_passes(lm, computed, cache_dir, monkeypatch):
    first, _ = computed

    def fail(*args, **kwargs):
        raise AssertionError("forward pass on a cache hit")

    monkeypatch.setattr(features_module, "_forward_pass", fail)
    again = compute(lm, cache_dir, pca_dim=4)
    assert again.key == first.key and again.names == first.names and again.aux_model == first.aux_model
    for field in ("values", "embedding", "pca_mean", "pca_components"):
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field))


@pytest.mark.parametrize("change", [{"pca_dim": 3}, {"fingerprint": "pool-b"}, {"cache": False}])
def test_cache_miss_when_the_key_changes_or_the_cache_is_off(lm, cache_dir, monkeypatch, change):
    calls = forward_counter(monkeypatch)
    compute(lm, cache_dir, **{"pca_dim": 4, **change})
    assert len(calls) == 2  # loss(y|x) and loss(y) recomputed


def test_cache_key_depends_on_every_input():
    base = feature_cache_key("pool", "model", 128, 32)
    assert (
        len(
            {
                base,
                feature_cache_key("pool2", "model", 128, 32),
                feature_cache_key("pool", "model2", 128, 32),
                feature_cache_key("pool", "model", 64, 32),
                feature_cache_key("pool", "model", 128, 16),
            }
        )
        == 5
    )


@pytest.mark.parametrize("corruption", [b"not a zip file", b"PK\x03\x04 truncated"])
def test_corrupt_cache_is_recomputed_with_a_warning(lm, computed, cache_dir, monkeypatch, caplog, corruption):
    first, cache_file = computed
    (cache_dir / cache_file.name).write_bytes(corruption)
    calls = forward_counter(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = compute(lm, cache_dir, pca_dim=4)
    assert len(calls) == 2 and "recomputing" in caplog.text
    np.testing.assert_allclose(again.values, first.values, rtol=1e-6)
    monkeypatch.setattr(features_module, "_forward_pass", None)  # the rewritten file is a valid cache hit
    compute(lm, cache_dir, pca_dim=4)


def test_target_similarity_is_the_cosine_to_the_target_mean():
    from raise_select.features import with_target_similarity

    base = features_module.StaticFeatures(
        names=features_module.STATIC_FEATURE_NAMES,
        values=np.zeros((3, 4), dtype=np.float32),
        embedding=np.array([[1, 0], [0, 2], [-3, 0]], dtype=np.float32),
        pca_mean=np.zeros(2, dtype=np.float32),
        pca_components=np.eye(2, dtype=np.float32),
        key="k",
        aux_model="m",
    )
    target = np.array([[2, 0], [4, 0]], dtype=np.float32)  # mean points along the first axis
    extended = with_target_similarity(base, target)
    assert extended.names[-1] == "target_similarity" and extended.values.shape == (3, 5)
    np.testing.assert_allclose(extended.column("target_similarity"), [1.0, 0.0, -1.0], atol=1e-6)
    assert base.values.shape == (3, 4)  # the cached features are not modified


@pytest.mark.parametrize("lora", [False, True])
def test_reference_losses_are_the_pool_losses_after_tuning_on_validation_and_restore_the_weights(tiny_folder, lora):
    """reference_losses = the pool's losses under the model after `steps` AdamW steps on validation batches,
    replayed by hand with the same seed; the weights come back bit-exact and the model's mode is kept."""
    from raise_select.features import reference_losses

    pool, validation = EXAMPLES[:6], EXAMPLES[6:]
    reference_model = tiny_lm(tiny_folder, lora=lora)
    pool_tokens = tokenize_examples(pool, reference_model.tokenizer, MAX_LENGTH)
    validation_tokens = tokenize_examples(validation, reference_model.tokenizer, MAX_LENGTH)
    before = {name: value.clone() for name, value in reference_model.model.state_dict().items()}
    got = reference_losses(reference_model, pool_tokens, validation_tokens, 3, 1e-2, 2, seed=5, progress=False)
    assert reference_model.model.training
    for name, value in reference_model.model.state_dict().items():
        assert torch.equal(value, before[name]), name

    by_hand = tiny_lm(tiny_folder, lora=lora)
    rows = np.random.default_rng(5)
    torch.manual_seed(5)
    optimizer = torch.optim.AdamW(by_hand.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        batch = validation_tokens.collate(np.sort(rows.choice(4, size=2, replace=False)).tolist(), 0)
        loss = per_example_loss(by_hand, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    by_hand.model.eval()
    np.testing.assert_allclose(got, single_loss(by_hand, pool), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, single_loss(reference_model, pool), rtol=1e-3)  # tuning moved them
