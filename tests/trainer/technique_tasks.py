"""Synthetic tasks for the data-side techniques' proofs (curriculum, score conditioning), built
for CPU budgets: rules a builtin tiny model picks up in tens of steps, on three-digit numbers
from disjoint train and held-out pools.

- last digit ("Last digit of 347?" → "7"): learned in a few dozen steps;
- add one ("What is 347 + 1?" → "348"): needs hundreds of steps (see data.synthetic).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

Row = dict[str, Any]


# The training section the technique proofs share (tiny-llama, a few dozen steps), and a
# checkpoint setting that saves none.
TRAINING = {
    "learningRate": 3e-3,
    "perDeviceBatchSize": 16,
    "maxLength": 64,
    "logEverySteps": 10,
    "seed": 1,
}
NO_SAVES = {"everySteps": 1000}


def number_pools(seed: int = 11, held_out: int = 96) -> tuple[list[int], list[int]]:
    """(train, held-out) three-digit numbers whose first, middle and last digits all differ
    (so a wrong digit is never the right answer by chance)."""
    numbers = [n for n in range(100, 1000) if len(set(str(n))) == 3]
    random.Random(seed).shuffle(numbers)
    return numbers[held_out:], numbers[:held_out]


NON_ANSWER = "I do not know."


def last_digit_question(n: int) -> str:
    return f"Last digit of {n}?"


def add_one_question(n: int) -> str:
    return f"What is {n} + 1?"


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "human", "content": question}, {"role": "assistant", "content": answer}]


def write_jsonl(path: Path, rows: list[Row]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def scored_last_digit_rows(numbers: list[int]) -> list[Row]:
    """The plan's format: each question answered three ways, labelled by score — the last digit
    (correct, 5.0) and twice the same non-answer (2.0 and 1.0), as rated data mixed with poor
    answers often is. Unconditioned, the data says "I do not know" two times in three, so plain
    SFT answers it; a score-conditioned model asked for the top score should answer instead."""
    rows = []
    for n in numbers:
        for answer, score, reason in (
            (str(n)[2], 5.0, "correct"),
            (NON_ANSWER, 2.0, "no answer, but polite"),
            (NON_ANSWER, 1.0, "no answer"),
        ):
            rows.append(
                {
                    "conversation": conversation(last_digit_question(n), answer),
                    "meta_eval_score": score,
                    "score_reason": reason,
                }
            )
    random.Random(5).shuffle(rows)
    return rows


def easy_hard_rows(numbers: list[int], easy_share: float, seed: int = 3) -> list[Row]:
    """Messages rows with a difficulty column: last-digit questions (difficulty 0) for
    ``easy_share`` of the numbers, add-one questions (difficulty 1) for the rest."""
    rng = random.Random(seed)
    rows = []
    for n in numbers:
        if rng.random() < easy_share:
            question, answer, difficulty = last_digit_question(n), str(n)[2], 0
        else:
            question, answer, difficulty = add_one_question(n), str(n + 1), 1
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
                "difficulty": difficulty,
            }
        )
    return rows


def held_out_prompts(numbers: list[int]) -> list[tuple[list[dict[str, str]], str]]:
    """Half last-digit, half add-one questions on held-out numbers, with their answers."""
    found = []
    for i, n in enumerate(numbers):
        if i % 2 == 0:
            found.append(([{"role": "user", "content": last_digit_question(n)}], str(n)[2]))
        else:
            found.append(([{"role": "user", "content": add_one_question(n)}], str(n + 1)))
    return found


def last_digit_preference_rows(numbers: list[int]) -> list[Row]:
    """Preference rows (prompt, chosen, rejected messages): the last digit of each number
    preferred to its first digit, a wrong answer that is in the question too."""
    return [
        {
            "prompt": [{"role": "user", "content": last_digit_question(n)}],
            "chosen": [{"role": "assistant", "content": str(n)[2]}],
            "rejected": [{"role": "assistant", "content": str(n)[0]}],
        }
        for n in numbers
    ]
