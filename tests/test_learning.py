"""RAISE learns on the synthetic testbed, where the right answer is known.

The pool's helpful families (correct sums) are 24 % of the pool. After a short PPO training the
greedy RAISE selector must (a) pick helpful, non-corrupted examples far more often than the pool
and random selection do, and (b) reach a lower target validation loss than random selection at the
same step budget. Fixed seeds; about a minute on 2 CPU cores.
"""

import numpy as np
import pytest

from raise_select.config import load_config
from raise_select.io_utils import read_jsonl
from raise_select.pipeline import Workbench, run_finetune
from raise_select.selectors import build_selector
from raise_select.experiments import train_raise_selector

BUDGET = 24


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    config = load_config("examples/configs/synthetic.yaml", [
        "target.n_validation=32", f"train.budget_steps={BUDGET}", "raise.episodes=30", "features.cache=false",
    ])
    bench = Workbench.build(config)
    policy = train_raise_selector(bench, root / "selector", progress=False)
    config.raise_.policy = str(policy)
    return bench, config, root


def _clean_helpful_share(run_dir):
    chosen = [(h, c) for s in read_jsonl(run_dir / "selections.jsonl") for h, c in zip(s["helpful"], s["corrupted"])]
    return float(np.mean([bool(h) and not c for h, c in chosen]))


def test_raise_prefers_helpful_examples_and_beats_random(trained):
    bench, config, root = trained
    pool_share = float(np.mean([bool(e.meta["helpful"]) and not e.meta["corrupted"] for e in bench.pool.examples]))
    results = {}
    for method in ("raise", "random"):
        for seed in (0, 1):
            run = run_finetune(bench, build_selector(method, config), root / f"{method}-{seed}", BUDGET, seed,
                               test_metric=False, progress=False)
            results.setdefault(method, []).append((run.validation_loss_final, _clean_helpful_share(run.output)))
    raise_loss, raise_share = np.mean(results["raise"], axis=0)
    random_loss, random_share = np.mean(results["random"], axis=0)
    print(f"pool share {pool_share:.2f}; raise share {raise_share:.2f} loss {raise_loss:.3f}; "
          f"random share {random_share:.2f} loss {random_loss:.3f}")
    assert raise_share >= 1.5 * pool_share
    assert raise_share >= random_share + 0.1
    assert raise_loss < random_loss


def test_selector_training_log_is_complete(trained):
    _, _, root = trained
    rows = read_jsonl(root / "selector" / "episodes.jsonl")
    assert [r["episode"] for r in rows] == list(range(30))
    assert all(r["updates"] == BUDGET for r in rows)
    assert all(np.isfinite([r["return"], r["policy_loss"], r["value_loss"], r["entropy"]]).all() for r in rows)
