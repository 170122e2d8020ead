"""Does RAISE's selector learn? Method x selector seed on the synthetic testbed, next to the baselines.

    python bench/selector_learning.py [--budget-steps 24] [--episodes 64] [--selector-seeds 0 1 2 3 4] [--seeds 0 1 2]
                                      [--output runs/selector-learning] [--config FILE] [field=value ...]

Runs ``raise-select compare`` (the ``demo --quick`` recipe by default, with 64 training episodes per
selector where the demo trains 32) with one selector training per selector seed, each deployed greedily over the fine-tuning seeds, and every baseline, the
oracle (labelled helpful-and-clean examples only) and full data over the same fine-tuning seeds.
Then prints, from the run folders:

* per method: mean ± std validation loss over all its runs, the share of the random -> oracle gap
  it closes, and the helpful-clean / corrupted shares of what it trained on;
* per RAISE selector seed: the same, plus whether it beat random and its selector-training seconds.

Rerunning with the same --output reuses finished runs (compare's resume). Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from raise_select.config_io import load_config, recipe_path
from raise_select.experiments import run_comparison
from raise_select.io_utils import read_jsonl
from raise_select.run_folders import selector_training_dir

BASELINES = ["random", "oracle", "targeted", "sspl", "high_loss", "ifd", "longest", "perplexity_low", "full"]


def shares(run_dir: Path) -> tuple[float, float]:
    """(helpful-and-clean share, corrupted share) of every example a run trained on."""
    picks = [(h, c) for s in read_jsonl(run_dir / "selections.jsonl") for h, c in zip(s["helpful"], s["corrupted"])]
    return float(np.mean([bool(h) and not c for h, c in picks])), float(np.mean([bool(c) for _, c in picks]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(recipe_path("demo_quick")))
    parser.add_argument("--budget-steps", type=int, default=24)
    parser.add_argument("--episodes", type=int, default=64, help="PPO training episodes per selector (raise.episodes)")
    parser.add_argument("--selector-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=BASELINES)
    parser.add_argument("--output", default="runs/selector-learning")
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")
    args = parser.parse_args()

    methods = ["raise"] + [m for m in args.methods if m != "raise"]
    config = load_config(
        args.config,
        [
            f"raise.episodes={args.episodes}",
            *args.overrides,
            f"compare.methods=[{', '.join(methods)}]",
            f"compare.budget_steps=[{args.budget_steps}]",
            f"compare.seeds=[{', '.join(map(str, args.seeds))}]",
            f"compare.selector_seeds=[{', '.join(map(str, args.selector_seeds))}]",
            "compare.test_metric=true",
        ],
    )
    output = Path(args.output)
    results = run_comparison(config, output, progress=True)
    rows = results["rows"]

    def group_stats(group: list[dict]) -> dict:
        losses = [r["validation_loss"] for r in group]
        helpful, corrupted = zip(*(shares(output / r["run_dir"]) for r in group))
        scores = [r["test_score"] for r in group if r.get("test_score") is not None]
        return {
            "exact_match": float(np.mean(scores)) if scores else float("nan"),
            "mean": float(np.mean(losses)),
            "std": float(np.std(losses, ddof=1)) if len(losses) > 1 else 0.0,
            "helpful": float(np.mean(helpful)),
            "corrupted": float(np.mean(corrupted)),
            "n": len(group),
        }

    by_method = {m: group_stats([r for r in rows if r["method"] == m]) for m in methods}
    random_loss = by_method["random"]["mean"]
    oracle_loss = by_method.get("oracle", {}).get("mean")

    def closed(loss: float) -> str:
        if oracle_loss is None or random_loss <= oracle_loss:
            return "–"
        return f"{100 * (random_loss - loss) / (random_loss - oracle_loss):.0f} %"

    pool = config.pool.sources[0].limit
    print(
        f"\nsynthetic testbed, pool {pool}, budget {args.budget_steps} steps, fine-tuning seeds {args.seeds}, "
        f"selector seeds {args.selector_seeds} ({output})\n"
    )
    print("| method | runs | validation loss | gap closed | test exact match | helpful-clean share | corrupted share |")
    print("|---|---|---|---|---|---|---|")
    for method in sorted(methods, key=lambda m: by_method[m]["mean"]):
        s = by_method[method]
        print(
            f"| {method} | {s['n']} | {s['mean']:.4f} ± {s['std']:.4f} | {closed(s['mean'])} | "
            f"{s['exact_match']:.3f} | {s['helpful']:.2f} | {s['corrupted']:.2f} |"
        )

    print(
        "\n| RAISE selector seed | validation loss (per fine-tuning seed) | below random | gap closed | "
        "test exact match | helpful-clean | corrupted | selector training (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    per_seed = {}
    for selector_seed in args.selector_seeds:
        group = [r for r in rows if r["method"] == "raise" and r.get("selector_seed") == selector_seed]
        s = group_stats(group)
        episodes = read_jsonl(selector_training_dir(output, selector_seed) / "episodes.jsonl")
        seconds = sum(e["seconds"] + e.get("update_seconds", 0.0) for e in episodes)
        per_seed[selector_seed] = {**s, "seconds": seconds}
        values = ", ".join(f"{r['validation_loss']:.3f}" for r in group)
        print(
            f"| {selector_seed} | {s['mean']:.4f} ({values}) | {'yes' if s['mean'] < random_loss else 'NO'} | "
            f"{closed(s['mean'])} | {s['exact_match']:.3f} | {s['helpful']:.2f} | {s['corrupted']:.2f} | {seconds:.0f} |"
        )
    (output / "selector_learning.json").write_text(
        json.dumps({"methods": by_method, "selector_seeds": per_seed}, indent=1)
    )


if __name__ == "__main__":
    main()
