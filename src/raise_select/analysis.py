"""Statistics and Markdown formatting of run results: pure functions of plain data, no file access.

Inputs are what :mod:`run_folders` reads (per-run result rows, ``metrics.jsonl`` / ``selections.jsonl``
rows, ``explain.csv`` rows); outputs are numbers, dicts and Markdown strings. Used by the compare
command (``results.json``, ``results.md``: :func:`comparison_results`, :func:`results_markdown`) and
by :mod:`report` and :mod:`plots`.

- results: :func:`summarize` (mean ± std over seeds), :func:`selector_seed_breakdown`,
  :func:`oracle_gaps`, :func:`ranking_facts` and their Markdown tables and sentences;
- curves: :func:`validation_curve`, :func:`mean_curves`;
- selections: :func:`selection_records` (one record per selected example, by training stage),
  :func:`pool_reference` (the shares to compare them against);
- score drivers: :func:`score_correlations` (Spearman rho of explain.csv features with the scores);
- formatting: :func:`format_budget`, :func:`format_number`, :func:`markdown_table`, ...
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import rankdata

from .run_folders import LM_EVAL_PREFIX

STAGE_BINS = 5  # training-progress bins of the "what did it choose, when" analysis
SCORE_PREFIX = "score@"  # explain.csv columns of the acquisition score at a training stage: score@<t/T>
# explain.csv columns that describe an example rather than being a feature of it.
_EXPLAIN_LABEL_COLUMNS = {"index", "id", "source", "cluster", "family", "helpful", "corrupted"}
LOSS_AXIS = "validation loss (nats/token)"


# ----------------------------------------------------------------------------- results over seeds


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std (ddof=1; 0.0 for one seed) over seeds per (method, budget), in first-seen order.

    ``rows`` are per-run results ({method, budget, seed, validation_loss, test_metric, test_score,
    steps, tokens, seconds, ...}). Missing (None) values are left out of a mean; a statistic with no
    values at all is None.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row.get("budget"))].append(row)
    summary = []
    for (method, budget), group in groups.items():
        val_mean, val_std = mean_std([r.get("validation_loss") for r in group])
        score_mean, score_std = mean_std([r.get("test_score") for r in group])
        steps_mean, _ = mean_std([r.get("steps") for r in group])
        summary.append(
            {
                "method": method,
                "budget": budget,
                "n_seeds": len(group),
                "validation_loss_mean": val_mean,
                "validation_loss_std": val_std,
                "test_metric": next((r["test_metric"] for r in group if r.get("test_metric")), None),
                "test_score_mean": score_mean,
                "test_score_std": score_std,
                "steps": None if steps_mean is None else int(round(steps_mean)),
                "tokens_mean": mean_std([r.get("tokens") for r in group])[0],
                "seconds_mean": mean_std([r.get("seconds") for r in group])[0],
                **_lm_eval_means(group),
            }
        )
    return summary


def _lm_eval_means(group: list[dict]) -> dict:
    """Each lm-eval score of the group's runs (target.lm_eval) as "<column> mean" and "<column> std"."""
    columns = dict.fromkeys(key for row in group for key in row if key.startswith(LM_EVAL_PREFIX))
    stats = {}
    for column in columns:
        stats[f"{column} mean"], stats[f"{column} std"] = mean_std([r.get(column) for r in group])
    return stats


def format_results_table(summary_rows: list[dict], test_metric: str | None = None) -> str:
    """Markdown table, one line per (method, budget): validation loss and test metric as mean ± std."""
    test_metric = test_metric or next((r["test_metric"] for r in summary_rows if r.get("test_metric")), None)
    headers = [
        "method",
        "budget",
        "seeds",
        LOSS_AXIS,
        f"test {test_metric or 'score'}",
        "steps",
        "tokens",
        "wall time (s)",
    ]
    lm_eval_columns = list(
        dict.fromkeys(
            k[: -len(" mean")] for r in summary_rows for k in r if k.startswith(LM_EVAL_PREFIX) and k.endswith(" mean")
        )
    )
    headers[5:5] = [column.replace("lm_eval ", "lm-eval ", 1) for column in lm_eval_columns]
    body = [
        [
            row["method"],
            format_budget(row.get("budget"), row.get("steps")),
            str(row.get("n_seeds", "")),
            format_mean_std(row.get("validation_loss_mean"), row.get("validation_loss_std"), 4),
            format_mean_std(row.get("test_score_mean"), row.get("test_score_std"), 3),
            *(format_mean_std(row.get(f"{c} mean"), row.get(f"{c} std"), 3) for c in lm_eval_columns),
            format_number(row.get("steps"), 0),
            format_number(row.get("tokens_mean"), 0),
            format_number(row.get("seconds_mean"), 1),
        ]
        for row in summary_rows
    ]
    return markdown_table(headers, body)


