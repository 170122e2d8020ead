"""The public API: every exported name resolves, and callbacks see and stop runs (the README's example: test_readme.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import raise_select as rs
from raise_select.callbacks import CallbackList


def test_every_exported_name_resolves():
    for name in rs.__all__:
        assert getattr(rs, name) is not None, name
    with pytest.raises(AttributeError):
        rs.not_a_name  # noqa: B018


def test_the_type_checkers_imports_mirror_the_export_list():
    """The TYPE_CHECKING imports of raise_select/__init__.py name exactly the exports, from the same modules."""
    tree = ast.parse(Path(rs.__file__).read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {alias.name: node.module for node in block.body for alias in node.names}
    assert imported == rs._EXPORTS


class Recorder(rs.Callback):
    def __init__(self, stop_at: int | None = None):
        self.events, self.stop_at = [], stop_at

    def on_run_start(self, method, total_decisions):
        self.events.append(("start", method, total_decisions))

    def on_decision_end(self, decision, metrics):
        self.events.append(("decision", decision, metrics["step"]))
        return decision != self.stop_at

    def on_run_end(self, result):
        self.events.append(("end", result.steps))


def test_callbacks_see_every_decision_and_can_stop_a_run(synthetic_config):
    bench = rs.Workbench.build(synthetic_config)
    selector = rs.build_selector("random", synthetic_config)
    watcher, stopper = Recorder(), Recorder(stop_at=2)
    result = rs.run_finetune(bench, selector, None, 4, seed=0, progress=False, callbacks=[stopper, watcher])
    assert result.output is None and result.steps == 2  # stopped after decision 2; no folder kept
    # both callbacks saw the same events, the stopper's False included
    assert (
        watcher.events == stopper.events == [("start", "random", 4), ("decision", 1, 1), ("decision", 2, 2), ("end", 2)]
    )
    full = rs.run_finetune(bench, rs.build_selector("random", synthetic_config), None, 4, seed=0, progress=False)
    assert full.steps == 4


def test_callback_list_runs_every_callback_and_stops_if_any_says_so():
    calls = []

    class Says(rs.Callback):
        def __init__(self, answer):
            self.answer = answer

        def on_episode_end(self, episode, summary):
            calls.append(self.answer)
            return self.answer

    assert CallbackList([Says(False), Says(None)]).on_episode_end(0, {}) is False
    assert calls == [False, None]  # the second ran although the first said stop
    assert CallbackList([Says(None), Says(True)]).on_episode_end(0, {}) is True


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda c: setattr(c.model, "finetune", "qlora"), "model.finetune='qlora' is not one of"),
        (lambda c: setattr(c.target, "name", "chat"), "'chat' is a pool source, not a target"),
        (lambda c: setattr(c.train, "batch_size", 7), "must be a multiple of raise.clusters"),
    ],
)
def test_workbench_build_validates_the_config_first(change, fragment, monkeypatch):
    """Python users get the CLI's one-line errors before any data or model is loaded."""
    config = rs.Config()
    change(config)
    monkeypatch.setattr("raise_select.pipeline.build_pool", lambda *a, **k: pytest.fail("loaded data"))
    with pytest.raises(rs.UserError, match=re.escape(fragment)):
        rs.Workbench.build(config)
