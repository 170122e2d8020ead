"""At what fraction of full data's steps does each method reach full data's validation loss?

    python bench/steps_to_full.py [--budgets 4 8 12 16 24] [--selector-seeds 0 1 2] [--seeds 0]
                                  [--methods raise targeted random] [--output runs/steps-to-full]
                                  [--config FILE] [--tiny] [field=value ...]

Runs ``raise-select compare`` (the ``demo --quick`` recipe by default) with a ladder of budgets, every
method at each, and one full-data run per fine-tuning seed. RAISE trains one selector per selector
seed, on episodes of the recipe's ``train.budget_steps`` (``raise.episode_steps``), and deploys it at
every budget. Prints:

* per method and budget: the validation loss (mean ± std over runs; RAISE pooled over selector and
  fine-tuning seeds) and the test exact match;
* per method (and per RAISE selector seed): the smallest budget whose mean validation loss is at or
  below full data's, as a fraction of full data's steps (``analysis.full_data_matches``; "-" when no
  budget of the ladder reaches it).

Rerunning with the same --output reuses finished runs (compare's resume). ``--tiny``: a cut-down
testbed, budgets 1 and 2, one selector seed, in a temporary folder: seconds. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _tiny import TESTBED_OVERRIDES

from raise_select.analysis import full_data_matches
from raise_select.config_io import load_config, recipe_path
from raise_select.experiments import run_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(recipe_path("demo_quick")))
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 12, 16, 24])
    parser.add_argument("--selector-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=["raise", "targeted", "random"])
    parser.add_argument("--output", default="runs/steps-to-full")
    parser.add_argument("--tiny", action="store_true", help="a cut-down testbed, budgets 1 and 2: seconds")
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")
    args = parser.parse_args()
    if args.tiny:
        args.budgets, args.selector_seeds, args.seeds = [1, 2], [0], [0]
        args.overrides = [*TESTBED_OVERRIDES, *args.overrides]
        with tempfile.TemporaryDirectory() as folder:
            args.output = folder
            steps_table(args)
    else:
        steps_table(args)


def steps_table(args: argparse.Namespace) -> None:
    recipe = load_config(args.config, args.overrides)
    methods = [m for m in args.methods if m != "full"] + ["full"]
    config = load_config(
        args.config,
        [
            f"raise.episode_steps={recipe.raise_.episode_steps or recipe.train.budget_steps}",
            *args.overrides,
            f"compare.methods=[{', '.join(methods)}]",
            f"compare.budget_steps=[{', '.join(map(str, args.budgets))}]",
            f"compare.seeds=[{', '.join(map(str, args.seeds))}]",
            f"compare.selector_seeds=[{', '.join(map(str, args.selector_seeds))}]",
            "compare.test_metric=true",
        ],
    )
    rows = run_comparison(config, Path(args.output), progress=not args.tiny)["rows"]
    full = [r for r in rows if r["method"] == "full"]
    full_steps = full[0]["budget_steps"]

    print(
        f"\n{Path(args.config).name}: budgets {args.budgets} of {full_steps} full-data steps; fine-tuning seeds {args.seeds}, "
        f"RAISE selector seeds {args.selector_seeds} ({args.output})\n"
    )
    header = ["method"] + [f"{b} steps ({100 * b / full_steps:.1f} %)" for b in args.budgets]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for method in methods[:-1]:
        cells = []
        for budget in args.budgets:
            group = [r for r in rows if r["method"] == method and r["budget_steps"] == budget]
            losses = [r["validation_loss"] for r in group]
            scores = [r["test_score"] for r in group if r.get("test_score") is not None]
            exact = f", EM {np.mean(scores):.3f}" if scores else ""
            cells.append(f"{np.mean(losses):.4f} ± {np.std(losses):.4f}{exact}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    full_losses = [r["validation_loss"] for r in full]
    full_scores = [r["test_score"] for r in full if r.get("test_score") is not None]
    full_exact = f", EM {np.mean(full_scores):.3f}" if full_scores else ""
    print(f"| full ({full_steps} steps) | {np.mean(full_losses):.4f} ± {np.std(full_losses):.4f}{full_exact} |")

    # The same rows, RAISE split by selector seed as methods of their own.
    labelled = [
        {**r, "method": f"raise, selector seed {r['selector_seed']}"} if r["method"] == "raise" else r for r in rows
    ]
    matches = full_data_matches(rows) + [
        m for m in full_data_matches(labelled) if m["method"].startswith("raise, selector seed")
    ]
    print("\n| method | smallest budget reaching full data's loss | fraction of full-data steps | its loss |")
    print("|---|---|---|---|")
    for match in matches:
        if match["steps"] is None:
            print(f"| {match['method']} | - | - | best {match['loss']:.4f} |")
        else:
            print(f"| {match['method']} | {match['steps']} | {100 * match['fraction']:.1f} % | {match['loss']:.4f} |")


if __name__ == "__main__":
    main()
