"""How well does each static feature tell a correct answer from a corrupted one, per base model?

    python bench/feature_separation.py [--models synthetic-tiny synthetic-tiny@seed1 synthetic-tiny@seed2]
                                       [--config FILE] [field=value ...]

On the synthetic testbed (``demo --quick`` recipe by default) the corrupted families reuse the
helpful prompts with wrong answers, so only a feature that reads the answer can separate them. For
each base model this prints, per named static column (the selector's difficulty block, as the
run computes it):

* ``P(clean < corrupted)``: the probability that a helpful-clean example's value is below a
  corrupted one's (ROC AUC; 0.5 = no separation, 1 or 0 = perfect, in either direction);
* the best a linear score over the named columns can do: a logistic regression fitted on the labels
  (an upper bound for the episode head, which learns from rewards only), and the helpful-clean and
  corrupted shares of its top ``--top`` examples (what a 24-step run of batch 8 trains on).

Prints; asserts nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from raise_select.config_io import load_config, recipe_path
from raise_select.pipeline import Workbench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(recipe_path("demo_quick")))
    parser.add_argument(
        "--models", nargs="+", default=["synthetic-tiny", "synthetic-tiny@seed1", "synthetic-tiny@seed2"]
    )
    parser.add_argument("--top", type=int, default=192, help="examples the linear score's shares are read from")
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")
    args = parser.parse_args()

    print("| base model | column | P(clean < corrupted) |")
    print("|---|---|---|")
    linear_rows = []
    for model in args.models:
        config = load_config(args.config, [*args.overrides, f"model.name={model}"])
        bench = Workbench.build(config, progress=False)
        features = bench.ensure_features(progress=False)
        labels = [example.meta for example in bench.pool.examples]
        clean = np.array([bool(m["helpful"]) and not m["corrupted"] for m in labels])
        corrupted = np.array([bool(m["corrupted"]) for m in labels])
        pair = clean | corrupted
        for column, name in enumerate(features.names):
            below = 1.0 - roc_auc_score(clean[pair], features.values[pair, column])
            print(f"| {model} | {name} | {below:.3f} |")
        values = np.asarray(features.values, dtype=np.float64)
        standardized = (values - values.mean(axis=0)) / np.where(values.std(axis=0) > 0, values.std(axis=0), 1.0)
        for label, columns in (
            ("without reference_loss", [n for n in features.names if n != "reference_loss"]),
            ("all named columns", list(features.names)),
        ):
            if label == "all named columns" and "reference_loss" not in features.names:
                continue
            X = standardized[:, [features.names.index(n) for n in columns]]
            score = LogisticRegression(max_iter=1000).fit(X, clean).decision_function(X)
            top = np.argsort(-score, kind="stable")[: args.top]
            linear_rows.append((model, label, clean[top].mean(), corrupted[top].mean()))
    print(f"\n| base model | linear score over | helpful-clean in top {args.top} | corrupted in top {args.top} |")
    print("|---|---|---|---|")
    for model, label, clean_share, corrupted_share in linear_rows:
        print(f"| {model} | {label} | {clean_share:.2f} | {corrupted_share:.2f} |")


if __name__ == "__main__":
    main()
