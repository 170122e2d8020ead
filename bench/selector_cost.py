"""What selector training costs in Φ, and what it buys: RAISE on the testbed trained several ways, over selector seeds.

    python bench/selector_cost.py [--settings recipe before whole-model ...] [--selector-seeds 0 1 2 3 4]
                                  [--baseline-seeds 0 1 2] [--output runs/selector-cost] [--tiny] [field=value ...]

Each setting is the demo-quick recipe (the testbed: 24 updates deployed, one full-data run = 375
updates = 1 Φ) with the selector's training changed by a few overrides (``SETTINGS`` below): the
recipe as shipped (56 episodes of 12 updates played on the model's first decoder layer,
``raise.proxy_layers=1``, a reward every 4 decisions, deployed with the same schedule), the recipe
before it (64 episodes on the whole model, a reward after every decision: about 5.6 Φ), and others
between: fewer or shorter episodes, a reward every k decisions, a 1- or 2-layer proxy. Each is
``raise-select compare`` with one selector training per selector seed, deployed greedily
(``--seeds``, one is enough); random, targeted and the oracle run once over ``--baseline-seeds``.
Prints one table: per setting, the selector training's cost from the compare ledger (Φ and seconds
per selector), validation loss mean ± std over selector seeds and per seed, test exact match, the
helpful-clean and corrupted shares of the picks, how many seeds end below random, and the share of
the random -> oracle gap closed. ``--tiny``: 2 episodes, 4 updates, seed 0 (seconds). Rerunning with
the same ``--output`` reuses finished runs. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ablations import TINY, add_run_arguments, compare, gap_closed
from selector_learning import shares

from raise_select.analysis import markdown_table

WORLD = "demo_quick"
REFERENCES = ["random", "targeted", "oracle"]
# The recipe before this table: 64 episodes of 12 updates on the whole model, a reward after every decision.
BEFORE = ["raise.episodes=64", "raise.proxy_layers=null", "train.eval_every=1"]
SETTINGS = {
    "recipe": [],  # 56 episodes of 12 updates on the first layer, a reward every 4 decisions, deployed so
    "before": BEFORE,
    "whole-model": ["raise.proxy_layers=null"],  # the recipe on all 3 layers (the starter config's choice)
    "recipe-64": ["raise.episodes=64"],
    "recipe-k1": ["train.eval_every=1"],  # the recipe with a reward (and, deployed, a validation pass) every decision
    "recipe-k2": ["train.eval_every=2"],
    "short": [*BEFORE, "raise.episodes=32", "raise.episode_steps=6", "raise.episode_eval_every=2"],
    "short-k3": [*BEFORE, "raise.episodes=40", "raise.episode_steps=6", "raise.episode_eval_every=3"],
    "proxy1-s6": [*BEFORE, "raise.episode_steps=6", "raise.episode_eval_every=2", "raise.proxy_layers=1"],
    "proxy1-s8": [*BEFORE, "raise.episode_steps=8", "raise.episode_eval_every=2", "raise.proxy_layers=1"],
    "proxy2": [
        *BEFORE,
        "raise.episodes=48",
        "raise.episode_steps=6",
        "raise.episode_eval_every=2",
        "raise.proxy_layers=2",
    ],
    "proxy2-k4": ["raise.episodes=32", "raise.proxy_layers=2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    add_run_arguments(parser, "runs/selector-cost", "2 episodes, 4 updates, seed 0")
    args = parser.parse_args()
    root, overrides = Path(args.output), list(args.overrides)
    if args.tiny:
        args.settings = args.settings if args.settings != list(SETTINGS) else ["recipe", "before"]
        args.selector_seeds, args.seeds, args.baseline_seeds = [0], [0], [0]
        root, overrides = root / "tiny", ["train.budget_steps=4", "compare.budget_steps=[4]", *overrides]

    references = compare(WORLD, overrides, REFERENCES, args.baseline_seeds, [0], root / "references")
    reference_loss = {
        m: float(np.mean([r["validation_loss"] for r in references if r["method"] == m])) for m in REFERENCES
    }
    body, summary = [], {"references": reference_loss}
    for method in REFERENCES:
        rows = [r for r in references if r["method"] == method]
        helpful, corrupted = np.mean([shares(root / "references" / r["run_dir"]) for r in rows], axis=0)
        values = [r["validation_loss"] for r in rows]
        std = np.std(values, ddof=1) if len(values) > 1 else 0.0
        body.append(
            [method, "", "", f"{np.mean(values):.4f} ± {std:.4f}", " / ".join(f"{v:.3f}" for v in values)]
            + [f"{np.mean([r['test_score'] for r in rows]):.3f}", f"{helpful:.2f}", f"{corrupted:.2f}", "", ""]
        )
    for setting in args.settings:
        # each setting's own episodes; the tiny mode overrides them after the setting's own
        setting_overrides = [*SETTINGS[setting], *(TINY if args.tiny else []), *overrides]
        output = root / setting
        rows = compare(WORLD, setting_overrides, ["raise"], args.seeds, args.selector_seeds, output)
        ledger = json.loads((output / "results.json").read_text())["ledger"]["phases"]["selector_training"]
        values = [
            float(np.mean([r["validation_loss"] for r in rows if r["selector_seed"] == seed]))
            for seed in args.selector_seeds
        ]
        helpful, corrupted = np.mean([shares(output / r["run_dir"]) for r in rows], axis=0)
        mean, std = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        below = sum(v < reference_loss["random"] for v in values)
        summary[setting] = {
            "phi": ledger["phi"],
            "seconds": ledger["seconds"],
            "mean": mean,
            "std": std,
            "values": values,
        }
        body.append(
            [
                f"RAISE {setting}",
                f"{ledger['phi']:.2f}",
                f"{ledger['seconds']:.0f}",
                f"{mean:.4f} ± {std:.4f}",
                " / ".join(f"{v:.3f}" for v in values),
                f"{np.mean([r['test_score'] for r in rows]):.3f}",
                f"{helpful:.2f}",
                f"{corrupted:.2f}",
                f"{below}/{len(values)}",
                gap_closed(mean, reference_loss, "random", "oracle"),
            ]
        )
    headers = [
        "method",
        "selector training, Φ",
        "s per selector",
        "validation loss",
        "per seed",
        "test exact match",
        "helpful-clean",
        "corrupted",
        "seeds below random",
        "gap closed",
    ]
    print(markdown_table(headers, body))
    (root / "selector_cost.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
