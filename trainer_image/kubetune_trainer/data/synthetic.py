"""Synthetic datasets shipped with the trainer, and the corpus kubetune's tiny tokenizers learn.

The task is adding one to a number in chat form ("What is 347 + 1?" → "348"), asked in several
phrasings. It is chosen for CPU budgets: a builtin model (under a million parameters) reaches
well over half held-out exact match in a few hundred steps (measured: 0.67 after 300 steps of
batch 32), while two-digit addition with carries stayed near 0.05 after 400 steps. A reference
answer makes rewards and accuracy evals exact. Three datasets, each with a train and a test split:

- ``arithmetic-sft`` (format messages): conversations of one or two question/answer turns,
  some with a system message; column ``answer`` holds the last answer.
- ``arithmetic-preference`` (format preference): ``prompt`` messages, ``chosen`` (the correct
  sum) and ``rejected`` (a near miss), plus ``answer``.
- ``arithmetic-prompts`` (format prompt-only): ``prompt`` messages and ``answer``.

Every row is drawn from a seeded generator, and the (a, b) pairs of the test splits never occur in
any train split. ``python -m kubetune_trainer.data.synthetic`` rewrites the committed files under
``synthetic_data/``; a test checks they are reproduced byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SEED = 1234
DATA_DIR = Path(__file__).parent / "synthetic_data"
FORMATS: dict[str, str] = {
    "arithmetic-sft": "messages",
    "arithmetic-preference": "preference",
    "arithmetic-prompts": "prompt-only",
}
"""Each builtin dataset's native DataSource format."""
SIZES: dict[str, dict[str, int]] = {
    "arithmetic-sft": {"train": 2000, "test": 200},
    "arithmetic-preference": {"train": 1500, "test": 200},
    "arithmetic-prompts": {"train": 1000, "test": 200},
}
SPLITS = ("train", "test")
SYSTEM_PROMPT = "You are a calculator. Reply with the number only."
QUESTIONS = (
    "What is {a} + {b}?",
    "{a} + {b} = ?",
    "Add {a} and {b}.",
    "Compute {a} plus {b}.",
)
TEST_PAIRS = 160
NEAR_MISSES = (-10, -2, -1, 1, 2, 10)

Row = dict[str, Any]
Pair = tuple[int, int]


def _pair_pools() -> dict[str, list[Pair]]:
    """Every (a, 1) question, shuffled once and cut into disjoint test and train pools."""
    pairs = [(a, 1) for a in range(10, 999)]
    random.Random(SEED).shuffle(pairs)
    return {"test": pairs[:TEST_PAIRS], "train": pairs[TEST_PAIRS:]}


def _question(rng: random.Random, pair: Pair) -> str:
    return rng.choice(QUESTIONS).format(a=pair[0], b=pair[1])


def _prompt(rng: random.Random, pair: Pair) -> list[dict[str, str]]:
    prompt = []
    if rng.random() < 0.3:
        prompt.append({"role": "system", "content": SYSTEM_PROMPT})
    prompt.append({"role": "user", "content": _question(rng, pair)})
    return prompt


def _near_miss(rng: random.Random, total: int) -> int:
    while True:
        wrong = total + rng.choice(NEAR_MISSES)
        if wrong >= 0 and wrong != total:
            return wrong


def _sft_row(rng: random.Random, pool: list[Pair]) -> Row:
    turns = 2 if rng.random() < 0.25 else 1
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": SYSTEM_PROMPT})
    answer = ""
    for _ in range(turns):
        pair = rng.choice(pool)
        answer = str(pair[0] + pair[1])
        messages.append({"role": "user", "content": _question(rng, pair)})
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages, "answer": answer}


def _preference_row(rng: random.Random, pool: list[Pair]) -> Row:
    pair = rng.choice(pool)
    total = pair[0] + pair[1]
    return {
        "prompt": _prompt(rng, pair),
        "chosen": [{"role": "assistant", "content": str(total)}],
        "rejected": [{"role": "assistant", "content": str(_near_miss(rng, total))}],
        "answer": str(total),
    }


