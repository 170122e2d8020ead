"""Does the curriculum world reward stage awareness? Its premise table, over base models and fine-tuning seeds.

    python bench/curriculum_premise.py [--models synthetic-tiny synthetic-tiny@seed1] [--seeds 0 1 2]
                                       [--output runs/curriculum-premise] [--tiny] [field=value ...]

Runs ``raise-select compare`` on the ``curriculum`` recipe once per base model (``synthetic-tiny@seed<k>``
is pre-trained on first use, about a minute, and cached) with random, the best static mixture of the
helpful families (``best_static``: a grid search at the same budget, ranked on the validation split),
the hand-written schedule (``scheduled_oracle``) and full data, then prints per model and method the
validation loss (mean ± std over the fine-tuning seeds, and each seed's), the test exact match, and
the scheduled oracle's margin over the best static mixture per seed and the grid searched. ``--tiny``: the shipped model,
one seed, no full data (about a minute). Rerunning with the same --output reuses finished runs.
Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from raise_select.config_io import load_config, recipe_path
from raise_select.experiments import run_comparison
from raise_select.io_utils import read_json
from raise_select.run_folders import best_static_file

METHODS = ["random", "best_static", "scheduled_oracle", "full"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["synthetic-tiny", "synthetic-tiny@seed1"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--output", default="runs/curriculum-premise")
    parser.add_argument("--tiny", action="store_true", help="shipped model, seed 0, no full data")
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")
    args = parser.parse_args()
    if args.tiny:
        args.models, args.seeds = ["synthetic-tiny"], [0]
        args.methods = [m for m in args.methods if m != "full"]

    summary = {}
    print("| base model | method | validation loss (mean ± std) | per fine-tuning seed | test exact match |")
    print("|---|---|---|---|---|")
    for model in args.models:
        output = Path(args.output) / model.replace("@", "-")
        config = load_config(
            recipe_path("curriculum"),
            [
                f"model.name={model}",
                *args.overrides,
                f"compare.methods=[{', '.join(args.methods)}]",
                f"compare.seeds=[{', '.join(map(str, args.seeds))}]",
                "compare.test_metric=true",
            ],
        )
        rows = run_comparison(config, output, progress=False)["rows"]
        by_method = {}
        for method in args.methods:
            group = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
            losses = [r["validation_loss"] for r in group]
            scores = [r["test_score"] for r in group if r.get("test_score") is not None]
            by_method[method] = {
                "validation_loss": losses,
                "mean": float(np.mean(losses)),
                "std": float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
                "exact_match": float(np.mean(scores)) if scores else None,
            }
            s = by_method[method]
            exact = "–" if s["exact_match"] is None else f"{s['exact_match']:.3f}"
            print(
                f"| {model} | {method} | {s['mean']:.3f} ± {s['std']:.3f} | "
                f"{', '.join(f'{v:.3f}' for v in losses)} | {exact} |"
            )
        steps = config.compare.budget_steps[0]
        search = best_static_file(output, steps)
        if search.is_file():
            grid = read_json(search)
            by_method["best_static"]["mixture"] = grid["best"]
            by_method["best_static"]["grid"] = grid["grid"]
        summary[model] = by_method
    print()
    for model, by_method in summary.items():
        if "best_static" in by_method and "scheduled_oracle" in by_method:
            static, scheduled = by_method["best_static"], by_method["scheduled_oracle"]
            margins = np.array(static["validation_loss"]) - np.array(scheduled["validation_loss"])
            print(
                f"{model}: best static mixture {static.get('mixture')}; scheduled oracle below it by "
                f"{margins.mean():.3f} on average, per seed {', '.join(f'{m:+.3f}' for m in margins)}"
            )
            grid = ", ".join(
                f"{'/'.join(f'{share:.1f}' for share in row['proportions'].values())}: {row['validation_loss']:.3f}"
                for row in static.get("grid", [])
            )
            if grid:
                print(f"  grid ({'/'.join(static['mixture'])}: mean validation loss): {grid}")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "curriculum_premise.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
