"""Reports: Markdown tables and PNG plots for the folders that finetune, compare and train-selector write.

``write_report(run_dir)`` detects the folder kind from the file it holds (``results.json`` for a
comparison, ``metrics.jsonl`` for one fine-tuning run, ``episodes.jsonl`` for selector training),
writes ``run_dir/report.md`` and PNGs under ``run_dir/plots/``. Every optional file may be missing;
its section is then skipped with a one-line note. The "Reading" section states only facts that can
be checked against the tables (which method is lowest, by how much, against which std).

``summarize`` and ``format_results_table`` are shared with the compare command (``results.md``).

Plots use matplotlib's object API (``Figure`` + Agg canvas) so that importing this module never
changes the global pyplot backend of a user's session.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import yaml
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import rankdata

from .errors import UserError
from .io_utils import atomic_write, write_text

STAGE_BINS = 5  # training-progress bins of the "what did it choose, when" analysis
TOP_CATEGORIES = 8  # categories drawn per stacked-bar panel; the rest are pooled as "other"
TOP_FEATURES = 12  # features shown in the score-driver bars (ranked by their largest |rho|)
PLOT_DPI = 120
_PLOT_STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9, "figure.titlesize": 13}
# explain.csv columns that describe an example rather than being a feature of it.
_EXPLAIN_LABEL_COLUMNS = {"index", "id", "source", "cluster", "family", "helpful", "corrupted"}
_SCORE_PREFIX = "score@"
_STAGE_AXIS = "training progress (share of budget steps)"
_SHARE_AXIS = "share of selected examples (%)"
_LOSS_AXIS = "validation loss (nats/token)"
_NOT_A_RUN = (
    "{path} is not a raise-select run folder (no metrics.jsonl, results.json or episodes.jsonl); "
    "pass a folder written by finetune, compare or train-selector"
)


# ----------------------------------------------------------------------------- public API


def detect_kind(run_dir: Path) -> str:
    """'compare', 'finetune' or 'train-selector', from the marker file the folder holds."""
    for marker, kind in (("results.json", "compare"), ("metrics.jsonl", "finetune"), ("episodes.jsonl", "train-selector")):
        if (Path(run_dir) / marker).is_file():
            return kind
    raise UserError(_NOT_A_RUN.format(path=run_dir))


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` (and ``run_dir/plots/*.png``); return the report's path."""
    run_dir = Path(run_dir)
    kind = detect_kind(run_dir)
    report = _Report(run_dir)
    {"compare": _compare_report, "finetune": _finetune_report, "train-selector": _selector_report}[kind](report)
    return write_text(run_dir / "report.md", report.render())


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
        val_mean, val_std = _mean_std([r.get("validation_loss") for r in group])
        score_mean, score_std = _mean_std([r.get("test_score") for r in group])
        steps_mean, _ = _mean_std([r.get("steps") for r in group])
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
                "tokens_mean": _mean_std([r.get("tokens") for r in group])[0],
                "seconds_mean": _mean_std([r.get("seconds") for r in group])[0],
            }
        )
    return summary


def format_results_table(summary_rows: list[dict], test_metric: str | None = None) -> str:
    """Markdown table, one line per (method, budget): validation loss and test metric as mean ± std."""
    test_metric = test_metric or next((r["test_metric"] for r in summary_rows if r.get("test_metric")), None)
    headers = [
        "method",
        "budget",
        "seeds",
        _LOSS_AXIS,
        f"test {test_metric or 'score'}",
        "steps",
        "tokens",
        "wall time (s)",
    ]
    body = [
        [
            row["method"],
            _format_budget(row.get("budget"), row.get("steps")),
            str(row.get("n_seeds", "")),
            _format_mean_std(row.get("validation_loss_mean"), row.get("validation_loss_std"), 4),
            _format_mean_std(row.get("test_score_mean"), row.get("test_score_std"), 3),
            _format_number(row.get("steps"), 0),
            _format_number(row.get("tokens_mean"), 0),
            _format_number(row.get("seconds_mean"), 1),
        ]
        for row in summary_rows
    ]
    return _markdown_table(headers, body)


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
        random_mean = _mean_std(random_by_budget.get(budget, []))[0]
        raise_mean = float(np.mean(values))
        breakdown.append({
            "budget": budget, "steps": steps_of.get(budget), "selector_seed": selector_seed, "raise_mean": raise_mean,
            "raise_values": values, "random_mean": random_mean,
            "beats_random": None if random_mean is None else bool(raise_mean < random_mean),
        })
    return breakdown


