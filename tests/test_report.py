"""Reports from fake run folders written in the exact formats finetune / compare / train-selector use."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from raise_select.analysis import (
    comparison_results,
    format_results_table,
    full_data_matches,
    ranking_facts,
    results_markdown,
    stage_view,
    summarize,
)
from raise_select.errors import UserError
from raise_select.report import write_report
from raise_select.run_folders import comparison_run_dir, load_run, result_row

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BUDGET_STEPS = 10
# (method, seed) -> (final validation loss, test exact match); the table's hand-computed stats below.
FINAL = {
    ("raise", 0): (1.20, 0.40),
    ("raise", 1): (1.30, 0.50),
    ("random", 0): (1.40, 0.30),
    ("random", 1): (1.60, 0.30),
}
SOURCES = ["gsm8k", "chat", "mmlu"]
LEDGER = {
    "phi": {"steps": 1000, "tokens": 100000, "seconds": 500.0},
    "phases": {
        "features": {"seconds": 20.0, "tokens": 40000, "phi": 0.4},
        "selector_training": {"seconds": 75.0, "tokens": 150000, "phi": 1.5, "wall_seconds": 40.0},  # on 2 workers
        "finetune": {"seconds": 5.0, "tokens": 1000, "phi": 0.01},
    },
}


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _config(selector: str = "random", seed: int = 0) -> dict:
    return {
        "seed": seed,
        "selector": selector,
        "model": {"name": "synthetic-tiny"},
        "pool": {"sources": [{"name": "synthetic"}]},
        "target": {"name": "synthetic"},
        "train": {"batch_size": 4},
        "compare": {"methods": ["raise", "random"], "seeds": [0, 1], "budgets": [0.01]},
    }


def make_finetune_run(folder: Path, method: str, seed: int, with_explain: bool = True) -> Path:
    """A finetune folder: validation loss falls linearly from 2.0 to FINAL over BUDGET_STEPS steps."""
    folder.mkdir(parents=True)
    final_loss, exact_match = FINAL[(method, seed)]
    (folder / "config.yaml").write_text(yaml.safe_dump(_config(method, seed)), encoding="utf-8")
    _write_json(
        folder / "summary.json",
        {
            "method": method,
            "seed": seed,
            "budget_steps": BUDGET_STEPS,
            "budget_fraction": 0.01,
            "batch_size": 4,
            "pool_size": 60,
            "model": "synthetic-tiny",
            "target": "synthetic",
        },
    )
    metrics = [
        {
            "decision": step,
            "step": step,
            "train_loss": None if step == 0 else 2.1,
            "validation_loss": 2.0 + (final_loss - 2.0) * step / BUDGET_STEPS,
            "reward": None if step == 0 else 0.01,
            "seconds": 0.5 * step,
            "tokens": 100 * step,
        }
        for step in range(BUDGET_STEPS + 1)
    ]
    _write_jsonl(folder / "metrics.jsonl", metrics)
    rng = np.random.default_rng(seed)
    selections = []
    for decision in range(BUDGET_STEPS):
        indices = rng.choice(60, size=4, replace=False).tolist()
        # RAISE drifts from chat to gsm8k as training goes on; helpful share rises with it.
        sources = [
            "gsm8k" if (method == "raise" and i < decision // 2) else SOURCES[idx % 3] for i, idx in enumerate(indices)
        ]
        selections.append(
            {
                "decision": decision,
                "step": decision,
                "indices": indices,
                "ids": [f"ex{i}" for i in indices],
                "sources": sources,
                "families": [f"fam-{s}" for s in sources],
                "clusters": [i % 2 for i in indices],
                "helpful": [s == "gsm8k" for s in sources],
                "corrupted": [i % 7 == 0 for i in indices],
            }
        )
    _write_jsonl(folder / "selections.jsonl", selections)
    _write_json(
        folder / "evaluation.json",
        {
            "validation_loss_initial": 2.0,
            "validation_loss_final": final_loss,
            "test": {
                "metric": "exact_match",
                "n": 20,
                "test_loss": final_loss + 0.1,
                "exact_match": exact_match,
                "samples": [],
            },
        },
    )
    _write_json(folder / "ledger.json", LEDGER)
    if method == "raise" and with_explain:
        write_explain(folder / "explain.csv", seed)
    return folder


def write_explain(path: Path, seed: int = 0) -> None:
    """Pool of 60: the score follows response_loss more and more as training progresses."""
    rng = np.random.default_rng(100 + seed)
    response_loss = rng.normal(2.0, 0.5, 60)
    length = rng.integers(5, 100, 60)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "index",
                "id",
                "source",
                "cluster",
                "response_loss",
                "response_tokens",
                "constant",
                "score@0.0",
                "score@0.5",
                "score@1.0",
            ]
        )
        for i in range(60):
            noise = rng.normal()
            writer.writerow(
                [
                    i,
                    f"ex{i}",
                    SOURCES[i % 3],
                    i % 2,
                    response_loss[i],
                    length[i],
                    1.0,
                    noise,
                    0.5 * response_loss[i] + noise,
                    3 * response_loss[i] + 0.1 * noise,
                ]
            )


def make_episodes(folder: Path, n: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_jsonl(
        folder / "episodes.jsonl",
        [
            {
                "episode": e,
                "return": 0.1 * e,
                "validation_loss_initial": 2.0,
                "validation_loss_final": 2.0 - 0.1 * e,
                "seconds": 3.0,
                "updates": 4,
                "tokens": 1000,
                "policy_loss": -0.01,
                "value_loss": 0.2,
                "entropy": 1.5,
                "approx_kl": 0.001,
                "clip_fraction": 0.05,
            }
            for e in range(n)
        ],
    )


def make_compare(folder: Path, with_selector: bool = True) -> Path:
    """A comparison of raise (selector seed 0) and random over seeds 0 and 1, its results.json built from
    the run folders the way compare builds it (rows by result_row, statistics by comparison_results)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(_config()), encoding="utf-8")
    rows = []
    for method in ("raise", "random"):
        for seed in (0, 1):
            selector_seed = 0 if method == "raise" else None
            run_dir = make_finetune_run(
                comparison_run_dir(folder, method, BUDGET_STEPS, seed, selector_seed), method, seed
            )
            rows.append({**result_row(load_run(run_dir), method, folder), "selector_seed": selector_seed})
    _write_json(folder / "results.json", {**comparison_results(rows), "ledger": LEDGER})
    if with_selector:
        make_episodes(folder / "selector-s0")
    return folder


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_summarize_means_and_stds_by_hand():
    rows = [
        {
            "method": "raise",
            "budget": 0.01,
            "seed": 0,
            "validation_loss": 1.0,
            "test_metric": "exact_match",
            "test_score": 0.2,
            "steps": 10,
            "tokens": 100,
            "seconds": 1.0,
        },
        {
            "method": "raise",
            "budget": 0.01,
            "seed": 1,
            "validation_loss": 2.0,
            "test_metric": "exact_match",
            "test_score": 0.4,
            "steps": 10,
            "tokens": 300,
            "seconds": 3.0,
        },
        {
            "method": "raise",
            "budget": 0.01,
            "seed": 2,
            "validation_loss": 3.0,
            "test_metric": "exact_match",
            "test_score": None,
            "steps": 10,
            "tokens": 200,
            "seconds": 2.0,
        },
        {
            "method": "random",
            "budget": 0.01,
            "seed": 0,
            "validation_loss": 1.5,
            "test_metric": "exact_match",
            "test_score": 0.1,
            "steps": 10,
            "tokens": 100,
            "seconds": 1.0,
        },
        {
            "method": "raise",
            "budget": 0.05,
            "seed": 0,
            "validation_loss": 0.9,
            "test_metric": "exact_match",
            "test_score": 0.6,
            "steps": 50,
            "tokens": 500,
            "seconds": 5.0,
        },
    ]
    summary = summarize(rows)
    assert [(s["method"], s["budget"], s["n_seeds"]) for s in summary] == [
        ("raise", 0.01, 3),
        ("random", 0.01, 1),
        ("raise", 0.05, 1),
    ]
    raise_1 = summary[0]
    assert raise_1["validation_loss_mean"] == pytest.approx(2.0)
    assert raise_1["validation_loss_std"] == pytest.approx(1.0)  # ddof=1: sqrt((1 + 0 + 1) / 2)
    assert raise_1["test_score_mean"] == pytest.approx(0.3)  # the missing score is left out
    assert raise_1["test_score_std"] == pytest.approx(math.sqrt(0.02))
    assert raise_1["tokens_mean"] == pytest.approx(200) and raise_1["seconds_mean"] == pytest.approx(2.0)
    assert raise_1["steps"] == 10 and raise_1["test_metric"] == "exact_match"
    assert summary[1]["validation_loss_std"] == 0.0 and summary[1]["test_score_std"] == 0.0  # one seed


