"""The conversation format (rows of ``conversation`` with human/assistant roles,
``meta_eval_score`` and ``score_reason``): read for SFT, for prompts with the score as the
reward's external term, and malformed rows reported with their file and row index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.data import DataError, load_data
from kubetune_trainer.evaluation.rewards import build_reward
from kubetune_trainer.plan import DataSpec, RewardSource

pytestmark = pytest.mark.trainer


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


GOOD = {
    "conversation": [
        turn("human", "What is 2 + 3?"),
        turn("assistant", "5"),
        turn("human", "And 4 + 4?"),
        turn("assistant", "8"),
    ],
    "meta_eval_score": 4.5,
    "score_reason": "both sums right",
}
SECOND = {
    "conversation": [turn("system", "Be brief."), turn("human", "Hi"), turn("assistant", "Hello")],
    "meta_eval_score": 2,
}


def write(path: Path, rows: list[Any], raw: dict[int, str] | None = None) -> str:
    lines = [json.dumps(r) for r in rows]
    for index, text in (raw or {}).items():
        lines[index] = text
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def spec(uri: str, **source: Any) -> DataSpec:
    return DataSpec.model_validate(
        {"sources": [{"uri": uri, "format": "conversation", **source}], "seed": 1}
    )


def test_sft_rows_have_kubetune_roles_score_and_reason(tmp_path: Path) -> None:
    uri = write(tmp_path / "c.jsonl", [GOOD, SECOND])
    rows = sorted(load_data(spec(uri), kind="sft").train, key=lambda r: -r["score"])
    assert rows[0]["messages"] == [
        turn("user", "What is 2 + 3?"),
        turn("assistant", "5"),
        turn("user", "And 4 + 4?"),
        turn("assistant", "8"),
    ]
    assert rows[0]["score"] == 4.5 and rows[0]["score_reason"] == "both sums right"
    assert rows[1]["messages"][0] == turn("system", "Be brief.")
    assert rows[1]["score"] == 2.0 and rows[1]["score_reason"] is None


def test_prompt_rows_feed_the_external_reward_term(tmp_path: Path) -> None:
    uri = write(tmp_path / "c.jsonl", [GOOD, SECOND])
    rows = sorted(load_data(spec(uri), kind="prompt").train, key=lambda r: -r["score"])
    assert rows[0]["prompt"] == [
        turn("user", "What is 2 + 3?"),
        turn("assistant", "5"),
        turn("user", "And 4 + 4?"),
    ]
    reward = build_reward(
        [RewardSource(type="externalColumn"), RewardSource(type="regex", pattern="^8$")],
        0.25,
        tokenizer=None,
    )
    prompts = [r["prompt"] for r in rows]
    # (1 - α) · meta_eval_score + α · regex
    assert reward(prompts, ["8", "x"], rows) == [0.75 * 4.5 + 0.25, 0.75 * 2.0]


def test_columns_can_be_renamed(tmp_path: Path) -> None:
    row = {"dialog": GOOD["conversation"], "rating": 3.5, "why": "fine"}
    uri = write(tmp_path / "c.jsonl", [row])
    columns = {"conversation": "dialog", "score": "rating", "scoreReason": "why"}
    (loaded,) = load_data(spec(uri, columns=columns), kind="sft").train
    assert loaded["score"] == 3.5 and loaded["score_reason"] == "fine"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"meta_eval_score": 1}, "missing field 'conversation'"),
        ({"conversation": "human: hi", "meta_eval_score": 1}, "conversation: expected a list"),
        (
            {"conversation": [turn("user", "hi"), turn("assistant", "x")]},
            "conversation[0]: unknown role 'user' (use human or assistant)",
        ),
        (
            {"conversation": [turn("human", "hi"), turn("human", "again")]},
            "conversation[1]: expected a assistant turn, got user",
        ),
        (
            {"conversation": [turn("human", "hi"), turn("assistant", " ")]},
            "conversation[1]: assistant turn is empty",
        ),
        ({"conversation": [turn("human", "hi")]}, "ends with a user turn; expected assistant"),
        (
            {**GOOD, "meta_eval_score": "high"},
            "meta_eval_score: not a number: 'high'",
        ),
        ({**GOOD, "meta_eval_score": float("nan")}, "meta_eval_score: not a number"),
        ({**GOOD, "score_reason": 3}, "score_reason: not text: 3"),
    ],
)
def test_malformed_rows_name_file_row_and_field(
    tmp_path: Path, row: dict[str, Any], message: str
) -> None:
    uri = write(tmp_path / "c.jsonl", [GOOD, SECOND, row])
    with pytest.raises(DataError) as error:
        load_data(spec(uri), kind="sft")
    assert str(error.value).startswith(f"{uri}: row 2 (line 3): ")
    assert message in str(error.value)


def test_skip_keeps_the_good_rows_and_counts_the_bad(tmp_path: Path) -> None:
    uri = write(tmp_path / "c.jsonl", [GOOD, {"conversation": []}, SECOND, {}], raw={3: "{oops"})
    data = DataSpec.model_validate(
        {"sources": [{"uri": uri, "format": "conversation"}], "badRows": "skip"}
    )
    loaded = load_data(data, kind="sft")
    assert len(loaded.train) == 2 and loaded.skipped_rows == 2
    assert loaded.bad_rows[0].startswith(f"{uri}: row 1 (line 2): conversation: no turns")
    assert "row 3 (line 4): malformed JSON" in loaded.bad_rows[1]


def test_score_conditioning_requires_a_score(tmp_path: Path) -> None:
    no_score = {"conversation": GOOD["conversation"]}
    uri = write(tmp_path / "c.jsonl", [GOOD, no_score])
    assert len(load_data(spec(uri), kind="sft").train) == 2
    with pytest.raises(DataError, match=r"row 1 \(line 2\): missing field 'meta_eval_score'"):
        load_data(spec(uri), kind="sft", require_score=True)


def test_a_numeric_column_is_checked_per_row(tmp_path: Path) -> None:
    uri = write(tmp_path / "c.jsonl", [{**GOOD, "level": 2}, {**SECOND, "level": "easy"}])
    with pytest.raises(DataError, match=r"row 1 \(line 2\): level: not a number: 'easy'"):
        load_data(spec(uri), kind="sft", numeric_columns=["level"])


def test_the_format_cannot_feed_preference_training(tmp_path: Path) -> None:
    uri = write(tmp_path / "c.jsonl", [GOOD])
    with pytest.raises(DataError, match="format conversation cannot feed preference training"):
        load_data(spec(uri), kind="preference")
