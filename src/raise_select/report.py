"""Reports: ``report.md`` and PNG plots for the folders that finetune, compare and train-selector write.

``write_report(run_dir)`` detects the folder kind from the file it holds (``results.json`` for a
comparison, ``metrics.jsonl`` for one fine-tuning run, ``episodes.jsonl`` for selector training),
reads it with :mod:`run_folders`, and writes ``run_dir/report.md`` and PNGs under ``run_dir/plots/``
(statistics from :mod:`analysis`, figures from :mod:`plots`). Every optional file may be missing;
its section is then skipped with a one-line note. The "Reading" section states only facts that can
be checked against the tables (which method is lowest, by how much, against which std).
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import (
    Curve,
    format_budget,
    format_number,
    format_results_table,
    format_selector_seed_table,
    format_share,
    gap_sentence,
    markdown_table,
    mean_curves,
    oracle_gaps,
    pool_reference,
    ranking_facts,
    reference_share,
    score_correlations,
    selection_records,
    selector_seed_breakdown,
    stage_view,
    summarize,
    validation_curve,
    value_shares,
)
from .errors import UserError
from .io_utils import make_dirs, user_path, write_text
from .plots import (
    plot_ppo_curve,
    plot_score_drivers,
    plot_selection_composition,
    plot_test_scores,
    plot_validation_curves,
)
from .run_folders import (
    EPISODES_FILE,
    LEDGER_FILE,
    METRICS_FILE,
    PLOTS_DIR,
    REPORT_FILE,
    RESULTS_JSON,
    SELECTOR_DIR,
    SKIPPED_COUNT,
    SKIPPED_FIRST,
    load_run,
    output_lock,
    read_config,
    read_episodes,
    read_selector_metadata,
    read_shaped_json,
    result_row,
    selector_trainings,
    skipped_records_note,
)

TOP_FEATURES = 12  # features shown in the score-driver bars (ranked by their largest |rho|)
_NOT_A_RUN = (
    f"{{path}} is not a raise-select run folder (no {METRICS_FILE}, {RESULTS_JSON} or {EPISODES_FILE}); "
    "pass a folder written by finetune, compare or train-selector"
)


def detect_kind(run_dir: Path) -> str:
    """'compare', 'finetune' or 'train-selector', from the marker file the folder holds."""
    for marker, kind in ((RESULTS_JSON, "compare"), (METRICS_FILE, "finetune"), (EPISODES_FILE, "train-selector")):
        if (Path(run_dir) / marker).is_file():
            return kind
    raise UserError(_NOT_A_RUN.format(path=run_dir))


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` (and ``run_dir/plots/*.png``); return the report's path."""
    run_dir = Path(run_dir)
    kind = detect_kind(run_dir)
    with output_lock(run_dir, "report"):
        report = _Report(run_dir)
        try:
            {"compare": _compare_report, "finetune": _finetune_report, "train-selector": _selector_report}[kind](report)
            text = report.render()
            report.publish_plots()  # only once every file has been read: a refused report changes nothing
            return write_text(run_dir / REPORT_FILE, text)
        finally:
            shutil.rmtree(report.plots_dir, ignore_errors=True)


