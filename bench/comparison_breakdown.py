"""What each method picked and how its validation loss moved, over a comparison folder's runs.

    python bench/comparison_breakdown.py runs/smollm2-mixed

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
from pathlib import Path

import numpy as np


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def method_of(run: Path) -> tuple[str, str | None]:
    """(method, selector seed) from a run folder name such as raise-sel0-16steps-s1 or random-16steps-s0."""
    parts = run.name.split("-")
    selector_seed = parts[1][3:] if len(parts) > 3 and parts[1].startswith("sel") else None
    return parts[0], selector_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path)
    args = parser.parse_args()
    runs = sorted(p for p in (args.comparison / "runs").iterdir() if (p / "evaluation.json").is_file())
    picks: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    curves: dict[str, dict[int, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    finals: dict[tuple[str, str | None], list[float]] = collections.defaultdict(list)
    for run in runs:
        method, selector_seed = method_of(run)
        for row in read_jsonl(run / "selections.jsonl"):
            picks[method].update(row["sources"])
        for row in read_jsonl(run / "metrics.jsonl"):
            if row.get("validation_loss") is not None:
                curves[method][int(row["step"])].append(float(row["validation_loss"]))
        evaluation = json.loads((run / "evaluation.json").read_text(encoding="utf-8"))
        finals[(method, selector_seed)].append(float(evaluation["validation_loss_final"]))

    pool_counts = collections.Counter()
    pool_file = args.comparison / "runs" / runs[0].name / "config.yaml"
    import yaml

    for source in yaml.safe_load(pool_file.read_text(encoding="utf-8"))["pool"]["sources"]:
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
    for (method, selector_seed), values in sorted(finals.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        label = method if selector_seed is None else f"{method} selector seed {selector_seed}"
        print(f"- {label}: " + " / ".join(f"{v:.4f}" for v in values) + f" (mean {np.mean(values):.4f})")


if __name__ == "__main__":
    main()
