"""Preference pairs from a model's own mistakes (spec.dpo.onPolicy): for each prompt with a
reference answer, sample completions from the model; every distinct wrong answer becomes a
rejected response, the reference answer the chosen one."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from kubetune_trainer.evaluation.measures import answers_match, extract_answer, generate_completions
from kubetune_trainer.plan import OnPolicyPairs

log = logging.getLogger("kubetune.trainer")


def pairs_from_completions(
    rows: Sequence[dict[str, Any]],
    completions: Sequence[Sequence[str]],
    options: OnPolicyPairs,
) -> list[dict[str, Any]]:
    """Pure: the pairs of rows (prompt, answer) given each row's sampled completions."""
    pairs = []
    for row, texts in zip(rows, completions, strict=True):
        answer = str(row["answer"])
        wrong: list[str] = []
        for text in texts:
            predicted = extract_answer(text, options.extractor)
            right = answers_match(predicted, answer, options.extractor)
            if not right and text.strip() and text.strip() not in wrong:
                wrong.append(text.strip())
        for rejected in wrong[: options.pairs_per_prompt]:
            pairs.append(
                {
                    "prompt": row["prompt"],
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
    return pairs


def on_policy_pairs(
    model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], options: OnPolicyPairs, seed: int
) -> list[dict[str, Any]]:
    """Sample from the model and make the pairs (see the module docstring)."""
    found = generate_completions(
        model,
        tokenizer,
        [row["prompt"] for row in rows],
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        num_samples=options.samples,
        batch_size=32 * options.samples,
        seed=seed,
    )
    pairs = pairs_from_completions(rows, [[c.text for c in s] for s in found], options)
    wrong_prompts = len({json.dumps(p["prompt"]) for p in pairs})
    log.info(
        "event=on_policy_pairs prompts=%d samples=%d prompts_with_mistakes=%d pairs=%d",
        len(rows),
        options.samples,
        wrong_prompts,
        len(pairs),
    )
    return pairs