def test_format_results_table_markdown():
    table = format_results_table(
        summarize(
            [
                {
                    "method": "raise",
                    "budget": 0.01,
                    "seed": 0,
                    "validation_loss": 1.2,
                    "test_metric": "accuracy",
                    "test_score": None,
                    "steps": 10,
                    "tokens": 12345,
                    "seconds": 3.0,
                },
            ]
        )
    )
    lines = table.splitlines()
    assert lines[0].startswith("| method | budget |") and "test accuracy" in lines[0]
    assert lines[1].count("---") == lines[0].count("|") - 1
    assert lines[2] == "| raise | 1% | 1 | 1.2000 ± 0.0000 | — | 10 | 12,345 | 3.0 |"


def test_compare_report(tmp_path):
    folder = make_compare(tmp_path / "cmp")
    report_path = write_report(folder)
    assert report_path == folder / "report.md"
    text = report_path.read_text(encoding="utf-8")
    # hand-computed: raise 1.25 ± sqrt(0.005)=0.0707, 0.45 ± 0.0707; random 1.5 ± sqrt(0.02)=0.1414, 0.3 ± 0
    assert "| raise | 1% | 2 | 1.2500 ± 0.0707 | 0.450 ± 0.071 | 10 | 1,000 | 5.0 |" in text
    assert "| random | 1% | 2 | 1.5000 ± 0.1414 | 0.300 ± 0.000 | 10 | 1,000 | 5.0 |" in text
    assert "test exact_match" in text
    assert "raise: lowest validation loss at budget 1% (1.2500 vs random 1.5000" in text
    assert "raise: highest test exact_match at budget 1% (0.450 vs random 0.300" in text
    assert "| 1% | 0 | 1.2500 | 1.2000, 1.3000 | 1.5000 | yes |" in text  # RAISE per selector seed vs random
    assert (
        "| selector training | 75.0 | 150,000 | 1.500 |" in text and "| **total** | 100.0 | 191,000 | 1.910 |" in text
    )
    assert "selector training took 40.0 s elapsed for 75.0 s of compute" in text
    assert (
        "## What raise selected" in text
        and "## What drives the RAISE score" in text
        and "## Selector training (PPO)" in text
    )
    assert "model: synthetic-tiny" in text and "seeds: 0, 1" in text and "(60 examples)" in text
    for name in ("validation_loss", "test_metric", "selection_raise", "score_drivers", "ppo_learning_curve"):
        _assert_png(folder / "plots" / f"{name}.png")
        assert f"](plots/{name}.png)" in text  # embedded with a relative path
    # helpful share of RAISE's picks is compared against the pool share estimated from random's picks
    assert "random's picks" in text
    _assert_stage_view(text)