class _Report:
    """Collects sections, facts for the "Reading" section, notes about skipped parts, and plots."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.plots_dir = run_dir / f".{PLOTS_DIR}.{secrets.token_hex(4)}.tmp"  # staged: see publish_plots
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
        return f"![{caption}]({PLOTS_DIR}/{path.name})" if path else ""

    def publish_plots(self) -> None:
        """Move the staged plots into ``plots/`` (each an atomic rename)."""
        staged = sorted(self.plots_dir.glob("*.png")) if self.plots_dir.is_dir() else []
        if staged:
            target = make_dirs(self.run_dir / PLOTS_DIR)
            with user_path(target, "write"):
                for plot in staged:
                    os.replace(plot, target / plot.name)

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
    results = read_shaped_json(run_dir / RESULTS_JSON)
    rows = results.get("rows") or []
    summary = results.get("summary") or summarize(rows)
    test_metric = next((r["test_metric"] for r in rows if r.get("test_metric")), None)
    runs = [(row, load_run(run_dir / row["run_dir"])) for row in rows if row.get("run_dir")]
    missing = [row["run_dir"] for row, run in runs if run is None]
    if missing:
        report.notes.append(f"run folders not found (their curves and selections are left out): {', '.join(missing)}")
    runs = [(row, run) for row, run in runs if run is not None]
    config = read_config(run_dir)

    report.title = "raise-select report: comparison"
    first_summary = next((run["summary"] for _, run in runs if run["summary"]), {})
    methods = list(dict.fromkeys(r["method"] for r in summary))
    budgets = list(dict.fromkeys(format_budget(r.get("budget"), r.get("steps")) for r in summary))
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    # Run-independent fields only: budgets differ between the runs of a comparison.
    shared = ("model", "target", "pool_size", "batch_size", SKIPPED_COUNT, SKIPPED_FIRST)
    shared_summary = {key: first_summary.get(key) for key in shared}
    report.what_was_run = _describe_setup(config, shared_summary) + [
        f"methods: {', '.join(methods)}",
        f"budgets: {', '.join(budgets)} of full-data steps",
        f"seeds: {', '.join(map(str, seeds)) or 'unknown'}",
    ]

    report.facts.extend(ranking_facts(summary, test_metric))
    gaps = results.get("oracle_gap")
    report.facts.extend(gap_sentence(g) for g in (oracle_gaps(summary) if gaps is None else gaps))
    by_selector_seed = results.get("selector_seeds") or selector_seed_breakdown(rows)
    curves = mean_curves(
        [(row["method"], row.get("budget"), row.get("steps"), run["metrics"]) for row, run in runs], len(budgets) > 1
    )
    curve_plot = plot_validation_curves(
        curves, report.plot_path("validation_loss"), "Validation loss during fine-tuning (mean ± std over seeds)"
    )
    score_plot = plot_test_scores(summary, test_metric, report.plot_path("test_metric"))
    if score_plot is None:
        report.notes.append("no test scores in results.json: the test-metric plot is skipped")
    report.section(
        "Results",
        format_results_table(summary, test_metric),
        ("RAISE per selector-training seed:\n\n" + format_selector_seed_table(by_selector_seed))
        if by_selector_seed
        else "",
        report.image(curve_plot, "validation loss vs optimizer step"),
        report.image(score_plot, "test metric per method"),
    )
    _ledger_section(report, results.get("ledger"), RESULTS_JSON)

    _stage_view_section(report, runs)
    raise_runs = [run for row, run in runs if row["method"] == "raise"]
    random_selections = [selection_records(run) for row, run in runs if row["method"] == "random"]
    explain = next((run["explain"] for run in raise_runs if run["explain"]), None)
    if raise_runs:
        records = [record for run in raise_runs for record in selection_records(run)]
        reference = pool_reference(explain, [r for records in random_selections for r in records])
        _selection_section(report, "raise", records, reference, f"pooled over {len(raise_runs)} RAISE run(s)")
    else:
        report.notes.append("no RAISE runs in this comparison: the selection analysis is skipped")
    _score_driver_section(report, explain)
    training_dirs = selector_trainings(run_dir)
    if training_dirs:  # the first selector seed's training (every seed's folder holds its own episodes.jsonl)
        _ppo_section(report, read_episodes(training_dirs[0]))
        _episode_head_fact(report, training_dirs[0] / SELECTOR_DIR)
    else:
        report.notes.append("no selector-s*/episodes.jsonl: the PPO learning curve is skipped")


def _finetune_report(report: _Report) -> None:
    run = load_run(report.run_dir)
    summary = run["summary"]
    method = summary.get("method") or run["config"].get("selector") or "run"
    report.title = (
        f"raise-select report: fine-tuning run ({method}, seed {summary.get('seed', run['config'].get('seed', '?'))})"
    )
    report.what_was_run = _describe_setup(run["config"], summary) + [f"selector: {method}"]

    row = result_row(run, method)
    curve = validation_curve(run["metrics"])
    if len(curve[0]) >= 2:
        report.facts.append(
            f"{method}: validation loss {curve[1][0]:.4f} at step {curve[0][0]:g} → {curve[1][-1]:.4f} at step {curve[0][-1]:g}"
        )
    if row.get("test_score") is not None:
        report.facts.append(f"{method}: test {row['test_metric']} {row['test_score']:.3f}")
    if not run["evaluation"]:
        report.notes.append("no evaluation.json: the test metric is missing from the table")
    curve_plot = plot_validation_curves(
        [Curve(method, curve[0], curve[1], None, method, summary.get("budget_fraction"))],
        report.plot_path("validation_loss"),
        f"Validation loss during fine-tuning ({method})",
    )
    report.section(
        "Results",
        format_results_table(summarize([row]), row.get("test_metric")),
        report.image(curve_plot, "validation loss vs optimizer step"),
    )
    _ledger_section(report, run["ledger"], LEDGER_FILE)
    if run["selections"]:
        _selection_section(report, method, selection_records(run), pool_reference(run["explain"], []), "this run")
    else:
        report.notes.append("no selections.jsonl: the selection analysis is skipped")
    _score_driver_section(report, run["explain"])


def _selector_report(report: _Report) -> None:
    episodes = read_episodes(report.run_dir)
    config = read_config(report.run_dir)
    report.title = "raise-select report: selector training (PPO)"
    report.what_was_run = _describe_setup(config, {}) + [f"episodes recorded: {len(episodes)}"]
    _ppo_section(report, episodes)
    _episode_head_fact(report, report.run_dir / SELECTOR_DIR)


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
        lines.append(
            f"budget: {summary['budget_steps']} optimizer steps"
            + (f" ({format_budget(fraction)} of full-data steps)" if fraction is not None else "")
        )
    if summary.get(SKIPPED_COUNT):
        lines.append(skipped_records_note(summary[SKIPPED_COUNT], summary.get(SKIPPED_FIRST) or []))
    if not config:
        lines.append("config.yaml not found: setup taken from summary files only")
    return lines


def _ledger_section(report: _Report, ledger: dict | None, source: str) -> None:
    if not ledger:
        report.notes.append(f"no compute ledger ({source}): the cost table is skipped")
        return
    phi = ledger.get("phi") or {}
    phases = ledger.get("phases") or {}
    body = [
        [
            name.replace("_", " "),
            format_number(p.get("seconds"), 1),
            format_number(p.get("tokens"), 0),
            format_number(p.get("phi"), 3),
        ]
        for name, p in phases.items()
    ]
    total_seconds = sum(p.get("seconds") or 0.0 for p in phases.values())
    total_tokens = sum(p.get("tokens") or 0 for p in phases.values())
    total_phi = sum(p.get("phi") or 0.0 for p in phases.values())
    body.append(
        ["**total**", format_number(total_seconds, 1), format_number(total_tokens, 0), format_number(total_phi, 3)]
    )
    body.append(
        [
            "Φ = one full-data run (estimated)",
            format_number(phi.get("seconds"), 1),
            format_number(phi.get("tokens"), 0),
            "1.000",
        ]
    )
    report.facts.append(
        f"compute: all phases together cost {total_phi:.3f} Φ in training tokens ({total_tokens:,} tokens, {total_seconds:.1f} s)"
    )
    elapsed = [
        f"{name.replace('_', ' ')} took {p['wall_seconds']:.1f} s elapsed for {p.get('seconds') or 0.0:.1f} s of compute"
        for name, p in phases.items()
        if p.get("wall_seconds") is not None
    ]
    report.section(
        "Compute ledger",
        "Φ is the estimated cost of one full-data fine-tuning run (the paper's unit); a phase's Φ is its tokens / Φ's tokens. "
        "Seconds are compute, summed over rollout workers" + (f" ({'; '.join(elapsed)})." if elapsed else "."),
        markdown_table(["phase", "seconds", "tokens", "Φ"], body),
    )


def _stage_view_section(report: _Report, runs: list[tuple[dict, dict]]) -> None:
    """Every method's picks per fifth of the run, by family (labelled pools) or source, pooled over its runs."""
    by_method: dict[str, list[dict]] = {}
    for row, run in runs:
        if row["method"] != "full":  # full data: the pool's own shares at every stage
            by_method.setdefault(row["method"], []).extend(selection_records(run))
    view = stage_view({method: records for method, records in by_method.items() if records})
    if view is None:
        return
    key, table = view
    report.section(
        "Picks by training stage",
        f"Share of each {key} in what each method trained on, per fifth of the run (pooled over its runs; "
        "full data, which follows the pool, is left out).",
        table,
    )


