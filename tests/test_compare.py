"""Equal-budget comparisons on the synthetic testbed: result files, compute ledger, report, resuming an
interrupted comparison without redoing finished runs, and comparing with a pre-trained policy."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import shutil
from types import SimpleNamespace

import pytest

from helpers import SYNTHETIC_OVERRIDES
from raise_select import experiments
from raise_select.config_io import load_config
from raise_select.errors import UserError
from raise_select.experiments import run_comparison
from raise_select.io_utils import read_jsonl
from raise_select.pipeline import Workbench
from raise_select.report import write_report

METHODS = ["raise", "random", "longest", "targeted"]
SEEDS = [0, 1]
BUDGET_STEPS = 4
COMPARE_OVERRIDES = [
    *SYNTHETIC_OVERRIDES,
    "target.n_test=4",
    f"compare.budget_steps=[{BUDGET_STEPS}]",
    f"compare.methods=[{', '.join(METHODS)}]",
    f"compare.seeds=[{', '.join(map(str, SEEDS))}]",
    "compare.test_metric=true",
    "raise.episodes=2",
    "raise.episodes_per_update=2",
]
RUN_NAMES = [
    f"{'raise-sel0' if method == 'raise' else method}-{BUDGET_STEPS}steps-s{seed}"
    for method, seed in itertools.product(METHODS, SEEDS)
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _config(*extra: str):
    return load_config(None, [*COMPARE_OVERRIDES, *extra])


def _must_not_run(*args, **kwargs):
    raise AssertionError("called although its work was already done (or should not start)")


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """One uninterrupted comparison (it trains its own RAISE selector); its bench is shared with later tests."""
    output = tmp_path_factory.mktemp("compare") / "full"
    config = _config()
    bench = Workbench.build(config)
    results = run_comparison(config, output, progress=False, bench=bench)
    return SimpleNamespace(output=output, results=results, bench=bench)


def _losses(results: dict) -> dict[tuple[str, int], float]:
    return {(row["method"], row["seed"]): row["validation_loss"] for row in results["rows"]}


def test_results_have_one_row_per_method_and_seed(comparison):
    results, output = comparison.results, comparison.output
    rows = results["rows"]
    assert [(r["method"], r["seed"]) for r in rows] == list(itertools.product(METHODS, SEEDS))
    assert [r["run_dir"] for r in rows] == [f"runs/{name}" for name in RUN_NAMES]
    for row in rows:
        assert (output / row["run_dir"] / "evaluation.json").is_file()
        assert row["budget_steps"] == row["steps"] == BUDGET_STEPS
        assert row["validation_loss"] != row["validation_loss_initial"]  # the model was trained
        assert row["test_metric"] == "exact_match" and 0.0 <= row["test_score"] <= 1.0
    summary = {s["method"]: s for s in results["summary"]}
    assert list(summary) == METHODS
    for method, stats in summary.items():
        losses = [r["validation_loss"] for r in rows if r["method"] == method]
        assert stats["n_seeds"] == len(SEEDS)
        assert stats["validation_loss_mean"] == pytest.approx(sum(losses) / len(losses))
    # Same seed, different selectors: the runs really differ.
    assert len({round(r["validation_loss"], 9) for r in rows if r["seed"] == 0}) == len(METHODS)

    with open(output / "results.csv", newline="", encoding="utf-8") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(r["method"], int(r["seed"])) for r in csv_rows] == list(itertools.product(METHODS, SEEDS))
    assert [float(r["validation_loss"]) for r in csv_rows] == [r["validation_loss"] for r in rows]
    table = (output / "results.md").read_text(encoding="utf-8")
    assert all(f"| {method} " in table for method in METHODS)


def test_ledger_covers_features_selector_training_and_finetune(comparison):
    ledger, output = comparison.results["ledger"], comparison.output
    assert ledger["phi"]["steps"] == 90  # 3 epochs x 240 examples / batch 8
    phases = ledger["phases"]
    assert {"features", "selector_training", "finetune"} <= set(phases)
    for name in ("features", "selector_training", "finetune"):
        assert phases[name]["tokens"] > 0, name
        assert phases[name]["phi"] == pytest.approx(phases[name]["tokens"] / ledger["phi"]["tokens"])
        assert phases[name]["phi_seconds"] is not None and phases[name]["phi_seconds"] > 0
    episodes = read_jsonl(output / "selector-s0" / "episodes.jsonl")
    assert len(episodes) == 2
    # Training tokens plus the rewards' validation passes at 1/3 (forward-only, full fine-tuning); no proxy.
    assert phases["selector_training"]["tokens"] == sum(
        round(e["tokens"] + e["evaluation_tokens"] / 3) for e in episodes
    )
    assert phases["selector_training"]["wall_seconds"] == pytest.approx(
        sum(e["wall_seconds"] for e in episodes), abs=1e-2
    )
    raise_seed0 = comparison.results["rows"][0]
    assert phases["finetune"]["tokens"] == raise_seed0["tokens"]


def test_report_on_the_comparison_folder(comparison):
    report = write_report(comparison.output)
    assert report == comparison.output / "report.md"
    text = report.read_text(encoding="utf-8")
    assert all(method in text for method in METHODS)
    assert "RAISE episode head (weights on z-scored columns, as deployed): " in text  # what the selector prefers
    for plot in ("validation_loss", "test_metric", "selection_raise", "ppo_learning_curve"):
        path = comparison.output / "plots" / f"{plot}.png"
        assert path.read_bytes()[:8] == PNG_SIGNATURE, plot
        assert f"plots/{plot}.png" in text


def _mtimes(folder) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}


def _recording_run_finetune(started: list[str], interrupt_run: int | None = None):
    """experiments.run_finetune that logs each run folder it starts; run number ``interrupt_run`` is
    killed (KeyboardInterrupt) at its second decision, after its (staged) logs were partly written."""
    real_run_finetune = experiments.run_finetune

    def run_finetune(bench, selector, run_dir, *args, **kwargs):
        started.append(run_dir.name)
        if len(started) == interrupt_run:
            real_select, decisions = selector.select, []

            def select(state):
                decisions.append(state.step)
                if len(decisions) == 2:
                    raise KeyboardInterrupt
                return real_select(state)

            selector.select = select
        return real_run_finetune(bench, selector, run_dir, *args, **kwargs)

    return run_finetune


def test_interrupted_comparison_resumes_without_redoing_finished_runs(comparison, tmp_path, monkeypatch):
    output, runs = tmp_path / "resumed", tmp_path / "resumed" / "runs"
    started: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(experiments, "run_finetune", _recording_run_finetune(started, interrupt_run=3))
        with pytest.raises(KeyboardInterrupt):
            run_comparison(_config(), output, progress=False)
    finished, interrupted = RUN_NAMES[:2], runs / RUN_NAMES[2]
    assert started == RUN_NAMES[:3]
    assert all((runs / name / "evaluation.json").is_file() for name in finished)
    assert not interrupted.exists() and not list(runs.glob(".*"))  # staged: an interrupted run leaves nothing behind
    finished_mtimes = {name: _mtimes(runs / name) for name in finished}

    started.clear()
    monkeypatch.setattr(experiments, "run_finetune", _recording_run_finetune(started))
    monkeypatch.setattr(experiments, "train_raise_selector", _must_not_run)  # the selector is already trained
    results = run_comparison(_config(), output, progress=False)

    assert started == RUN_NAMES[2:]
    assert {name: _mtimes(runs / name) for name in finished} == finished_mtimes
    # The interrupted run was redone from scratch.
    assert [m["step"] for m in read_jsonl(interrupted / "metrics.jsonl")] == list(range(BUDGET_STEPS + 1))
    assert _losses(results) == _losses(comparison.results)
    assert [r["test_score"] for r in results["rows"]] == [r["test_score"] for r in comparison.results["rows"]]


def test_rerun_on_changed_data_is_refused(comparison, tmp_path, monkeypatch):
    """The same settings can load other data (an edited pool file, a new version of a bundled source):
    finished runs are not reused then, a label change included."""
    output = shutil.copytree(comparison.output, tmp_path / "copy")
    saved = (output / "data.json").read_bytes()
    first, *rest = comparison.bench.pool.examples
    relabelled = dataclasses.replace(first, meta={**first.meta, "helpful": not first.meta.get("helpful")})
    bench = dataclasses.replace(
        comparison.bench, pool=dataclasses.replace(comparison.bench.pool, examples=[relabelled, *rest])
    )
    monkeypatch.setattr(experiments, "run_finetune", _must_not_run)
    with pytest.raises(UserError, match=r"holds runs on another pool \(examples or labels changed"):
        run_comparison(_config(), output, progress=False, bench=bench)
    assert (output / "data.json").read_bytes() == saved
    monkeypatch.undo()
    results = run_comparison(_config("compare.methods=[random]"), output, progress=False, bench=comparison.bench)
    assert _losses(results) == {key: loss for key, loss in _losses(comparison.results).items() if key[0] == "random"}


def test_pretrained_policy_skips_selector_training(comparison, tmp_path, monkeypatch):
    policy = comparison.output / "selector-s0" / "selector"
    monkeypatch.setattr(experiments, "train_raise_selector", _must_not_run)
    config = _config("compare.methods=[raise]", "compare.seeds=[0]", f"raise.policy={policy}")
    results = run_comparison(config, tmp_path, progress=False, bench=comparison.bench)
    assert not list(tmp_path.glob("selector*"))
    assert [(r["method"], r["seed"]) for r in results["rows"]] == [("raise", 0)]
    assert results["rows"][0]["validation_loss"] == _losses(comparison.results)[("raise", 0)]
    # The selector carries its training's cost; deploying it elsewhere charges that, not zero.
    trained = comparison.results["ledger"]["phases"]["selector_training"]["tokens"]
    assert trained > 0
    assert results["ledger"]["phases"]["selector_training"]["tokens"] == trained


def test_rerun_with_changed_settings_is_refused(comparison, tmp_path, monkeypatch):
    output = shutil.copytree(comparison.output, tmp_path / "copy")
    saved_config = (output / "config.yaml").read_bytes()
    monkeypatch.setattr(experiments, "run_finetune", _must_not_run)
    with pytest.raises(UserError, match=r"different train settings"):
        run_comparison(_config("train.learning_rate=5e-4"), output, progress=False)
    assert (output / "config.yaml").read_bytes() == saved_config
    # The run list may change: only the compare section differs, so the finished runs are reused.
    results = run_comparison(_config("compare.methods=[random]"), output, progress=False, bench=comparison.bench)
    assert _losses(results) == {key: loss for key, loss in _losses(comparison.results).items() if key[0] == "random"}


def test_bad_policy_fails_before_any_set_up(tmp_path, monkeypatch):
    monkeypatch.setattr(Workbench, "build", _must_not_run)
    with pytest.raises(UserError, match="not a raise-select selector"):
        run_comparison(_config(f"raise.policy={tmp_path}"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
