"""How much of RAISE's reward does what was chosen explain? (synthetic testbed)

    python bench/reward_signal.py [--episodes 32] [--budget-steps 24] [field=value ...]

Plays ``--episodes`` fine-tuning episodes with an untrained RAISE policy twice: without the episode
head (``raise.head_dims=0``: a near-uniform Plackett-Luce sampler) and with it (the head's weights
drawn once per episode, as in training). Prints:

* per decision (no head): each decision's reward (validation-loss drop) regressed on how many
  helpful-clean and corrupted examples its batch held, after removing the per-step mean: the effect
  of one pick, the reward's spread and R^2;
* per episode (both): the spread of the helpful-clean share of what an episode trained on, the
  spread of its return, and their correlation: the signal a whole episode carries;
* with the head: a least-squares fit of the return on the episodes' head weights (their first 8, 16,
  ... draws), and the helpful-clean / corrupted shares of the pool's top examples by the fitted
  direction (as many as one episode trains on).

Prints; asserts nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from raise_select.config_io import load_config, recipe_path
from raise_select.pipeline import Workbench
from raise_select.ppo import episode_seed, run_episode
from raise_select.selectors.raise_policy import RaiseSelector


def play(bench: Workbench, config, budget: int, episodes: int, helpful: np.ndarray, corrupted: np.ndarray) -> tuple:
    selector = RaiseSelector(config.raise_)
    selector.setup(bench.selection_context(selector, budget, config.seed, progress=False))
    env = bench.make_env(budget)
    decisions, per_episode, heads = [], [], []
    for episode in range(episodes):
        buffer, summary = run_episode(env, selector, episode_seed(config.seed, episode), 1.0)
        for t, decision in enumerate(buffer.decisions):
            decisions.append((t, helpful[decision.chosen].sum(), corrupted[decision.chosen].sum(), decision.reward))
        chosen = np.concatenate([d.chosen for d in buffer.decisions])
        per_episode.append((helpful[chosen].mean(), corrupted[chosen].mean(), summary["return"]))
        heads.append(buffer.head_weights)
    return np.array(decisions, dtype=float), np.array(per_episode), heads, selector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(recipe_path("demo_quick")))
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--budget-steps", type=int, default=24)
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = load_config(args.config, [*args.overrides, f"train.budget_steps={args.budget_steps}"])
    bench = Workbench.build(config)
    examples = bench.pool.examples
    helpful = np.array([bool(e.meta.get("helpful")) and not e.meta.get("corrupted") for e in examples])
    corrupted = np.array([bool(e.meta.get("corrupted")) for e in examples])
    head_dims = config.raise_.head_dims or 5
    plain = load_config(args.config, [*args.overrides, f"train.budget_steps={args.budget_steps}", "raise.head_dims=0"])
    headed = load_config(
        args.config, [*args.overrides, f"train.budget_steps={args.budget_steps}", f"raise.head_dims={head_dims}"]
    )
    runs = {
        "no head": play(bench, plain, args.budget_steps, args.episodes, helpful, corrupted),
        f"head ({head_dims} columns)": play(bench, headed, args.budget_steps, args.episodes, helpful, corrupted),
    }

    print(
        f"\n{args.episodes} episodes x {args.budget_steps} decisions, batch {config.train.batch_size}, "
        f"lr {config.train.learning_rate}, untrained policy; pool: {helpful.mean():.2f} helpful-clean, "
        f"{corrupted.mean():.2f} corrupted\n"
    )
    decisions = runs["no head"][0].copy()
    steps, counts, rewards = decisions[:, 0], decisions[:, 1:3], decisions[:, 3]
    for t in np.unique(steps):  # what a per-step baseline removes
        at = steps == t
        rewards[at] -= rewards[at].mean()
        counts[at] -= counts[at].mean(axis=0)
    print("Per decision, no head:\n")
    print("| decisions | reward std | effect of a helpful-clean pick | effect of a corrupted pick | R^2 |")
    print("|---|---|---|---|---|")
    quarter = max(1, args.budget_steps // 4)
    for low, high in ((0, args.budget_steps), (0, quarter), (quarter, 2 * quarter), (2 * quarter, args.budget_steps)):
        part = (steps >= low) & (steps < high)
        coefficients, *_ = np.linalg.lstsq(counts[part], rewards[part], rcond=None)
        residual = rewards[part] - counts[part] @ coefficients
        r2 = 1.0 - residual.var() / max(rewards[part].var(), 1e-12)
        print(
            f"| {low}-{high - 1} | {rewards[part].std():.4f} | {coefficients[0]:+.4f} | {coefficients[1]:+.4f} | {r2:.3f} |"
        )

    print("\nPer episode:\n")
    print(
        "| sampler | helpful-clean share (mean ± std) | corrupted share | return (mean ± std) | corr(return, helpful-clean share) |"
    )
    print("|---|---|---|---|---|")
    for name, (_, per_episode, _, _) in runs.items():
        h, c, r = per_episode.T
        print(
            f"| {name} | {h.mean():.3f} ± {h.std():.3f} | {c.mean():.3f} ± {c.std():.3f} | {r.mean():.3f} ± {r.std():.3f} | "
            f"{np.corrcoef(r, h)[0, 1]:+.2f} |"
        )

    _, per_episode, heads, selector = runs[f"head ({head_dims} columns)"]
    weights, returns = np.stack(heads).astype(np.float64), per_episode[:, 2]
    columns = selector.fused_static[:, :head_dims].numpy().astype(np.float64)
    take = args.budget_steps * config.train.batch_size
    print(f"\nReturn regressed on the head's draws (ridge 1e-3), the pool's top {take} by the fitted direction:\n")
    print("| episodes | helpful-clean share | corrupted share |")
    print("|---|---|---|")
    count = 8
    while count <= len(returns):
        w, r = weights[:count], returns[:count] - returns[:count].mean()
        fitted = np.linalg.solve(w.T @ w + 1e-3 * count * np.eye(head_dims), w.T @ r)
        top = np.argsort(-(columns @ fitted))[:take]
        print(f"| {count} | {helpful[top].mean():.2f} | {corrupted[top].mean():.2f} |")
        count *= 2


if __name__ == "__main__":
    main()
