"""The synthetic testbed: a generated world where the right selection is known.

Everything here is small enough for tests and PPO experiments to run in seconds on a laptop CPU:

* **Skill.** Adding a 1-digit number to a 2-digit one (``37+5`` -> ``42``). The target task asks it
  in a phrasing no pool example uses: ``what is 37+5?`` -> ``42`` (metric: exact match).
* **Base model** (:func:`synthetic_model_dir`). A 4-layer, 128-wide Llama with a character-level
  tokenizer, briefly pre-trained on plain-text sums (``37+5=42``) and on chat turns of the
  irrelevant families. It therefore *knows* the skill, but never saw it asked in a chat turn: the
  target starts far from solved, and a few fine-tuning steps on correct chat sums unlock it.
* **Pool** (:func:`synthetic_pool`). Families with known labels (:data:`SYNTHETIC_FAMILIES`):
  two helpful ones (correct sums in two chat phrasings, about a quarter of the pool), four
  irrelevant string tasks, and two corrupted ones that reuse the helpful prompts with wrong
  answers. Corrupted prompts look exactly like helpful ones, so only the response loss under the
  base model (which knows the right sums) tells them apart -- as with real noisy data.

Operand pairs are split once: the pairs reserved for the target never occur in the pool or in the
pre-training corpus, so the target measures transfer, not memorization.
"""

from __future__ import annotations

import os
import random
import shutil
import string
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from ..errors import UserError
from ..io_utils import cache_root, write_json
from .types import Example, TargetTask

SYNTHETIC_MODEL_NAME = "synthetic-tiny-v1"  # cache folder name; bump the version when the recipe changes

# Pool families: labels, share of the pool, and what they are. Helpful + corrupted families use the
# skill's operand pairs; the irrelevant ones work on random lowercase words.
SYNTHETIC_FAMILIES: dict[str, dict] = {
    "add_compute": {"helpful": True, "corrupted": False, "share": 0.12, "description": "'compute 37+5?' -> '42': correct sums"},
    "add_tell": {"helpful": True, "corrupted": False, "share": 0.12, "description": "'tell me the sum 37+5?' -> '42': correct sums"},
    "add_compute_off_by": {"helpful": False, "corrupted": True, "share": 0.08, "description": "'compute 37+5?' -> '45': the sum off by 1 to 9"},
    "add_tell_random": {"helpful": False, "corrupted": True, "share": 0.08, "description": "'tell me the sum 37+5?' -> '81': a random wrong number in the sums' range"},
    "reverse": {"helpful": False, "corrupted": False, "share": 0.12, "description": "reverse a word"},
    "sort": {"helpful": False, "corrupted": False, "share": 0.12, "description": "sort a word's letters"},
    "count": {"helpful": False, "corrupted": False, "share": 0.12, "description": "count a word's letters"},
    "upper": {"helpful": False, "corrupted": False, "share": 0.12, "description": "write a word in capitals"},
    "repeat": {"helpful": False, "corrupted": False, "share": 0.12, "description": "repeat a word"},
}

TARGET_NAME = "synthetic"
TARGET_ANSWER_PATTERN = r"(-?\d+)"  # the first integer in the generated answer
_TARGET_PAIRS = 300  # operand pairs reserved for the target's validation + test splits
_PAIR_SPLIT_SEED = "synthetic-pairs"  # fixes which pairs are reserved, independent of any pool seed

# Special tokens of the character-level tokenizer; "<|end|>" ends a turn and is the EOS token.
PAD, BOS, UNK, END = "<|pad|>", "<|bos|>", "<|unk|>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Base model recipe. Pre-training is ~2-digit-addition "grokking": the model generalises to the
# held-out pairs after a few hundred steps; the constant learning rate keeps that fast.
_MODEL_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4)
_PRETRAIN_STEPS = 600
_PRETRAIN_BATCH = 16  # packed sequences per step
_PRETRAIN_SEQUENCE = 64  # tokens per packed sequence
_PRETRAIN_LR = 2e-3
_PRETRAIN_WARMUP = 30
_PRETRAIN_CHAT_SHARE = 0.4  # share of pre-training documents that are chat turns of irrelevant families
_PRETRAIN_SEED = 1234
_PRETRAIN_SMALL_SHARE = 0.0


# ----------------------------------------------------------------------------- operand pairs


