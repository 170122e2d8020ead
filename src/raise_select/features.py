"""Static per-instruction features from an auxiliary model (computed once, cached on disk).

Two forward passes over the pool (examples sorted by length, batched, no grad):

1. prompt + response: the mean response cross-entropy ``loss(y|x)`` (through
   :func:`raise_select.model.per_example_loss`, the project's one loss code path) and, from the
   same pass, the last hidden state mean-pooled over the PROMPT tokens (the instruction). The
   hidden state is read from the decoder stack's output by a forward hook, which equals
   ``output_hidden_states[-1]`` without keeping every layer's states, and works the same whether
   or not the model is peft-wrapped.
2. the response alone after an empty prompt: ``loss(y)``; ``ifd = loss(y|x) / loss(y)``.

Token counts are those of the rendered, truncated example (:mod:`raise_select.data.tokenize`).
The pooled hidden states are reduced to ``pca_dim`` dims with sklearn's PCA (fixed seed). When
the pool has too few examples (a centred pool of n examples has at most n - 1 directions) or the
model too few hidden dims, PCA keeps what it can and the remaining dims are zero (zero rows in
``pca_components``, so :meth:`StaticFeatures.project` zero-pads other texts the same way).

Cache: ``<cache_dir>/<key>.npz`` (default ``cache_root()/"features"``), written atomically;
``key`` hashes the pool fingerprint, the model identity, ``max_length``, ``pca_dim`` and
:data:`FEATURES_VERSION`. A matching file is reloaded when ``FeatureConfig.cache`` is true; an
unreadable one is recomputed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.decomposition import PCA

from .data.tokenize import IGNORE_INDEX, TokenizedSet, tokenize_examples
from .errors import UserError
from .io_utils import atomic_write, cache_root
from .model import map_examples, per_example_loss

if TYPE_CHECKING:
    from .config import FeatureConfig
    from .data.types import Example
    from .model import LoadedModel

logger = logging.getLogger(__name__)

# Bump when the computation changes: old cache files then stop matching and are recomputed.
FEATURES_VERSION = 1

# Column order of StaticFeatures.values. Documented here once; the RAISE fused vector builds on it.
STATIC_FEATURE_NAMES = ("response_loss", "ifd", "prompt_tokens", "response_tokens")


@dataclass
class StaticFeatures:
    """Per-example features of a pool under one auxiliary model."""

    names: tuple[str, ...]  # column names of `values` (STATIC_FEATURE_NAMES)
    values: np.ndarray  # [N, len(names)] float32 raw (unstandardized) difficulty features
    embedding: np.ndarray  # [N, pca_dim] float32 semantic embedding after PCA
    pca_mean: np.ndarray  # [hidden] mean subtracted before projection (to project other texts, e.g. the target)
    pca_components: np.ndarray  # [pca_dim, hidden] PCA projection
    key: str  # cache key: (pool fingerprint, auxiliary model, feature settings)
    aux_model: str  # name/path of the auxiliary model the features came from

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]

    def select(self, names: Sequence[str]) -> StaticFeatures:
        """The same features with only the difficulty columns ``names``, in that order."""
        return replace(self, names=tuple(names), values=self.values[:, [self.names.index(name) for name in names]])

    def project(self, hidden: np.ndarray) -> np.ndarray:
        """Map raw pooled hidden states [n, hidden] into this pool's PCA space."""
        return ((hidden - self.pca_mean) @ self.pca_components.T).astype(np.float32)


