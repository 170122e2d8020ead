"""The synthetic testbed: a generated world where the right selection is known.

Small enough for tests and PPO experiments to run in seconds on a laptop CPU:

* **Skill and target.** Two-digit addition without carries (``32+45`` -> ``77``; each answer digit
  is a digit sum, which a tiny model learns in a few hundred steps). The target asks it as
  ``what is 32+45?`` -> ``77`` (metric: exact match) on operand pairs reserved for it.
* **Base model** (:func:`synthetic_model_dir`). A 3-layer, 128-wide Llama with a character-level
  tokenizer, briefly pre-trained on a generic corpus: plain-text sums (``32+45 = 77``), sums asked
  in chat with words (``what is 32 plus 45?``) and chat turns of the irrelevant families. It knows
  the skill but has never seen a sum with ``+`` asked in a chat turn, so the target starts far from
  solved (its confident wrong first digits cost 2-3.5 nats/token over the 64-example validation
  split, depending on the CPU that pre-trained it) and a few fine-tuning steps on correct ``+``
  questions unlock it.
* **Pool** (:func:`synthetic_pool`). Families with known labels (:data:`SYNTHETIC_FAMILIES`): two
  helpful ones (correct ``+`` questions in two sets of phrasings, 24 % of the pool), five
  irrelevant string tasks (52 %), and two corrupted ones (24 %) that reuse the helpful prompts with
  wrong answers: a wrong rule (the difference) and random numbers. Corrupted prompts look exactly
  like helpful ones: only the response loss under the base model (which knows the right sums)
  tells them apart, as with real noisy data. Corrupted data hurts the target, so full-data training
  (which learns the mixture) is beaten by the helpful-clean subset at a small budget: the premise
  of the paper (``tests/test_synthetic.py`` checks it).
* **Reproducibility.** Pre-training is seeded and single-threaded, and runs with
  ``model.cpu_kernels=portable`` (the AVX2 kernel set on every x86-64 CPU, :mod:`cpu_kernels`), so a
  variant (``synthetic-tiny@seed<k>``) built on one such machine has the same bytes as on another.
  With other kernels 700 steps amplify the rounding: the base model's validation loss ranged over
  about 2-3.5 nats/token across ``ATEN_CPU_CAPABILITY`` default / avx2 / avx512 builds before the
  shipped model and the pin, which is why the tests assert the testbed's properties with margins.

The operand pairs are split once by unordered pair: the target's pairs (in either order) never
occur in the pool or in the pre-training corpus, so the target measures transfer, not recall.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import UserError
from ..io_utils import cache_root, write_json
from .types import Example, TargetTask

SYNTHETIC_MODEL_NAME = "synthetic-tiny-v1"  # cache folder name of variants; bump the version when the recipe changes
SYNTHETIC_MODEL_ALIAS = "synthetic-tiny"  # model.name of the shipped model; "synthetic-tiny@seed<k>" names a variant
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "trained" / "synthetic-tiny"

# Pool families: labels, share of the pool, and what they are. The arithmetic families draw from
# the pool's operand pairs; the irrelevant ones work on random lowercase words.
SYNTHETIC_FAMILIES: dict[str, dict] = {
    "add_compute": {
        "helpful": True,
        "corrupted": False,
        "share": 0.12,
        "description": "'compute 32+45?' -> '77': correct sums",
    },
    "add_tell": {
        "helpful": True,
        "corrupted": False,
        "share": 0.12,
        "description": "'tell me the sum 32+45?' -> '77': correct sums",
    },
    "add_compute_difference": {
        "helpful": False,
        "corrupted": True,
        "share": 0.12,
        "description": "'compute 32+45?' -> '13': the difference, not the sum (a wrong rule)",
    },
    "add_tell_random": {
        "helpful": False,
        "corrupted": True,
        "share": 0.12,
        "description": "'tell me the sum 32+45?' -> '51': a random wrong number in the sums' range",
    },
    "reverse": {"helpful": False, "corrupted": False, "share": 0.104, "description": "reverse a word"},
    "sort": {"helpful": False, "corrupted": False, "share": 0.104, "description": "sort a word's letters"},
    "count": {"helpful": False, "corrupted": False, "share": 0.104, "description": "count a word's letters"},
    "upper": {"helpful": False, "corrupted": False, "share": 0.104, "description": "write a word in capitals"},
    "repeat": {"helpful": False, "corrupted": False, "share": 0.104, "description": "repeat a word"},
}
# Question openings of the two arithmetic prompt styles (helpful and corrupted families share them).
# Several lengths, so a family teaches the skill wherever the question starts.
_COMPUTE_OPENINGS = ("compute", "please compute", "calculate", "can you calculate")
_TELL_OPENINGS = ("tell me the sum", "sum up", "give me the total of", "add up")

TARGET_NAME = "synthetic"
TARGET_ANSWER_PATTERN = r"(-?\d+)"  # the last integer in the generated answer (extract_answer takes the last match)
_TARGET_PAIRS = 300  # unordered operand pairs reserved for the target's validation + test splits
_PAIR_SPLIT_SEED = "synthetic-pairs"  # fixes which pairs are reserved, independent of any pool seed

# Special tokens of the character-level tokenizer; "<|end|>" ends a turn and is the EOS token.
PAD, BOS, UNK, END = "<|pad|>", "<|bos|>", "<|unk|>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Base-model recipe. Learning the sums has a plateau of a few hundred steps before the model
# generalises to held-out pairs; a constant learning rate (after warmup) gets past it fastest.
# ~30 s on 2 CPU cores.
_MODEL_SHAPE = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4
)
_PRETRAIN_STEPS = 700
_PRETRAIN_BATCH = 16  # packed sequences per step
_PRETRAIN_SEQUENCE = 64  # tokens per packed sequence
_PRETRAIN_LR = 2e-3
_PRETRAIN_WARMUP = 30  # linear warmup steps
_PRETRAIN_WORDS_SHARE = 0.2  # share of documents that ask a sum in chat with words ("what is 32 plus 45?")
_PRETRAIN_CHAT_SHARE = 0.3  # share of documents that are chat turns of the irrelevant families (rest: "32+45 = 77")
_PRETRAIN_SEED = 1234


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
    pool = sorted({ordered for a, b in unordered[_TARGET_PAIRS:] for ordered in ((a, b), (b, a))})
    return target, pool


def _random_word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7)))


def _correct_sum(rng: random.Random, a: int, b: int) -> int:
    return a + b


def _wrong_sum(rng: random.Random, a: int, b: int) -> int:
    """A number in the range of the sums (20..99) that is not ``a + b``."""
    return rng.choice([value for value in range(20, 100) if value != a + b])


def _difference(rng: random.Random, a: int, b: int) -> int:
    """The wrong rule: |a - b| instead of a + b (systematic, so it teaches the target something false)."""
    return abs(a - b)


def _family_generators() -> dict[str, Callable[[random.Random], tuple[str, str]]]:
    """Each family's generator: ``rng -> (prompt, response)``."""
    _, pool_pairs = _operand_pairs()

    def arithmetic(openings: tuple[str, ...], answer: Callable[[random.Random, int, int], int]):
        def make(rng: random.Random) -> tuple[str, str]:
            a, b = rng.choice(pool_pairs)
            return f"{rng.choice(openings)} {a}+{b}?", str(answer(rng, a, b))

        return make

    def on_word(prompt: str, transform: Callable[[str], str]):
        def make(rng: random.Random) -> tuple[str, str]:
            word = _random_word(rng)
            return prompt.format(word=word), transform(word)

        return make

    return {
        "add_compute": arithmetic(_COMPUTE_OPENINGS, _correct_sum),
        "add_tell": arithmetic(_TELL_OPENINGS, _correct_sum),
        "add_compute_difference": arithmetic(_COMPUTE_OPENINGS, _difference),
        "add_tell_random": arithmetic(_TELL_OPENINGS, _wrong_sum),
        "reverse": on_word("reverse the word {word}.", lambda word: word[::-1]),
        "sort": on_word("sort the letters of {word}.", lambda word: "".join(sorted(word))),
        "count": on_word("how many letters are in {word}?", lambda word: str(len(word))),
        "upper": on_word("write {word} in capitals.", str.upper),
        "repeat": on_word("repeat {word}.", lambda word: word),
    }


