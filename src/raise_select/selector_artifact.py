"""Save and load a trained RAISE selector: ONE folder, data only (loading never executes code).

Folder layout::

    selector/
      weights.safetensors   policy.* (acquisition MLP) and critic.* tensors
      selector.json         format + version, fused-feature layout, standardization statistics,
                            k-means centroids, the RaiseConfig (less its run-time fields), provenance

The folder is written to a temporary sibling and renamed into place, so a reader sees the old
selector or the new one, never half of each. Anything that is not a complete folder of this format
(missing, truncated, corrupt, another program's or another version's) is a one-line ``UserError``.
The same payload (``artifact_to_payload``) also travels inside PPO checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import RUN_TIME_FIELDS, RaiseConfig
from .config_io import from_dict
from .errors import UserError
from .io_utils import staged_folder, user_path
from .run_folders import SELECTOR_FILE as METADATA_FILE
from .run_folders import SELECTOR_WEIGHTS_FILE as WEIGHTS_FILE

FORMAT_NAME = "raise-select-selector"
FORMAT_VERSION = 1


@dataclass
class RaiseArtifact:
    """Everything needed to rebuild a trained RAISE selector on a pool."""

    config: RaiseConfig  # the RaiseConfig it was trained with (hidden size, clusters, temperature, ...)
    tensors: dict[str, torch.Tensor]  # state dicts, keys prefixed "policy." and "critic."
    feature_layout: list[dict]  # fused-feature columns: {name, block, transform} (see raise_policy's docstring)
    static_names: tuple[str, ...]  # StaticFeatures.names the difficulty block was built from
    pca_dim: int  # embedding dimensions the policy expects
    standardization: dict[str, np.ndarray]  # difficulty_mean/std [4], embedding_mean/std [pca_dim] of the training pool
    centroids: np.ndarray  # [clusters, pca_dim] k-means centroids in the training pool's embedding space
    aux_model: str  # auxiliary model whose features the statistics describe
    embedding_space: str  # fingerprint of (aux model, PCA basis): centroids are only meaningful in this space
    provenance: dict[str, Any] = field(
        default_factory=dict
    )  # model, pool fingerprint, episodes, seed, date, version, notes


def trained_settings(config: RaiseConfig | dict) -> dict:
    """The RaiseConfig fields that shape a trained selector, as stored in selector.json: every field but the
    run-time ones (config.RUN_TIME_FIELDS), which older selector folders may still hold."""
    settings = config if isinstance(config, dict) else dataclasses.asdict(config)
    return {key: value for key, value in settings.items() if key not in RUN_TIME_FIELDS}


def _not_a_selector(folder: Path, reason: str) -> UserError:
    return UserError(
        f"{folder} is not a raise-select selector ({reason}); train one with `raise-select train-selector`"
    )


def artifact_to_payload(artifact: RaiseArtifact) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON-safe metadata, tensors): what both the selector folder and PPO checkpoints store."""
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "feature_layout": artifact.feature_layout,
        "static_names": list(artifact.static_names),
        "pca_dim": int(artifact.pca_dim),
        "standardization": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in artifact.standardization.items()},
        "centroids": np.asarray(artifact.centroids, dtype=np.float64).tolist(),
        "aux_model": artifact.aux_model,
        "embedding_space": artifact.embedding_space,
        "config": trained_settings(artifact.config),
        "provenance": artifact.provenance,
    }
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in artifact.tensors.items()}
    _check_finite(tensors, "training produced", "lower raise.learning_rate or raise raise.temperature and train again")
    return metadata, tensors


def _check_finite(tensors: dict[str, torch.Tensor], what: str, fix: str) -> None:
    """A selector with NaN or infinite weights scores every candidate NaN: refuse it, naming the tensors."""
    broken = sorted(
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    )
    if broken:
        shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        raise UserError(f"{what} a selector with non-finite (NaN/inf) weights in {shown}; {fix}")