def _prompt_row(rng: random.Random, pool: list[Pair]) -> Row:
    pair = rng.choice(pool)
    return {"prompt": _prompt(rng, pair), "answer": str(pair[0] + pair[1])}


_MAKERS = {
    "arithmetic-sft": _sft_row,
    "arithmetic-preference": _preference_row,
    "arithmetic-prompts": _prompt_row,
}


def generate() -> dict[str, dict[str, list[Row]]]:
    """Every dataset and split, as rows: ``{name: {split: [row, ...]}}``."""
    pools = _pair_pools()
    out: dict[str, dict[str, list[Row]]] = {}
    for index, (name, make) in enumerate(_MAKERS.items()):
        out[name] = {}
        for split_index, split in enumerate(SPLITS):
            rng = random.Random(SEED * 100 + index * 10 + split_index)
            out[name][split] = [make(rng, pools[split]) for _ in range(SIZES[name][split])]
    return out


def to_jsonl(rows: list[Row]) -> str:
    """Rows as JSON lines, compact and in a stable key order."""
    return "".join(
        json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows
    )


def write(out_dir: Path) -> list[Path]:
    """Write ``NAME/SPLIT.jsonl`` for every dataset under ``out_dir``; return the files."""
    written = []
    for name, splits in generate().items():
        for split, rows in splits.items():
            path = out_dir / name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(to_jsonl(rows), encoding="utf-8")
            written.append(path)
    return written


# A little plain English, so the tiny tokenizers learn common words and not only sums.
_ENGLISH = """\
The quick brown fox jumps over the lazy dog. A small model can learn a simple task when the
data is clean and the task is clear. Each example is a short conversation between a user and an
assistant. The user asks a question, and the assistant gives the answer. Sometimes a system
message tells the assistant how to behave. Please answer the question with a number. Thank you
for your help. This is a test of the training pipeline, which reads data, builds batches, runs
the model forward and backward, and writes checkpoints to storage. The job is running, the job
has succeeded, the job has failed. What is the capital of France? Paris is the capital of France.
How many days are there in a week? There are seven days in a week. Good morning, good evening,
good night. I do not know the answer to that question. Can you explain it again, step by step?
First add the ones, then add the tens, and carry when the sum is ten or more. The result is
correct. The result is wrong. Try again. One, two, three, four, five, six, seven, eight, nine,
ten. Hello! How are you today? I am fine, thanks. Let us begin.
"""


_ONSETS = (
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "st",
    "tr",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "s", "t", "l", "m")


def _lexicon(count: int = 1500) -> list[str]:
    """Seeded pseudo-words: enough distinct text for a vocabulary of about two thousand."""
    rng = random.Random(SEED + 7)
    words: list[str] = []
    for _ in range(count):
        syllables = rng.randint(2, 4)
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        )
        words.append(word.capitalize() if rng.random() < 0.1 else word)
    return words


def tokenizer_corpus() -> list[str]:
    """The deterministic text kubetune's builtin tokenizers are trained on.

    The train splits' turns (questions and answers), a paragraph of English, and seeded
    pseudo-words (twice each, so they reach the trainer's minimum frequency) that fill the
    vocabulary to about two thousand tokens. Roles and chat markup are not included: each
    template's control tokens are added as special tokens.
    """
    data = generate()
    lexicon = _lexicon()
    texts: list[str] = [" ".join(lexicon[i : i + 12]) for i in range(0, len(lexicon), 12)] * 2
    texts.extend(line.strip() for line in _ENGLISH.splitlines() if line.strip())
    texts.extend(QUESTIONS)
    texts.append(SYSTEM_PROMPT)
    for row in data["arithmetic-sft"]["train"]:
        texts.extend(m["content"] for m in row["messages"] if m["role"] != "system")
    for row in data["arithmetic-preference"]["train"]:
        texts.append(row["rejected"][0]["content"])
    texts.extend(["system", "user", "assistant"])
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write kubetune's synthetic datasets.")
    parser.add_argument(
        "--out", type=Path, default=DATA_DIR, help="output directory (default: the package's)"
    )
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
