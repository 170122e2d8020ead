"""Each labelled family of a synthetic pool trained on alone: is any of them a shortcut to a low validation loss?

    python bench/family_alone.py [--recipe curriculum] [--seeds 0 1] [--steps 24] [--tiny] [field=value ...]

A world is only a test of a selector when its labels agree with its reward: a corrupted or
distractor family that, trained on alone, reaches a lower validation loss than every use of the
helpful families would be what a loss-driven selector learns to pick. Fine-tunes the recipe's model
on each family alone (the ``best_static`` selector with that family's share set to 1) at the
recipe's budget, over ``--seeds``, and prints per family its labels, the validation loss (mean and
per seed) and the test exact match, lowest loss first. ``--tiny``: two families, 2 steps, one seed.
Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from raise_select.analysis import markdown_table
from raise_select.config_io import load_config, recipe_path
from raise_select.pipeline import Workbench, run_finetune
from raise_select.run_folders import EVALUATION_FILE
from raise_select.selectors.mixtures import FamilyMixtureSelector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="curriculum", help="a bundled recipe with a labelled synthetic pool")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=None, help="budget (default: the recipe's train.budget_steps)")
    parser.add_argument("--tiny", action="store_true", help="two families, 2 steps, one seed")
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")
    args = parser.parse_args()
    if args.tiny:
        args.seeds, args.steps = [0], 2
    config = load_config(recipe_path(args.recipe), args.overrides)
    steps = args.steps or config.train.budget_steps
    bench = Workbench.build(config, progress=False)
    labels = {e.meta["family"]: (e.meta.get("helpful"), e.meta.get("corrupted")) for e in bench.pool.examples}
    families = sorted(labels)[:2] if args.tiny else sorted(labels)

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for family in families:
            losses, scores = [], []
            for seed in args.seeds:
                folder = Path(workdir) / f"{family}-s{seed}"
                run_finetune(
                    bench, FamilyMixtureSelector({family: 1.0}), folder, steps, seed, test_metric=True, progress=False
                )
                evaluation = json.loads((folder / EVALUATION_FILE).read_text())
                losses.append(evaluation["validation_loss_final"])
                test = evaluation.get("test") or {}
                scores.append(float(test.get(test.get("metric"), float("nan"))))
            helpful, corrupted = labels[family]
            label = "helpful" if helpful else "corrupted" if corrupted else "distractor"
            rows.append((float(np.mean(losses)), family, label, losses, scores))

    print(f"\n{args.recipe}: {config.model.name}, each family alone for {steps} steps, seeds {args.seeds}\n")
    body = [
        [family, label, f"{mean:.3f}", " / ".join(f"{v:.3f}" for v in losses), f"{np.nanmean(scores):.3f}"]
        for mean, family, label, losses, scores in sorted(rows)
    ]
    print(markdown_table(["family", "label", "validation loss", "per seed", "test exact match"], body))


if __name__ == "__main__":
    main()