def selector_seed_breakdown(rows: list[dict]) -> list[dict]:
    """RAISE per selector seed and budget: mean validation loss over fine-tuning seeds, next to random's.

    One dict per (budget, selector seed) of the RAISE rows that carry a ``selector_seed``:
    {budget, steps, selector_seed, raise_mean, raise_values, random_mean, beats_random}.
    """
    random_by_budget: dict[Any, list[float]] = defaultdict(list)
    raise_groups: dict[tuple, list[float]] = defaultdict(list)
    steps_of: dict[Any, Any] = {}
    for row in rows:
        if row.get("validation_loss") is None:
            continue
        if row["method"] == "random":
            random_by_budget[row.get("budget")].append(row["validation_loss"])
        elif row["method"] == "raise" and row.get("selector_seed") is not None:
            raise_groups[(row.get("budget"), row["selector_seed"])].append(row["validation_loss"])
            steps_of[row.get("budget")] = row.get("steps")
    breakdown = []
    for (budget, selector_seed), values in raise_groups.items():
        random_mean = mean_std(random_by_budget.get(budget, []))[0]
        raise_mean = float(np.mean(values))
        breakdown.append(
            {
                "budget": budget,
                "steps": steps_of.get(budget),
                "selector_seed": selector_seed,
                "raise_mean": raise_mean,
                "raise_values": values,
                "random_mean": random_mean,
                "beats_random": None if random_mean is None else bool(raise_mean < random_mean),
            }
        )
    return breakdown


def format_selector_seed_table(breakdown: list[dict]) -> str:
    """Markdown: RAISE's validation loss per selector seed (mean over fine-tuning seeds) against random."""
    body = [
        [
            format_budget(row["budget"], row.get("steps")),
            str(row["selector_seed"]),
            f"{row['raise_mean']:.4f}",
            ", ".join(f"{v:.4f}" for v in row["raise_values"]),
            format_number(row.get("random_mean"), 4),
            {True: "yes", False: "no", None: "–"}[row.get("beats_random")],
        ]
        for row in breakdown
    ]
    return markdown_table(
        [
            "budget",
            "selector seed",
            "raise (mean)",
            "raise per fine-tuning seed",
            "random (mean)",
            "raise below random",
        ],
        body,
    )


def oracle_gaps(summary: list[dict]) -> list[dict]:
    """Per budget with raise, random and oracle rows: the share of the random -> oracle gap RAISE closes.

    closed = (random - raise) / (random - oracle), on mean validation loss; None when the oracle is not
    below random (no gap to close).
    """
    by_budget: dict[Any, dict[str, dict]] = defaultdict(dict)
    for row in summary:
        by_budget[row.get("budget")][row["method"]] = row
    gaps = []
    for budget, methods in by_budget.items():
        if not {"raise", "random", "oracle"} <= methods.keys():
            continue
        raise_loss, random_loss, oracle_loss = (
            methods[m]["validation_loss_mean"] for m in ("raise", "random", "oracle")
        )
        if None in (raise_loss, random_loss, oracle_loss):
            continue
        gap = random_loss - oracle_loss
        gaps.append(
            {
                "budget": budget,
                "steps": methods["raise"].get("steps"),
                "raise": raise_loss,
                "random": random_loss,
                "oracle": oracle_loss,
                "closed": (random_loss - raise_loss) / gap if gap > 0 else None,
            }
        )
    return gaps