def format_selector_seed_table(breakdown: list[dict]) -> str:
    """Markdown: RAISE's validation loss per selector seed (mean over fine-tuning seeds) against random."""
    body = [[
        _format_budget(row["budget"], row.get("steps")), str(row["selector_seed"]), f"{row['raise_mean']:.4f}",
        ", ".join(f"{v:.4f}" for v in row["raise_values"]), _format_number(row.get("random_mean"), 4),
        {True: "yes", False: "no", None: "–"}[row.get("beats_random")],
    ] for row in breakdown]
    return _markdown_table(["budget", "selector seed", "raise (mean)", "raise per fine-tuning seed", "random (mean)",
                            "raise below random"], body)


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
        raise_loss, random_loss, oracle_loss = (methods[m]["validation_loss_mean"] for m in ("raise", "random", "oracle"))
        if None in (raise_loss, random_loss, oracle_loss):
            continue
        gap = random_loss - oracle_loss
        gaps.append({"budget": budget, "steps": methods["raise"].get("steps"), "raise": raise_loss, "random": random_loss,
                     "oracle": oracle_loss, "closed": (random_loss - raise_loss) / gap if gap > 0 else None})
    return gaps


def gap_sentence(gap: dict) -> str:
    budget = _format_budget(gap["budget"], gap.get("steps"))
    if gap["closed"] is None:
        return f"At budget {budget} the oracle ({gap['oracle']:.4f}) is not below random ({gap['random']:.4f}): no gap to close."
    return (f"RAISE closes {100 * gap['closed']:.0f} % of the gap between random and the oracle at budget {budget} "
            f"(validation loss: random {gap['random']:.4f}, raise {gap['raise']:.4f}, oracle {gap['oracle']:.4f}).")


# ----------------------------------------------------------------------------- report assembly


