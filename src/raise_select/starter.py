"""``raise-select init``: a starter config for the user's model, pool and target.

The settings are those of the shipped experiments, not the library defaults: full fine-tuning of a
small model takes the synthetic testbed's (``examples/configs/synthetic.yaml``), LoRA takes the SmolLM2
experiment's (``examples/configs/smollm2_gsm8k_mixed.yaml``, which trained the shipped ``smollm2-gsm8k``
selector). Each setting is written with a comment saying why, and the text is loaded and validated
before it is written, so the file always runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import Config, validate
from .config_io import from_dict
from .errors import UserError
from .io_utils import write_text

FULL = "full"
LORA = "lora"


@dataclass(frozen=True)
class StarterRequest:
    """What ``raise-select init`` asks for: the three things only the user knows, and how to tune."""

    model: str
    pool: tuple[str, ...]
    target: str
    finetune: str  # full | lora


def default_finetune(model: str) -> str:
    """Full fine-tuning for the tiny testbed models (what its results use), LoRA for every other model."""
    return FULL if model.split("@")[0] == "synthetic-tiny" else LORA


def _quoted(value: str) -> str:
    """A YAML double-quoted scalar (paths may hold ':' or '#')."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pool_lines(pool: tuple[str, ...], finetune: str) -> str:
    # The generated testbed pool has no natural size: the shipped runs draw 1000 examples.
    limit = ", limit: 1000" if finetune == FULL else ""
    return "\n".join(f"    - {{name: {_quoted(name)}{limit if name == 'synthetic' else ''}}}" for name in pool)


def _methods(request: StarterRequest) -> list[str]:
    """RAISE and the baselines of the matching shipped comparison; the oracle only on the labelled synthetic pool."""
    baselines = ["random", "targeted"] if request.finetune == FULL else ["random", "targeted", "sspl"]
    return ["raise", *baselines, *(["oracle"] if "synthetic" in request.pool else [])]


_HEADER = """\
# Starter config written by `raise-select init` for your model, pool and target. The settings below are
# those of {origin}, each with its reason;
# everything not set here is the library default (`raise-select config` lists them all). Typical use:
#   raise-select compare --config {file}          # RAISE (3 selector seeds) against random at an equal budget
#   raise-select train-selector --config {file} --output runs/selector
#   raise-select finetune --config {file} --policy runs/selector/selector
seed: 0
model:
  name: {model}
"""

_FULL_BODY = """\
  finetune: full      # a small model: every weight trains, as on the synthetic testbed
  precision: fp32
pool:
  sources:
{pool}
  max_length: 48      # the testbed's examples are short; raise it to fit your longest prompt + response
target:
  name: {target}
  n_validation: 64    # the reward is this split's loss: enough examples to rank decisions, cheap to evaluate
  n_test: 100
  max_new_tokens: 6   # exact-match answers are short; raise it for longer answers
train:
  batch_size: 8
  learning_rate: 0.001   # the testbed's step for full fine-tuning (library default: 2e-4)
  warmup_steps: 4        # every shipped testbed run warms up over its first 4 updates (library default: 0)
  budget_steps: 24       # an explicit budget, as in every shipped comparison (library default: 1 % of full data)
  full_data_epochs: 3
  eval_batch_size: 64
  eval_every: 4          # a validation pass (the reward) every 4 decisions, in training and deployment: its main cost
features:
  pca_dim: 32
  batch_size: 64
raise:
  clusters: 1            # as every shipped result (library default 2: each batch split between k-means clusters)
  episodes: 56           # 7 PPO updates of 8 episodes, as the shipped testbed results
  episodes_per_update: 8
  episode_steps: 12      # training episodes of half the budget: twice the updates for the same cost
  # proxy_layers: 1      # the testbed's recipe plays its episodes on its first decoder layer (a fifth of the cost);
                         # a cut of your model must still be a language model on the pool: check with bench/proxy_cost.py
  hidden_size: 64
compare:
  methods: [{methods}]
  seeds: [0, 1, 2]
  selector_seeds: [0, 1, 2]   # RL varies with the selector-training seed: judge RAISE over several
  budget_steps: [24]          # train.budget_steps: every method at the same number of updates
"""