# ----------------------------------------------------------------------------- pool and target


def family_counts(n: int, families: dict[str, dict]) -> dict[str, int]:
    """Split ``n`` by the families' shares (largest remainder; ties go to the earlier family)."""
    exact = {family: n * spec["share"] for family, spec in families.items()}
    counts = {family: int(value) for family, value in exact.items()}
    by_remainder = sorted(exact, key=lambda family: counts[family] - exact[family])
    for family in by_remainder[: n - sum(counts.values())]:
        counts[family] += 1
    return counts


def labelled_examples(
    name: str,
    counts: dict[str, int],
    families: dict[str, dict],
    generators: dict[str, Callable[[random.Random], tuple[str, str]]],
    seed: int,
) -> list[Example]:
    """``counts[family]`` examples of each family in a seeded order; ids are ``<name>/<family>/<k>``.

    Each family draws from its own seeded stream, so example ``k`` of a family is the same for
    every count (a bigger pool extends a smaller one). ``meta`` holds the family and every label of
    its spec except ``share`` and ``description``.
    """
    examples = []
    for family, count in counts.items():
        rng = random.Random(f"{seed}/{family}")  # str seeds hash the same in every process
        labels = {key: value for key, value in families[family].items() if key not in ("share", "description")}
        for k in range(count):
            prompt, response = generators[family](rng)
            examples.append(
                Example(
                    id=f"{name}/{family}/{k}",
                    source=f"{name}/{family}",
                    messages=({"role": "user", "content": prompt},),
                    response=response,
                    meta={"family": family, **labels},
                )
            )
    random.Random(seed).shuffle(examples)
    return examples


