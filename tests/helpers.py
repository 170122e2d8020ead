"""Builders and checks shared by the test modules (a plain module, not a test module: test files
import from here, never from each other or from conftest). Fixtures live in ``conftest.py``."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from raise_select.config import ModelConfig
from raise_select.data.types import Example, Pool
from raise_select.features import STATIC_FEATURE_NAMES, StaticFeatures
from raise_select.model import LoadedModel, load_model
from raise_select.protocol import DEFAULT_STATIC_EPOCHS, EnvState, SelectionContext

# -- the synthetic testbed ---------------------------------------------------------------------------

SYNTHETIC_OVERRIDES = [
    "model.name=synthetic-tiny",
    "model.finetune=full",
    "pool.sources=[{name: synthetic, limit: 240}]",
    "pool.max_length=48",
    "target.name=synthetic",
    "target.n_validation=24",
    "target.n_test=16",
    "target.max_new_tokens=6",
    "train.batch_size=8",
    "train.learning_rate=1e-3",
    "train.budget_steps=4",
    "features.pca_dim=8",
    "features.reference_steps=32",  # a quarter of the default: the reference's steps dominate these tests' features
    "raise.clusters=2",
    "raise.episodes_per_update=2",
]


# -- the command line --------------------------------------------------------------------------------


def assert_one_line_error(status: int, captured, expected: list[str]) -> None:
    """The CLI's contract for a user error: status 2, one ``error: ...`` line holding every expected fragment, no stdout."""
    assert status == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert captured.out == ""


# -- selectors: pools, features, contexts and states built by hand ------------------------------------


def make_pool(n: int) -> Pool:
    """Toy examples labelled like the synthetic testbed: every third is helpful, every fifth of those corrupted."""
    return Pool(
        [
            Example(
                id=f"toy/{i}",
                source="toy",
                messages=({"role": "user", "content": f"q{i}"},),
                response=f"a{i}",
                meta={"helpful": i % 3 == 0, "corrupted": i % 15 == 0},
            )
            for i in range(n)
        ]
    )


def make_features(
    n: int = 120,
    *,
    fill: str = "random",
    seed: int = 0,
    pca_dim: int = 6,
    outliers: int = 0,
    aux_model: str = "aux-a",
    response_loss=None,
    ifd=None,
    prompt_tokens=None,
    response_tokens=None,
    embedding=None,
) -> StaticFeatures:
    """Static features of ``n`` examples: the columns given are used as they are; the others are

    * ``fill="random"``: drawn from ``seed``: two well-separated embedding blobs of ``pca_dim`` dims
      (plus ``outliers`` far-away last rows) and random difficulty columns;
    * ``fill="constant"``: constant, so they cannot drive a ranking (embedding: zeros in 2 dims).
    """
    given = {
        "response_loss": response_loss,
        "ifd": ifd,
        "prompt_tokens": prompt_tokens,
        "response_tokens": response_tokens,
    }
    if fill == "random":
        rng = np.random.default_rng(seed)
        drawn_embedding = rng.normal(size=(n, pca_dim)).astype(np.float32)
        drawn_embedding[: n // 2, 0] += 8.0
        drawn_embedding[n - outliers :, 1] += 200.0
        columns = {
            "response_loss": rng.uniform(0.5, 3.0, n),
            "ifd": rng.uniform(0.2, 1.2, n),
            "prompt_tokens": rng.integers(5, 200, n),
            "response_tokens": rng.integers(1, 300, n),
        }
        hidden = 10  # the fake auxiliary model's hidden size, before PCA
        key = f"fake-{n}-{seed}"
    elif fill == "constant":
        drawn_embedding = np.zeros((n, 2), dtype=np.float32)
        columns = {
            "response_loss": np.ones(n),
            "ifd": np.full(n, 0.5),
            "prompt_tokens": np.full(n, 5.0),
            "response_tokens": np.full(n, 10.0),
        }
        hidden = None  # PCA in the embedding's own dimensions
        key = "hand-made"
    else:
        raise ValueError(f"fill must be 'random' or 'constant', got {fill!r}")
    columns.update({name: value for name, value in given.items() if value is not None})
    values = np.stack([np.asarray(columns[name], dtype=np.float32) for name in STATIC_FEATURE_NAMES], axis=1)
    embedding = drawn_embedding if embedding is None else np.asarray(embedding, dtype=np.float32)
    dims = embedding.shape[1]
    hidden = dims if hidden is None else hidden
    return StaticFeatures(
        names=STATIC_FEATURE_NAMES,
        values=values,
        embedding=embedding,
        pca_mean=np.zeros(hidden, dtype=np.float32),
        pca_components=np.eye(dims, hidden, dtype=np.float32),
        key=key,
        aux_model=aux_model,
    )


def make_context(
    n: int | None = None,
    features: StaticFeatures | None = None,
    *,
    batch_size: int = 4,
    budget_steps: int = 6,
    decision_interval: int = 1,
    seed: int = 0,
    target_embedding=None,
    static_epochs: int = DEFAULT_STATIC_EPOCHS,
) -> SelectionContext:
    """A context over ``make_pool(n)`` (``n`` defaults to the features' row count)."""
    if n is None:
        if features is None:
            raise ValueError("give the pool size n or the features")
        n = features.values.shape[0]
    return SelectionContext(
        pool=make_pool(n),
        batch_size=batch_size,
        budget_steps=budget_steps,
        decision_interval=decision_interval,
        seed=seed,
        features=features,
        target_embedding=target_embedding,
        static_epochs=static_epochs,
    )


def make_state(
    pool_size: int,
    batch_size: int = 4,
    step: int = 0,
    budget: int = 6,
    *,
    decision_interval: int = 1,
    validation_loss: float = 2.0,
    counts: np.ndarray | None = None,
    loss_probe: Callable[[np.ndarray], np.ndarray] | None = None,
) -> EnvState:
    """The environment's state before a decision: ``validation_loss`` after reset, nothing selected
    yet unless ``counts`` says otherwise."""
    return EnvState(
        step=step,
        budget=budget,
        batch_size=batch_size,
        decision_interval=decision_interval,
        validation_history=[validation_loss],
        selection_counts=np.zeros(pool_size, dtype=np.int64) if counts is None else counts,
        loss_probe=loss_probe,
    )


# -- tiny random Llamas --------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " \n"


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Save a random 2-layer Llama with a character-level tokenizer into ``folder``."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(CHARACTERS))}
    # BPE without merges splits text into single characters; Fuse joins them back on decode.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        vocab_size=len(vocab),
        max_position_embeddings=256,
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["<eos>"],
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_tiny(folder: Path, seed: int = 0, **overrides) -> LoadedModel:
    """Load a ``build_tiny_llama`` folder on the CPU (LoRA r=4 unless ``overrides`` say otherwise)."""
    settings = dict(name=str(folder), lora_r=4, lora_alpha=8, device="cpu")
    settings.update(overrides)
    return load_model(ModelConfig(**settings), seed=seed)