def test_finetune_report_with_selections_and_explain(tmp_path):
    folder = make_finetune_run(tmp_path / "run", "raise", 0)
    text = write_report(folder).read_text(encoding="utf-8")
    assert "| raise | 1% | 1 | 1.2000 ± 0.0000 | 0.400 ± 0.000 | 10 | 1,000 | 5.0 |" in text
    assert "raise: validation loss 2.0000 at step 0 → 1.2000 at step 10" in text
    # the score at the last stage is driven by response_loss (built so), and the constant column is no driver
    assert "most correlated feature is response_loss" in text
    assert "| constant | — | — | — |" in text
    # the stage table: RAISE shifts to gsm8k late in training (the fake run was built so)
    stage_rows = [line for line in text.splitlines() if line.startswith("| 80–100%")]
    assert stage_rows and "gsm8k" in stage_rows[0].split("|")[3].split(",")[0]
    assert "| *pool* |" in text  # pool shares come from explain.csv
    for name in ("validation_loss", "selection_raise", "score_drivers"):
        _assert_png(folder / "plots" / f"{name}.png")
    assert not (folder / "plots" / "ppo_learning_curve.png").exists()


def test_partial_folders_still_report(tmp_path):
    # A RAISE run without explain.csv, evaluation.json and ledger.json.
    folder = make_finetune_run(tmp_path / "run", "raise", 1, with_explain=False)
    (folder / "evaluation.json").unlink()
    (folder / "ledger.json").unlink()
    (folder / "config.yaml").unlink()
    text = write_report(folder).read_text(encoding="utf-8")
    assert "no explain.csv: the score-driver analysis is skipped" in text
    assert "no compute ledger" in text and "no evaluation.json" in text and "config.yaml not found" in text
    assert "| raise | 1% | 1 | 1.3000 ± 0.0000 | — |" in text  # final validation loss from metrics.jsonl
    _assert_png(folder / "plots" / "validation_loss.png")
    assert not (folder / "plots" / "score_drivers.png").exists()

    # A comparison whose selector folder is absent.
    compare = make_compare(tmp_path / "cmp", with_selector=False)
    text = write_report(compare).read_text(encoding="utf-8")
    assert "no selector-s*/episodes.jsonl" in text and "| raise | 1% | 2 |" in text


def test_selector_training_report(tmp_path):
    folder = tmp_path / "selector"
    make_episodes(folder, n=12)
    text = write_report(folder).read_text(encoding="utf-8")
    assert "PPO: episode return 0.0000 (episode 0) → 1.1000 (episode 11); best 1.1000 at episode 11" in text
    assert "first and last 5 episodes shown" in text
    _assert_png(folder / "plots" / "ppo_learning_curve.png")
    # explain.csv belongs to RAISE's finetune runs; a selector training has none, and its report does not look for one
    assert "explain.csv" not in text and "What drives the RAISE score" not in text
    assert not (folder / "plots" / "score_drivers.png").exists()