def synthetic_pool(n: int, seed: int = 0) -> list[Example]:
    """``n`` labelled pool examples in a seeded order; ids are ``synthetic/<family>/<k>``.

    Each family draws from its own seeded stream, so example ``k`` of a family is the same for
    every ``n`` (a bigger pool extends a smaller one).
    """
    if n < 1:
        raise UserError(
            f"the synthetic pool needs at least 1 example (got {n}); set the source's limit to a positive number"
        )
    return labelled_examples(
        "synthetic", family_counts(n, SYNTHETIC_FAMILIES), SYNTHETIC_FAMILIES, _family_generators(), seed
    )


def synthetic_target(n_validation: int, n_test: int, name: str = TARGET_NAME) -> TargetTask:
    """The target ``what is 32+45?`` -> ``77`` on operand pairs that never occur in the pool.

    The splits are fixed: validation is the first ``n_validation`` reserved pairs, test the next ``n_test``.
    """
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
        name=name,
        validation=split("validation", target_pairs[:n_validation]),
        test=split("test", target_pairs[n_validation : n_validation + n_test]),
        metric="exact_match",
        answer_pattern=TARGET_ANSWER_PATTERN,
    )


# ----------------------------------------------------------------------------- tokenizer


def synthetic_tokenizer():
    """A character-level tokenizer over printable ASCII (plus newline and tab) with chat special tokens.

    Returns a ``transformers.PreTrainedTokenizerFast``; its chat template renders
    ``<|bos|><|user|>...<|end|><|assistant|>...<|end|>``, and ``<|end|>`` is the EOS token.
    """
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


def synthetic_model_dir(pretrain_seed: int | None = None, cache_dir: Path | None = None) -> Path:
    """The tiny pre-trained model as a Hugging Face folder.

    ``pretrain_seed=None`` (model name ``synthetic-tiny``) is the model shipped in the package
    (``trained/synthetic-tiny``, verified against its manifest): every machine loads the same
    weights, with no pre-training. Another seed (``synthetic-tiny@seed<k>``) is a variant for
    robustness checks: pre-trained once under ``cache_dir`` (default
    :func:`raise_select.io_utils.cache_root`) with that seed, atomic and verified on every use (see
    :mod:`raise_select.assets`). Variants are seeded; built with ``model.cpu_kernels=portable`` (the
    default) their weights are the same on every x86-64 CPU with AVX2, elsewhere they depend on the
    CPU that builds them. The shipped model does not.
    """
    from ..assets import cached_folder, verify_folder

    if pretrain_seed is None:
        problem = verify_folder(SHIPPED_MODEL_DIR)
        if problem is not None:
            raise UserError(
                f"the shipped testbed model in {SHIPPED_MODEL_DIR} is damaged ({problem}); reinstall raise-select, or "
                f"rebuild it with `python -m raise_select.data.synthetic {SHIPPED_MODEL_DIR}`"
            )
        return SHIPPED_MODEL_DIR
    if not 0 <= pretrain_seed < 2**32:
        raise UserError(f"synthetic-tiny@seed{pretrain_seed}: the pre-training seed must be in [0, 2**32)")
    target = Path(cache_dir if cache_dir is not None else cache_root()) / f"{SYNTHETIC_MODEL_NAME}-seed{pretrain_seed}"
    return cached_folder(target, lambda folder: _build_model(folder, pretrain_seed), "synthetic model")


