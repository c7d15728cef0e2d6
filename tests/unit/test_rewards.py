"""Rule rewards and their blending: each term's value on hand-computed cases, the ADLF blend
reward = (1-α)·external + α·internal, and clear errors for rows that lack what a term needs."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_trainer.evaluation.rewards import RewardError, build_reward
from kubetune_trainer.plan import RewardSource


class WordTokenizer:
    """One token per whitespace-separated word: token counts are easy to write down."""

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        return {"input_ids": [text.split() for text in texts]}


def sources(*specs: dict[str, Any]) -> list[RewardSource]:
    return [RewardSource.model_validate(s) for s in specs]


def reward_of(specs: list[dict[str, Any]], alpha: float = 1.0, **columns: str):
    return build_reward(sources(*specs), alpha, tokenizer=WordTokenizer(), **columns)


PROMPTS = ["What is 4 + 1?", "What is 9 + 1?", "Add 2 and 1."]


def test_length_penalises_distance_from_target_in_tokens() -> None:
    reward = reward_of([{"type": "length", "targetLength": 4}])
    completions = ["a b c d", "a b", "a b c d e f g h"]
    assert reward.terms(PROMPTS, completions, [{}] * 3) == {"length": [0.0, -0.5, -1.0]}


def test_regex_is_one_on_a_match_anywhere_and_respects_anchors() -> None:
    loose = reward_of([{"type": "regex", "pattern": r"\d+"}])
    anchored = reward_of([{"type": "regex", "pattern": r"^\d+$"}])
    completions = ["5", "the answer is 10", "three"]
    assert loose(PROMPTS, completions, [{}] * 3) == [1.0, 1.0, 0.0]
    assert anchored(PROMPTS, completions, [{}] * 3) == [1.0, 0.0, 0.0]


def test_answer_match_exact_and_numeric() -> None:
    rows = [{"answer": "5"}, {"answer": "10"}, {"answer": "3"}]
    completions = [" 5 ", "The answer is 10.", "3.0"]
    exact = reward_of([{"type": "answerMatch"}])
    numeric = reward_of([{"type": "answerMatch", "match": "numeric"}])
    assert exact(PROMPTS, completions, rows) == [1.0, 0.0, 0.0]
    assert numeric(PROMPTS, completions, rows) == [1.0, 1.0, 1.0]
    assert numeric(PROMPTS, ["6", "no number", "-3"], rows) == [0.0, 0.0, 0.0]


def test_answer_match_reads_the_named_column() -> None:
    rows = [{"answer": "0", "gold": "5"}]
    by_source = reward_of([{"type": "answerMatch", "column": "gold"}])
    by_default = reward_of([{"type": "answerMatch"}], answer_column="gold")
    assert by_source(PROMPTS[:1], ["5"], rows) == [1.0]
    assert by_default(PROMPTS[:1], ["5"], rows) == [1.0]


def test_weighted_terms_sum_and_blend_with_external_scores() -> None:
    rows = [{"answer": "5", "score": 2.0}, {"answer": "10", "score": -1.0}]
    specs = [
        {"type": "answerMatch", "weight": 2.0},
        {"type": "regex", "pattern": "^\\d+$", "weight": 0.5},
        {"type": "externalColumn", "weight": 3.0},
    ]
    reward = reward_of(specs, alpha=0.25)
    completions = ["5", "it is 10"]
    assert reward.names == ["answerMatch", "regex", "externalColumn"]
    terms = reward.terms(PROMPTS[:2], completions, rows)
    assert terms == {"answerMatch": [1.0, 0.0], "regex": [1.0, 0.0], "externalColumn": [2.0, -1.0]}
    # internal = 2·match + 0.5·regex; external = 3·score
    expected = [0.75 * 6.0 + 0.25 * 2.5, 0.75 * -3.0 + 0.25 * 0.0]
    assert reward(PROMPTS[:2], completions, rows) == pytest.approx(expected)


def test_repeated_types_get_distinct_names() -> None:
    reward = reward_of([{"type": "regex", "pattern": "a"}, {"type": "regex", "pattern": "b"}])
    assert reward.names == ["regex", "regex_2"]
    assert reward.terms(["p"], ["a"], [{}]) == {"regex": [1.0], "regex_2": [0.0]}


@pytest.mark.parametrize("value", [None, "high", float("nan")])
def test_external_column_without_a_number_names_column_and_row(value: Any) -> None:
    reward = reward_of([{"type": "externalColumn", "column": "rating"}], alpha=0.0)
    rows = [{"rating": 1.0}, {"rating": value}]
    with pytest.raises(RewardError, match=r"row 1 \(prompt 'What is 9 \+ 1\?'\).*'rating'"):
        reward(PROMPTS[:2], ["5", "10"], rows)


def test_answer_match_without_an_answer_names_column_and_row() -> None:
    reward = reward_of([{"type": "answerMatch"}])
    with pytest.raises(RewardError, match=r"row 0 .* column 'answer'"):
        reward(PROMPTS[:1], ["5"], [{}])


def test_blend_that_zeroes_every_term_of_a_kind_is_refused() -> None:
    with pytest.raises(RewardError, match="externalColumn rewards get weight 1-α = 0"):
        reward_of([{"type": "externalColumn"}], alpha=1.0)
    with pytest.raises(RewardError, match="blendAlpha is 0"):
        reward_of([{"type": "regex", "pattern": "x"}, {"type": "externalColumn"}], alpha=0.0)


def test_length_needs_a_tokenizer() -> None:
    with pytest.raises(RewardError, match=r"rewards\[0\]: a length reward needs"):
        build_reward(sources({"type": "length", "targetLength": 3}), 1.0, tokenizer=None)


def test_mismatched_batch_sizes_are_refused() -> None:
    reward = reward_of([{"type": "regex", "pattern": "x"}])
    with pytest.raises(RewardError, match="must pair up"):
        reward(PROMPTS, ["x"], [{}])


def test_trl_adapter_reads_conversational_completions_and_columns() -> None:
    from kubetune_trainer.evaluation.rewards import TrlReward

    logged: dict[str, float] = {}
    reward = TrlReward(reward_of([{"type": "answerMatch", "match": "numeric"}]))
    prompts = [[{"role": "user", "content": "What is 4 + 1?"}]] * 2
    completions = [
        [{"role": "assistant", "content": "It is 5"}],
        [{"role": "assistant", "content": "6"}],
    ]
    values = reward(
        prompts,
        completions,
        answer=["5", "5"],
        completion_ids=[[1], [2]],
        trainer_state=None,
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert values == [1.0, 0.0]
    assert logged == {"reward_terms/answerMatch": 0.5}
