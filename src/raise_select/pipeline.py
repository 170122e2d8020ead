"""The recipe behind every command: pool + target -> features -> selector -> environment -> run folder.

``Workbench`` holds what a command sets up once (pool, target, model, tokenized sets, features);
``run_finetune`` drives one selector for one budget and writes a finetune run folder (its files are
listed in :mod:`run_folders`, which names them).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from .callbacks import Callback, CallbackList, RunFolderRows, progress_bars, with_progress
from .config import Config, ModelConfig, TrainConfig, validate
from .config_io import dump_config
from .cpu_kernels import cpu_kernels, pin_cpu_kernels
from .data.bundled import build_pool, build_target
from .data.tokenize import TokenizedSet, tokenize_examples
from .data.types import Pool, TargetTask
from .decisions import metrics_record, selection_record
from .environment import FineTuneEnv, full_data_steps, resolve_budget
from .errors import UserError
from .evaluation import evaluate_test
from .features import (
    StaticFeatures,
    compute_static_features,
    embed_examples,
    reference_losses,
    with_column,
    with_target_similarity,
)
from .io_utils import atomic_write, staged_folder, write_json, write_text
from .lm_eval_bridge import check_lm_eval_available, evaluate_lm_eval
from .model import LoadedModel, load_model, seed_everything
from .protocol import Explains, HasClusters, SelectionContext, Selector
from .run_folders import (
    CONFIG_FILE,
    EVALUATION_FILE,
    EXPLAIN_FILE,
    FINETUNE,
    LEDGER_FILE,
    LM_EVAL_DIR,
    SKIPPED_COUNT,
    SKIPPED_FIRST,
    SKIPPED_SHOWN,
    SUMMARY_FILE,
    RunResult,
    check_output,
    output_lock,
    skipped_records_note,
)

logger = logging.getLogger(__name__)


def default_output(command: str) -> Path:
    return Path("runs") / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def forward_token_weight(model: ModelConfig) -> float:
    """Cost of a forward-only token (features, validation passes) in training tokens of ``model``:
    2N FLOPs against 6N for a full fine-tuning token, or 4N for a LoRA one (frozen weights get no
    weight gradients), N = the model's parameters."""
    return 1 / 3 if model.finetune == "full" else 1 / 2


@dataclass
class PhaseCost:
    """Wall time and training-token equivalents of one phase of the compute ledger."""

    seconds: float = 0.0  # compute time: on several workers, the sum of their times
    tokens: int = 0  # training tokens of the target model, or their equivalent (forward-only, proxy model)
    wall_seconds: float | None = None  # elapsed time, where it differs from ``seconds`` (parallel work)

    def add(self, seconds: float, tokens: int, wall_seconds: float | None = None) -> None:
        self.seconds += seconds
        self.tokens += tokens
        if wall_seconds is not None:
            self.wall_seconds = (self.wall_seconds or 0.0) + wall_seconds