class _Report:
    """Collects sections, facts for the "Reading" section, notes about skipped parts, and plots."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.plots_dir = run_dir / "plots"
        self.title = ""
        self.what_was_run: list[str] = []
        self.sections: list[str] = []
        self.facts: list[str] = []
        self.notes: list[str] = []

    def section(self, heading: str, *blocks: str) -> None:
        self.sections.append("\n\n".join([f"## {heading}", *[b for b in blocks if b]]))

    def plot_path(self, name: str) -> Path:
        return self.plots_dir / f"{name}.png"

    def image(self, path: Path | None, caption: str) -> str:
        """Markdown embedding a written plot by its path relative to the report ('' if not drawn)."""
        return f"![{caption}]({path.relative_to(self.run_dir).as_posix()})" if path else ""

    def render(self) -> str:
        parts = [f"# {self.title}", "## What was run\n\n" + "\n".join(f"- {line}" for line in self.what_was_run)]
        if self.facts:
            parts.append("## Reading (facts from the tables below)\n\n" + "\n".join(f"- {fact}" for fact in self.facts))
        parts.extend(self.sections)
        if self.notes:
            parts.append("## Skipped\n\n" + "\n".join(f"- {note}" for note in self.notes))
        return "\n\n".join(parts) + "\n"


def _compare_report(report: _Report) -> None:
    run_dir = report.run_dir
    results = _read_json(run_dir / "results.json")
    rows = results.get("rows") or []
    summary = results.get("summary") or summarize(rows)
    test_metric = next((r["test_metric"] for r in rows if r.get("test_metric")), None)
    runs = [(row, _load_run(run_dir / row["run_dir"])) for row in rows if row.get("run_dir")]
    missing = [row["run_dir"] for row, run in runs if run is None]
    if missing:
        report.notes.append(f"run folders not found (their curves and selections are left out): {', '.join(missing)}")
    runs = [(row, run) for row, run in runs if run is not None]
    config = _read_config(run_dir)

    report.title = "raise-select report: comparison"
    first_summary = next((run["summary"] for _, run in runs if run["summary"]), {})
    methods = list(dict.fromkeys(r["method"] for r in summary))
    budgets = list(dict.fromkeys(_format_budget(r.get("budget"), r.get("steps")) for r in summary))
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    # Run-independent fields only: budgets differ between the runs of a comparison.
    shared_summary = {key: first_summary.get(key) for key in ("model", "target", "pool_size", "batch_size")}
    report.what_was_run = _describe_setup(config, shared_summary) + [
        f"methods: {', '.join(methods)}",
        f"budgets: {', '.join(budgets)} of full-data steps",
        f"seeds: {', '.join(map(str, seeds)) or 'unknown'}",
    ]

    report.facts.extend(_ranking_facts(summary, test_metric))
    gaps = results.get("oracle_gap")
    report.facts.extend(gap_sentence(g) for g in (oracle_gaps(summary) if gaps is None else gaps))
    by_selector_seed = results.get("selector_seeds") or selector_seed_breakdown(rows)
    curves = _mean_curves(
        [(row["method"], row.get("budget"), row.get("steps"), run["metrics"]) for row, run in runs], len(budgets) > 1
    )
    curve_plot = _plot_validation_curves(curves, report.plot_path("validation_loss"), "Validation loss during fine-tuning (mean ± std over seeds)")
    score_plot = _plot_test_scores(summary, test_metric, report.plot_path("test_metric"))
    if score_plot is None:
        report.notes.append("no test scores in results.json: the test-metric plot is skipped")
    report.section(
        "Results",
        format_results_table(summary, test_metric),
        ("RAISE per selector-training seed:\n\n" + format_selector_seed_table(by_selector_seed)) if by_selector_seed else "",
        report.image(curve_plot, "validation loss vs optimizer step"),
        report.image(score_plot, "test metric per method"),
    )
    _ledger_section(report, results.get("ledger"), "results.json")

    raise_runs = [run for row, run in runs if row["method"] == "raise"]
    random_selections = [_selection_records(run) for row, run in runs if row["method"] == "random"]
    explain = next((run["explain"] for run in raise_runs if run["explain"]), None)
    selector_dir = run_dir / "selector"  # folders written before selector seeds existed
    if raise_runs:
        records = [record for run in raise_runs for record in _selection_records(run)]
        reference = _pool_reference(explain, [r for records in random_selections for r in records])
        _selection_section(report, "raise", records, reference, f"pooled over {len(raise_runs)} RAISE run(s)")
    else:
        report.notes.append("no RAISE runs in this comparison: the selection analysis is skipped")
    _score_driver_section(report, explain)
    training_dirs = [d for d in sorted(run_dir.glob("selector-s*")) + [selector_dir] if (d / "episodes.jsonl").is_file()]
    if training_dirs:  # the first selector seed's training (every seed's folder holds its own episodes.jsonl)
        _ppo_section(report, _read_jsonl(training_dirs[0] / "episodes.jsonl"))
        _episode_head_fact(report, training_dirs[0] / "selector")
    else:
        report.notes.append("no selector-s*/episodes.jsonl: the PPO learning curve is skipped")


def _finetune_report(report: _Report) -> None:
    run = _load_run(report.run_dir)
    summary = run["summary"]
    method = summary.get("method") or run["config"].get("selector") or "run"
    report.title = f"raise-select report: fine-tuning run ({method}, seed {summary.get('seed', run['config'].get('seed', '?'))})"
    report.what_was_run = _describe_setup(run["config"], summary) + [f"selector: {method}"]

    row = _run_result_row(run, method)
    curve = _validation_curve(run["metrics"])
    if len(curve[0]) >= 2:
        report.facts.append(
            f"{method}: validation loss {curve[1][0]:.4f} at step {curve[0][0]:g} → {curve[1][-1]:.4f} at step {curve[0][-1]:g}"
        )
    if row.get("test_score") is not None:
        report.facts.append(f"{method}: test {row['test_metric']} {row['test_score']:.3f}")
    if not run["evaluation"]:
        report.notes.append("no evaluation.json: the test metric is missing from the table")
    curve_plot = _plot_validation_curves(
        [_Curve(method, curve[0], curve[1], None, method, summary.get("budget_fraction"))], report.plot_path("validation_loss"), f"Validation loss during fine-tuning ({method})"
    )
    report.section(
        "Results",
        format_results_table(summarize([row]), row.get("test_metric")),
        report.image(curve_plot, "validation loss vs optimizer step"),
    )
    _ledger_section(report, run["ledger"], "ledger.json")
    if run["selections"]:
        _selection_section(report, method, _selection_records(run), _pool_reference(run["explain"], []), "this run")
    else:
        report.notes.append("no selections.jsonl: the selection analysis is skipped")
    _score_driver_section(report, run["explain"])


def _selector_report(report: _Report) -> None:
    episodes = _read_jsonl(report.run_dir / "episodes.jsonl")
    config = _read_config(report.run_dir)
    report.title = "raise-select report: selector training (PPO)"
    report.what_was_run = _describe_setup(config, {}) + [f"episodes recorded: {len(episodes)}"]
    _ppo_section(report, episodes)
    _episode_head_fact(report, report.run_dir / "selector")
    explain_path = report.run_dir / "explain.csv"
    _score_driver_section(report, _read_explain(explain_path) if explain_path.is_file() else None)


# ----------------------------------------------------------------------------- sections


def _describe_setup(config: dict, summary: dict) -> list[str]:
    """'What was run' lines from config.yaml, preferring the run's summary.json where it has the field."""
    model = summary.get("model") or _get(config, "model", "name")
    target = summary.get("target") or _get(config, "target", "name")
    sources = [s.get("name") for s in _get(config, "pool", "sources") or [] if isinstance(s, dict)]
    lines = [f"model: {model or 'unknown'}", f"target task: {target or 'unknown'}"]
    pool = ", ".join(map(str, sources)) or "unknown sources"
    lines.append(f"pool: {pool}" + (f" ({summary['pool_size']} examples)" if summary.get("pool_size") else ""))
    batch_size = summary.get("batch_size") or _get(config, "train", "batch_size")
    if batch_size:
        lines.append(f"batch size: {batch_size}")
    if summary.get("budget_steps"):
        fraction = summary.get("budget_fraction")
        lines.append(f"budget: {summary['budget_steps']} optimizer steps" + (f" ({_format_budget(fraction)} of full-data steps)" if fraction is not None else ""))
    if not config:
        lines.append("config.yaml not found: setup taken from summary files only")
    return lines


