"""lm-evaluation-harness task folders shipped with the trainer (``builtin://NAME`` in an lmEval
metric's taskDirs; always on the task path).

``arithmetic/`` holds three tasks over the held-out questions of kubetune's synthetic data
(the (a, b) pairs of the test splits, never trained on), one per lm-eval output type:

- ``arithmetic_mc`` (multiple_choice, log-likelihood): the question and four answers, the sum
  and three near misses; metric acc;
- ``arithmetic_gen`` (generate_until): the generated answer's first number against the sum;
  metric exact_match;
- ``arithmetic_ppl`` (loglikelihood_rolling): the question and its answer as one line of
  text; metrics word_perplexity, byte_perplexity, bits_per_byte.

The YAMLs are lm-eval's own format; their ``data_files`` are relative to the YAML's folder
(kubetune resolves them, see :mod:`kubetune_trainer.evaluation.benchmarks`). The data files
are generated: ``python -m kubetune_trainer.evaluation.builtin_tasks`` rewrites them, and a
test checks that the committed files are reproduced byte for byte.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from kubetune_trainer.data import synthetic

TASKS_DIR = Path(__file__).parent / "tasks"
BUILTIN_TASK_DIRS = {"arithmetic": TASKS_DIR / "arithmetic"}
SEED = 4321
Row = dict[str, Any]


def _question(row: Row) -> str:
    return next(m["content"] for m in row["prompt"] if m["role"] == "user")


def _multiple_choice(rng: random.Random, row: Row) -> Row:
    total = int(row["answer"])
    wrong: list[int] = []
    while len(wrong) < 3:
        candidate = total + rng.choice(synthetic.NEAR_MISSES)
        if candidate >= 0 and candidate != total and candidate not in wrong:
            wrong.append(candidate)
    choices = [str(total), *map(str, wrong)]
    rng.shuffle(choices)
    return {"question": _question(row), "choices": choices, "label": choices.index(str(total))}


def generate() -> dict[str, list[Row]]:
    """Rows of each task's data file, from the held-out arithmetic-prompts split."""
    held_out = synthetic.generate()["arithmetic-prompts"]["test"]
    rng = random.Random(SEED)
    return {
        "mc": [_multiple_choice(rng, row) for row in held_out],
        "gen": [{"question": _question(row), "answer": row["answer"]} for row in held_out],
        "ppl": [{"text": f"{_question(row)} {row['answer']}"} for row in held_out],
    }


def write(out_dir: Path) -> list[Path]:
    """Write ``data/NAME.jsonl`` of the arithmetic tasks under ``out_dir``; the files."""
    written = []
    for name, rows in generate().items():
        path = out_dir / "data" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(synthetic.to_jsonl(rows), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the builtin lm-eval tasks' data files.")
    parser.add_argument(
        "--out",
        type=Path,
        default=BUILTIN_TASK_DIRS["arithmetic"],
        help="the arithmetic task folder (default: the package's)",
    )
    for path in write(parser.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