@dataclass
class Workbench:
    """Everything a command prepares once and reuses across runs."""

    config: Config
    pool: Pool
    target: TargetTask
    lm: LoadedModel
    pool_tokens: TokenizedSet
    validation_tokens: TokenizedSet
    features: StaticFeatures | None = None
    target_embedding: np.ndarray | None = None
    feature_cost: PhaseCost = field(default_factory=PhaseCost)
    base_weights: dict = field(default_factory=dict)  # trainable weights as loaded: every run starts from these

    def __post_init__(self) -> None:
        if not self.base_weights:
            self.base_weights = self.lm.snapshot()

    @classmethod
    def build(cls, config: Config, progress: bool = True) -> Workbench:
        """Check ``config``, then load the pool, the target and the model (``progress``: show loading bars)."""
        validate(config)  # the same one-line errors as the CLI, before any data or model is loaded
        pin_cpu_kernels(config.model.cpu_kernels)
        seed_everything(config.seed)
        pool = build_pool(config.pool, seed=config.seed)
        if pool.skipped:
            logger.warning(skipped_records_note(len(pool.skipped), pool.skipped))
        resolve_budget(len(pool), config.train)  # fail early on a budget or batch size that cannot work
        target = build_target(config.target, seed=config.seed)
        with progress_bars(progress):
            lm = load_model(config.model, seed=config.seed)
        max_length = config.pool.max_length
        pool_tokens = tokenize_examples(pool.examples, lm.tokenizer, max_length)
        validation_tokens = tokenize_examples(list(target.validation), lm.tokenizer, max_length)
        return cls(config, pool, target, lm, pool_tokens, validation_tokens)

    # -- features -------------------------------------------------------------------------------
    def ensure_features(self, progress: bool = True) -> StaticFeatures:
        """Static features of the pool (cached on disk) and the target's validation embedding."""
        if self.features is not None:
            return self.features
        started = time.perf_counter()
        feature_config = self.config.features
        self.lm.restore(self.base_weights)  # features describe the pool under the BASE model
        aux = self.lm
        if feature_config.aux_model and feature_config.aux_model != self.config.model.name:
            with progress_bars(progress):
                aux = load_model(
                    ModelConfig(
                        name=feature_config.aux_model,
                        finetune="full",
                        precision=self.config.model.precision,
                        device=self.config.model.device,
                    ),
                    seed=self.config.seed,
                )
        max_length = self.config.pool.max_length
        self.features = compute_static_features(
            aux,
            self.pool.examples,
            feature_config,
            max_length,
            pool_fingerprint=self.pool.fingerprint(),
            progress=progress,
        )
        hidden = embed_examples(aux, list(self.target.validation), max_length, feature_config.batch_size)
        self.target_embedding = self.features.project(hidden)
        self.features = with_target_similarity(self.features, self.target_embedding)
        # Two forward passes over the pool (with and without the prompt) + one over the validation set,
        # in training-token equivalents of the model being tuned (the aux model's size relative to it).
        response_only = int(self.pool_tokens.response_lengths.sum())
        pool = self.pool_tokens.num_tokens(np.arange(len(self.pool_tokens)))
        validation = self.validation_tokens.num_tokens(np.arange(len(self.validation_tokens)))
        forward = pool + response_only + validation
        if feature_config.reference_steps:
            same_tokens = aux is self.lm
            reference = reference_losses(
                aux,
                self.pool_tokens if same_tokens else tokenize_examples(self.pool.examples, aux.tokenizer, max_length),
                self.validation_tokens
                if same_tokens
                else tokenize_examples(list(self.target.validation), aux.tokenizer, max_length),
                steps=feature_config.reference_steps,
                learning_rate=self.config.train.learning_rate,
                batch_size=self.config.train.batch_size,
                seed=self.config.seed,
                progress=progress,
            )
            self.features = with_column(self.features, "reference_loss", reference)
            # the reference's training steps (forward + backward: 3x) and one more pass over the pool
            batch_tokens = self.validation_tokens.lengths.mean() * min(
                self.config.train.batch_size, len(self.validation_tokens)
            )
            forward += pool + 3 * int(feature_config.reference_steps * batch_tokens)
        size = aux.parameter_count() / self.lm.parameter_count()
        tokens = round(forward * forward_token_weight(self.config.model) * size)
        self.feature_cost.add(time.perf_counter() - started, tokens)
        return self.features

    def proxy(self, progress: bool = True) -> Workbench:
        """The workbench selector-training episodes are played on: this one, or a cheaper proxy
        (``raise.proxy_model``, ``proxy_layers``, ``proxy_max_length``, ``proxy_decision_interval``,
        ``proxy_validation_size``) [ours].

        The proxy shares this workbench's pool, target and static features (computed here, by
        ``features.aux_model`` or the model being tuned), so a selector trained on it reads the same
        fused features when it is deployed here. It has its own model, tokenization and base weights.
        """
        settings = self.config.raise_
        proxy_settings = (
            "proxy_model",
            "proxy_layers",
            "proxy_max_length",
            "proxy_decision_interval",
            "proxy_validation_size",
        )
        if all(getattr(settings, name) is None for name in proxy_settings):
            return self
        validation_size = settings.proxy_validation_size or len(self.target.validation)
        if validation_size > len(self.target.validation):
            raise UserError(
                f"raise.proxy_validation_size={validation_size} is more than the target's "
                f"{len(self.target.validation)} validation examples; use at most that many, or null for all"
            )
        self.ensure_features(progress)
        config = copy.deepcopy(self.config)
        config.model.name = settings.proxy_model or config.model.name
        config.model.num_layers = settings.proxy_layers
        config.pool.max_length = settings.proxy_max_length or config.pool.max_length
        config.train.decision_interval = settings.proxy_decision_interval or config.train.decision_interval
        same_model = config.model == self.config.model
        with progress_bars(progress):
            lm = self.lm if same_model else load_model(config.model, config.seed, layers_setting="raise.proxy_layers")
        max_length = config.pool.max_length
        return Workbench(
            config,
            self.pool,
            self.target,
            lm,
            self.pool_tokens
            if same_model and max_length == self.config.pool.max_length
            else tokenize_examples(self.pool.examples, lm.tokenizer, max_length),
            tokenize_examples(list(self.target.validation)[:validation_size], lm.tokenizer, max_length),
            features=self.features,
            target_embedding=self.target_embedding,
            feature_cost=self.feature_cost,
            base_weights=self.base_weights if same_model else {},
        )

    def selection_context(
        self, selector: Selector, budget_steps: int, seed: int, progress: bool = True
    ) -> SelectionContext:
        warn_on_schedule_change(selector, self.config.train.eval_every, self.config.train.decision_interval)
        features = self.ensure_features(progress) if selector.requires_features else None
        return SelectionContext(
            pool=self.pool,
            batch_size=self.config.train.batch_size,
            budget_steps=budget_steps,
            decision_interval=self.config.train.decision_interval,
            seed=seed,
            features=features,
            target_embedding=self.target_embedding if features is not None else None,
            static_epochs=self.config.train.full_data_epochs,
        )

    def make_env(self, budget_steps: int, evaluate_every: int = 1) -> FineTuneEnv:
        return FineTuneEnv(
            self.lm,
            self.pool_tokens,
            self.validation_tokens,
            self.config.train,
            budget_steps,
            evaluate_every=evaluate_every,
            base_weights=self.base_weights,
        )

    def phi(self) -> dict:
        """Cost of one full-data run (Φ) in steps and tokens; seconds are estimated from measured throughput."""
        return full_data_cost(self.pool_tokens, self.config.train)


