"""Score a fine-tuned model with lm-evaluation-harness, in-process (the ``[eval]`` extra).

``target.lm_eval`` names the tasks: ``target`` is the run's own target test split written as a local
lm-eval task (``dataset_path: json`` over a JSONL file, the YAML kept in the run folder under
``lm_eval/`` so that ``lm_eval --include_path`` can rerun it); any other name is an lm-eval task that
lm-eval can load here (its data already in the local Hugging Face cache, or a task under
``target.lm_eval_include``). The trained model in memory is wrapped in ``HFLM(pretrained=model,
tokenizer=...)``: nothing is saved or reloaded.

The ``target`` task reproduces our exact match (:func:`evaluation.exact_match`): the same prompt text
(chat template included), greedy generation of ``target.max_new_tokens`` tokens after the prompt cut to
its last ``pool.max_length`` tokens, the answer as the last match of the target's answer pattern (else
of a number), and answers compared without commas, ``$``, whitespace and a final period. Two
differences remain: numbers are compared as text ("18.0" is not "18", ours compares by value), and a
generation where the pattern does not match scores 0 where ours falls back to the last number (the
bundled targets' patterns already end with that fallback).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .data.tokenize import render_prompt_text
from .data.types import TargetTask
from .errors import UserError
from .io_utils import make_dirs, write_json, write_jsonl, write_text
from .model import LoadedModel

TARGET_TASK = "target"  # the name in target.lm_eval that stands for the run's own target
_NUMBER_GROUP = r"(-?\d[\d,]*(?:\.\d+)?)"  # evaluation._NUMBER with a group: the answer when no pattern is set
_IGNORED = [r"\s", ",", r"\$", r"\.$"]  # what evaluation.normalize_answer drops (numbers by value aside)


def _lm_eval():
    """The lm_eval package, or a one-line error naming the extra."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(
            "target.lm_eval needs lm-evaluation-harness: pip install raise-select[eval] (or set target.lm_eval=[])"
        ) from None
    return lm_eval, HFLM, TaskManager


def check_lm_eval_available(tasks: list[str]) -> None:
    """Fail before any training when lm-eval tasks are asked for and lm-eval is missing."""
    if tasks:
        _lm_eval()


def target_task_name(target: TargetTask) -> str:
    return "raise_select_" + "".join(c if c.isalnum() else "_" for c in target.name.rsplit("/", 1)[-1]).strip("_")


def write_target_task(
    lm: LoadedModel, target: TargetTask, folder: Path, max_new_tokens: int, data_folder: Path | None = None
) -> str:
    """Write ``folder/<task>.yaml`` and ``folder/<task>.jsonl`` (the test split: prompt, answer); return the
    task name. The YAML reads the JSONL from ``data_folder`` (default ``folder``): where it will lie."""
    if target.metric != "exact_match":
        raise UserError(
            f"target.lm_eval=[target] scores exact match, and target '{target.name}' is scored by {target.metric}; "
            "name an lm-eval task instead, or drop target.lm_eval"
        )
    name = target_task_name(target)
    make_dirs(folder)
    rows = [
        {
            "id": example.id,
            "prompt": render_prompt_text(example, lm.tokenizer)[0],
            "answer": str(example.meta["answer"]),
        }
        for example in target.test
    ]
    data_file = write_jsonl(folder / f"{name}.jsonl", rows)
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str((Path(data_folder or folder) / data_file.name).resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "answer",
        "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": max_new_tokens},
        "filter_list": [
            {
                "name": "answer",
                "filter": [
                    {"function": "regex", "regex_pattern": target.answer_pattern or _NUMBER_GROUP, "group_select": -1},
                    {"function": "take_first"},
                ],
            }
        ],
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "regexes_to_ignore": _IGNORED,
            }
        ],
        "metadata": {"version": 1.0},
    }
    write_text(folder / f"{name}.yaml", json.dumps(task, indent=2) + "\n")  # JSON is YAML: no quoting pitfalls
    return name


def evaluate_lm_eval(
    lm: LoadedModel,
    target: TargetTask,
    tasks: list[str],
    folder: Path,
    max_length: int,
    max_new_tokens: int,
    batch_size: int = 16,
    include_path: str | None = None,
    final_folder: Path | None = None,
) -> dict[str, float]:
    """Run lm-eval's ``tasks`` on the model in memory; write into ``folder`` the ``target`` task (reading its
    data from ``final_folder``, default ``folder``: a run folder is written under another name and renamed
    when finished), ``results.json`` and per-example ``samples_<task>.jsonl``; return
    ``{"<task> <metric>,<filter>": score}``."""
    lm_eval, HFLM, TaskManager = _lm_eval()
    folder = make_dirs(folder)
    with tempfile.TemporaryDirectory(prefix="raise-select-lm-eval-") as scratch:
        names = []
        for task in tasks:
            if task == TARGET_TASK:  # evaluated from scratch, where its data is now
                names.append(write_target_task(lm, target, Path(scratch), max_new_tokens))
                write_target_task(lm, target, folder, max_new_tokens, data_folder=final_folder or folder)
            else:
                names.append(task)
        model = HFLM(
            pretrained=lm.model,
            tokenizer=lm.tokenizer,
            batch_size=batch_size,
            max_length=max_length + max_new_tokens,  # prompts cut to their last max_length tokens, as ours
            device=str(lm.device),
            add_bos_token=render_prompt_text(target.test[0], lm.tokenizer)[1] if len(target.test) else None,
            mixed_precision_dtype="bfloat16" if lm.config.precision == "bf16" else None,
        )
        was_training = lm.model.training
        try:
            results = lm_eval.simple_evaluate(
                model=model,
                tasks=names,
                # lm-eval's own task index is read only when one of its tasks is named (it takes a minute)
                task_manager=TaskManager(
                    include_path=[scratch, *([include_path] if include_path else [])],
                    include_defaults=any(task != TARGET_TASK for task in tasks),
                ),
                log_samples=True,
                bootstrap_iters=0,
            )
        except (KeyError, ValueError, FileNotFoundError, ConnectionError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(
                f"lm-eval could not run {', '.join(tasks)} ({first}); a task's data must be available offline "
                "(in the local Hugging Face cache) or under target.lm_eval_include"
            ) from None
        finally:
            lm.model.train(was_training)
    for task, rows in results.pop("samples", {}).items():
        write_jsonl(folder / f"samples_{task}.jsonl", [_sample_row(row) for row in rows])
    write_json(folder / "results.json", {"results": results["results"], "configs": results.get("configs", {})})
    return {
        f"{task} {metric}": float(value)
        for task, metrics in results["results"].items()
        for metric, value in metrics.items()
        if isinstance(value, (int, float)) and "stderr" not in metric and metric != "sample_len"
    }


def _sample_row(row: dict) -> dict:
    """One example of lm-eval's log: what was generated, what the filter kept, the reference and the score."""
    return {
        "doc_id": row["doc_id"],
        "id": row["doc"].get("id"),
        "target": row["target"],
        "generated": row["resps"][0][0] if row.get("resps") else None,
        "filtered": row["filtered_resps"][0] if row.get("filtered_resps") else None,
        **{key: row[key] for key in ("exact_match", "acc") if key in row},
    }