@pytest.mark.parametrize("setup", ["missing", "empty", "unknown"])
def test_not_a_run_folder(tmp_path, setup):
    folder = tmp_path / "folder"
    if setup != "missing":
        folder.mkdir()
    if setup == "unknown":
        (folder / "notes.txt").write_text("hello")
    with pytest.raises(
        UserError,
        match="is not a raise-select run folder .* pass a folder written by finetune, compare or train-selector",
    ) as info:
        write_report(folder)
    assert "\n" not in str(info.value)


def test_corrupt_file_is_a_user_error(tmp_path):
    folder = make_finetune_run(tmp_path / "run", "random", 0)
    (folder / "metrics.jsonl").write_text('{"decision": 0\n', encoding="utf-8")
    with pytest.raises(UserError, match="metrics.jsonl line 1 is not valid JSON"):
        write_report(folder)


def test_reading_says_where_raise_stands_when_it_is_not_first():
    summary = summarize(
        [
            {"method": "random", "budget": 0.01, "seed": 0, "validation_loss": 1.1, "test_score": 0.5, "steps": 10},
            {"method": "longest", "budget": 0.01, "seed": 0, "validation_loss": 1.2, "test_score": 0.4, "steps": 10},
            {"method": "raise", "budget": 0.01, "seed": 0, "validation_loss": 1.3, "test_score": 0.6, "steps": 10},
        ]
    )
    facts = ranking_facts(summary, "accuracy")
    assert "random: lowest validation loss at budget 1% (1.1000 vs longest 1.2000; n = 1 vs 1 seeds)" in facts
    assert "raise: rank 3 of 3 by validation loss at budget 1% (1.3000 vs random 1.1000)" in facts
    assert any(f.startswith("raise: highest test accuracy at budget 1% (0.600 vs random 0.500") for f in facts)
    assert not any(f.startswith("raise: rank") and "accuracy" in f for f in facts)


def test_full_data_matches_name_the_smallest_budget_reaching_full_datas_loss():
    def row(method, steps, loss, seed=0):
        return {"method": method, "budget_steps": steps, "validation_loss": loss, "seed": seed}

    rows = [
        row("full", 100, 1.0),
        row("full", 100, 1.2, seed=1),  # full data's mean: 1.1
        *(row("raise", 4, loss) for loss in (1.3, 1.2)),
        *(row("raise", 8, loss) for loss in (1.15, 1.0)),  # mean 1.075: reached at 8 of 100 steps
        row("raise", 16, 0.9),
        row("random", 4, 1.5),
        row("random", 16, 1.3),
    ]
    matches = {m["method"]: m for m in full_data_matches(rows)}
    assert matches["raise"]["steps"] == 8 and matches["raise"]["fraction"] == pytest.approx(0.08)
    assert matches["raise"]["loss"] == pytest.approx(1.075) and matches["raise"]["full_loss"] == pytest.approx(1.1)
    assert matches["random"]["steps"] is None and matches["random"]["loss"] == pytest.approx(1.3)
    assert full_data_matches([r for r in rows if r["method"] != "full"]) == []
    text = results_markdown(comparison_results(rows))
    assert "reached by raise at 8 steps (8.0 %, 1.0750); random not within its budgets (best 1.3000)" in text


def _assert_stage_view(text: str) -> None:
    """The report's picks by training stage: family shares per method and fifth of the run."""
    section = text.split("## Picks by training stage", 1)[1].split("\n## ", 1)[0]
    assert "Share of each family" in section
    header = next(line for line in section.splitlines() if line.startswith("| method"))
    column = header.split(" | ").index("fam-gsm8k")
    rows = {tuple(line.split(" | ")[:2]): line.split(" | ") for line in section.splitlines() if line.startswith("| ")}
    # the fake RAISE run drifts to gsm8k as training goes on; random does not
    share = lambda method, stage: int(rows[(f"| {method}", stage)][column].rstrip("%"))  # noqa: E731
    assert share("raise", "0–20%") < share("raise", "80–100%") and share("raise", "80–100%") >= 50
    assert share("random", "80–100%") < 50


def test_stage_view_falls_back_to_sources():
    # unlabelled picks (no family): the view falls back to sources
    records = [{"stage": 0, "stage_label": "0–20%", "family": None, "source": s} for s in ("a", "a", "b")]
    key, table = stage_view({"m": records})
    assert key == "source" and "| m | 0–20% | 3 | 67% | 33% |" in table
