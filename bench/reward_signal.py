"""How much of RAISE's per-decision reward does the chosen batch explain? (synthetic testbed)

    python bench/reward_signal.py [--episodes 16] [--budget-steps 24] [field=value ...]

Plays ``--episodes`` fine-tuning episodes with an untrained (near-uniform) RAISE policy, records each
decision's reward (validation-loss drop) and how many helpful-clean and corrupted examples its batch
held, removes the per-step mean (what the group baseline removes), and regresses the reward on
those counts. Prints the effect of one helpful / corrupted pick, the reward's spread and R^2: the
signal-to-noise ratio PPO has to learn from. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from raise_select.config import load_config
from raise_select.experiments import recipe_path
from raise_select.pipeline import Workbench
from raise_select.ppo import episode_seed, run_episode
from raise_select.selectors.raise_policy import RaiseSelector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(recipe_path("demo_quick")))
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--budget-steps", type=int, default=24)
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = load_config(args.config, [*args.overrides, f"train.budget_steps={args.budget_steps}"])
    bench = Workbench.build(config)
    selector = RaiseSelector(config.raise_)
    selector.setup(bench.selection_context(selector, args.budget_steps, config.seed, progress=False))
    env = bench.make_env(args.budget_steps)
    helpful = np.array([bool(e.meta.get("helpful")) and not e.meta.get("corrupted") for e in bench.pool.examples])
    corrupted = np.array([bool(e.meta.get("corrupted")) for e in bench.pool.examples])

    counts, rewards, steps = [], [], []
    for episode in range(args.episodes):
        buffer, _ = run_episode(env, selector, episode_seed(config.seed, episode), 1.0)
        for t, decision in enumerate(buffer.decisions):
            counts.append([helpful[decision.chosen].sum(), corrupted[decision.chosen].sum()])
            rewards.append(decision.reward)
            steps.append(t)
    counts, rewards, steps = np.array(counts, dtype=float), np.array(rewards), np.array(steps)
    for t in np.unique(steps):  # what the per-step group baseline removes
        at = steps == t
        rewards[at] -= rewards[at].mean()
        counts[at] -= counts[at].mean(axis=0)

    print(f"{args.episodes} episodes x {args.budget_steps} decisions, batch {config.train.batch_size}, "
          f"lr {config.train.learning_rate}, untrained policy\n")
    print("| decisions | reward std | effect of a helpful-clean pick | effect of a corrupted pick | R^2 |")
    print("|---|---|---|---|---|")
    quarter = max(1, args.budget_steps // 4)
    for low, high in ((0, args.budget_steps), (0, quarter), (quarter, 2 * quarter), (2 * quarter, args.budget_steps)):
        part = (steps >= low) & (steps < high)
        coefficients, *_ = np.linalg.lstsq(counts[part], rewards[part], rcond=None)
        residual = rewards[part] - counts[part] @ coefficients
        r2 = 1.0 - residual.var() / max(rewards[part].var(), 1e-12)
        print(f"| {low}-{high - 1} | {rewards[part].std():.4f} | {coefficients[0]:+.4f} | {coefficients[1]:+.4f} | {r2:.3f} |")


if __name__ == "__main__":
    main()
