"""The report's PNG plots (matplotlib only): each function draws one figure from plain data
(:mod:`analysis` outputs) and writes it atomically to ``path``.

Plots use matplotlib's object API (``Figure`` + Agg canvas) so that importing this module never
changes the global pyplot backend of a user's session.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .analysis import LOSS_AXIS, SCORE_PREFIX, Curve, format_budget, numeric_column, value_shares
from .io_utils import atomic_write

TOP_CATEGORIES = 8  # categories drawn per stacked-bar panel; the rest are pooled as "other"
PLOT_DPI = 120
_PLOT_STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
}
_STAGE_AXIS = "training progress (share of budget steps)"
_SHARE_AXIS = "share of selected examples (%)"


@contextlib.contextmanager
def _figure(
    path: Path, title: str, n_panels: int = 1, panel_size: tuple[float, float] = (6.0, 4.2), columns: int = 2
) -> Iterator[list]:
    """Yield ``n_panels`` axes of one figure; on exit lay it out and write it atomically as a PNG."""
    columns = min(columns, n_panels)
    rows = math.ceil(n_panels / columns)
    with rc_context(_PLOT_STYLE):
        figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows))
        FigureCanvasAgg(figure)
        axes = [figure.add_subplot(rows, columns, i + 1) for i in range(n_panels)]
        yield axes
        figure.suptitle(title)
        for axis in axes:
            axis.grid(alpha=0.3)
            axis.set_axisbelow(True)
            if len(axis.get_legend_handles_labels()[0]) > 1 and axis.get_legend() is None:
                axis.legend()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()), mode="wb")


def plot_validation_curves(series: list[Curve], path: Path, title: str) -> Path | None:
    """Validation loss vs optimizer step, one line (± std band) per curve; None (nothing drawn) without points."""
    series = [c for c in series if len(c.steps)]
    if not series:
        return None
    methods = list(dict.fromkeys(c.method for c in series))
    budgets = list(dict.fromkeys(c.budget for c in series))
    line_styles = ["-", "--", ":", "-."]
    with _figure(path, title, panel_size=(7.0, 4.5)) as (axis,):
        for curve in series:
            color = f"C{methods.index(curve.method) % 10}"
            style = line_styles[budgets.index(curve.budget) % len(line_styles)]
            axis.plot(
                curve.steps,
                curve.mean,
                style,
                color=color,
                marker="o" if len(curve.steps) <= 30 else None,
                markersize=3,
                label=curve.label,
            )
            if curve.std is not None:
                axis.fill_between(curve.steps, curve.mean - curve.std, curve.mean + curve.std, color=color, alpha=0.15)
        axis.set_xlabel("optimizer step (updates)")
        axis.set_ylabel(LOSS_AXIS)
        if len(series) > 4:  # many lines: keep the legend off the curves
            axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return path


def plot_test_scores(summary: list[dict], test_metric: str | None, path: Path) -> Path | None:
    """Bars of the mean test score (± std) per method and budget; None (nothing drawn) without scores."""
    rows = [r for r in summary if r.get("test_score_mean") is not None]
    if not rows:
        return None
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = list(dict.fromkeys(r.get("budget") for r in rows))
    width = 0.8 / len(budgets)
    only_budget = f" at budget {format_budget(budgets[0], rows[0].get('steps'))}" if len(budgets) == 1 else ""
    with _figure(path, f"Test {test_metric or 'score'} per method{only_budget} (mean ± std over seeds)") as (axis,):
        for b, budget in enumerate(budgets):
            by_method = {r["method"]: r for r in rows if r.get("budget") == budget}
            x = [m + (b - (len(budgets) - 1) / 2) * width for m, method in enumerate(methods) if method in by_method]
            means = [by_method[m]["test_score_mean"] for m in methods if m in by_method]
            stds = [by_method[m].get("test_score_std") or 0.0 for m in methods if m in by_method]
            steps = next(iter(by_method.values())).get("steps")
            axis.bar(x, means, width, yerr=stds, capsize=4, label=f"budget {format_budget(budget, steps)}")
        axis.set_xticks(range(len(methods)), methods)
        axis.set_xlabel("selection method")
        axis.set_ylabel(f"test {test_metric or 'score'} (fraction correct)")
    return path


def plot_selection_composition(records: list[dict], reference: dict, method: str, path: Path) -> Path:
    """Stacked shares per stage bin for source / family / cluster, plus helpful & corrupted shares."""
    stages = sorted({r["stage"] for r in records})
    stage_labels = [next(r["stage_label"] for r in records if r["stage"] == s) for s in stages]
    keys = [k for k in ("source", "family", "cluster") if any(r[k] is not None for r in records)]
    labels = [k for k in ("helpful", "corrupted") if any(r[k] is not None for r in records)]
    n_panels = len(keys) + (1 if labels else 0)
    with _figure(path, f"What {method} selected, by training stage", n_panels) as axes:
        for axis, key in zip(axes, keys):
            _stacked_shares(axis, records, key, stages, stage_labels, reference.get(key, {}).get("shares"))
        if labels:
            axis = axes[-1]
            for label in labels:
                shares = [
                    100 * np.mean([r[label] for r in records if r["stage"] == s and r[label] is not None] or [np.nan])
                    for s in stages
                ]
                line = axis.plot(stage_labels, shares, marker="o", label=f"{label} (selected)")[0]
                if label in reference:
                    share = reference[label]["shares"].get(True, 0.0)
                    axis.axhline(
                        100 * share,
                        color=line.get_color(),
                        linestyle="--",
                        label=f"{label} ({reference[label]['label']})",
                    )
            axis.set_ylim(0, 100)
            axis.tick_params(axis="x", labelrotation=30)
            axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
            axis.set_title("Helpful / corrupted share of the selection")
            axis.set_xlabel(_STAGE_AXIS)
            axis.set_ylabel(_SHARE_AXIS)
    return path


def _stacked_shares(axis, records, key, stages, stage_labels, pool_shares) -> None:
    """One panel: per stage bin, the share of each category (top ones; the rest pooled as 'other')."""
    overall = value_shares(_category(r[key], key) for r in records)
    categories = list(overall)[:TOP_CATEGORIES]
    columns = [Counter(_category(r[key], key) for r in records if r["stage"] == s) for s in stages]
    positions = list(range(len(stages)))
    x_labels = list(stage_labels)
    if pool_shares:  # a hatched reference bar, set apart from the stage bars
        columns.append(Counter({_category(k, key): v for k, v in pool_shares.items()}))
        positions.append(len(stages) + 0.4)
        x_labels.append("pool")
    hatches = [""] * len(stages) + ["//"] * (len(columns) - len(stages))
    bottom = np.zeros(len(columns))
    for category in categories + (["other"] if len(overall) > len(categories) else []):
        values = np.array(
            [
                100
                * (col[category] if category != "other" else sum(v for c, v in col.items() if c not in categories))
                / (sum(col.values()) or 1)
                for col in columns
            ]
        )
        axis.bar(positions, values, bottom=bottom, label=str(category), hatch=hatches, edgecolor="white")
        bottom += values
    axis.set_xticks(positions, x_labels, rotation=30)
    axis.set_title(f"Share by {key}")
    axis.set_xlabel(_STAGE_AXIS)
    axis.set_ylabel(_SHARE_AXIS)
    axis.set_ylim(0, 100)
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title=key)


def _category(value: Any, key: str) -> str:
    if value is None or value == "":
        return "unknown"
    return f"cluster {value}" if key == "cluster" else str(value)


def plot_ppo_curve(episodes: list[dict], path: Path) -> Path:
    """Episode return and start/end validation loss per episode of a selector training."""
    episode = [e.get("episode", i) for i, e in enumerate(episodes)]
    as_array = lambda key: np.array([np.nan if e.get(key) is None else e[key] for e in episodes], dtype=float)  # noqa: E731
    with _figure(path, "Selector training: PPO learning curve", 2) as (return_axis, loss_axis):
        return_axis.plot(episode, as_array("return"), marker="o", markersize=3)
        return_axis.set_title("Episode return (total validation-loss drop)")
        return_axis.set_xlabel("episode")
        return_axis.set_ylabel("return (reward units)")
        loss_axis.plot(episode, as_array("validation_loss_final"), marker="o", markersize=3, label="end of episode")
        loss_axis.plot(
            episode, as_array("validation_loss_initial"), linestyle="--", label="start of episode (base model)"
        )
        loss_axis.set_title("Validation loss per episode")
        loss_axis.set_xlabel("episode")
        loss_axis.set_ylabel(LOSS_AXIS)
    return path


def plot_score_drivers(explain, features, stages, correlations, order, best_stage: int, path: Path) -> Path:
    """Grouped bars of rho per feature (in ``order``) and stage; scatter of the score vs feature ``order[0]``."""
    best = order[0]
    height = 0.8 / len(stages)
    with _figure(
        path, "What drives the RAISE acquisition score", 2, panel_size=(6.5, max(4.2, 0.35 * len(order) + 1.5))
    ) as (bar_axis, scatter_axis):
        for j, stage in enumerate(stages):
            y = np.arange(len(order)) + (j - (len(stages) - 1) / 2) * height
            bar_axis.barh(y, np.nan_to_num(correlations[order, j]), height, label=f"t/T = {stage}")
        bar_axis.set_yticks(range(len(order)), [features[i] for i in order])
        bar_axis.invert_yaxis()
        bar_axis.axvline(0, color="black", linewidth=0.8)
        bar_axis.set_xlim(-1, 1)
        bar_axis.set_title("Feature correlation with the score")
        bar_axis.set_xlabel("Spearman rho (unitless)")
        bar_axis.set_ylabel("feature")
        feature_values = numeric_column(explain, features[best])
        scores = numeric_column(explain, SCORE_PREFIX + stages[best_stage])
        sources = [row.get("source", "") for row in explain]
        groups = list(dict.fromkeys(sources)) if len(set(sources)) <= TOP_CATEGORIES else [None]
        for group in groups:
            mask = np.array([group is None or s == group for s in sources])
            scatter_axis.scatter(
                feature_values[mask],
                scores[mask],
                s=12 if len(explain) <= 1000 else 4,
                alpha=0.6,
                label=group if group is not None else None,
            )
        scatter_axis.set_title(
            f"Score vs {features[best]} (rho {correlations[best, best_stage]:+.2f}, t/T = {stages[best_stage]})"
        )
        scatter_axis.set_xlabel(f"{features[best]} (feature value)")
        scatter_axis.set_ylabel(f"acquisition score at t/T = {stages[best_stage]} (policy logit)")
    return path