def full_data_cost(pool_tokens: TokenizedSet, train: TrainConfig) -> dict:
    """Φ, one full-data run (``train.full_data_epochs`` over the pool), in optimizer steps and training tokens."""
    return {
        "steps": full_data_steps(len(pool_tokens), train),
        "tokens": int(train.full_data_epochs * pool_tokens.num_tokens(np.arange(len(pool_tokens)))),
    }


_SCHEDULES_WARNED: set[tuple] = set()  # one warning per trained selector and deployed schedule


def warn_on_schedule_change(selector: Selector, eval_every: int, decision_interval: int = 1) -> None:
    """One warning line when a trained selector runs with another validation schedule than its training's.

    Its state's validation-loss features (the latest loss and its last change) are fresh only after a
    pass, so a selector trained on one schedule and deployed on another sees states it was not trained
    on. Schedules are compared in optimizer updates (``eval_every`` x ``decision_interval``): episodes on a
    proxy may take several updates per decision (``raise.proxy_decision_interval``). Selectors saved
    before the schedule was recorded were trained with a pass after every decision; before the decision
    interval was recorded, with the proxy's interval or else the deployment's.
    """
    artifact = getattr(selector, "artifact", None)
    if artifact is None:
        return
    trained = int(artifact.provenance.get("eval_every", 1))
    trained_interval = int(
        artifact.provenance.get("decision_interval")
        or getattr(artifact.config, "proxy_decision_interval", None)
        or decision_interval
    )
    trained_updates, deployed_updates = trained * trained_interval, eval_every * decision_interval
    key = (trained_updates, deployed_updates, json.dumps(artifact.provenance, sort_keys=True, default=str))
    if trained_updates == deployed_updates or key in _SCHEDULES_WARNED:
        return
    _SCHEDULES_WARNED.add(key)
    updates = lambda n: "1 update" if n == 1 else f"{n} updates"  # noqa: E731
    fix = (
        f"set train.eval_every={trained_updates // decision_interval} to deploy it as trained"
        if trained_updates % decision_interval == 0
        else f"validate every {updates(trained_updates)} to deploy it as trained"
    )
    logger.warning(
        "warning: this RAISE selector was trained with a validation pass every %s and runs with one every %s "
        "(train.eval_every=%d x train.decision_interval=%d): its state's validation-loss features are up to %s "
        "old (trained: %d) and their last change spans %s (trained: %d); %s",
        updates(trained_updates),
        updates(deployed_updates),
        eval_every,
        decision_interval,
        updates(deployed_updates - 1),
        trained_updates - 1,
        updates(deployed_updates),
        trained_updates,
        fix,
    )


