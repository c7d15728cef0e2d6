"""Generation-based accuracy: greedy answers to chat prompts, compared with reference answers
after an extractor reads the answer out of the generation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer(text: str, extractor: str, pattern: str | None = None) -> str | None:
    """The answer in a generation: exact (the stripped text), regex (first group, or the whole
    match) or lastNumber (the last number in the text)."""
    if extractor == "exact":
        return text.strip()
    if extractor == "regex":
        match = re.search(pattern or "", text)
        if match is None:
            return None
        return (match.group(1) if match.groups() else match.group(0)).strip()
    if extractor == "lastNumber":
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else None
    raise ValueError(f"unknown extractor '{extractor}'")


def answers_match(predicted: str | None, reference: str, extractor: str) -> bool:
    if predicted is None:
        return False
    if extractor == "lastNumber":
        reference_numbers = _NUMBER.findall(reference)
        if not reference_numbers:
            return False
        return float(predicted) == float(reference_numbers[-1])
    return predicted == reference.strip()


@dataclass
class AccuracyResult:
    accuracy: float
    correct: int
    total: int
    examples: list[dict[str, Any]]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    """Greedy completions of chat prompts (left-padded batches)."""
    import torch

    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    completions: list[str] = []
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in prompts[start : start + batch_size]
            ]
            batch = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = previous_side
    return completions


def answer_accuracy(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    extractor: str = "lastNumber",
    pattern: str | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> AccuracyResult:
    """Share of rows whose generated answer matches row["answer"]; rows carry "prompt" as a
    list of chat messages."""
    completions = generate(
        model,
        tokenizer,
        [row["prompt"] for row in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    correct = 0
    examples = []
    for row, completion in zip(rows, completions, strict=True):
        ok = answers_match(
            extract_answer(completion, extractor, pattern), str(row["answer"]), extractor
        )
        correct += ok
        if len(examples) < 5:
            examples.append({"answer": row["answer"], "generated": completion, "correct": ok})
    total = len(rows)
    return AccuracyResult(correct / total if total else 0.0, correct, total, examples)
