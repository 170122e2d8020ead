"""The commands as library functions: ``finetune_from_config``, ``train_raise_selector``, ``run_comparison`` and
``run_demo``. Each checks everything cheap first (the output folder, the selector, a resume's
settings) and only then loads the pool, target and model; the command line parses and prints.

A comparison folder holds ``config.yaml``, ``selector-s<S>/`` (one RAISE selector training per
selector seed S in ``compare.selector_seeds``), ``runs/`` (one fine-tuning run folder per method,
budget and seed) and ``results.json`` / ``results.csv`` / ``results.md``; :mod:`run_folders` names
them all. Finished runs (their ``evaluation.json`` exists) are not redone, so an interrupted
comparison resumes by running the same command again.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import logging
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from .callbacks import Callback
from .config import (
    RESUMABLE_COMPARISON,
    RESUMABLE_SELECTOR_TRAINING,
    RUN_TIME_FIELDS,
    Config,
    episode_eval_every,
)
from .config_io import changed_settings, dump_config, load_config, load_saved_config, recipe_path
from .cpu_kernels import cpu_kernels, pin_cpu_kernels
from .data.types import examples_fingerprint
from .environment import check_budget_epochs, full_data_steps, resolve_budget
from .errors import UserError
from .io_utils import atomic_write, read_json, uninterrupted, write_json, write_text
from .lm_eval_bridge import check_lm_eval_available
from .pipeline import PhaseCost, Workbench, forward_token_weight, ledger, run_finetune
from .run_folders import (
    CHECKPOINT_FILE,
    COMPARISON,
    CONFIG_FILE,
    DATA_FILE,
    EPISODES_FILE,
    EVALUATION_FILE,
    FINETUNE,
    LEDGER_FILE,
    RESTARTS_DIR,
    RESTARTS_FILE,
    RESULTS_CSV,
    RESULTS_JSON,
    RESULTS_MD,
    RUNS_DIR,
    SELECTOR_DIR,
    SELECTOR_FILE,
    SELECTOR_SEED_PREFIX,
    SELECTOR_TRAINING,
    SUMMARY_FILE,
    FolderSwap,
    RunResult,
    best_static_file,
    check_output,
    comparison_run_dir,
    folder_kind,
    interrupted_parts,
    load_run,
    output_lock,
    read_episodes,
    read_shaped_json,
    restart_dir,
    result_row,
    selector_training_dir,
)
from .selector_artifact import load_artifact, save_artifact
from .selectors import build_selector

logger = logging.getLogger(__name__)


def selector_training_cost(train_dir: Path) -> PhaseCost:
    """Seconds (episodes and their share of the PPO updates; summed over rollout workers), elapsed
    seconds and training-token equivalents of the tuned model of a selector training, from its
    episodes.jsonl: training tokens plus the rewards' validation passes (forward-only), scaled by
    the episode model's size relative to the tuned model's (a proxy is cheaper per token)."""
    cost = PhaseCost()
    if (train_dir / RESTARTS_DIR).is_dir():  # raise.restarts > 1: every restart trained was paid for
        for restart in sorted((train_dir / RESTARTS_DIR).iterdir()):
            part = selector_training_cost(restart)
            cost.add(part.seconds, part.tokens, part.wall_seconds)
        return cost
    compute = _episode_compute(train_dir)
    for row in read_episodes(train_dir):
        wall = row.get("wall_seconds")
        tokens = int(row.get("tokens", 0)) + compute["forward_token_weight"] * int(row.get("evaluation_tokens", 0))
        cost.add(
            float(row.get("seconds", 0.0)) + float(row.get("update_seconds", 0.0)),
            round(tokens * compute["size_ratio"]),
            None if wall is None else float(wall),
        )
    return cost


def _episode_compute(train_dir: Path) -> dict:
    """How a selector training's tokens convert to the tuned model's (saved in its selector.json)."""
    compute = {"size_ratio": 1.0, "forward_token_weight": 0.0}  # old selectors: training tokens only
    if (train_dir / SELECTOR_DIR / SELECTOR_FILE).is_file():
        episodes_on = (load_artifact(train_dir / SELECTOR_DIR).provenance or {}).get("episodes_on") or {}
        compute.update({k: float(episodes_on[k]) for k in compute if k in episodes_on})
    return compute


def check_resume(output: Path, config: Config) -> dict:
    """Refuse a ``--resume`` that would mix two set-ups in one selector: every setting except
    ``config.RESUMABLE_SELECTOR_TRAINING`` must equal the run's ``config.yaml``, the raise settings and seed the
    checkpoint's. Returns the checkpoint (:func:`check_resumed_pool` checks the pool once it is loaded)."""
    from .ppo import load_checkpoint

    saved_config = output / CONFIG_FILE
    if saved_config.is_file():
        saved = load_saved_config(saved_config)
        changed = changed_settings(saved, config, RESUMABLE_SELECTOR_TRAINING)
        if episode_eval_every(saved) != episode_eval_every(config):  # train.eval_every, where it is the episodes'
            changed.append("train.eval_every")
        if changed:
            raise UserError(
                f"--resume: {output} was trained with different {', '.join(changed)}; resume with the "
                f"settings in {saved_config} (only raise.episodes may grow) or train into a new --output"
            )
    trained_restarts = (output / RESTARTS_DIR).is_dir()
    if trained_restarts != (config.raise_.restarts > 1):
        trained = "raise.restarts > 1" if trained_restarts else "raise.restarts=1"
        raise UserError(
            f"--resume: {output} was trained with {trained}; resume with that setting or train into a new --output"
        )
    if trained_restarts:  # each restart's checkpoint is checked when it is resumed
        return None
    return load_checkpoint(output / CHECKPOINT_FILE, config.raise_, config.seed)