def ledger(phi: dict, phases: dict[str, PhaseCost], seconds_per_token: float | None) -> dict:
    """Compute ledger: each phase's seconds and tokens, and its size in Φ (one full-data run)."""
    phi = dict(phi)
    if seconds_per_token:
        phi["seconds"] = phi["tokens"] * seconds_per_token  # estimate: measured training throughput x Φ tokens
    rows = {}
    for name, cost in phases.items():
        rows[name] = {
            "seconds": round(cost.seconds, 3),
            "tokens": int(cost.tokens),
            "phi": cost.tokens / phi["tokens"] if phi["tokens"] else None,
            "phi_seconds": cost.seconds / phi["seconds"] if phi.get("seconds") else None,
        }
        if cost.wall_seconds is not None:
            rows[name]["wall_seconds"] = round(cost.wall_seconds, 3)
    return {"phi": phi, "phases": rows}


def run_finetune(
    bench: Workbench,
    selector: Selector,
    output: Path | None,
    budget_steps: int,
    seed: int,
    test_metric: bool = True,
    extra_phases: dict[str, PhaseCost] | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Drive ``selector`` for ``budget_steps`` optimizer updates from the base weights and write a run folder.

    ``output`` must be missing, empty or an earlier finetune run folder, which is replaced whole once
    this run has finished (see :mod:`run_folders`); None keeps the run in a temporary folder that is
    deleted at the end (the returned numbers are the result; ``RunResult.output`` is None).
    ``callbacks`` see the run's events (:mod:`callbacks`); one returning False from
    ``on_decision_end`` ends the run there (it is still evaluated and written, with fewer steps).
    """
    if output is None:
        with tempfile.TemporaryDirectory(prefix="raise-select-run-") as scratch:
            result = run_finetune(
                bench,
                selector,
                Path(scratch) / "run",
                budget_steps,
                seed,
                test_metric,
                extra_phases,
                progress,
                callbacks,
            )
        return replace(result, output=None)
    config = replace(bench.config, seed=seed, selector=selector.name)
    # Everything that can fail on the user's input happens before the run folder is touched.
    selector.setup(bench.selection_context(selector, budget_steps, seed, progress=progress))
    check_lm_eval_available(config.target.lm_eval if test_metric else [])
    env = bench.make_env(budget_steps, evaluate_every=config.train.eval_every)
    output = Path(output)
    # Written into a temporary sibling renamed over ``output`` when the run has finished: an old run
    # folder is replaced whole, and a failed or interrupted run leaves nothing behind.
    with output_lock(output, "finetune"):
        check_output(output, FINETUNE)
        with staged_folder(output) as folder:
            write_text(folder / CONFIG_FILE, dump_config(config))
            write_json(
                folder / SUMMARY_FILE,
                {
                    "method": selector.name,
                    "seed": seed,
                    "budget_steps": budget_steps,
                    "budget_fraction": budget_steps / bench.phi()["steps"],
                    "batch_size": config.train.batch_size,
                    "pool_size": len(bench.pool),
                    "model": config.model.name,
                    "target": bench.target.name,
                    SKIPPED_COUNT: len(bench.pool.skipped),
                    SKIPPED_FIRST: bench.pool.skipped[:SKIPPED_SHOWN],
                    "cpu_kernels": cpu_kernels(config.model.cpu_kernels),
                    "precision": bench.lm.config.precision,  # as it ran (model.precision=auto resolved)
                },
            )

            state = env.reset(seed)
            selector.reset(seed)
            clusters = selector.clusters if isinstance(selector, HasClusters) else None
            rows = RunFolderRows(
                folder, metrics_record(0, 0, state.validation_loss, None, 0, train_loss=None, seconds=0.0)
            )
            events = CallbackList([rows, *with_progress(callbacks, progress).callbacks])
            events.on_run_start(selector.name, -(-budget_steps // config.train.decision_interval))
            total_seconds, decision = 0.0, 0
            while not env.done:
                started = time.perf_counter()
                indices = np.asarray(selector.select(state), dtype=np.int64)
                selection_seconds = time.perf_counter() - started
                step_before = state.step
                result = env.step(indices)  # refuses indices that are not decision_size pool indices
                decision += 1
                events.on_selection(decision, selection_record(bench.pool, decision, step_before, indices, clusters))
                total_seconds += selection_seconds + result.seconds
                metrics = metrics_record(
                    decision,
                    state.step,
                    result.validation_loss,
                    result.reward,
                    env.tracker.tokens,
                    train_loss=result.train_loss,
                    seconds=round(total_seconds, 4),
                    selection_seconds=round(selection_seconds, 5),
                )
                if not events.on_decision_end(decision, metrics):
                    break  # a callback ended the run
            total_tokens = env.tracker.tokens

            final_validation = state.validation_history[-1]
            test = None
            if test_metric and len(bench.target.test):
                test = evaluate_test(
                    bench.lm,
                    bench.target,
                    config.pool.max_length,
                    batch_size=config.train.eval_batch_size,
                    max_new_tokens=config.target.max_new_tokens,
                    progress=progress,
                )
                if config.target.lm_eval:  # beside our metric, in evaluation.json and lm_eval/
                    test["lm_eval"] = evaluate_lm_eval(
                        bench.lm,
                        bench.target,
                        config.target.lm_eval,
                        folder / LM_EVAL_DIR,
                        config.pool.max_length,
                        config.target.max_new_tokens,
                        batch_size=config.train.eval_batch_size,
                        include_path=config.target.lm_eval_include,
                        final_folder=output / LM_EVAL_DIR,
                    )
            write_json(
                folder / EVALUATION_FILE,
                {
                    "validation_loss_initial": state.validation_history[0],
                    "validation_loss_final": final_validation,
                    "test": test,
                },
            )
            phases = dict(extra_phases or {})
            if selector.requires_features:
                phases.setdefault("features", bench.feature_cost)
            phases["finetune"] = PhaseCost(total_seconds, total_tokens)
            write_json(folder / LEDGER_FILE, ledger(bench.phi(), phases, total_seconds / max(total_tokens, 1)))
            if isinstance(selector, Explains):
                write_explain_csv(folder / EXPLAIN_FILE, selector.explain(), bench.pool)
    result = RunResult(
        selector.name,
        seed,
        budget_steps,
        state.validation_history[0],
        final_validation,
        test,
        state.step,
        total_tokens,
        total_seconds,
        output,
    )
    events.on_run_end(result)
    return result


def write_explain_csv(path: Path, rows: list[dict], pool: Pool) -> None:
    """RAISE's acquisition scores at several training stages, one row per (sampled) pool example."""
    if not rows:
        return
    for row in rows:
        example = pool[int(row["index"])]
        row.setdefault("id", example.id)
        row.setdefault("source", example.source)
        for label in ("family", "helpful", "corrupted"):  # pool composition for the report, where labelled
            if label in example.meta:
                row.setdefault(label, example.meta[label])
    leading = ["index", "id", "source", "cluster"]
    columns = leading + [k for k in rows[0] if k not in leading]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
