"""The episode head's reach: how low can its weights take the validation loss, found by direct search?

    python bench/head_search.py [--recipe curriculum] [--heads static stage] [--iterations 20] [--population 32]
                                [--search-seed 0] [--seeds 0 1 2] [--tiny] [field=value ...]

What learns in RAISE is the episode head: a linear score over the named static columns (response
loss, IFD, lengths, target similarity, reference loss), with ``raise.head_stage`` one whose weights
move with the training progress p (w0 + p * w1). Whether a selector falls short because its
training does not find a good head or because no head over those columns is good is a different
question, and this script answers the first half of it: it searches the head's weights directly on
the reward RAISE is trained on. Cross-entropy method: a Gaussian over the weights (starting at the
selector's initial mean 0 and spread ``raise.head_std``), ``--population`` draws per iteration, each
deployed greedily (as a trained selector is) for the recipe's budget from the base model and scored
by its final validation loss at fine-tuning seed ``--search-seed``; the Gaussian is refitted to the
best quarter. The policy MLP stays at its untrained initialisation, as at the start of selector
training. The best head found is then deployed like a trained selector over ``--seeds`` (a
``raise-select finetune`` run each, test metric included) and its picks are shown by family per
fifth of the run.

The search uses iterations x population fine-tunings (640 by default; the curriculum recipe's
selector trains on 32 episodes), so its result is a bound on what the head can express, not a
selector anyone would train this way; it is scored on the validation split it searched on. Prints;
asserts nothing. ``--tiny``: one iteration of 4 draws, 4 steps, one seed (seconds).
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raise_select.analysis import markdown_table, selection_records, stage_view
from raise_select.config_io import load_config, recipe_path
from raise_select.environment import FineTuneEnv
from raise_select.pipeline import Workbench, run_finetune
from raise_select.run_folders import EVALUATION_FILE, load_run
from raise_select.selectors.raise_policy import RaiseSelector

HEADS = {"static": ["raise.head_stage=false"], "stage": ["raise.head_stage=true"]}


def greedy_loss(env: FineTuneEnv, selector: RaiseSelector, weights: np.ndarray, seed: int) -> float:
    """Final validation loss of a greedy deployment with these head weights, from the base model."""
    env.reset(seed)
    selector.reset(seed)
    selector.set_head(weights)
    while not env.done:
        env.step(selector.select(env.state))
    return float(env.state.validation_history[-1])


def search(bench: Workbench, head: str, steps: int, args) -> tuple[np.ndarray, float, RaiseSelector]:
    """Cross-entropy search over the head's weights; returns the best weights, their loss and the selector."""
    selector = RaiseSelector(bench.config.raise_)
    selector.setup(bench.selection_context(selector, steps, args.search_seed, progress=False))
    env = bench.make_env(steps, evaluate_every=bench.config.train.eval_every)  # the recipe's validation schedule
    size = selector.policy.head_mean.numel()
    mean = np.zeros(size)
    std = np.full(size, bench.config.raise_.head_std / np.sqrt(selector.head_dims))
    rng = np.random.default_rng(args.search_seed)
    elite = max(2, args.population // 4)
    best_loss, best_weights = np.inf, mean.copy()
    started = time.perf_counter()
    for iteration in range(args.iterations):
        draws = mean + std * rng.standard_normal((args.population, size))
        losses = np.array([greedy_loss(env, selector, w, args.search_seed) for w in draws])
        order = np.argsort(losses)
        if losses[order[0]] < best_loss:
            best_loss, best_weights = float(losses[order[0]]), draws[order[0]].copy()
        mean, std = draws[order[:elite]].mean(axis=0), np.maximum(draws[order[:elite]].std(axis=0), 0.2)
        print(
            f"{head} head, iteration {iteration + 1}/{args.iterations}: lowest {losses.min():.4f}, median "
            f"{np.median(losses):.4f}, best so far {best_loss:.4f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return best_weights, best_loss, selector


def add_search_arguments(parser: argparse.ArgumentParser, iterations: int) -> None:
    """The options of a direct search on the reward (this script and ``schedule_search.py``)."""
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--search-seed", type=int, default=0, help="fine-tuning seed of the search and its draws' seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds of the deployment")
    parser.add_argument("--tiny", action="store_true", help="one iteration of 4 draws, 4 steps, one seed")
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")


def parse_search_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.tiny:
        args.iterations, args.population, args.seeds = 1, 4, [0]
    return args


def deploy(bench: Workbench, make_selector, folder: Path, steps: int, seeds: list[int]) -> tuple[list, list, list]:
    """A ``raise-select finetune`` run per seed: final validation losses, test scores and the picks' records."""
    losses, scores, picks = [], [], []
    for seed in seeds:
        run_finetune(bench, make_selector(), folder / f"s{seed}", steps, seed, test_metric=True, progress=False)
        evaluation = json.loads((folder / f"s{seed}" / EVALUATION_FILE).read_text())
        losses.append(evaluation["validation_loss_final"])
        test = evaluation.get("test") or {}
        scores.append(float(test.get(test.get("metric"), float("nan"))))
        picks += selection_records(load_run(folder / f"s{seed}"))
    return losses, scores, picks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="curriculum", help="a bundled recipe (curriculum, demo_quick, ...)")
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS))
    add_search_arguments(parser, iterations=20)
    args = parse_search_arguments(parser)

    rows, records, weights_rows = [], {}, []
    with tempfile.TemporaryDirectory() as workdir:
        for head in args.heads:
            config = load_config(recipe_path(args.recipe), [*args.overrides, *HEADS[head]])
            steps = 4 if args.tiny else config.train.budget_steps
            bench = Workbench.build(config, progress=False)
            best, best_loss, selector = search(bench, head, steps, args)
            names = list(selector.features.names[: selector.head_dims])
            weights_rows += [[head, "w0", *(f"{w:+.2f}" for w in best[: len(names)])]]
            if head == "stage":
                weights_rows += [[head, "w1 (per unit of progress)", *(f"{w:+.2f}" for w in best[len(names) :])]]
            selector.policy.head_mean.copy_(torch.as_tensor(best, dtype=torch.float32))  # deployed as a trained mean
            artifact = selector.to_artifact({"episodes": 0, "head_search": True})  # loaded as a trained selector is
            deployed = functools.partial(RaiseSelector, artifact.config, artifact)  # a fresh selector per run
            losses, scores, picks = deploy(bench, deployed, Path(workdir) / head, steps, args.seeds)
            records[f"{head} head"] = picks
            rows.append(
                [
                    f"{head} head",
                    str(args.iterations * args.population),
                    f"{best_loss:.4f}",
                    f"{np.mean(losses):.4f}",
                    " / ".join(f"{v:.4f}" for v in losses),
                    f"{np.nanmean(scores):.3f}",
                ]
            )
    print(f"\n## The best head found ({args.recipe}, {steps} steps)\n")
    headers = [
        "head",
        "fine-tunings searched",
        "best validation loss in the search",
        "deployed: validation loss",
        "per fine-tuning seed",
        "test exact match",
    ]
    print(markdown_table(headers, rows))
    print("\nIts weights by column (standardised columns; the deployed score adds the untrained MLP's):\n")
    print(markdown_table(["head", "part", *names], weights_rows))
    view = stage_view(records)
    if view:
        print(f"\nIts picks by {view[0]} per fifth of the run:\n")
        print(view[1])


if __name__ == "__main__":
    main()