def _operand_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Two-digit pairs without carries, split once into (target pairs, pool pairs).

    The split is by unordered pair, so the pool never holds ``45+32`` when the target asks ``32+45``.
    """
    unordered = [
        (a, b)
        for a in range(10, 100)
        for b in range(a, 100)
        if a % 10 + b % 10 < 10 and a // 10 + b // 10 < 10  # no carry: each answer digit is a digit sum
    ]
    rng = random.Random(_PAIR_SPLIT_SEED)
    rng.shuffle(unordered)
    target = [pair if rng.random() < 0.5 else pair[::-1] for pair in unordered[:_TARGET_PAIRS]]
    pool = [ordered for a, b in unordered[_TARGET_PAIRS:] for ordered in {(a, b), (b, a)}]
    return target, sorted(pool)


def _random_word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7)))


def _wrong_sum(rng: random.Random, total: int) -> int:
    """A number in the range of the sums (20..99) that is not ``total``."""
    return rng.choice([value for value in range(20, 100) if value != total])


def _off_by(rng: random.Random, total: int) -> int:
    return total + rng.choice([-1, 1]) * rng.randint(1, 9)


# Each family: rng -> (prompt, response). Arithmetic families draw from the pool pairs only.
def _family_generators() -> dict[str, Callable[[random.Random], tuple[str, str]]]:
    _, pool_pairs = _operand_pairs()

    def arithmetic(prompt: str, answer: Callable[[random.Random, int], int]):
        # The response restates the equation: the model's pre-trained skill completes "a+b=".
        def make(rng: random.Random) -> tuple[str, str]:
            a, b = rng.choice(pool_pairs)
            return prompt.format(a=a, b=b), str(answer(rng, a + b))

        return make

    def on_word(prompt: str, transform: Callable[[str], str]):
        def make(rng: random.Random) -> tuple[str, str]:
            word = _random_word(rng)
            return prompt.format(word=word), transform(word)

        return make

    correct = lambda rng, total: total  # noqa: E731 - one-line answer rule next to its siblings
    return {
        "add_compute": arithmetic("compute {a}+{b}?", correct),
        "add_tell": arithmetic("tell me the sum {a}+{b}?", correct),
        "add_compute_off_by": arithmetic("compute {a}+{b}?", _off_by),
        "add_tell_random": arithmetic("tell me the sum {a}+{b}?", _wrong_sum),
        "reverse": on_word("reverse the word {word}.", lambda w: w[::-1]),
        "sort": on_word("sort the letters of {word}.", lambda w: "".join(sorted(w))),
        "count": on_word("how many letters are in {word}?", lambda w: str(len(w))),
        "upper": on_word("write {word} in capitals.", str.upper),
        "repeat": on_word("repeat {word}.", lambda w: w),
    }


# ----------------------------------------------------------------------------- pool and target


def _family_counts(n: int) -> dict[str, int]:
    """Split ``n`` by the families' shares (largest remainder, ties in family order)."""
    exact = {family: n * spec["share"] for family, spec in SYNTHETIC_FAMILIES.items()}
    counts = {family: int(value) for family, value in exact.items()}
    by_remainder = sorted(exact, key=lambda family: counts[family] - exact[family])
    for family in by_remainder[: n - sum(counts.values())]:
        counts[family] += 1
    return counts


def synthetic_pool(n: int, seed: int = 0) -> list[Example]:
    """``n`` labelled pool examples in a seeded order; ids are ``synthetic/<family>/<k>``.

    Each family draws from its own seeded stream, so example ``k`` of a family is the same for
    every ``n`` (a bigger pool extends a smaller one).
    """
    if n < 1:
        raise UserError(f"synthetic pool size must be at least 1 (got {n}); set the source's limit to a positive number")
    generators = _family_generators()
    examples = []
    for family, count in _family_counts(n).items():
        rng = random.Random(f"{seed}/{family}")
        spec = SYNTHETIC_FAMILIES[family]
        for k in range(count):
            prompt, response = generators[family](rng)
            examples.append(
                Example(
                    id=f"synthetic/{family}/{k}",
                    source=f"synthetic/{family}",
                    messages=({"role": "user", "content": prompt},),
                    response=response,
                    meta={"family": family, "helpful": spec["helpful"], "corrupted": spec["corrupted"]},
                )
            )
    random.Random(seed).shuffle(examples)
    return examples