def feature_cache_key(pool_fingerprint: str, model_identity: str, max_length: int, pca_dim: int) -> str:
    """sha256 of everything the features depend on."""
    parts = [pool_fingerprint, model_identity, max_length, pca_dim, FEATURES_VERSION]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def compute_static_features(
    lm: LoadedModel,
    examples: Sequence[Example],
    config: FeatureConfig,
    max_length: int,
    pool_fingerprint: str,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> StaticFeatures:
    """Difficulty features and the PCA semantic embedding of ``examples`` under ``lm`` (cached)."""
    if not examples:
        raise UserError("cannot compute features of an empty pool; give at least one example")
    key = feature_cache_key(pool_fingerprint, lm.identity, max_length, config.pca_dim)
    cache_file = Path(cache_dir if cache_dir is not None else cache_root() / "features") / f"{key}.npz"
    if config.cache and cache_file.is_file():
        cached = _load_cached(cache_file, key, len(examples))
        if cached is not None:
            return cached

    conditioned = tokenize_examples(examples, lm.tokenizer, max_length)
    response_only = tokenize_examples(examples, lm.tokenizer, max_length, drop_prompt=True)
    conditioned_loss, hidden = _forward_pass(
        lm, conditioned, config.batch_size, pool_prompt=True, progress=progress, desc="features 1/2: loss(y|x)"
    )
    response_loss, _ = _forward_pass(
        lm, response_only, config.batch_size, pool_prompt=False, progress=progress, desc="features 2/2: loss(y)"
    )
    values = np.stack(
        [
            conditioned_loss,
            conditioned_loss / np.maximum(response_loss, 1e-8),  # IFD; the guard only matters for a perfect fit
            conditioned.prompt_lengths,
            conditioned.response_lengths,
        ],
        axis=1,
    ).astype(np.float32)
    pca_mean, pca_components = _fit_pca(hidden, config.pca_dim)
    features = StaticFeatures(
        names=STATIC_FEATURE_NAMES,
        values=values,
        embedding=np.empty(
            (0, config.pca_dim), dtype=np.float32
        ),  # set below through project(): one projection code path
        pca_mean=pca_mean,
        pca_components=pca_components,
        key=key,
        aux_model=lm.name,
    )
    features.embedding = features.project(hidden)
    _save(cache_file, features)
    return features


def embed_examples(lm: LoadedModel, examples: Sequence[Example], max_length: int, batch_size: int) -> np.ndarray:
    """[n, hidden] raw prompt-pooled last hidden states (project them with :meth:`StaticFeatures.project`)."""
    tokens = tokenize_examples(examples, lm.tokenizer, max_length)
    _, hidden = _forward_pass(lm, tokens, batch_size, pool_prompt=True, progress=False, desc="embedding")
    return hidden


def _forward_pass(
    lm: LoadedModel, tokens: TokenizedSet, batch_size: int, *, pool_prompt: bool, progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-example mean response loss [n] and, if ``pool_prompt``, prompt-pooled last hidden states [n, hidden]."""
    score = _loss_and_prompt_mean if pool_prompt else per_example_loss
    values = map_examples(lm, tokens, None, batch_size, score, progress=desc if progress else None)
    if not pool_prompt:
        return values, None
    return values[:, 0], values[:, 1:].astype(np.float32)


def _loss_and_prompt_mean(lm: LoadedModel, batch: dict) -> torch.Tensor:
    """[b, 1 + hidden]: the response loss, then the last hidden state averaged over the prompt tokens.

    The decoder stack's output is the final (normed) hidden state [b, T, H] at every position; a
    hook reads it from the loss forward pass instead of running a second one (the output layer
    itself only sees response positions: the loss projects logits there alone). Prompt tokens are
    the attended positions without a label; a row with no prompt is averaged over all its tokens.
    """
    captured: dict[str, torch.Tensor] = {}
    hook = lm.model.get_decoder().register_forward_hook(
        lambda module, args, output: captured.__setitem__(
            "hidden", output[0] if isinstance(output, tuple) else output.last_hidden_state
        )
    )
    try:
        losses = per_example_loss(lm, batch)
    finally:
        hook.remove()
    hidden = captured["hidden"].float()
    attended = torch.as_tensor(batch["attention_mask"], device=hidden.device).bool()
    prompt = attended & (torch.as_tensor(batch["labels"], device=hidden.device) == IGNORE_INDEX)
    mask = torch.where(prompt.any(dim=1, keepdim=True), prompt, attended).unsqueeze(-1).float()
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    return torch.cat([losses.float().unsqueeze(1), pooled], dim=1)


def _fit_pca(hidden: np.ndarray, pca_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA mean [hidden] and components [pca_dim, hidden], zero rows past what the data allows."""
    n, width = hidden.shape
    keep = min(pca_dim, n - 1, width)
    components = np.zeros((pca_dim, width), dtype=np.float32)
    mean = hidden.mean(axis=0)
    if keep > 0:
        # svd_solver="auto" picks the fastest exact-enough solver for the shape (covariance
        # eigendecomposition for many examples of few dims, randomized SVD for large matrices).
        pca = PCA(n_components=keep, svd_solver="auto", random_state=0).fit(hidden)
        components[:keep] = pca.components_
    return mean.astype(np.float32), components


_CACHE_FIELDS = ("names", "values", "embedding", "pca_mean", "pca_components", "key", "aux_model")


def _save(path: Path, features: StaticFeatures) -> None:
    arrays = {name: np.asarray(getattr(features, name)) for name in _CACHE_FIELDS}
    atomic_write(path, lambda handle: np.savez(handle, **arrays), mode="wb")


def _load_cached(path: Path, key: str, n_examples: int) -> StaticFeatures | None:
    """The cached features, or None (with a warning) when the file is unreadable or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {name: data[name] for name in _CACHE_FIELDS}
        features = StaticFeatures(
            names=tuple(str(name) for name in stored["names"]),
            values=stored["values"],
            embedding=stored["embedding"],
            pca_mean=stored["pca_mean"],
            pca_components=stored["pca_components"],
            key=str(stored["key"]),
            aux_model=str(stored["aux_model"]),
        )
        consistent = (
            features.key == key
            and features.names == STATIC_FEATURE_NAMES
            and features.values.shape == (n_examples, len(STATIC_FEATURE_NAMES))
            and features.embedding.shape[0] == n_examples
        )
        if not consistent:
            raise ValueError("contents do not match the cache key")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("feature cache %s is unreadable (%s); recomputing", path, exc)
        return None
    return features


def with_target_similarity(features: StaticFeatures, target_embedding: np.ndarray) -> StaticFeatures:
    """Add the column ``target_similarity``: cosine of each example's embedding to the target's mean embedding.

    [ours] RAISE scores candidates by their expected effect on *this* target; the paper's features
    carry no information about the target itself, so the policy could only learn it from rewards.
    This one column (also what the ``targeted`` baseline ranks by) lets it learn how much
    target-likeness is worth at each stage, next to difficulty and quality.
    """
    centre = target_embedding.mean(axis=0)
    norms = np.linalg.norm(features.embedding, axis=1) * (np.linalg.norm(centre) or 1.0)
    similarity = (features.embedding @ centre) / np.where(norms > 0, norms, 1.0)
    return with_column(features, "target_similarity", similarity)


def reference_losses(
    lm: LoadedModel,
    pool_tokens: TokenizedSet,
    validation_tokens: TokenizedSet,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> np.ndarray:
    """[N] float32: each example's response loss under a reference model tuned on the target's validation split.

    [ours, after RHO-LOSS (Mindermann et al. 2022), whose "irreducible loss model" is trained on
    holdout data] The reference is ``lm`` after ``steps`` AdamW steps on random batches of the
    validation examples; then one forward pass scores the pool and the weights are restored
    bit-exactly. The reference has learned what the target wants, so a correct answer to the
    target's kind of question gets a low loss under it and a wrong one a high loss, whether or not
    the base model knew the answer (the base model's response loss separates them only as well as
    the base model knows the task). Costs ``steps`` training steps on validation examples and one
    pool pass. Only the selector reads it: the validation loss the reward measures is unchanged,
    and the test split stays unseen.
    """
    parameters = lm.trainable_parameters()
    snapshot = [p.detach().clone() for p in parameters]
    was_training = lm.model.training
    generator = np.random.default_rng(seed)
    count = len(validation_tokens)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
            lm.model.train()
            for _ in range(steps):
                rows = generator.choice(count, size=min(batch_size, count), replace=False)
                batch = validation_tokens.collate(np.sort(rows).tolist(), lm.tokenizer.pad_token_id)
                with lm.autocast():
                    loss = per_example_loss(lm, batch).float().mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        desc = "features: loss under the reference" if progress else None
        return map_examples(lm, pool_tokens, None, batch_size, per_example_loss, progress=desc).astype(np.float32)
    finally:
        with torch.no_grad():
            for p, w in zip(parameters, snapshot):
                p.copy_(w)
                p.grad = None
        lm.model.train(was_training)


def with_column(features: StaticFeatures, name: str, values: np.ndarray) -> StaticFeatures:
    """The same features with one more named difficulty column appended (``target_similarity``, ``reference_loss``)."""
    return replace(
        features,
        names=tuple(features.names) + (name,),
        values=np.column_stack([features.values, values]).astype(np.float32),
    )
