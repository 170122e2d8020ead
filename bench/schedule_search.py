"""What does the reward ask for on a labelled pool? A direct search over family schedules.

    python bench/schedule_search.py [--recipe curriculum] [--stages 5] [--iterations 16] [--population 32]
                                    [--search-seed 0] [--seeds 0 1 2] [--tiny] [field=value ...]

A world tests stage awareness only if the validation loss, the reward RAISE is trained on, prefers
the schedule the world was built around; otherwise a selector that follows the reward is right not
to follow the schedule (``bench/head_search.py`` found such a shortcut on an earlier curriculum
world). This script searches the space every selector's picks live in, on the reward alone: a
schedule is one mixture of the pool's families per stage (``--stages`` equal parts of the run), and
the cross-entropy method searches the mixtures' logits (a Gaussian starting at 0 with spread 2,
``--population`` draws per iteration, refitted to the best quarter), each draw a fine-tuning of the
recipe's budget from the base model at fine-tuning seed ``--search-seed``, scored by its final
validation loss. It knows the family labels only as names: which families are helpful, corrupted or
scheduled plays no part in the search. The best draw and the search's final mean are then deployed
over ``--seeds`` (a ``raise-select finetune`` run each, test metric included) next to the
``scheduled_oracle`` (where the pool carries a schedule) and printed with their mixtures per stage.

Iterations x population fine-tunings (512 by default): a bound found on the split it is scored on,
not a selector. Prints; asserts nothing. ``--tiny``: one iteration of 4 draws, 4 steps, one seed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from head_search import add_search_arguments, deploy, parse_search_arguments

from raise_select.analysis import markdown_table
from raise_select.config_io import load_config, recipe_path
from raise_select.environment import FineTuneEnv
from raise_select.pipeline import Workbench
from raise_select.protocol import EnvState, SelectionContext
from raise_select.selectors import build_selector
from raise_select.selectors.simple import EpochSampler


class StagedMixtureSelector:
    """One mixture of the pool's families per equal stage of the run: ``mixtures[k][j]`` is family j's share in stage k."""

    name = "staged_mixture"
    requires_features = False

    def __init__(self, families: list[str], mixtures: np.ndarray) -> None:
        self.families, self.mixtures = families, np.asarray(mixtures, dtype=np.float64)
        self.members: list[np.ndarray] = []
        self.rng = np.random.default_rng(0)

    def setup(self, context: SelectionContext) -> None:
        labels = [e.meta.get("family") for e in context.pool.examples]
        self.members = [np.array([i for i, f in enumerate(labels) if f == family]) for family in self.families]

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.samplers = [EpochSampler(members, self.rng) for members in self.members]

    def select(self, state: EnvState) -> np.ndarray:
        stage = min(len(self.mixtures) - 1, state.step * len(self.mixtures) // state.budget)
        counts = self.rng.multinomial(state.decision_size, self.mixtures[stage])
        picks = np.concatenate([sampler.draw(n) for sampler, n in zip(self.samplers, counts) if n > 0])
        return self.rng.permutation(picks)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def final_loss(env: FineTuneEnv, selector: StagedMixtureSelector, seed: int) -> float:
    env.reset(seed)
    selector.reset(seed)
    while not env.done:
        env.step(selector.select(env.state))
    return float(env.evaluate())


def search(bench: Workbench, families: list[str], steps: int, args) -> tuple[np.ndarray, float, np.ndarray]:
    """Cross-entropy search over per-stage family logits; returns the best draw's mixtures, its loss and the final mean's."""
    shape = (args.stages, len(families))
    mean, std = np.zeros(shape), np.full(shape, 2.0)
    context = bench.selection_context(StagedMixtureSelector(families, softmax(mean)), steps, args.search_seed, False)
    env = bench.make_env(steps, evaluate_every=steps)  # only the final loss is scored
    rng = np.random.default_rng(args.search_seed)
    elite = max(2, args.population // 4)
    best_loss, best = np.inf, softmax(mean)
    started = time.perf_counter()
    for iteration in range(args.iterations):
        draws = mean + std * rng.standard_normal((args.population, *shape))
        losses = []
        for logits in draws:
            selector = StagedMixtureSelector(families, softmax(logits))
            selector.setup(context)
            losses.append(final_loss(env, selector, args.search_seed))
        losses = np.array(losses)
        order = np.argsort(losses)
        if losses[order[0]] < best_loss:
            best_loss, best = float(losses[order[0]]), softmax(draws[order[0]])
        mean, std = draws[order[:elite]].mean(axis=0), np.maximum(draws[order[:elite]].std(axis=0), 0.05)
        print(
            f"iteration {iteration + 1}/{args.iterations}: lowest {losses.min():.4f}, median {np.median(losses):.4f}, "
            f"best so far {best_loss:.4f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return best, best_loss, softmax(mean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="curriculum", help="a bundled recipe with a labelled pool")
    parser.add_argument("--stages", type=int, default=5, help="equal parts of the run, one mixture each")
    add_search_arguments(parser, iterations=16)
    args = parse_search_arguments(parser)

    config = load_config(recipe_path(args.recipe), args.overrides)
    steps = 4 if args.tiny else config.train.budget_steps
    bench = Workbench.build(config, progress=False)
    labels = [e.meta.get("family") for e in bench.pool.examples]
    if None in labels:
        raise SystemExit(f"error: recipe {args.recipe!r}: every pool example needs meta['family'] for this search")
    families = sorted(set(labels))
    best, best_loss, mean = search(bench, families, steps, args)

    candidates = {
        "best draw": StagedMixtureSelector(families, best),
        "search mean": StagedMixtureSelector(families, mean),
    }
    if any(e.meta.get("schedule") for e in bench.pool.examples):
        candidates["scheduled_oracle"] = build_selector("scheduled_oracle", config)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, selector in candidates.items():
            folder = Path(workdir) / name.replace(" ", "-")
            losses, scores, _ = deploy(bench, lambda chosen=selector: chosen, folder, steps, args.seeds)
            rows.append(
                [name, f"{np.mean(losses):.4f}", " / ".join(f"{v:.4f}" for v in losses), f"{np.nanmean(scores):.3f}"]
            )
    print(f"\n## Family schedules searched on the reward ({args.recipe}, {steps} steps)\n")
    print(f"{args.iterations * args.population} fine-tunings searched; best in the search {best_loss:.4f}\n")
    print(markdown_table(["schedule", "validation loss", "per fine-tuning seed", "test exact match"], rows))
    stage_names = [f"{100 * k // args.stages}–{100 * (k + 1) // args.stages}%" for k in range(args.stages)]
    for name, mixtures in (("best draw", best), ("search mean", mean)):
        print(f"\n{name}: each family's share per stage\n")
        print(
            markdown_table(
                ["family", *stage_names],
                [[f, *(f"{m:.2f}" for m in column)] for f, column in zip(families, mixtures.T)],
            )
        )


if __name__ == "__main__":
    main()