def synthetic_target(n_validation: int, n_test: int) -> TargetTask:
    """The target task ``what is 37+5?`` -> ``42`` on operand pairs that never occur in the pool."""
    target_pairs, _ = _operand_pairs()
    if n_validation < 0 or n_test < 0 or n_validation + n_test > len(target_pairs):
        raise UserError(
            f"the synthetic target has {len(target_pairs)} problems; "
            f"set target.n_validation + target.n_test to at most that (got {n_validation} + {n_test})"
        )

    def split(name: str, pairs: list[tuple[int, int]]) -> list[Example]:
        return [
            Example(
                id=f"synthetic/target/{name}/{k}",
                source="synthetic/target",
                messages=({"role": "user", "content": f"what is {a}+{b}?"},),
                response=str(a + b),
                meta={"answer": str(a + b)},
            )
            for k, (a, b) in enumerate(pairs)
        ]

    return TargetTask(
        name=TARGET_NAME,
        validation=split("validation", target_pairs[:n_validation]),
        test=split("test", target_pairs[n_validation : n_validation + n_test]),
        metric="exact_match",
        answer_pattern=TARGET_ANSWER_PATTERN,
    )


# ----------------------------------------------------------------------------- tokenizer


def synthetic_tokenizer():
    """A character-level tokenizer over printable ASCII with chat special tokens and a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, UNK, END, *ROLE_TOKENS]
    characters = [chr(code) for code in range(32, 127)] + ["\n", "\t"]
    vocab = {token: index for index, token in enumerate(specials + characters)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # join characters back without separators
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=END,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
    )


# ----------------------------------------------------------------------------- base model


def synthetic_model_dir(cache_dir: Path | None = None) -> Path:
    """The pre-trained tiny model as a Hugging Face folder, built once under ``cache_dir``.

    ``cache_dir`` defaults to :func:`raise_select.io_utils.cache_root`. The build is deterministic
    and atomic (a temp folder renamed into place), so concurrent callers never see a partial folder.
    """
    target = Path(cache_dir if cache_dir is not None else cache_root()) / SYNTHETIC_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SYNTHETIC_MODEL_NAME}."))
    try:
        _build_model(building)
        try:
            os.replace(building, target)
        except OSError:
            if not (target / "config.json").is_file():  # not "another process finished first"
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _build_model(folder: Path) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = synthetic_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_MODEL_SHAPE,
    )
    # fork_rng: seed for a reproducible build without touching the caller's random state.
    with torch.random.fork_rng():
        torch.manual_seed(_PRETRAIN_SEED)
        model = LlamaForCausalLM(config)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=_PRETRAIN_LR, weight_decay=0.0)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / _PRETRAIN_WARMUP))
        batches = _pretraining_batches(tokenizer, random.Random(_PRETRAIN_SEED))
        for _ in tqdm(range(_PRETRAIN_STEPS), desc="pre-training the synthetic model", unit="step"):
            tokens = next(batches)
            loss = model(input_ids=tokens, labels=tokens).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            warmup.step()
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / "build_info.json", {"name": SYNTHETIC_MODEL_NAME, "pretrain_steps": _PRETRAIN_STEPS, "final_loss": loss.item()})


def _pretraining_documents(tokenizer, rng: random.Random) -> Iterator[str]:
    """Plain-text sums on pool pairs, mixed with chat turns of the irrelevant families."""
    _, pool_pairs = _operand_pairs()
    generators = _family_generators()
    irrelevant = [f for f, spec in SYNTHETIC_FAMILIES.items() if not spec["helpful"] and not spec["corrupted"]]
    while True:
        draw = rng.random()
        if draw < _PRETRAIN_SMALL_SHARE:
            a, b = rng.choice(pool_pairs)
            turns = [{"role": "user", "content": f"what is {a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]
            yield tokenizer.apply_chat_template(turns, tokenize=False)
        elif draw < _PRETRAIN_SMALL_SHARE + _PRETRAIN_CHAT_SHARE:
            prompt, response = generators[rng.choice(irrelevant)](rng)
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            yield tokenizer.apply_chat_template(turns, tokenize=False)
        else:
            a, b = rng.choice(pool_pairs)
            yield f"{BOS}{a}+{b} = {a + b}"


def _pretraining_batches(tokenizer, rng: random.Random):
    """Endless [batch, sequence] tensors of documents packed back to back (cut at the sequence end)."""
    import torch

    documents = _pretraining_documents(tokenizer, rng)
    while True:
        rows = []
        for _ in range(_PRETRAIN_BATCH):
            row: list[int] = []
            while len(row) < _PRETRAIN_SEQUENCE:
                row += tokenizer(next(documents), add_special_tokens=False)["input_ids"]
            rows.append(row[:_PRETRAIN_SEQUENCE])
        yield torch.tensor(rows)