def _selection_section(report: _Report, method: str, records: list[dict], reference: dict, scope: str) -> None:
    """'What RAISE selected': top sources per stage, labelled shares against the pool."""
    if not records:
        report.notes.append(f"{method} made no recorded selections: the selection analysis is skipped")
        return
    has_labels = {label: any(r[label] is not None for r in records) for label in ("helpful", "corrupted")}
    headers = ["stage (training progress)", "examples", "top sources (share)"] + [
        f"{label} share" for label, has in has_labels.items() if has
    ]
    stages = sorted({r["stage"] for r in records})
    body = []
    for stage in stages:
        in_stage = [r for r in records if r["stage"] == stage]
        shares = value_shares(r["source"] for r in in_stage)
        top = ", ".join(f"{name} {share:.0%}" for name, share in list(shares.items())[:3])
        body.append(
            [in_stage[0]["stage_label"], str(len(in_stage)), top]
            + [format_share(in_stage, label) for label, has in has_labels.items() if has]
        )
    if reference:
        pool_sources = reference.get("source", {}).get("shares", {})
        top = ", ".join(f"{name} {share:.0%}" for name, share in list(pool_sources.items())[:3]) or "—"
        body.append(
            ["*pool*", "", top] + [reference_share(reference, label) for label, has in has_labels.items() if has]
        )
    first = [r for r in records if r["stage"] == stages[0]]
    last = [r for r in records if r["stage"] == stages[-1]]
    for label, has in has_labels.items():
        if has:
            fact = f"{method}: {label} share of selected examples {format_share(first, label)} in stage {first[0]['stage_label']} → {format_share(last, label)} in stage {last[0]['stage_label']}"
            if label in reference:
                fact += f"; {reference_share(reference, label)}"
            report.facts.append(fact)
    plot = plot_selection_composition(records, reference, method, report.plot_path(f"selection_{method}"))
    report.section(
        f"What {method} selected",
        f"Composition of the selected examples by training stage ({scope}; {len(records)} selections).",
        markdown_table(headers, body),
        report.image(plot, f"{method} selection composition by training stage"),
    )


