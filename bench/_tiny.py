"""Settings of the benches' ``--tiny`` modes: a few seconds per script, so the test suite runs every bench
(tests/test_bench.py) and an API change that breaks one breaks the build. Tiny figures mean nothing."""

from __future__ import annotations

# The synthetic testbed (``demo --quick``'s recipe) cut down: 96 examples, 2-step episodes, 2 episodes.
TESTBED_OVERRIDES = [
    "model.name=synthetic-tiny",
    "model.finetune=full",
    "pool.sources=[{name: synthetic, limit: 96}]",
    "pool.max_length=32",
    "target.name=synthetic",
    "target.n_validation=8",
    "target.n_test=4",
    "train.batch_size=4",
    "train.budget_steps=2",
    "train.eval_batch_size=16",
    "features.batch_size=32",
    "features.pca_dim=4",
    "features.reference_steps=4",
    "raise.clusters=1",
    "raise.episodes=2",
    "raise.episodes_per_update=2",
    "raise.episode_steps=2",
]