def _ranking_facts(summary: list[dict], test_metric: str | None) -> list[str]:
    """Per budget: the best method by validation loss (and test score) against the runner-up."""
    facts = []
    by_budget: dict[Any, list[dict]] = defaultdict(list)
    for row in summary:
        by_budget[row.get("budget")].append(row)
    for budget, group in by_budget.items():
        budget_text = _format_budget(budget, group[0].get("steps"))
        for key, name, lower_is_better, digits in (
            ("validation_loss", "validation loss", True, 4),
            ("test_score", f"test {test_metric or 'score'}", False, 3),
        ):
            ranked = sorted((r for r in group if r.get(f"{key}_mean") is not None), key=lambda r: r[f"{key}_mean"], reverse=not lower_is_better)
            if len(ranked) < 2:
                continue
            best, second = ranked[0], ranked[1]
            if best[f"{key}_mean"] == ranked[-1][f"{key}_mean"]:  # no method stands out: say so, name none
                facts.append(f"all {len(ranked)} methods tie on {name} at budget {budget_text} "
                             f"({best[f'{key}_mean']:.{digits}f})")
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


def _ledger_section(report: _Report, ledger: dict | None, source: str) -> None:
    if not ledger:
        report.notes.append(f"no compute ledger ({source}): the cost table is skipped")
        return
    phi = ledger.get("phi") or {}
    phases = ledger.get("phases") or {}
    body = [[name.replace("_", " "), _format_number(p.get("seconds"), 1), _format_number(p.get("tokens"), 0), _format_number(p.get("phi"), 3)] for name, p in phases.items()]
    total_seconds = sum(p.get("seconds") or 0.0 for p in phases.values())
    total_tokens = sum(p.get("tokens") or 0 for p in phases.values())
    total_phi = sum(p.get("phi") or 0.0 for p in phases.values())
    body.append(["**total**", _format_number(total_seconds, 1), _format_number(total_tokens, 0), _format_number(total_phi, 3)])
    body.append(["Φ = one full-data run (estimated)", _format_number(phi.get("seconds"), 1), _format_number(phi.get("tokens"), 0), "1.000"])
    report.facts.append(f"compute: all phases together cost {total_phi:.3f} Φ in training tokens ({total_tokens:,} tokens, {total_seconds:.1f} s)")
    elapsed = [f"{name.replace('_', ' ')} took {p['wall_seconds']:.1f} s elapsed for {p.get('seconds') or 0.0:.1f} s of compute"
               for name, p in phases.items() if p.get("wall_seconds") is not None]
    report.section(
        "Compute ledger",
        "Φ is the estimated cost of one full-data fine-tuning run (the paper's unit); a phase's Φ is its tokens / Φ's tokens. "
        "Seconds are compute, summed over rollout workers" + (f" ({'; '.join(elapsed)})." if elapsed else "."),
        _markdown_table(["phase", "seconds", "tokens", "Φ"], body),
    )