def _score_driver_section(report: _Report, explain: list[dict] | None) -> None:
    if not explain:
        report.notes.append("no explain.csv: the score-driver analysis is skipped")
        return
    features, stages, correlations = score_correlations(explain)
    if not features or not stages:
        report.notes.append(
            "explain.csv has no numeric feature or score@ columns: the score-driver analysis is skipped"
        )
        return
    # Features ranked by their strongest correlation at any stage (undefined ones last).
    order = np.argsort(-np.nan_to_num(np.abs(correlations)).max(axis=1))
    body = [
        [features[i]] + [format_number(correlations[i, j], 3) for j in range(len(stages))] for i in order[:TOP_FEATURES]
    ]
    defined = [i for i in order[:TOP_FEATURES] if not np.isnan(correlations[i]).all()]  # constant columns have no rho
    plot = None
    if defined:
        best = defined[0]
        best_stage = int(np.argmax(np.nan_to_num(np.abs(correlations[best]))))
        report.facts.append(
            f"RAISE score: most correlated feature is {features[best]} (Spearman {correlations[best, best_stage]:+.3f} at stage {stages[best_stage]})"
        )
        plot = plot_score_drivers(
            explain, features, stages, correlations, defined, best_stage, report.plot_path("score_drivers")
        )
    else:
        report.notes.append(
            "every feature in explain.csv is constant or the scores are: the score-driver plot is skipped"
        )
    report.section(
        "What drives the RAISE score",
        f"Spearman correlation of each feature with the acquisition score at training stage t/T (top {min(TOP_FEATURES, len(features))} of {len(features)} features by largest |rho|; {len(explain)} pool examples).",
        markdown_table(["feature"] + [f"rho @ {s}" for s in stages], body),
        report.image(plot, "feature correlation with the RAISE score"),
    )


