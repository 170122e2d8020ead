"""Does lm-evaluation-harness score a trained run as we do? Our exact match next to lm-eval's, example by example.

    python bench/lm_eval_crosscheck.py [--config FILE] [--selector random] [--steps 4] [--n-test 24] [--output DIR] [field=value ...]
    python bench/lm_eval_crosscheck.py --config examples/configs/smollm2_gsm8k.yaml --n-test 8

Fine-tunes with --selector for --steps updates (the testbed by default), scores the test split
with our exact match and with lm-eval's generated ``target`` task (target.lm_eval=[target], the [eval]
extra), then prints both scores and every example where the two disagree, with the generations and the
extracted answers. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _tiny import TESTBED_OVERRIDES

from raise_select.config_io import load_config, recipe_path
from raise_select.data.tokenize import render_prompt_ids
from raise_select.evaluation import answers_match, extract_answer, generate
from raise_select.io_utils import read_jsonl
from raise_select.lm_eval_bridge import target_task_name
from raise_select.pipeline import Workbench, run_finetune
from raise_select.selectors import build_selector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(recipe_path("demo_quick")))
    parser.add_argument("--selector", default="random", help="a baseline (oracle: the testbed's best-trained runs)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--n-test", type=int, default=24)
    parser.add_argument("--output", help="run folder to keep (default: a temporary one)")
    parser.add_argument("--tiny", action="store_true", help="a cut-down testbed, 2 updates, 4 test examples: seconds")
    parser.add_argument("overrides", nargs="*", help="config overrides field.path=value")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.n_test, args.overrides = 2, 4, [*TESTBED_OVERRIDES, *args.overrides]

    config = load_config(
        args.config, [*args.overrides, f"target.n_test={args.n_test}", "target.lm_eval=[target]", "target.metric=auto"]
    )
    bench = Workbench.build(config, progress=False)
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(args.output or Path(scratch) / "run")
        result = run_finetune(
            bench, build_selector(args.selector, config), output, args.steps, config.seed, progress=False
        )
        samples = read_jsonl(output / "lm_eval" / f"samples_{target_task_name(bench.target)}.jsonl")

    examples = list(bench.target.test)
    prompts = [render_prompt_ids(e, bench.lm.tokenizer)[-config.pool.max_length :] for e in examples]
    generations = generate(
        bench.lm, prompts, config.train.eval_batch_size, config.target.max_new_tokens, progress=False
    )
    ours = result.test["exact_match"]
    theirs = {k: v for k, v in result.test["lm_eval"].items() if "exact_match" in k}
    print(f"{config.model.name} on {bench.target.name}: {len(examples)} test examples after {result.steps} updates")
    print(f"  ours exact match {ours:.4f}; lm-eval {', '.join(f'{k} {v:.4f}' for k, v in theirs.items())}")
    same_text = sum(s["generated"] == generations[s["doc_id"]] for s in samples)
    print(f"  identical generations: {same_text} / {len(samples)}")
    for sample in samples:
        example, text = examples[sample["doc_id"]], generations[sample["doc_id"]]
        found = extract_answer(text, bench.target.answer_pattern)
        our_correct = answers_match(found, example.meta["answer"])
        if bool(sample.get("exact_match")) != our_correct or sample["generated"] != text:
            print(
                f"  differs on {example.id}: answer {example.meta['answer']!r}; ours {found!r} ({our_correct}), "
                f"lm-eval {sample['filtered']!r} ({sample.get('exact_match')}); "
                f"generated ours {text!r} / lm-eval {sample['generated']!r}"
            )


if __name__ == "__main__":
    main()