_LORA_BODY = """\
  finetune: lora      # the shipped SmolLM2 results tune LoRA adapters (r 8, alpha 16)
  lora_r: 8
  lora_alpha: 16
  precision: auto     # bf16 autocast where the device has bf16 instructions (GPU, AVX512-BF16/AMX CPU), else fp32
pool:
  sources:
{pool}
  max_length: 160     # the SmolLM2 experiment's cut; raise it to fit your longest prompt + response
target:
  name: {target}
  n_validation: 24    # the reward is this split's loss, evaluated after every decision: small and fixed
  n_test: 16
train:
  batch_size: 8
  learning_rate: 0.0005   # the LoRA step of every shipped SmolLM2 run (library default: 2e-4)
  budget_steps: 16        # an explicit budget, as in every shipped comparison (library default: 1 % of full data)
  full_data_epochs: 3
  eval_batch_size: 24
  eval_every: 4           # a validation pass every 4 decisions in finetune runs: the evaluation is the costly part
features:
  batch_size: 16
  pca_dim: 32
  reference_steps: 0      # no reference_loss column: the shipped SmolLM2 selector was trained without it
raise:
  clusters: 1             # as every shipped result (library default 2: each batch split between k-means clusters)
  episodes: 28            # 7 PPO updates of 4 short episodes, played on the proxy below
  episodes_per_update: 4
  episode_steps: 4
  episode_eval_every: 1   # a reward after every decision in training; deployed with eval_every 4 (warned)
  hidden_size: 64
  head_std: 4.0           # wider head draws than the default 3, steps twice as long as the default's: 7
  head_learning_rate: 1.0 #   updates must first find the target-like examples, then avoid the corrupted ones
  head_update: regression # fit each decision's reward on its picks (few decisions per short episode)
  head_dims: 5            # the difficulty columns and target_similarity (no reference_loss, see features)
  proxy_max_length: 64    # episodes on examples cut to 64 tokens, two updates per reward: the training's cost
  proxy_decision_interval: 2
compare:
  methods: [{methods}]
  seeds: [0, 1, 2]
  selector_seeds: [0, 1, 2]   # RL varies with the selector-training seed: judge RAISE over several
  budget_steps: [16]          # train.budget_steps: every method at the same number of updates
  test_metric: false          # generation is slow on a CPU; set true for exact match / accuracy on the test split
"""


def starter_config_text(request: StarterRequest, file_name: str) -> str:
    """The commented YAML for ``request`` (validated: it loads and passes every check)."""
    if request.finetune not in (FULL, LORA):
        raise UserError(f"--finetune {request.finetune} is not one of full, lora")
    if not request.pool:
        raise UserError("--pool is missing; give a pool file, a datasets folder or a bundled source name")
    full = request.finetune == FULL
    origin = (
        "the synthetic testbed (examples/configs/synthetic.yaml)"
        if full
        else "the SmolLM2 experiment (examples/configs/smollm2_gsm8k_mixed.yaml)"
    )
    text = _HEADER.format(origin=origin, file=file_name, model=_quoted(request.model)) + (
        _FULL_BODY if full else _LORA_BODY
    ).format(
        pool=_pool_lines(request.pool, request.finetune),
        target=_quoted(request.target),
        methods=", ".join(_methods(request)),
    )
    validate(from_dict(Config, yaml.safe_load(text)))  # what load_config does with the written file
    return text


def write_starter_config(request: StarterRequest, path: Path, overwrite: bool = False) -> Path:
    """Write the starter config to ``path``; an existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; choose another --output or pass --force to replace it")
    return write_text(path, starter_config_text(request, path.name))