RESTART_SEED_STRIDE = 1000  # restart k of a selector training with seed s trains with seed s + 1000 k


def restart_seeds(config: Config) -> list[int]:
    """The seeds of a selector training's ``raise.restarts`` trainings: seed, seed + 1000, ..."""
    return [config.seed + RESTART_SEED_STRIDE * k for k in range(config.raise_.restarts)]


def restart_score(train_dir: Path) -> float:
    """What a restart is kept by, lower is better: the mean final validation loss of the episodes of
    the last quarter of its PPO updates (at least the last update). It is the reward the training
    already measured, so choosing costs no evaluation; on a proxy it is the proxy's loss."""
    episodes = read_episodes(train_dir)
    updates = sorted({row["update"] for row in episodes})
    last = set(updates[-max(1, len(updates) // 4) :])
    return statistics.fmean(row["validation_loss_final"] for row in episodes if row["update"] in last)


def check_resumed_pool(output: Path, checkpoint: dict, pool_fingerprint: str) -> None:
    """Refuse a ``--resume`` on a pool whose contents changed since the checkpoint (same settings, other examples)."""
    trained_on = (checkpoint["selector_metadata"].get("provenance") or {}).get("pool_fingerprint")
    if trained_on not in (None, pool_fingerprint):
        raise UserError(
            f"--resume: the pool's contents changed since {output} was trained (same settings, other "
            "examples); restore the pool files or train into a new --output"
        )


class _AfterFirstEpisode(Callback):
    """Once the first new episode is checkpointed: write the run's config.yaml and drop the replaced
    folder (``swap``, if any), so that a failure before that leaves the folder as it was and one
    after it leaves a training that ``--resume`` continues. It never stops the training."""

    def __init__(self, output: Path, config: Config, swap: FolderSwap | None):
        self.output, self.config, self.swap, self.written = output, config, swap, False

    def on_episode_end(self, episode: int, summary: dict) -> None:
        if not self.written:
            write_text(self.output / CONFIG_FILE, dump_config(self.config))
            if self.swap is not None:
                self.swap.commit()
            self.written = True


def check_layer_cuts(config: Config) -> None:
    """``model.num_layers`` and ``raise.proxy_layers`` within their models' decoder stacks, before any work."""
    from .model import check_layer_cut

    check_layer_cut(config.model)
    settings = config.raise_
    if settings.proxy_layers is not None:
        proxy = replace(config.model, name=settings.proxy_model or config.model.name, num_layers=settings.proxy_layers)
        check_layer_cut(proxy, "raise.proxy_layers")


def check_rollout_workers(config: Config) -> None:
    """With ``raise.rollout_workers`` > 0, Ray must be importable: fail before any expensive work."""
    if config.raise_.rollout_workers > 0:
        from .ray_rollouts import import_ray

        import_ray()


def resolve_episode_steps(config: Config, pool_size: int, default: int | None = None) -> int:
    """Optimizer updates of one selector-training episode: ``raise.episode_steps``, else ``default``
    (a comparison passes its first budget), else the run budget (``train.budget_steps`` /
    ``budget_fraction``). Refuses an episode of more passes than ``train.max_budget_epochs``."""
    steps = config.raise_.episode_steps or default or resolve_budget(pool_size, config.train)
    check_budget_epochs(steps, pool_size, config.train, f"raise.episode_steps={steps}")
    return steps


def train_raise_selector(
    config: Config,
    output: Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    bench: Workbench | None = None,
) -> Path:
    """Train the RAISE acquisition function with PPO as ``config`` says; returns the selector folder.

    The cheap checks (Ray importable, ``output`` usable, a resume's settings) run first, then the pool,
    target and model load (or ``bench`` is used: its pool, target, model and features, with ``config``).
    ``callbacks`` see the training's events (:mod:`callbacks`; False from ``on_episode_end`` stops
    after the current update, and ``--resume`` can continue later).

    ``resume`` continues the checkpoint in ``output`` (refused when a setting changed); otherwise
    ``output`` must be empty, or hold a selector training and ``overwrite`` be set: the old folder
    is kept until the first new episode is saved, and restored if training fails before that.
    """
    output = Path(output)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    with output_lock(output, "train-selector"):
        check_rollout_workers(config)
        check_layer_cuts(config)
        check_output(output, SELECTOR_TRAINING, resume=resume, overwrite=overwrite)
        checkpoint = check_resume(output, config) if resume else None
        if bench is None:
            bench = Workbench.build(config, progress=progress)
        elif bench.config is not config:
            bench = replace(bench, config=config)
        if checkpoint is not None:
            check_resumed_pool(output, checkpoint, bench.pool.fingerprint())
        if config.raise_.restarts > 1:
            return _train_restarts(bench, output, resume, progress, callbacks)
        return _train_raise_selector(bench, output, resume, progress, callbacks)


def _train_restarts(
    bench: Workbench, output: Path, resume: bool, progress: bool, callbacks: Sequence[Callback]
) -> Path:
    """``raise.restarts`` selector trainings, each a selector-training folder ``restarts/seed-<s>/``
    (:func:`restart_seeds`), then the one of lowest :func:`restart_score` copied to ``output``: its
    ``selector/`` (provenance: every restart's score and the kept seed; training cost: all restarts)
    and its ``episodes.jsonl``, with ``restarts.json`` and ``ledger.json``. A resume continues the
    unfinished restarts; a callback that stops a training stops there (returned: that restart's selector)."""
    config = bench.config
    seeds = restart_seeds(config)
    bench.ensure_features(progress)  # once, shared by every restart (as a comparison's selector seeds share them)
    with contextlib.nullcontext() if resume else FolderSwap(output) as swap:
        first_episode = _AfterFirstEpisode(output, config, swap)
        for seed in seeds:
            folder = restart_dir(output, seed)
            restart_config = replace(config, seed=seed, raise_=replace(config.raise_, restarts=1))
            restart_resume = (folder / CHECKPOINT_FILE).is_file()
            if restart_resume:
                check_resumed_pool(folder, check_resume(folder, restart_config), bench.pool.fingerprint())
            selector = _train_raise_selector(
                replace(bench, config=restart_config), folder, restart_resume, progress, [first_episode, *callbacks]
            )
            if len(read_episodes(folder)) < config.raise_.episodes:  # stopped by a callback: --resume continues
                return selector
    scores = {seed: restart_score(restart_dir(output, seed)) for seed in seeds}
    kept = min(seeds, key=lambda seed: scores[seed])
    if not first_episode.written:
        write_text(output / CONFIG_FILE, dump_config(config))
    cost = selector_training_cost(output)
    costs = ledger(bench.phi(), {"features": bench.feature_cost, "selector_training": cost}, None)
    restarts = {
        "score": "mean final validation loss of the episodes of the last quarter of the updates",
        "seeds": seeds,
        "scores": [scores[seed] for seed in seeds],
        "kept": kept,
    }
    artifact = load_artifact(restart_dir(output, kept) / SELECTOR_DIR)
    artifact.provenance["restarts"] = restarts
    artifact.provenance["training_cost"] = {"phi": costs["phi"], **costs["phases"]}
    save_artifact(artifact, output / SELECTOR_DIR)
    shutil.copyfile(restart_dir(output, kept) / EPISODES_FILE, output / EPISODES_FILE)
    write_json(output / RESTARTS_FILE, restarts)
    write_json(output / LEDGER_FILE, costs)
    return output / SELECTOR_DIR


def _train_raise_selector(
    bench: Workbench, output: Path, resume: bool, progress: bool, callbacks: Sequence[Callback]
) -> Path:
    from .ppo import train_policy
    from .selectors.raise_policy import RaiseSelector

    config = bench.config
    episode_steps = resolve_episode_steps(config, len(bench.pool))
    selector = RaiseSelector(config.raise_)
    episodes_bench = bench.proxy(progress)  # the episodes' model: the tuned one or a cheaper proxy
    context = episodes_bench.selection_context(selector, episode_steps, config.seed, progress=progress)
    env, rollouts = None, None
    if config.raise_.rollout_workers > 0:  # the episodes are played on Ray actors
        from .ray_rollouts import make_rollouts

        rollouts = make_rollouts(episodes_bench, context, episode_steps)
    else:
        env = episodes_bench.make_env(episode_steps, evaluate_every=episode_eval_every(config))
    # the swap as late as possible (the old folder is aside only briefly); a failure rolls it back
    with contextlib.nullcontext() if resume else FolderSwap(output) as swap:
        first_episode = _AfterFirstEpisode(output, config, swap)
        try:
            train_policy(
                env,
                context,
                config.raise_,
                output,
                seed=config.seed,
                resume=resume,
                progress=progress,
                callbacks=[first_episode, *callbacks],
                rollouts=rollouts,
                provenance={
                    "model": bench.lm.portable_identity,
                    "pool_fingerprint": bench.pool.fingerprint(),
                    "target": bench.target.name,
                    "episode_steps": episode_steps,
                    "eval_every": episode_eval_every(config),  # its deployments are warned unless they use it
                    "decision_interval": episodes_bench.config.train.decision_interval,  # updates per decision
                    "episodes_on": episodes_model(bench, episodes_bench),
                },
            )
        finally:
            if rollouts is not None:
                rollouts.close()
    if not first_episode.written:  # no new episode ran (all were done): record the config now
        write_text(output / CONFIG_FILE, dump_config(config))
    cost = selector_training_cost(output)
    costs = ledger(bench.phi(), {"features": bench.feature_cost, "selector_training": cost}, None)
    write_json(output / LEDGER_FILE, costs)
    # The selector carries what it cost, so a comparison or demo that deploys it can charge it.
    artifact = load_artifact(output / SELECTOR_DIR)
    artifact.provenance["training_cost"] = {"phi": costs["phi"], **costs["phases"]}
    save_artifact(artifact, output / SELECTOR_DIR)
    return output / SELECTOR_DIR


def finetune_from_config(
    config: Config,
    output: Path,
    test_metric: bool = True,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """``raise-select finetune``: fine-tune with ``config.selector`` for the run budget and write ``output``.

    Checks first (``output`` usable, the selector and its policy), then loads the pool, target and
    model. With ``raise.policy`` the trained selector's own raise settings run and are recorded in the
    run's config.yaml (:func:`adopt_trained_settings`).
    """
    output = Path(output)
    with output_lock(output, "finetune"):
        check_output(output, FINETUNE)
        selector = build_selector(config.selector, config)  # fail on a bad name/policy before loading the model
        config = adopt_trained_settings(config, selector)
        bench = Workbench.build(config, progress=progress)
        budget = resolve_budget(len(bench.pool), config.train)
        return run_finetune(
            bench,
            selector,
            output,
            budget,
            config.seed,
            test_metric=test_metric,
            progress=progress,
            callbacks=callbacks,
        )


def adopt_trained_settings(config: Config, selector) -> Config:
    """A trained RAISE selector runs with the raise settings it was trained with: a copy of ``config``
    holding them (the run-time fields stay the config's), with a one-line warning naming the config's
    settings it replaces. Other selectors: ``config`` unchanged."""
    trained = getattr(selector, "artifact", None)
    if trained is None:
        return config
    adopted = replace(  # a selector does not store the run-time fields: they stay the run's own
        trained.config, **{name: getattr(config.raise_, name) for name in RUN_TIME_FIELDS}
    )
    replaced = [
        f"raise.{f.name}={getattr(config.raise_, f.name)!r}"
        for f in fields(adopted)
        if getattr(config.raise_, f.name) != getattr(adopted, f.name)
    ]
    if replaced:
        logger.warning(
            "warning: the trained selector %s runs with its own raise settings; the config's %s are not used",
            config.raise_.policy,
            ", ".join(replaced),
        )
    return replace(config, raise_=adopted)


def trained_selector_cost(policy: str) -> PhaseCost:
    """The selector training (features excluded) a trained selector's provenance records; zero for
    selectors saved before it was recorded."""
    recorded = (load_artifact(policy).provenance.get("training_cost") or {}).get("selector_training") or {}
    return PhaseCost(float(recorded.get("seconds", 0.0)), int(recorded.get("tokens", 0)))


def episodes_model(bench: Workbench, episodes_bench: Workbench) -> dict:
    """What the training episodes ran on, and what one of their tokens costs in the tuned model's."""
    lm = episodes_bench.lm
    return {
        "proxy": episodes_bench is not bench,
        "model": lm.portable_identity,
        "num_layers": lm.config.num_layers,
        "max_length": episodes_bench.config.pool.max_length,
        "decision_interval": episodes_bench.config.train.decision_interval,
        "validation_examples": len(episodes_bench.validation_tokens),
        "parameters": lm.parameter_count(),
        "size_ratio": lm.parameter_count() / bench.lm.parameter_count(),
        "forward_token_weight": forward_token_weight(bench.config.model),
        "features_from": bench.features.aux_model if bench.features is not None else None,
    }


def _budget_list(config: Config, pool_size: int) -> list[tuple[float, int]]:
    """(fraction of full-data steps, optimizer updates) for every budget the comparison runs."""
    full = full_data_steps(pool_size, config.train)
    if config.compare.budget_steps:
        steps_list = list(config.compare.budget_steps)
    else:
        steps_list = [round(fraction * full) for fraction in config.compare.budgets]
    for steps in steps_list:
        if steps < 1:
            raise UserError(
                f"a compare budget gives {steps} optimizer updates (full data = {full}); raise compare.budgets"
            )
        check_budget_epochs(steps, pool_size, config.train, f"the compare budget of {steps} steps")
    return [(steps / full, steps) for steps in steps_list]


def run_comparison(config: Config, output: Path, progress: bool = True, bench: Workbench | None = None) -> dict:
    """Every method x budget x seed at equal step budgets on one model, pool and target."""
    output = Path(output)
    with output_lock(output, "compare"):
        fresh = folder_kind(output) is None
        try:
            return _run_comparison(config, output, progress, bench)
        except UserError:
            if fresh:  # a failed start leaves no folder whose config.yaml would refuse the corrected settings
                _remove_unstarted(output)
            raise


def _remove_unstarted(output: Path) -> None:
    """Remove a comparison folder holding nothing a re-run would reuse (no run, no selector checkpoint)."""
    started = [*output.glob(f"{SELECTOR_SEED_PREFIX}*/{CHECKPOINT_FILE}"), *output.glob(f"{RUNS_DIR}/*/{SUMMARY_FILE}")]
    if output.is_dir() and not started:
        with uninterrupted():
            shutil.rmtree(output, ignore_errors=True)


def _run_comparison(config: Config, output: Path, progress: bool, bench: Workbench | None) -> dict:
    from .analysis import comparison_results, results_markdown

    if not config.compare.methods:
        raise UserError("compare.methods is empty; list selectors to compare (e.g. [raise, random, longest])")
    methods = list(dict.fromkeys(config.compare.methods))
    for method in methods:  # fail on a bad name or policy before the expensive set-up
        if method != "raise" or config.raise_.policy is not None:
            build_selector(method, config)
    if "raise" in methods and config.raise_.policy is None:
        check_rollout_workers(config)
        check_layer_cuts(config)
    check_lm_eval_available(config.target.lm_eval if config.compare.test_metric else [])
    check_output(output, COMPARISON)  # the folder's kind first: its config.yaml means nothing in another kind
    _check_resumable(output, config)
    for part in interrupted_parts(output):  # what a killed run of this comparison left: cleaned up under its lock
        with output_lock(part, "compare"):
            pass
    bench = bench or Workbench.build(config, progress=progress)
    _check_same_data(output, bench)
    budgets = _budget_list(config, len(bench.pool))
    write_text(output / CONFIG_FILE, dump_config(config))  # after the set-up: a failed one leaves no folder
    write_json(output / DATA_FILE, _data_fingerprints(bench))
    full_steps = full_data_steps(len(bench.pool), config.train)

    # RAISE: one selector per selector seed (trained here unless raise.policy gives one).
    policies: dict[int | None, str] = {}
    selector_phases: dict[int | None, PhaseCost] = {}
    if "raise" in methods:
        if config.raise_.policy is not None:  # trained elsewhere: charged what its training cost there
            policies[None], selector_phases[None] = config.raise_.policy, trained_selector_cost(config.raise_.policy)
        for selector_seed in [] if config.raise_.policy is not None else config.compare.selector_seeds:
            train_dir = selector_training_dir(output, selector_seed)
            if not (train_dir / SELECTOR_DIR / SELECTOR_FILE).is_file():
                train_config = copy.deepcopy(config)
                train_config.seed = selector_seed  # policy init, k-means, episode sampling
                train_config.raise_.episode_steps = resolve_episode_steps(config, len(bench.pool), budgets[0][1])
                trainer_bench = replace(bench, config=train_config)
                resume = (train_dir / CHECKPOINT_FILE).is_file() or (train_dir / RESTARTS_DIR).is_dir()
                train_raise_selector(
                    train_config, train_dir, resume=resume, overwrite=not resume, progress=progress, bench=trainer_bench
                )
                bench.feature_cost = trainer_bench.feature_cost
                bench.features, bench.target_embedding = trainer_bench.features, trainer_bench.target_embedding
            policies[selector_seed] = str(train_dir / SELECTOR_DIR)
            selector_phases[selector_seed] = selector_training_cost(train_dir)

    rows = []
    for method in methods:
        method_budgets = [(1.0, full_steps)] if method == "full" else budgets
        for selector_seed, policy in policies.items() if method == "raise" else [(None, None)]:
            method_config = copy.deepcopy(config)
            method_config.raise_.policy = policy
            seeds = config.compare.seeds
            if method == "full" and config.compare.full_seeds is not None:
                seeds = config.compare.full_seeds
            for _, steps in method_budgets:
                for seed in seeds:
                    run_dir = comparison_run_dir(output, method, steps, seed, selector_seed)
                    if not (run_dir / EVALUATION_FILE).is_file():
                        selector = build_selector(method, method_config)
                        if method == "best_static":
                            search = search_best_static(bench, steps, seeds, best_static_file(output, steps), progress)
                            selector.proportions = search["best"]
                        extra = {"selector_training": selector_phases[selector_seed]} if method == "raise" else None
                        run_finetune(
                            bench,
                            selector,
                            run_dir,
                            steps,
                            seed,
                            test_metric=config.compare.test_metric,
                            extra_phases=extra,
                            progress=progress,
                        )
                    rows.append({**result_row(load_run(run_dir), method, output), "selector_seed": selector_seed})

    selector_phase = PhaseCost()  # one selector training: what a user pays once per selector
    if selector_phases:
        phases = list(selector_phases.values())
        walls = [p.wall_seconds for p in phases if p.wall_seconds is not None]
        selector_phase.add(
            sum(p.seconds for p in phases) / len(phases),
            round(sum(p.tokens for p in phases) / len(phases)),
            sum(walls) / len(walls) if walls else None,
        )
    results = {
        **comparison_results(rows),
        "ledger": _comparison_ledger(bench, rows, selector_phase),
        "cpu_kernels": cpu_kernels(config.model.cpu_kernels),
        "precision": bench.lm.config.precision,  # as it ran (model.precision=auto resolved)
    }
    write_json(output / RESULTS_JSON, results)
    _write_csv(output / RESULTS_CSV, rows)
    write_text(output / RESULTS_MD, results_markdown(results))
    return results


def search_best_static(
    bench: Workbench, steps: int, seeds: Sequence[int], record: Path | None = None, progress: bool = True
) -> dict:
    """The ``best_static`` mixture at ``steps``: every grid mixture of the pool's helpful families
    (:func:`~raise_select.selectors.mixtures.mixture_grid`) fine-tuned at each of ``seeds``, ranked by
    mean final validation loss. Returns ``{"steps", "seeds", "grid": [{"proportions", "validation_loss"}],
    "best"}``, kept in ``record`` (when given) and read back from it when it holds the same search.
    A reference like the oracle: its runs are not charged to the comparison's ledger."""
    from .selectors.mixtures import FamilyMixtureSelector, helpful_families, mixture_grid

    grid = mixture_grid(helpful_families(bench.pool))
    if record is not None and record.is_file():
        saved = read_json(record)
        if saved.get("seeds") == list(seeds) and [row["proportions"] for row in saved["grid"]] == grid:
            return saved
    quiet = copy.deepcopy(bench.config)
    quiet.train.eval_every = steps  # the search ranks final losses only: one evaluation per run
    quiet_bench = replace(bench, config=quiet)
    rows = []
    for proportions in grid:
        losses = [
            run_finetune(
                quiet_bench, FamilyMixtureSelector(proportions), None, steps, seed, test_metric=False, progress=progress
            ).validation_loss_final
            for seed in seeds
        ]
        rows.append({"proportions": proportions, "validation_loss": sum(losses) / len(losses), "per_seed": losses})
    best = min(rows, key=lambda row: row["validation_loss"])["proportions"]
    search = {"steps": steps, "seeds": list(seeds), "grid": rows, "best": best}
    if record is not None:
        write_json(record, search)
    return search


def _check_resumable(output: Path, config: Config) -> None:
    """Finished runs in ``output`` are reused, so they must come from the same settings; only the
    comparison's run list (the ``compare`` section, except ``test_metric``) may change between invocations."""
    previous = output / CONFIG_FILE
    if not previous.is_file():
        return
    saved = load_saved_config(previous)
    changed = changed_settings(saved, config, RESUMABLE_COMPARISON)
    if changed:
        sections = ", ".join(dict.fromkeys(name.split(".")[0] for name in changed))
        raise UserError(
            f"{output} was written with different {sections} settings ({', '.join(changed)}); "
            "rerun it with its config.yaml or choose a new output folder"
        )
    if saved.compare.test_metric != config.compare.test_metric:
        raise UserError(
            f"{output} was run with compare.test_metric={str(saved.compare.test_metric).lower()}: its finished "
            "runs would not change; rerun with that value or choose a new output folder"
        )


def _data_fingerprints(bench: Workbench) -> dict[str, str]:
    return {
        "pool": examples_fingerprint(bench.pool.examples),
        "target": examples_fingerprint([*bench.target.validation, *bench.target.test]),
    }


def _check_same_data(output: Path, bench: Workbench) -> None:
    """Finished runs are reused only on the data they were run on: the same settings can load other
    examples or labels (an edited pool file, another version of a bundled source)."""
    record = output / DATA_FILE
    if not record.is_file():  # a new folder, or one written before the record existed
        return
    saved, current = read_shaped_json(record), _data_fingerprints(bench)
    changed = [part for part in current if saved.get(part) not in (None, current[part])]
    if changed:
        raise UserError(
            f"{output} holds runs on another {' and '.join(changed)} (examples or labels changed since they ran); "
            "choose a new output folder, or delete this one to rerun"
        )


def _comparison_ledger(bench: Workbench, rows: list[dict], selector_phase: PhaseCost) -> dict:
    raise_rows = [r for r in rows if r["method"] == "raise"]
    finetune = PhaseCost()
    for row in raise_rows[:1]:  # one RAISE fine-tuning run: what a user pays per final model
        finetune.add(row["seconds"], row["tokens"])
    other = [r for r in rows if r["tokens"]]
    seconds_per_token = sum(r["seconds"] for r in other) / max(sum(r["tokens"] for r in other), 1)
    phases = {"features": bench.feature_cost, "selector_training": selector_phase, "finetune": finetune}
    return ledger(bench.phi(), phases, seconds_per_token)


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def run_demo(output: Path, quick: bool = False, progress: bool = True) -> Path:
    """Compare RAISE with random and baselines at an equal budget and write the report: on SmolLM2 the
    selector shipped in the package (trained on a proxy, see recipes/demo.yaml), on the testbed (``quick``)
    one trained here."""
    from .report import write_report

    config = load_config(recipe_path("demo_quick" if quick else "demo"))
    pin_cpu_kernels(config.model.cpu_kernels)
    run_comparison(config, output, progress=progress)
    return write_report(output)