def artifact_from_payload(metadata: dict, tensors: dict[str, torch.Tensor], folder: Path) -> RaiseArtifact:
    """Inverse of :func:`artifact_to_payload`; ``folder`` names the source in error messages."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise _not_a_selector(folder, f"format {found!r}, expected {FORMAT_NAME!r}")
    if metadata.get("version") != FORMAT_VERSION:
        raise _not_a_selector(
            folder, f"format version {metadata.get('version')!r}, this library reads version {FORMAT_VERSION}"
        )
    try:
        pca_dim = int(metadata["pca_dim"])
        _check_layout(metadata, pca_dim)
        centroids = np.asarray(metadata["centroids"], dtype=np.float32).reshape(-1, pca_dim)
        artifact = RaiseArtifact(
            config=from_dict(RaiseConfig, trained_settings(metadata["config"]), where="selector.config"),
            tensors=dict(tensors),
            feature_layout=list(metadata["feature_layout"]),
            static_names=tuple(metadata["static_names"]),
            pca_dim=pca_dim,
            standardization={k: np.asarray(v, dtype=np.float32) for k, v in metadata["standardization"].items()},
            centroids=centroids,
            aux_model=str(metadata["aux_model"]),
            embedding_space=str(metadata["embedding_space"]),
            provenance=dict(metadata.get("provenance") or {}),
        )
    except _Inconsistent as exc:
        raise _not_a_selector(folder, f"{METADATA_FILE} is inconsistent: {exc}") from None
    except (KeyError, TypeError, ValueError, UserError) as exc:
        raise _not_a_selector(folder, f"{METADATA_FILE} is incomplete: {type(exc).__name__} {exc}") from None
    if len(artifact.centroids) != artifact.config.clusters:
        found = f"{len(artifact.centroids)} centroids for config.clusters={artifact.config.clusters}"
        raise _not_a_selector(folder, f"{METADATA_FILE} is inconsistent: {found}")
    if not any(k.startswith("policy.") for k in tensors) or not any(k.startswith("critic.") for k in tensors):
        raise _not_a_selector(folder, f"{WEIGHTS_FILE} lacks policy or critic tensors")
    inputs = [tensors[name].shape[-1] for name in _INPUT_LAYERS if name in tensors]
    if len(inputs) == len(_INPUT_LAYERS) and sum(inputs) != len(artifact.feature_layout):
        found = f"{len(artifact.feature_layout)} feature_layout columns for weights that read {sum(inputs)}"
        raise _not_a_selector(folder, f"{METADATA_FILE} is inconsistent: {found}")
    _check_finite(
        tensors, f"{folder} holds", "it cannot score candidates; train a new one with `raise-select train-selector`"
    )
    return artifact


# The policy's input layers: together they read every column of the fused feature layout.
_INPUT_LAYERS = ("policy.static_layer.weight", "policy.dynamic_layer.weight")


class _Inconsistent(ValueError):
    """selector.json's arrays disagree with its own layout."""


def _check_layout(metadata: dict, pca_dim: int) -> None:
    """The arrays of selector.json against its own layout: the standardization has one entry per static
    column (difficulty) and per embedding dimension, each centroid ``pca_dim`` finite numbers."""
    names = metadata["static_names"]
    sizes = {"difficulty_mean": len(names), "difficulty_std": len(names), "embedding_mean": pca_dim}
    sizes["embedding_std"] = pca_dim
    arrays = {f"standardization.{key}": (metadata["standardization"].get(key), size) for key, size in sizes.items()}
    arrays.update({f"centroids[{i}]": (row, pca_dim) for i, row in enumerate(metadata["centroids"])})
    if pca_dim < 1 or not metadata["centroids"]:
        raise _Inconsistent(f"pca_dim={pca_dim} with {len(metadata['centroids'])} centroids")
    static_columns = sum(isinstance(e, dict) and e.get("block") == "static" for e in metadata["feature_layout"])
    if static_columns != len(names) + pca_dim:
        raise _Inconsistent(
            f"feature_layout has {static_columns} static columns for {len(names)} static_names and pca_dim={pca_dim}"
        )
    for name, (values, size) in arrays.items():
        array = np.asarray(values if isinstance(values, list) else [], dtype=np.float64)
        if array.shape != (size,) or not np.isfinite(array).all():
            raise _Inconsistent(f"{name} must be {size} finite numbers (the layout's size), got {str(values):.60}")


def save_artifact(artifact: RaiseArtifact, folder: str | os.PathLike) -> Path:
    """Write the selector folder atomically (temporary sibling folder, then rename)."""
    folder = Path(folder)
    metadata, tensors = artifact_to_payload(artifact)
    with staged_folder(folder) as staging, user_path(staging, "write"):
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return folder


# Selectors shipped in the package (``raise.policy`` / ``--policy`` accept their names), and the
# command that reproduces each (README, "Selectors in the package").
BUNDLED_SELECTORS: dict[str, str] = {
    "smollm2-gsm8k": "RAISE for SmolLM2-135M + LoRA on the demo's mixed pool, target GSM8K, trained on a proxy: "
    "raise-select train-selector --config examples/configs/smollm2_gsm8k_mixed.yaml --output runs/smollm2-gsm8k",
}


def resolve_policy(name: str | os.PathLike) -> Path:
    """A selector folder from ``raise.policy``: a path, or the name of a selector in the package."""
    folder = Path(name)
    if not folder.exists() and str(name) in BUNDLED_SELECTORS:
        return Path(str(resources.files("raise_select") / "trained" / str(name)))
    return folder


def load_artifact(folder: str | os.PathLike) -> RaiseArtifact:
    """Read a selector folder written by :func:`save_artifact` (safetensors + JSON only), or a bundled
    selector by name (:data:`BUNDLED_SELECTORS`)."""
    folder = resolve_policy(folder)
    metadata_path, weights_path = folder / METADATA_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise _not_a_selector(folder, "no such folder")
    if not metadata_path.is_file():
        inside = folder / "selector"
        hint = f"; the selector of a train-selector folder is {inside}" if (inside / METADATA_FILE).is_file() else ""
        raise _not_a_selector(folder, f"no {METADATA_FILE}{hint}")
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _not_a_selector(folder, f"{METADATA_FILE} is not valid JSON (truncated or corrupt)") from None
    if isinstance(metadata, dict) and metadata.get("format") == FORMAT_NAME and not weights_path.is_file():
        raise _not_a_selector(folder, f"no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights_path)) if weights_path.is_file() else {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _not_a_selector(folder, f"{WEIGHTS_FILE} is truncated or corrupt: {exc}") from None
    return artifact_from_payload(metadata, tensors, folder)