def _episode_head_fact(report: _Report, selector_dir: Path) -> None:
    """One fact: the deployed episode head's weights by column (selector.json's provenance), largest first."""
    provenance = read_selector_metadata(selector_dir).get("provenance", {})
    parts = (
        ("episode_head", "RAISE episode head (weights on z-scored columns, as deployed)"),
        ("episode_head_stage", "RAISE stage head (change of each weight from progress 0 to 1)"),
    )
    for key, label in parts:
        head = provenance.get(key)
        if head:
            weights = ", ".join(
                f"{name} {weight:+.2f}" for name, weight in sorted(head.items(), key=lambda kv: -abs(kv[1]))
            )
            report.facts.append(f"{label}: {weights}")
    restarts = provenance.get("restarts")
    if restarts:  # raise.restarts > 1: which training was kept, and by what
        scores = ", ".join(f"seed {s} {format_number(v, 4)}" for s, v in zip(restarts["seeds"], restarts["scores"]))
        report.facts.append(f"RAISE restarts: kept seed {restarts['kept']} of {scores} ({restarts['score']})")


def _ppo_section(report: _Report, episodes: list[dict]) -> None:
    if not episodes:
        report.notes.append("episodes.jsonl is empty: the PPO learning curve is skipped")
        return
    returns = [e.get("return") for e in episodes]
    best = max(range(len(episodes)), key=lambda i: returns[i] if returns[i] is not None else -math.inf)
    report.facts.append(
        f"PPO: episode return {format_number(returns[0], 4)} (episode {episodes[0].get('episode')}) → "
        f"{format_number(returns[-1], 4)} (episode {episodes[-1].get('episode')}); best {format_number(returns[best], 4)} at episode {episodes[best].get('episode')}"
    )
    columns = [
        "episode",
        "return",
        "validation_loss_initial",
        "validation_loss_final",
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "clip_fraction",
        "seconds",
    ]
    shown = episodes if len(episodes) <= 10 else episodes[:5] + episodes[-5:]
    body = [
        [format_number(e.get(c), 0 if c == "episode" else (1 if c == "seconds" else 4)) for c in columns] for e in shown
    ]
    plot = plot_ppo_curve(episodes, report.plot_path("ppo_learning_curve"))
    report.section(
        "Selector training (PPO)",
        markdown_table([c.replace("_", " ") for c in columns], body)
        + ("\n\n(first and last 5 episodes shown)" if len(episodes) > 10 else ""),
        report.image(plot, "PPO learning curve"),
    )


def _get(config: dict, section: str, key: str) -> Any:
    value = config.get(section)
    return value.get(key) if isinstance(value, dict) else None
