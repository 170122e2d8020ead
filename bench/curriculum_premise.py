"""Does the curriculum world reward stage awareness? Its premise table, over base models and fine-tuning seeds.

    python bench/curriculum_premise.py [--models synthetic-tiny synthetic-tiny@seed1 ...] [--seeds 0 1 2]
                                       [--output runs/curriculum-premise] [--tiny] [field=value ...]

Runs ``raise-select compare`` on the ``curriculum`` recipe once per base model (by default the shipped
model and three pre-training seeds; ``synthetic-tiny@seed<k>`` is pre-trained on first use, about a
minute, and cached) with random, the best static mixture of the
helpful families (``best_static``: a grid search at the same budget, ranked on the validation split),
the hand-written schedule (``scheduled_oracle``) and full data, then prints per model and method the
validation loss (mean ± std over the fine-tuning seeds, and each seed's), the test exact match, and
the scheduled oracle's margin over the best static mixture per seed and the grid searched, and the
scheduled oracle with its switch moved (``--cuts``: where on each model the switch pays most).
``--tiny``: the shipped model, one seed, no full data, one cut (about a minute).
``model.num_layers=1`` gives the same tables on the models' first decoder layer, the proxy that
``raise.proxy_layers=1`` plays RAISE's training episodes on. Rerunning with the same --output reuses
finished runs. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from schedule_search import final_loss

from raise_select.config_io import load_config, recipe_path
from raise_select.experiments import run_comparison
from raise_select.io_utils import read_json
from raise_select.pipeline import Workbench
from raise_select.run_folders import best_static_file
from raise_select.selectors import build_selector

METHODS = ["random", "best_static", "scheduled_oracle", "full"]
MODELS = ["synthetic-tiny", "synthetic-tiny@seed1", "synthetic-tiny@seed2", "synthetic-tiny@seed3"]
CUTS = [0.4, 0.5, 0.6, 0.7, 0.8]


def switch_losses(bench: Workbench, seeds: list[int], cuts: list[float]) -> dict[float, list[float]]:
    """The scheduled oracle with its switch moved: per cut, the final validation loss at each seed.

    The pool's schedule labels must have one interior boundary (the curriculum's 0.6); each window
    that starts or ends there starts or ends at the cut instead."""
    steps = bench.config.compare.budget_steps[0]
    selector = build_selector("scheduled_oracle", bench.config)
    selector.setup(bench.selection_context(selector, steps, seeds[0], False))
    original = selector.windows.copy()
    finite = original[np.isfinite(original)]
    boundaries = sorted(set(finite[(finite > 0) & (finite < 1)].tolist()))
    if len(boundaries) != 1:
        raise SystemExit(f"error: --cuts needs a schedule with one switch; this pool's has {boundaries}")
    env = bench.make_env(steps, evaluate_every=steps)  # only the final loss is scored
    losses = {}
    for cut in cuts:
        selector.windows = np.where(original == boundaries[0], cut, original)
        losses[cut] = [final_loss(env, selector, seed) for seed in seeds]
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--output", default="runs/curriculum-premise")
    parser.add_argument(
        "--cuts",
        type=float,
        nargs="*",
        default=CUTS,
        help="the scheduled oracle's switch moved to these shares of the run",
    )
    parser.add_argument("--tiny", action="store_true", help="shipped model, seed 0, no full data")
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")
    args = parser.parse_args()
    if args.tiny:
        args.models, args.seeds = ["synthetic-tiny"], [0]
        args.methods = [m for m in args.methods if m != "full"]
        args.cuts = args.cuts[len(args.cuts) // 2 :][:1]  # the middle one

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
        bench = Workbench.build(config, progress=False)  # shared by the comparison and the moved switches
        rows = run_comparison(config, output, progress=False, bench=bench)["rows"]
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
        if args.cuts:
            by_method["switch"] = {str(cut): v for cut, v in switch_losses(bench, args.seeds, args.cuts).items()}
        summary[model] = by_method
    if args.cuts:
        print()
        print("The scheduled oracle with its switch moved (mean validation loss over the seeds):")
        print(f"| base model | {' | '.join(f'switch at {cut:.0%}' for cut in args.cuts)} |")
        print(f"|---|{'---|' * len(args.cuts)}")
        for model, by_method in summary.items():
            means = [np.mean(by_method["switch"][str(cut)]) for cut in args.cuts]
            best = int(np.argmin(means))
            cells = [f"**{m:.3f}**" if i == best else f"{m:.3f}" for i, m in enumerate(means)]
            print(f"| {model} | {' | '.join(cells)} |")
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