def gap_sentence(gap: dict) -> str:
    """One sentence on an :func:`oracle_gaps` entry: the share of the gap RAISE closes, or that there is none."""
    budget = format_budget(gap["budget"], gap.get("steps"))
    if gap["closed"] is None:
        return f"At budget {budget} the oracle ({gap['oracle']:.4f}) is not below random ({gap['random']:.4f}): no gap to close."
    return (
        f"RAISE closes {100 * gap['closed']:.0f} % of the gap between random and the oracle at budget {budget} "
        f"(validation loss: random {gap['random']:.4f}, raise {gap['raise']:.4f}, oracle {gap['oracle']:.4f})."
    )


def comparison_results(rows: list[dict]) -> dict:
    """A comparison's results from its per-run rows (:func:`run_folders.result_row`): ``results.json``
    without the compute ledger, i.e. {rows, summary, selector_seeds, oracle_gap}."""
    summary = summarize(rows)
    return {
        "rows": rows,
        "summary": summary,
        "selector_seeds": selector_seed_breakdown(rows),
        "oracle_gap": oracle_gaps(summary),
    }


def results_markdown(results: dict) -> str:
    """``results.md``: the results table, RAISE per selector seed (if any) and the oracle-gap sentences."""
    by_selector_seed = results["selector_seeds"]
    return (
        "\n\n".join(
            [format_results_table(results["summary"])]
            + ([format_selector_seed_table(by_selector_seed)] if by_selector_seed else [])
            + [gap_sentence(g) for g in results["oracle_gap"]]
        )
        + "\n"
    )


# ----------------------------------------------------------------------------- facts, curves, selections, scores


def ranking_facts(summary: list[dict], test_metric: str | None) -> list[str]:
    """Per budget: the best method by validation loss (and test score) against the runner-up."""
    facts = []
    by_budget: dict[Any, list[dict]] = defaultdict(list)
    for row in summary:
        by_budget[row.get("budget")].append(row)
    for budget, group in by_budget.items():
        budget_text = format_budget(budget, group[0].get("steps"))
        for key, name, lower_is_better, digits in (
            ("validation_loss", "validation loss", True, 4),
            ("test_score", f"test {test_metric or 'score'}", False, 3),
        ):
            ranked = sorted(
                (r for r in group if r.get(f"{key}_mean") is not None),
                key=lambda r: r[f"{key}_mean"],
                reverse=not lower_is_better,
            )
            if len(ranked) < 2:
                continue
            best, second = ranked[0], ranked[1]
            if best[f"{key}_mean"] == ranked[-1][f"{key}_mean"]:  # no method stands out: say so, name none
                facts.append(
                    f"all {len(ranked)} methods tie on {name} at budget {budget_text} "
                    f"({best[f'{key}_mean']:.{digits}f})"
                )
                continue
            fact = (
                f"{best['method']}: {'lowest' if lower_is_better else 'highest'} {name} at budget {budget_text} "
                f"({best[f'{key}_mean']:.{digits}f} vs {second['method']} {second[f'{key}_mean']:.{digits}f}; "
                f"n = {best.get('n_seeds')} vs {second.get('n_seeds')} seeds)"
            )
            gap = abs(best[f"{key}_mean"] - second[f"{key}_mean"])
            spread = max(best.get(f"{key}_std") or 0.0, second.get(f"{key}_std") or 0.0)
            if gap < spread:
                fact += f"; the gap {gap:.{digits}f} is smaller than the larger std {spread:.{digits}f}"
            facts.append(fact)
            rank = next((i for i, r in enumerate(ranked) if r["method"] == "raise"), None)
            if rank:  # RAISE is the method under study: say where it stands when it is not first
                facts.append(
                    f"raise: rank {rank + 1} of {len(ranked)} by {name} at budget {budget_text} "
                    f"({ranked[rank][f'{key}_mean']:.{digits}f} vs {best['method']} {best[f'{key}_mean']:.{digits}f})"
                )
    return facts


