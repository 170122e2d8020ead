"""The lm-eval bridge (target.lm_eval, the [eval] extra): on the testbed, lm-eval's exact match of a trained
run is ours, generation for generation; without lm-eval the setting is one line naming the extra."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from helpers import SYNTHETIC_OVERRIDES
from raise_select.config_io import load_config
from raise_select.data.tokenize import render_prompt_ids
from raise_select.errors import UserError
from raise_select.evaluation import generate
from raise_select.io_utils import read_jsonl
from raise_select.lm_eval_bridge import check_lm_eval_available
from raise_select.pipeline import Workbench, run_finetune
from raise_select.report import write_report
from raise_select.run_folders import load_run, result_row
from raise_select.selectors import build_selector

TASK = "raise_select_synthetic"


def test_lm_eval_without_the_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails as if it were not installed
    check_lm_eval_available([])  # not asked for: no requirement
    with pytest.raises(UserError, match=r"pip install raise-select\[eval\]") as error:
        check_lm_eval_available(["target"])
    assert "\n" not in str(error.value)


def test_lm_eval_exact_match_is_ours_on_a_trained_run(tmp_path):
    pytest.importorskip("lm_eval")
    config = load_config(None, [*SYNTHETIC_OVERRIDES, "target.n_test=24", "target.lm_eval=[target]"])
    bench = Workbench.build(config, progress=False)
    output = tmp_path / "run"
    result = run_finetune(bench, build_selector("random", config), output, 4, seed=0, progress=False)

    ours = result.test["exact_match"]
    theirs = result.test["lm_eval"][f"{TASK} exact_match,answer"]
    assert theirs == pytest.approx(ours)
    evaluation = json.loads((output / "evaluation.json").read_text())
    assert evaluation["test"]["lm_eval"] == result.test["lm_eval"]

    # Example by example: lm-eval generated what our exact match generated, from the same prompts.
    examples = list(bench.target.test)
    prompts = [render_prompt_ids(e, bench.lm.tokenizer)[-config.pool.max_length :] for e in examples]
    generations = generate(bench.lm, prompts, max_new_tokens=config.target.max_new_tokens, progress=False)
    samples = read_jsonl(output / "lm_eval" / f"samples_{TASK}.jsonl")
    assert [s["id"] for s in samples] == [examples[s["doc_id"]].id for s in samples]
    assert {s["doc_id"]: s["generated"] for s in samples} == dict(enumerate(generations))

    # The task kept in the run folder reads its data where it lies now, so `lm_eval --include_path` reruns it.
    task = yaml.safe_load((output / "lm_eval" / f"{TASK}.yaml").read_text())
    assert task["dataset_kwargs"]["data_files"]["test"] == str((output / "lm_eval" / f"{TASK}.jsonl").resolve())
    assert (output / "lm_eval" / "results.json").is_file()

    row = result_row(load_run(output), "random")
    assert row[f"lm_eval {TASK} exact_match,answer"] == pytest.approx(ours)
    assert f"lm-eval {TASK} exact_match,answer" in write_report(output).read_text()
