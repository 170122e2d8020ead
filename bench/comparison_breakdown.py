"""What each method picked and how its validation loss moved, over a comparison folder's runs.

    python bench/comparison_breakdown.py runs/smollm2-mixed
    python bench/comparison_breakdown.py --tiny    # a 2-step comparison on a cut-down testbed, in seconds

Prints, per method: the share of its picks from each pool source next to the pool's share, and the
validation loss at every evaluated step (mean ± std over runs) with the gap to random, so you can
read at which budget the methods separate from seed noise (a full-data run is shown at those steps
and its final loss is in the last list). RAISE's rows are pooled over selector
and fine-tuning seeds; its per-selector-seed final losses follow. Reads files only; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
from _tiny import TESTBED_OVERRIDES

from raise_select.config_io import load_config, recipe_path
from raise_select.experiments import run_comparison
from raise_select.io_utils import read_jsonl
from raise_select.run_folders import read_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path, nargs="?", help="a `raise-select compare` output folder")
    parser.add_argument("--tiny", action="store_true", help="break down a tiny comparison run here (seconds)")
    args = parser.parse_args()
    if args.tiny:
        with tempfile.TemporaryDirectory() as folder:
            overrides = ["compare.methods=[random, targeted, full]", "compare.seeds=[0]", "compare.budget_steps=[2]"]
            config = load_config(recipe_path("demo_quick"), [*TESTBED_OVERRIDES, *overrides])
            run_comparison(config, Path(folder), progress=False)
            breakdown(Path(folder))
    elif args.comparison is None:
        parser.error("give a comparison folder, or --tiny")
    else:
        breakdown(args.comparison)


def breakdown(comparison: Path) -> None:
    # results.json rows name each run's method, selector seed, final validation loss and folder.
    rows = json.loads((comparison / "results.json").read_text(encoding="utf-8"))["rows"]
    picks: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    curves: dict[str, dict[int, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    finals: dict[tuple[str, int | None], list[float]] = collections.defaultdict(list)
    for row in rows:
        run, method = comparison / row["run_dir"], row["method"]
        for selection in read_jsonl(run / "selections.jsonl"):
            picks[method].update(selection["sources"])
        for metric in read_jsonl(run / "metrics.jsonl"):
            if metric.get("validation_loss") is not None:
                curves[method][int(metric["step"])].append(float(metric["validation_loss"]))
        finals[(method, row.get("selector_seed"))].append(float(row["validation_loss"]))

    pool_counts = collections.Counter()
    for source in read_config(comparison)["pool"]["sources"]:
        pool_counts[source["name"]] += int(source.get("limit") or 0)
    pool_total = sum(pool_counts.values())
    sources = list(pool_counts)

    print("## Picks by source (share of all picks; pool share in the header)\n")
    print("| method | picks | " + " | ".join(f"{s} ({pool_counts[s] / pool_total:.0%})" for s in sources) + " |")
    print("|---|---|" + "---|" * len(sources))
    for method, counter in picks.items():
        total = sum(counter.values())
        print(f"| {method} | {total} | " + " | ".join(f"{counter[s] / total:.1%}" for s in sources) + " |")

    print("\n## Validation loss by step (mean ± std over runs; difference to random's mean)\n")
    # The budgeted methods' evaluation steps (a full-data run's later ones would only widen the table).
    steps = sorted({s for method, curve in curves.items() if method != "full" for s in curve} or curves["full"])
    print("| method | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    random_curve = curves.get("random", {})
    for method, curve in curves.items():
        cells = []
        for s in steps:
            values = curve.get(s, [])
            if not values:
                cells.append("")
                continue
            cell = f"{np.mean(values):.4f} ± {np.std(values):.4f}"
            if method != "random" and random_curve.get(s):
                cell += f" ({np.mean(values) - np.mean(random_curve[s]):+.4f})"
            cells.append(cell)
        print(f"| {method} | " + " | ".join(cells) + " |")

    print("\n## Final validation loss per selector seed (fine-tuning seeds in run order)\n")
    for (method, selector_seed), values in sorted(finals.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1)):
        label = method if selector_seed is None else f"{method} selector seed {selector_seed}"
        print(f"- {label}: " + " / ".join(f"{v:.4f}" for v in values) + f" (mean {np.mean(values):.4f})")


if __name__ == "__main__":
    main()