def validation_curve(metrics: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, validation losses) of the ``metrics.jsonl`` rows that carry a validation loss."""
    points = [(m["step"], m["validation_loss"]) for m in metrics if m.get("validation_loss") is not None]
    steps, losses = zip(*points) if points else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)


class Curve(NamedTuple):
    """One line of the validation-loss plot: a run, or the mean (± std) of a method's seeds."""

    label: str
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray | None  # None for a single run
    method: str  # lines of one method share a colour ...
    budget: Any  # ... and lines of one budget share a line style


def mean_curves(runs: list[tuple[str, Any, Any, list[dict]]], label_budget: bool) -> list[Curve]:
    """Per (method, budget): mean and std of validation loss over seeds, on a shared step grid.

    Seeds normally share an evaluation schedule; when they do not, each curve is interpolated onto
    the union of their steps within the range all of them cover.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for method, budget, steps, metrics in runs:
        curve = validation_curve(metrics)
        if len(curve[0]):
            groups[(method, budget, steps)].append(curve)
    series = []
    for (method, budget, steps), curves in groups.items():
        low, high = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
        grid = np.unique(np.concatenate([c[0] for c in curves]))
        grid = grid[(grid >= low) & (grid <= high)]
        values = np.stack([np.interp(grid, *c) for c in curves])
        std = values.std(axis=0, ddof=1) if len(curves) > 1 else None
        label = f"{method} @ {format_budget(budget, steps)}" if label_budget else method
        series.append(Curve(f"{label} (n={len(curves)})", grid, values.mean(axis=0), std, method, budget))
    return series


def selection_records(run: dict) -> list[dict]:
    """One record per selected example: its stage bin and labels."""
    selections = run["selections"]
    if not selections:
        return []
    budget_steps = run["summary"].get("budget_steps") or max(s["step"] for s in selections) + 1
    n_bins = max(1, min(STAGE_BINS, len({s["decision"] for s in selections})))
    records = []
    for selection in selections:
        stage = min(int(selection["step"] / budget_steps * n_bins), n_bins - 1)
        count = len(selection.get("indices") or selection.get("ids") or [])
        for i in range(count):
            records.append(
                {
                    "stage": stage,
                    "stage_label": f"{stage * 100 // n_bins}–{(stage + 1) * 100 // n_bins}%",
                    **{key: _item(selection, key, i) for key in SELECTION_FIELDS},
                }
            )
    return records


def stage_view(records_by_method: dict[str, list[dict]], top: int = 8) -> tuple[str, str] | None:
    """Each method's picks per training stage as shares of each family (labelled pools) or source.

    Returns (the key used, a Markdown table: one row per method and stage, one column per family or
    source, the ``top`` most picked over all methods and the rest as "other"), or None without picks.
    The family is used when every pick carries one, else the source.
    """
    records = [r for method_records in records_by_method.values() for r in method_records]
    if not records:
        return None
    key = "family" if all(r["family"] not in (None, "") for r in records) else "source"
    overall = list(value_shares(r[key] for r in records))
    shown = overall[:top]
    headers = ["method", "stage (training progress)", "picks", *shown] + (["other"] if len(overall) > top else [])
    body = []
    for method, method_records in records_by_method.items():
        for stage in sorted({r["stage"] for r in method_records}):
            in_stage = [r for r in method_records if r["stage"] == stage]
            shares = value_shares(r[key] for r in in_stage)
            cells = [f"{shares.get(name, 0.0):.0%}" for name in shown]
            if len(overall) > top:
                cells.append(f"{sum(v for name, v in shares.items() if name not in shown):.0%}")
            body.append([method, in_stage[0]["stage_label"], str(len(in_stage)), *cells])
    return key, markdown_table(headers, body)


# selections.jsonl list field holding each per-example label
SELECTION_FIELDS = {
    "source": "sources",
    "family": "families",
    "cluster": "clusters",
    "helpful": "helpful",
    "corrupted": "corrupted",
}


def _item(selection: dict, key: str, i: int) -> Any:
    values = selection.get(SELECTION_FIELDS[key])
    return values[i] if values and i < len(values) else None


def pool_reference(explain: list[dict] | None, random_records: list[dict]) -> dict:
    """{key: {"shares": {value: share}, "label": where from}} to compare selections against.

    The pool itself (explain.csv rows) where it has the column; otherwise, for the helpful /
    corrupted labels, random's picks, which are an unbiased sample of the pool.
    """
    reference = {}
    for key in SELECTION_FIELDS:
        if explain and key in explain[0] and any(row[key] not in ("", None) for row in explain):
            reference[key] = {"shares": value_shares(_parse_cell(row[key]) for row in explain), "label": "pool"}
        elif key in ("helpful", "corrupted") and any(r[key] is not None for r in random_records):
            reference[key] = {
                "shares": value_shares(r[key] for r in random_records if r[key] is not None),
                "label": "pool, estimated from random's picks",
            }
    return reference


def score_correlations(explain: list[dict]) -> tuple[list[str], list[str], np.ndarray]:
    """Spearman rho [feature, stage] between each numeric feature column and each score@ column."""
    columns = list(explain[0])
    stages = [c[len(SCORE_PREFIX) :] for c in columns if c.startswith(SCORE_PREFIX)]
    candidates = [c for c in columns if c not in _EXPLAIN_LABEL_COLUMNS and not c.startswith(SCORE_PREFIX)]
    features = [c for c in candidates if numeric_column(explain, c) is not None]
    if not features or not stages:
        return features, stages, np.zeros((len(features), len(stages)))
    feature_ranks = rankdata(np.stack([numeric_column(explain, c) for c in features], axis=1), axis=0)
    score_ranks = rankdata(np.stack([numeric_column(explain, SCORE_PREFIX + s) for s in stages], axis=1), axis=0)
    # Spearman = Pearson on ranks; constant columns have no defined correlation (NaN, drawn as 0).
    feature_ranks -= feature_ranks.mean(axis=0)
    score_ranks -= score_ranks.mean(axis=0)
    norms = np.outer(np.linalg.norm(feature_ranks, axis=0), np.linalg.norm(score_ranks, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlations = (feature_ranks.T @ score_ranks) / norms
    return features, stages, correlations


def numeric_column(rows: list[dict], column: str) -> np.ndarray | None:
    """The column as floats, or None when a cell is not a number (a label column)."""
    try:
        return np.asarray([float(row[column]) for row in rows])
    except (TypeError, ValueError):
        return None


def value_shares(values) -> dict:
    """{value: share}, most common first."""
    counts = Counter(values)
    total = sum(counts.values())
    return {value: count / total for value, count in counts.most_common()} if total else {}


def reference_share(reference: dict, label: str) -> str:
    """Share of True for a boolean label in the reference, with where it came from."""
    if label not in reference:
        return "—"
    return f"{reference[label]['shares'].get(True, 0.0):.0%} ({reference[label]['label']})"


def format_share(records: list[dict], label: str) -> str:
    """Share of True among the records' labelled (not None) values of ``label``, as a percentage; '—' if none."""
    labelled = [r[label] for r in records if r[label] is not None]
    return f"{sum(labelled) / len(labelled):.0%}" if labelled else "—"


# ----------------------------------------------------------------------------- formatting


def _parse_cell(value: str) -> Any:
    """CSV cells of label columns: 'True'/'False' -> bool, '' -> None, else the text."""
    return {"true": True, "false": False, "": None}.get(str(value).strip().lower(), value)


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and std (ddof=1; 0.0 for one value) of the values that are not None; (None, None) for none."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return float(np.mean(present)), (float(np.std(present, ddof=1)) if len(present) > 1 else 0.0)


def format_budget(budget: float | None, steps: Any = None) -> str:
    """A budget fraction as a percentage ('1%'), else '<steps> steps', else '—'."""
    if budget is None:
        return f"{steps} steps" if steps is not None else "—"
    return f"{budget * 100:g}%"


def format_mean_std(mean: float | None, std: float | None, digits: int) -> str:
    """'mean ± std' with ``digits`` decimals; '—' for a missing mean."""
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {(std or 0.0):.{digits}f}"


def format_number(value: Any, digits: int) -> str:
    """Thousands-separated with ``digits`` decimals (0: rounded integer); '—' for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}" if digits else f"{round(value):,}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; '|' inside cells is escaped."""
    escape = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(escape, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return "\n".join(lines)