def _selection_section(report: _Report, method: str, records: list[dict], reference: dict, scope: str) -> None:
    """'What RAISE selected': top sources per stage, labelled shares against the pool."""
    if not records:
        report.notes.append(f"{method} made no recorded selections: the selection analysis is skipped")
        return
    has_labels = {label: any(r[label] is not None for r in records) for label in ("helpful", "corrupted")}
    headers = ["stage (training progress)", "examples", "top sources (share)"] + [f"{label} share" for label, has in has_labels.items() if has]
    stages = sorted({r["stage"] for r in records})
    body = []
    for stage in stages:
        in_stage = [r for r in records if r["stage"] == stage]
        shares = _shares(r["source"] for r in in_stage)
        top = ", ".join(f"{name} {share:.0%}" for name, share in list(shares.items())[:3])
        body.append([in_stage[0]["stage_label"], str(len(in_stage)), top] + [_format_share(in_stage, label) for label, has in has_labels.items() if has])
    if reference:
        pool_sources = reference.get("source", {}).get("shares", {})
        top = ", ".join(f"{name} {share:.0%}" for name, share in list(pool_sources.items())[:3]) or "—"
        body.append(["*pool*", "", top] + [_reference_share(reference, label) for label, has in has_labels.items() if has])
    first = [r for r in records if r["stage"] == stages[0]]
    last = [r for r in records if r["stage"] == stages[-1]]
    for label, has in has_labels.items():
        if has:
            fact = f"{method}: {label} share of selected examples {_format_share(first, label)} in stage {first[0]['stage_label']} → {_format_share(last, label)} in stage {last[0]['stage_label']}"
            if label in reference:
                fact += f"; {_reference_share(reference, label)}"
            report.facts.append(fact)
    plot = _plot_selection_composition(records, reference, method, report.plot_path(f"selection_{method}"))
    report.section(
        f"What {method} selected",
        f"Composition of the selected examples by training stage ({scope}; {len(records)} selections).",
        _markdown_table(headers, body),
        report.image(plot, f"{method} selection composition by training stage"),
    )


def _score_driver_section(report: _Report, explain: list[dict] | None) -> None:
    if not explain:
        report.notes.append("no explain.csv: the score-driver analysis is skipped")
        return
    features, stages, correlations = _score_correlations(explain)
    if not features or not stages:
        report.notes.append("explain.csv has no numeric feature or score@ columns: the score-driver analysis is skipped")
        return
    # Features ranked by their strongest correlation at any stage (undefined ones last).
    order = np.argsort(-np.nan_to_num(np.abs(correlations)).max(axis=1))
    body = [[features[i]] + [_format_number(correlations[i, j], 3) for j in range(len(stages))] for i in order[:TOP_FEATURES]]
    defined = [i for i in order[:TOP_FEATURES] if not np.isnan(correlations[i]).all()]  # constant columns have no rho
    plot = None
    if defined:
        best = defined[0]
        best_stage = int(np.argmax(np.nan_to_num(np.abs(correlations[best]))))
        report.facts.append(
            f"RAISE score: most correlated feature is {features[best]} (Spearman {correlations[best, best_stage]:+.3f} at stage {stages[best_stage]})"
        )
        plot = _plot_score_drivers(explain, features, stages, correlations, defined, best_stage, report.plot_path("score_drivers"))
    else:
        report.notes.append("every feature in explain.csv is constant or the scores are: the score-driver plot is skipped")
    report.section(
        "What drives the RAISE score",
        f"Spearman correlation of each feature with the acquisition score at training stage t/T (top {min(TOP_FEATURES, len(features))} of {len(features)} features by largest |rho|; {len(explain)} pool examples).",
        _markdown_table(["feature"] + [f"rho @ {s}" for s in stages], body),
        report.image(plot, "feature correlation with the RAISE score"),
    )


def _episode_head_fact(report: _Report, selector_dir: Path) -> None:
    """One fact: the deployed episode head's weights by column (selector.json's provenance), largest first."""
    head = _read_json_optional(selector_dir / "selector.json").get("provenance", {}).get("episode_head")
    if head:
        weights = ", ".join(f"{name} {weight:+.2f}" for name, weight in sorted(head.items(), key=lambda kv: -abs(kv[1])))
        report.facts.append(f"RAISE episode head (weights on z-scored columns, as deployed): {weights}")


def _ppo_section(report: _Report, episodes: list[dict]) -> None:
    if not episodes:
        report.notes.append("episodes.jsonl is empty: the PPO learning curve is skipped")
        return
    returns = [e.get("return") for e in episodes]
    best = max(range(len(episodes)), key=lambda i: returns[i] if returns[i] is not None else -math.inf)
    report.facts.append(
        f"PPO: episode return {_format_number(returns[0], 4)} (episode {episodes[0].get('episode')}) → "
        f"{_format_number(returns[-1], 4)} (episode {episodes[-1].get('episode')}); best {_format_number(returns[best], 4)} at episode {episodes[best].get('episode')}"
    )
    columns = ["episode", "return", "validation_loss_initial", "validation_loss_final", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "seconds"]
    shown = episodes if len(episodes) <= 10 else episodes[:5] + episodes[-5:]
    body = [[_format_number(e.get(c), 0 if c == "episode" else (1 if c == "seconds" else 4)) for c in columns] for e in shown]
    plot = _plot_ppo_curve(episodes, report.plot_path("ppo_learning_curve"))
    report.section(
        "Selector training (PPO)",
        _markdown_table([c.replace("_", " ") for c in columns], body) + ("\n\n(first and last 5 episodes shown)" if len(episodes) > 10 else ""),
        report.image(plot, "PPO learning curve"),
    )


