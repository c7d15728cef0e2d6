"""The synthetic datasets: reproducible byte for byte, correct, held-out splits disjoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kubetune_trainer.data import synthetic
from kubetune_trainer.plan import BUILTIN_DATASETS

pytestmark = pytest.mark.trainer

PAIR = re.compile(r"(\d+)\D+(\d+)")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generator_reproduces_the_committed_files(tmp_path: Path) -> None:
    assert synthetic.main(["--out", str(tmp_path)]) == 0
    committed = sorted(
        p.relative_to(synthetic.DATA_DIR) for p in synthetic.DATA_DIR.rglob("*.jsonl")
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jsonl"))
    assert committed == generated
    assert len(committed) == 2 * len(BUILTIN_DATASETS)
    for relative in committed:
        assert (tmp_path / relative).read_bytes() == (synthetic.DATA_DIR / relative).read_bytes(), (
            f"{relative} differs: run python -m kubetune_trainer.data.synthetic and commit "
            "the result"
        )
    total = sum((synthetic.DATA_DIR / r).stat().st_size for r in committed)
    assert total < 2_000_000


def test_every_builtin_dataset_has_both_splits_and_its_format() -> None:
    assert set(synthetic.FORMATS) == set(BUILTIN_DATASETS)
    for name in BUILTIN_DATASETS:
        for split in synthetic.SPLITS:
            rows = read(synthetic.DATA_DIR / name / f"{split}.jsonl")
            assert len(rows) == synthetic.SIZES[name][split]


def _question_pairs(turns: list[dict]) -> list[tuple[int, int]]:
    pairs = []
    for turn in turns:
        if turn["role"] == "user":
            match = PAIR.search(turn["content"])
            assert match, turn
            pairs.append((int(match[1]), int(match[2])))
    return pairs


def test_answers_are_correct_and_test_pairs_are_held_out() -> None:
    data = synthetic.generate()
    seen: dict[str, set[tuple[int, int]]] = {"train": set(), "test": set()}
    for split in synthetic.SPLITS:
        for row in data["arithmetic-sft"][split]:
            turns = row["messages"]
            pairs = _question_pairs(turns)
            answers = [t["content"] for t in turns if t["role"] == "assistant"]
            assert answers == [str(a + b) for a, b in pairs]
            assert row["answer"] == answers[-1]
            seen[split].update(pairs)
        for row in data["arithmetic-preference"][split]:
            (pair,) = _question_pairs(row["prompt"])
            assert row["chosen"] == [{"role": "assistant", "content": str(sum(pair))}]
            assert row["rejected"][0]["content"] != row["answer"] == str(sum(pair))
            seen[split].add(pair)
        for row in data["arithmetic-prompts"][split]:
            (pair,) = _question_pairs(row["prompt"])
            assert row["prompt"][-1]["role"] == "user" and row["answer"] == str(sum(pair))
            seen[split].add(pair)
    assert seen["train"].isdisjoint(seen["test"])
    assert len(seen["test"]) > 0.6 * synthetic.TEST_PAIRS  # most held-out questions are used


def test_tokenizer_corpus_is_deterministic() -> None:
    first = synthetic.tokenizer_corpus()
    assert first == synthetic.tokenizer_corpus()
    assert sum(len(t) for t in first) > 20_000
