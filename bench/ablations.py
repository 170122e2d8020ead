"""The paper's ablations: RAISE with a feature group removed or another cluster count, over selector seeds, per world.

    python bench/ablations.py [--worlds curriculum demo_quick] [--variants raise no_stage no_difficulty ...]
                              [--selector-seeds 0 1 2 3 4] [--seeds 0] [--baseline-seeds 0 1 2]
                              [--output runs/ablations] [--references DIR] [--tiny] [field=value ...]

A world is a recipe: ``curriculum`` (the curriculum world, where the right data changes over the run)
and ``demo_quick`` (the synthetic testbed). A variant is RAISE with the recipe's settings plus
overrides; atoms join with ``+`` (``head_stage+no_stage``):

* ``raise``: the recipe as it is; ``head_stage``: ``raise.head_stage=true``;
* ``no_stage`` / ``no_difficulty`` / ``no_semantic`` / ``no_availability``: ``raise.ablate=[<group>]``;
* ``C1`` / ``C2`` / ``C4``: ``raise.clusters=<C>``.

Each variant is ``raise-select compare`` with one selector training per selector seed, each deployed
greedily over ``--seeds`` (greedy RAISE does not depend on the fine-tuning seed's data order, so one
is enough); the world's reference methods run once over ``--baseline-seeds``. Prints one table: per
world and method, validation loss mean ± std over selector seeds (each seed's mean over fine-tuning
seeds), the per-seed values, test exact match, and the share of the gap between the world's two
reference methods that it closes (curriculum: best static mixture -> scheduled oracle; testbed:
random -> helpful-clean oracle); then, for labelled pools, each variant's picks by family per fifth
of the run. ``--tiny``: 2 training episodes, 4 steps, one seed, cheap references (a minute).
Rerunning with the same --output reuses finished runs (compare's resume). The reference methods run
without the ``raise.*`` overrides (they do not read them), so ``--references DIR`` (an earlier
``--output``) reuses that run's references for other RAISE settings; compare refuses them, with its
one-line error, when the model, pool or training settings differ. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from raise_select.analysis import markdown_table, selection_records, stage_view
from raise_select.config_io import load_config, recipe_path
from raise_select.experiments import run_comparison
from raise_select.run_folders import load_run

# world -> (reference methods, (the gap's low end, its high end))
WORLDS = {
    "curriculum": (["random", "best_static", "scheduled_oracle", "full"], ("best_static", "scheduled_oracle")),
    "demo_quick": (["random", "oracle", "full"], ("random", "oracle")),
}
TINY_REFERENCES = {"curriculum": ["random", "scheduled_oracle"], "demo_quick": ["random", "oracle"]}
ATOMS = {
    "raise": [],
    "head_stage": ["raise.head_stage=true"],
    **{f"no_{group}": [f"raise.ablate=[{group}]"] for group in ("stage", "difficulty", "semantic", "availability")},
    **{f"C{c}": [f"raise.clusters={c}"] for c in (1, 2, 4)},
}
DEFAULT_VARIANTS = ["raise", "no_stage", "no_difficulty", "no_semantic", "no_availability", "C1", "C2", "C4"]
TINY = ["raise.episodes=2", "raise.episodes_per_update=2"]


def variant_overrides(variant: str) -> list[str]:
    """The overrides of a ``+``-joined variant; ablated groups of several atoms are merged into one list."""
    overrides, ablate = [], []
    for atom in variant.split("+"):
        if atom not in ATOMS:
            raise SystemExit(f"error: unknown variant {atom!r}; use {', '.join(ATOMS)} (joined with +)")
        for override in ATOMS[atom]:
            if override.startswith("raise.ablate="):
                ablate.append(override.split("[")[1].rstrip("]"))
            else:
                overrides.append(override)
    return overrides + ([f"raise.ablate=[{', '.join(ablate)}]"] if ablate else [])


def gap_closed(loss: float, reference_loss: dict[str, float], low: str, high: str) -> str:
    """The share of the gap from ``low`` to ``high`` (reference methods' mean losses) that ``loss`` closes."""
    if low not in reference_loss or high not in reference_loss or reference_loss[low] <= reference_loss[high]:
        return "–"
    return f"{100 * (reference_loss[low] - loss) / (reference_loss[low] - reference_loss[high]):.0f} %"


def compare(world: str, overrides: list[str], methods: list[str], seeds: list[int], selector_seeds: list[int], output):
    config = load_config(
        recipe_path(world),
        [
            *overrides,
            f"compare.methods=[{', '.join(methods)}]",
            f"compare.seeds=[{', '.join(map(str, seeds))}]",
            f"compare.selector_seeds=[{', '.join(map(str, selector_seeds))}]",
            "compare.test_metric=true",
        ],
    )
    return run_comparison(config, output, progress=False)["rows"]


def add_run_arguments(parser: argparse.ArgumentParser, output: str, tiny: str) -> None:
    """The seeds, output folder, tiny mode and overrides of a bench that runs RAISE over selector seeds."""
    parser.add_argument("--selector-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds of each RAISE selector")
    parser.add_argument("--baseline-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default=output)
    parser.add_argument("--tiny", action="store_true", help=tiny)
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value, for every run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    add_run_arguments(parser, "runs/ablations", "2 episodes, 4 steps, seed 0, cheap references")
    parser.add_argument(
        "--references",
        default=None,
        help="an earlier --output whose reference runs to reuse (same model, pool and training; any RAISE settings)",
    )
    args = parser.parse_args()
    # `--variants a b field=value`: argparse hands the trailing overrides to --variants; a variant never holds "="
    overrides = [*args.overrides, *(v for v in args.variants if "=" in v)]
    args.variants = [v for v in args.variants if "=" not in v]
    for variant in args.variants:
        variant_overrides(variant)  # an unknown variant fails here, before any run
    if args.tiny:
        args.variants = args.variants if args.variants != DEFAULT_VARIANTS else ["raise", "no_stage"]
        args.selector_seeds, args.seeds, args.baseline_seeds = [0], [0], [0]
        overrides = [*TINY, "train.budget_steps=4", *overrides]
    budget = [o for o in overrides if o.startswith("train.budget_steps=")]
    overrides += [f"compare.budget_steps=[{budget[-1].split('=')[1]}]"] if budget else []

    body, views, summary = [], [], {}
    for world in args.worlds:
        root = Path(args.output) / ("tiny" if args.tiny else "") / world
        reference_root = Path(args.references) / ("tiny" if args.tiny else "") / world if args.references else root
        references, (low, high) = WORLDS[world]
        references = TINY_REFERENCES[world] if args.tiny else references
        # the reference methods never read raise.*: without those overrides their runs serve every RAISE setting
        reference_overrides = [o for o in overrides if not o.startswith("raise.")]
        rows = {
            "references": compare(
                world, reference_overrides, references, args.baseline_seeds, [0], reference_root / "references"
            )
        }
        for variant in args.variants:
            rows[variant] = compare(
                world,
                [*variant_overrides(variant), *overrides],
                ["raise"],
                args.seeds,
                args.selector_seeds,
                root / variant,
            )
        reference_loss = {
            m: float(np.mean([r["validation_loss"] for r in rows["references"] if r["method"] == m]))
            for m in references
        }

        groups = [(m, [[r for r in rows["references"] if r["method"] == m]]) for m in references]
        for variant in args.variants:
            per_seed = [[r for r in rows[variant] if r.get("selector_seed") == s] for s in args.selector_seeds]
            groups.append((f"RAISE {variant}", per_seed))
        by_variant = {}
        for name, seed_groups in groups:
            # reference methods: one group, its spread over fine-tuning seeds; RAISE: one mean per selector seed
            values = (
                [r["validation_loss"] for r in seed_groups[0]]
                if len(seed_groups) == 1
                else [float(np.mean([r["validation_loss"] for r in g])) for g in seed_groups]
            )
            scores = [r["test_score"] for g in seed_groups for r in g if r.get("test_score") is not None]
            mean, std = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            below = sum(v < reference_loss[low] for v in values) if low in reference_loss else None
            summary.setdefault(world, {})[name] = {"mean": mean, "std": std, "values": values}
            body.append(
                [
                    world,
                    name,
                    f"{mean:.4f} ± {std:.4f}",
                    " / ".join(f"{v:.3f}" for v in values),
                    f"{np.mean(scores):.3f}" if scores else "–",
                    gap_closed(mean, reference_loss, low, high),
                    f"{below}/{len(values)}" if below is not None and name.startswith("RAISE") else "",
                ]
            )
        for variant in args.variants:
            runs = [load_run(root / variant / r["run_dir"]) for r in rows[variant]]
            by_variant[variant] = [record for run in runs if run for record in selection_records(run)]
        view = stage_view({v: records for v, records in by_variant.items() if records})
        if view and view[0] == "family":
            views.append((world, view[1]))

    headers = [
        "world",
        "method",
        "validation loss",
        "per seed",
        "test exact match",
        "gap closed",
        "seeds below the lower reference",
    ]
    print(markdown_table(headers, body))
    for world, table in views:
        print(f"\nRAISE's picks by family per stage ({world}):\n\n{table}")
    (Path(args.output) / ("tiny" if args.tiny else "") / "ablations.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