# ----------------------------------------------------------------------------- data shaping


def _load_run(path: Path) -> dict | None:
    """One finetune folder as plain data; optional files come back empty. None if it is no run folder."""
    if not (path / "metrics.jsonl").is_file():
        return None
    explain_path = path / "explain.csv"
    return {
        "path": path,
        "config": _read_config(path),
        "summary": _read_json_optional(path / "summary.json"),
        "metrics": _read_jsonl(path / "metrics.jsonl"),
        "selections": _read_jsonl(path / "selections.jsonl") if (path / "selections.jsonl").is_file() else [],
        "evaluation": _read_json_optional(path / "evaluation.json"),
        "ledger": _read_json_optional(path / "ledger.json"),
        "explain": _read_explain(explain_path) if explain_path.is_file() else None,
    }


def _run_result_row(run: dict, method: str) -> dict:
    """A single run in the per-run row format of compare's results.json."""
    summary, evaluation, metrics = run["summary"], run["evaluation"], run["metrics"]
    test = evaluation.get("test") or {}
    curve = _validation_curve(metrics)
    last = metrics[-1] if metrics else {}
    return {
        "method": method,
        "budget": summary.get("budget_fraction"),
        "seed": summary.get("seed"),
        "validation_loss": evaluation.get("validation_loss_final", curve[1][-1] if len(curve[1]) else None),
        "test_metric": test.get("metric"),
        "test_score": test.get("exact_match", test.get("accuracy")),
        "steps": last.get("step"),
        "tokens": last.get("tokens"),
        "seconds": last.get("seconds"),
    }


def _validation_curve(metrics: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    points = [(m["step"], m["validation_loss"]) for m in metrics if m.get("validation_loss") is not None]
    steps, losses = zip(*points) if points else ((), ())
    return np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)


class _Curve(NamedTuple):
    """One line of the validation-loss plot: a run, or the mean (± std) of a method's seeds."""

    label: str
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray | None  # None for a single run
    method: str  # lines of one method share a colour ...
    budget: Any  # ... and lines of one budget share a line style