def parse_synthetic_model_name(name: str) -> int | None | bool:
    """``synthetic-tiny`` -> None (the shipped model), ``synthetic-tiny@seed<k>`` -> k, anything else -> False."""
    if name == SYNTHETIC_MODEL_ALIAS:
        return None
    match = re.fullmatch(rf"{re.escape(SYNTHETIC_MODEL_ALIAS)}@seed(\d+)", name)
    return int(match.group(1)) if match else False


def _build_model(folder: Path, pretrain_seed: int = _PRETRAIN_SEED) -> None:
    """Pre-train the tiny Llama (see the module docstring) and save it with its tokenizer into ``folder``.

    Runs on one thread (``torch.set_num_threads(1)``, restored afterwards): a multi-threaded float
    reduction may round differently from run to run, which 700 steps amplify into other weights.
    """
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():  # seed the build without disturbing the caller's random state
            torch.manual_seed(pretrain_seed)
            model = LlamaForCausalLM(config)
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=_PRETRAIN_LR, weight_decay=0.0)
            warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / _PRETRAIN_WARMUP))
            batches = _pretraining_batches(tokenizer, random.Random(pretrain_seed))
            for _ in tqdm(range(_PRETRAIN_STEPS), desc="pre-training the synthetic model", unit="step"):
                tokens = next(batches)
                loss = model(input_ids=tokens, labels=tokens).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                warmup.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(
        folder / "build_info.json",
        {
            "name": SYNTHETIC_MODEL_NAME,
            "pretrain_seed": pretrain_seed,
            "pretrain_steps": _PRETRAIN_STEPS,
            "final_loss": round(loss.item(), 6),
            "torch": torch.__version__,
        },
    )


def _pretraining_documents(tokenizer, rng: random.Random) -> Iterator[str]:
    """The generic corpus: plain-text sums, sums asked in chat with words, irrelevant chat tasks.

    All sums use pool pairs; the target's ``+`` chat questions never appear.
    """
    _, pool_pairs = _operand_pairs()
    generators = _family_generators()
    irrelevant = [
        family for family, spec in SYNTHETIC_FAMILIES.items() if not spec["helpful"] and not spec["corrupted"]
    ]
    while True:
        draw = rng.random()
        if draw < _PRETRAIN_WORDS_SHARE + _PRETRAIN_CHAT_SHARE:
            if draw < _PRETRAIN_WORDS_SHARE:
                a, b = rng.choice(pool_pairs)
                prompt, response = f"what is {a} plus {b}?", str(a + b)
            else:
                prompt, response = generators[rng.choice(irrelevant)](rng)
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            yield tokenizer.apply_chat_template(turns, tokenize=False)
        else:
            a, b = rng.choice(pool_pairs)
            yield f"{BOS}{a}+{b} = {a + b}"


def _pretraining_batches(tokenizer, rng: random.Random) -> Iterator:
    """Endless [batch, sequence] token tensors: documents packed back to back, cut at the sequence end."""
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


def main(argv: list[str] | None = None) -> None:
    """Rebuild the shipped testbed model: ``python -m raise_select.data.synthetic FOLDER [--seed K]``."""
    import argparse

    from ..assets import MANIFEST_FILE, describe_folder
    from ..cpu_kernels import pin_cpu_kernels

    parser = argparse.ArgumentParser(
        description="pre-train the synthetic testbed model into FOLDER (one thread, portable CPU kernels)"
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=_PRETRAIN_SEED, help="pre-training seed")
    args = parser.parse_args(argv)
    pin_cpu_kernels("portable")  # the same bytes on every x86-64 machine with AVX2
    args.folder.mkdir(parents=True, exist_ok=True)
    for old in args.folder.iterdir():
        if old.is_file():
            old.unlink()
    _build_model(args.folder, args.seed)
    write_json(args.folder / MANIFEST_FILE, describe_folder(args.folder))
    print(f"wrote {args.folder}")


if __name__ == "__main__":
    main()