def _mean_curves(runs: list[tuple[str, Any, Any, list[dict]]], label_budget: bool) -> list[_Curve]:
    """Per (method, budget): mean and std of validation loss over seeds, on a shared step grid.

    Seeds normally share an evaluation schedule; when they do not, each curve is interpolated onto
    the union of their steps within the range all of them cover.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for method, budget, steps, metrics in runs:
        curve = _validation_curve(metrics)
        if len(curve[0]):
            groups[(method, budget, steps)].append(curve)
    series = []
    for (method, budget, steps), curves in groups.items():
        low, high = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
        grid = np.unique(np.concatenate([c[0] for c in curves]))
        grid = grid[(grid >= low) & (grid <= high)]
        values = np.stack([np.interp(grid, *c) for c in curves])
        std = values.std(axis=0, ddof=1) if len(curves) > 1 else None
        label = f"{method} @ {_format_budget(budget, steps)}" if label_budget else method
        series.append(_Curve(f"{label} (n={len(curves)})", grid, values.mean(axis=0), std, method, budget))
    return series


def _selection_records(run: dict) -> list[dict]:
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
                    **{key: _item(selection, key, i) for key in _SELECTION_FIELDS},
                }
            )
    return records


# selections.jsonl list field holding each per-example label
_SELECTION_FIELDS = {"source": "sources", "family": "families", "cluster": "clusters", "helpful": "helpful", "corrupted": "corrupted"}


def _item(selection: dict, key: str, i: int) -> Any:
    values = selection.get(_SELECTION_FIELDS[key])
    return values[i] if values and i < len(values) else None


def _pool_reference(explain: list[dict] | None, random_records: list[dict]) -> dict:
    """{key: {"shares": {value: share}, "label": where from}} to compare selections against.

    The pool itself (explain.csv rows) where it has the column; otherwise, for the helpful /
    corrupted labels, random's picks, which are an unbiased sample of the pool.
    """
    reference = {}
    for key in _SELECTION_FIELDS:
        if explain and key in explain[0] and any(row[key] not in ("", None) for row in explain):
            reference[key] = {"shares": _shares(_parse_cell(row[key]) for row in explain), "label": "pool"}
        elif key in ("helpful", "corrupted") and any(r[key] is not None for r in random_records):
            reference[key] = {"shares": _shares(r[key] for r in random_records if r[key] is not None), "label": "pool, estimated from random's picks"}
    return reference


def _score_correlations(explain: list[dict]) -> tuple[list[str], list[str], np.ndarray]:
    """Spearman rho [feature, stage] between each numeric feature column and each score@ column."""
    columns = list(explain[0])
    stages = [c[len(_SCORE_PREFIX):] for c in columns if c.startswith(_SCORE_PREFIX)]
    candidates = [c for c in columns if c not in _EXPLAIN_LABEL_COLUMNS and not c.startswith(_SCORE_PREFIX)]
    features = [c for c in candidates if _numeric_column(explain, c) is not None]
    if not features or not stages:
        return features, stages, np.zeros((len(features), len(stages)))
    feature_ranks = rankdata(np.stack([_numeric_column(explain, c) for c in features], axis=1), axis=0)
    score_ranks = rankdata(np.stack([_numeric_column(explain, _SCORE_PREFIX + s) for s in stages], axis=1), axis=0)
    # Spearman = Pearson on ranks; constant columns have no defined correlation (NaN, drawn as 0).
    feature_ranks -= feature_ranks.mean(axis=0)
    score_ranks -= score_ranks.mean(axis=0)
    norms = np.outer(np.linalg.norm(feature_ranks, axis=0), np.linalg.norm(score_ranks, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlations = (feature_ranks.T @ score_ranks) / norms
    return features, stages, correlations


def _numeric_column(rows: list[dict], column: str) -> np.ndarray | None:
    try:
        return np.asarray([float(row[column]) for row in rows])
    except (TypeError, ValueError):
        return None


def _shares(values) -> dict:
    """{value: share}, most common first."""
    counts = Counter(values)
    total = sum(counts.values())
    return {value: count / total for value, count in counts.most_common()} if total else {}


def _reference_share(reference: dict, label: str) -> str:
    """Share of True for a boolean label in the reference, with where it came from."""
    if label not in reference:
        return "—"
    return f"{reference[label]['shares'].get(True, 0.0):.0%} ({reference[label]['label']})"


def _format_share(records: list[dict], label: str) -> str:
    labelled = [r[label] for r in records if r[label] is not None]
    return f"{sum(labelled) / len(labelled):.0%}" if labelled else "—"


# ----------------------------------------------------------------------------- plots


@contextlib.contextmanager
def _figure(path: Path, title: str, n_panels: int = 1, panel_size: tuple[float, float] = (6.0, 4.2), columns: int = 2) -> Iterator[list]:
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


def _plot_validation_curves(series: list[_Curve], path: Path, title: str) -> Path | None:
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
            axis.plot(curve.steps, curve.mean, style, color=color, marker="o" if len(curve.steps) <= 30 else None, markersize=3, label=curve.label)
            if curve.std is not None:
                axis.fill_between(curve.steps, curve.mean - curve.std, curve.mean + curve.std, color=color, alpha=0.15)
        axis.set_xlabel("optimizer step (updates)")
        axis.set_ylabel(_LOSS_AXIS)
        if len(series) > 4:  # many lines: keep the legend off the curves
            axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return path


def _plot_test_scores(summary: list[dict], test_metric: str | None, path: Path) -> Path | None:
    rows = [r for r in summary if r.get("test_score_mean") is not None]
    if not rows:
        return None
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = list(dict.fromkeys(r.get("budget") for r in rows))
    width = 0.8 / len(budgets)
    only_budget = f" at budget {_format_budget(budgets[0], rows[0].get('steps'))}" if len(budgets) == 1 else ""
    with _figure(path, f"Test {test_metric or 'score'} per method{only_budget} (mean ± std over seeds)") as (axis,):
        for b, budget in enumerate(budgets):
            by_method = {r["method"]: r for r in rows if r.get("budget") == budget}
            x = [m + (b - (len(budgets) - 1) / 2) * width for m, method in enumerate(methods) if method in by_method]
            means = [by_method[m]["test_score_mean"] for m in methods if m in by_method]
            stds = [by_method[m].get("test_score_std") or 0.0 for m in methods if m in by_method]
            steps = next(iter(by_method.values())).get("steps")
            axis.bar(x, means, width, yerr=stds, capsize=4, label=f"budget {_format_budget(budget, steps)}")
        axis.set_xticks(range(len(methods)), methods)
        axis.set_xlabel("selection method")
        axis.set_ylabel(f"test {test_metric or 'score'} (fraction correct)")
    return path


def _plot_selection_composition(records: list[dict], reference: dict, method: str, path: Path) -> Path:
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
                shares = [100 * np.mean([r[label] for r in records if r["stage"] == s and r[label] is not None] or [np.nan]) for s in stages]
                line = axis.plot(stage_labels, shares, marker="o", label=f"{label} (selected)")[0]
                if label in reference:
                    share = reference[label]["shares"].get(True, 0.0)
                    axis.axhline(100 * share, color=line.get_color(), linestyle="--", label=f"{label} ({reference[label]['label']})")
            axis.set_ylim(0, 100)
            axis.tick_params(axis="x", labelrotation=30)
            axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
            axis.set_title("Helpful / corrupted share of the selection")
            axis.set_xlabel(_STAGE_AXIS)
            axis.set_ylabel(_SHARE_AXIS)
    return path


def _stacked_shares(axis, records, key, stages, stage_labels, pool_shares) -> None:
    """One panel: per stage bin, the share of each category (top ones; the rest pooled as 'other')."""
    overall = _shares(_category(r[key], key) for r in records)
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
        values = np.array([
            100 * (col[category] if category != "other" else sum(v for c, v in col.items() if c not in categories)) / (sum(col.values()) or 1)
            for col in columns
        ])
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


def _plot_ppo_curve(episodes: list[dict], path: Path) -> Path:
    episode = [e.get("episode", i) for i, e in enumerate(episodes)]
    as_array = lambda key: np.array([np.nan if e.get(key) is None else e[key] for e in episodes], dtype=float)  # noqa: E731
    with _figure(path, "Selector training: PPO learning curve", 2) as (return_axis, loss_axis):
        return_axis.plot(episode, as_array("return"), marker="o", markersize=3)
        return_axis.set_title("Episode return (total validation-loss drop)")
        return_axis.set_xlabel("episode")
        return_axis.set_ylabel("return (reward units)")
        loss_axis.plot(episode, as_array("validation_loss_final"), marker="o", markersize=3, label="end of episode")
        loss_axis.plot(episode, as_array("validation_loss_initial"), linestyle="--", label="start of episode (base model)")
        loss_axis.set_title("Validation loss per episode")
        loss_axis.set_xlabel("episode")
        loss_axis.set_ylabel(_LOSS_AXIS)
    return path


def _plot_score_drivers(explain, features, stages, correlations, order, best_stage: int, path: Path) -> Path:
    """Grouped bars of rho per feature (in ``order``) and stage; scatter of the score vs feature ``order[0]``."""
    best = order[0]
    height = 0.8 / len(stages)
    with _figure(path, "What drives the RAISE acquisition score", 2, panel_size=(6.5, max(4.2, 0.35 * len(order) + 1.5))) as (bar_axis, scatter_axis):
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
        feature_values = _numeric_column(explain, features[best])
        scores = _numeric_column(explain, _SCORE_PREFIX + stages[best_stage])
        sources = [row.get("source", "") for row in explain]
        groups = list(dict.fromkeys(sources)) if len(set(sources)) <= TOP_CATEGORIES else [None]
        for group in groups:
            mask = np.array([group is None or s == group for s in sources])
            scatter_axis.scatter(feature_values[mask], scores[mask], s=12 if len(explain) <= 1000 else 4, alpha=0.6, label=group if group is not None else None)
        scatter_axis.set_title(f"Score vs {features[best]} (rho {correlations[best, best_stage]:+.2f}, t/T = {stages[best_stage]})")
        scatter_axis.set_xlabel(f"{features[best]} (feature value)")
        scatter_axis.set_ylabel(f"acquisition score at t/T = {stages[best_stage]} (policy logit)")
    return path


# ----------------------------------------------------------------------------- reading & formatting


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}); re-run the command that wrote it") from None


def _read_json_optional(path: Path) -> dict:
    return _read_json(path) if path.is_file() else {}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path} line {number} is not valid JSON; re-run the command that wrote it") from None
    return rows


def _read_explain(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _read_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML; re-run the command that wrote it") from None


def _get(config: dict, section: str, key: str) -> Any:
    value = config.get(section)
    return value.get(key) if isinstance(value, dict) else None


def _parse_cell(value: str) -> Any:
    """CSV cells of label columns: 'True'/'False' -> bool, '' -> None, else the text."""
    return {"true": True, "false": False, "": None}.get(str(value).strip().lower(), value)


def _mean_std(values: list) -> tuple[float | None, float | None]:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return float(np.mean(present)), (float(np.std(present, ddof=1)) if len(present) > 1 else 0.0)


def _format_budget(budget: float | None, steps: Any = None) -> str:
    if budget is None:
        return f"{steps} steps" if steps is not None else "—"
    return f"{budget * 100:g}%"


def _format_mean_std(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {(std or 0.0):.{digits}f}"


def _format_number(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}" if digits else f"{round(value):,}"


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    escape = lambda cell: str(cell).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(escape, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return "\n".join(lines)
