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


# --------------------------------------------------------------------------- objectives


def test_running_moments_match_the_closed_form_over_everything_seen() -> None:
    """After each batch: the mean and population standard deviation of every value so far,
    and the batch standardised by them (numpy's closed form on the concatenation)."""
    import numpy as np

    from kubetune_trainer.evaluation.rewards import RunningMoments

    rng = np.random.default_rng(7)
    moments = RunningMoments()
    seen: list[float] = []
    for size, loc, scale in [(1, 3.0, 1.0), (5, -2.0, 0.5), (64, 100.0, 30.0), (3, 0.0, 1e-3)]:
        batch = rng.normal(loc, scale, size).tolist()
        moments.update(batch)
        seen += batch
        assert moments.count == len(seen)
        assert moments.mean == pytest.approx(np.mean(seen), rel=1e-12, abs=1e-12)
        assert moments.std == pytest.approx(np.std(seen), rel=1e-10)
        expected = (np.array(batch) - np.mean(seen)) / np.std(seen) if len(seen) > 1 else [0.0]
        assert moments.standardize(batch) == pytest.approx(list(expected), rel=1e-9, abs=1e-12)


def test_running_moments_do_not_depend_on_batching_and_survive_a_checkpoint() -> None:
    from kubetune_trainer.evaluation.rewards import RunningMoments

    values = [0.5, 2.0, -1.0, 4.0, 4.0, 0.0, 7.5]
    one, split = RunningMoments(), RunningMoments()
    one.update(values)
    for part in (values[:1], values[1:4], [], values[4:]):
        split.update(part)
    assert (split.count, split.mean) == (one.count, pytest.approx(one.mean))
    assert split.std == pytest.approx(one.std)
    restored = RunningMoments.from_state(split.state_dict())
    assert restored == split


def test_constant_objective_is_centred_not_divided_by_zero() -> None:
    from kubetune_trainer.evaluation.rewards import RunningMoments

    moments = RunningMoments()
    moments.update([2.0, 2.0])
    assert moments.standardize([2.0, 2.0]) == [0.0, 0.0]


def test_normalised_objectives_are_weighted_after_standardising() -> None:
    """A 0/1 objective and one on a 100× larger scale: with running normalisation each
    counts by its weight; raw, the large one would swamp the other."""
    import numpy as np

    running = {"normalize": "running"}
    reward = reward_of(
        [
            {"name": "has_digit", "type": "regex", "pattern": r"\d", "weight": 0.7, **running},
            {"name": "brevity", "type": "length", "targetLength": 1, "weight": 0.3, **running},
        ]
    )
    first = ["1", "a b c", "2 b", "a"]
    second = ["a b c d e f", "3", "x"]
    digits, brevity = [], []
    for batch in (first, second):
        terms = reward.terms(["q"] * len(batch), batch, [{}] * len(batch))
        digits += terms["has_digit"]
        brevity += terms["brevity"]
        n = len(batch)
        z_digit = (np.array(digits[-n:]) - np.mean(digits)) / np.std(digits)
        z_brevity = (np.array(brevity[-n:]) - np.mean(brevity)) / np.std(brevity)
        assert reward.score(terms) == pytest.approx(list(0.7 * z_digit + 0.3 * z_brevity))
    assert reward.state_dict()["brevity"]["count"] == 7


def test_normalisation_keeps_the_adlf_blend() -> None:
    reward = reward_of(
        [
            {"name": "rating", "type": "externalColumn", "normalize": "running"},
            {"name": "digit", "type": "regex", "pattern": r"\d"},
        ],
        alpha=0.25,
    )
    rows = [{"score": 1.0}, {"score": 3.0}]
    # rating standardised: mean 2, std 1 -> [-1, 1]; digit raw: [1, 0]
    assert reward(["q", "q"], ["7", "x"], rows) == pytest.approx(
        [0.75 * -1 + 0.25 * 1, 0.75 * 1 + 0.25 * 0]
    )


def test_objectives_keep_their_names_and_unnamed_terms_theirs() -> None:
    reward = reward_of(
        [
            {"name": "regex", "type": "length", "targetLength": 2},
            {"type": "regex", "pattern": "a"},
            {"name": "fluency", "type": "regex", "pattern": "b"},
        ]
    )
    assert reward.names == ["regex", "regex_2", "fluency"]
    assert reward.objectives == ["regex", "fluency"]


def test_objectives_are_logged_under_their_names() -> None:
    from kubetune_trainer.evaluation.rewards import TrlReward

    logged: dict[str, float] = {}
    reward = TrlReward(
        reward_of(
            [
                {"name": "fluency", "type": "regex", "pattern": "ok", "weight": 0.4},
                {"name": "faithfulness", "type": "answerMatch", "weight": 0.6},
                {"type": "length", "targetLength": 1},
            ]
        )
    )
    values = reward(
        ["q", "q"],
        ["ok 5", "6"],
        answer=["5", "6"],
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert logged == {
        "objectives/fluency": 0.5,
        "objectives/faithfulness": 0.5,
        "reward_terms/length": -0.5,
    }
    assert values == pytest.approx([0.4 * 1 + 0.6 * 0 - 1.0, 0.4 * 0 + 0.6 * 1 + 0.0])


class ScriptedJudge:
    """A ChatClient stand-in replying from a script keyed by the response being judged."""

    url = "http://judge.test/v1"

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies
        self.asked: list[list[dict[str, str]]] = []

    def complete(self, messages: list[dict[str, str]], **_: Any) -> str:
        self.asked.append(messages)
        response = messages[-1]["content"].rsplit("[Response]\n", 1)[1]
        return self.replies[response]


JUDGE = {"endpoint": "http://judge.test/v1", "model": "judge"}


def judged(client: ScriptedJudge):
    return build_reward(
        sources({"name": "quality", "type": "judge", "judge": JUDGE}),
        1.0,
        tokenizer=None,
        judge_client=lambda source, where: client,
    )


def test_judge_objective_maps_the_1_to_5_score_onto_0_to_1() -> None:
    client = ScriptedJudge({"great": "Score: 5", "poor": "Score: 1", "fine": "3", "odd": "??"})
    reward = judged(client)
    values = reward(["What is 2+2?"] * 4, ["great", "poor", "fine", "odd"], [{}] * 4)
    # the unreadable reply gets the mean of the readable ones: (5+1+3)/3 = 3 -> 0.5
    assert values == [1.0, 0.0, 0.5, 0.5]
    assert "[Question]\nWhat is 2+2?" in client.asked[0][-1]["content"]


def test_judge_objective_without_a_readable_score_is_an_error() -> None:
    reward = judged(ScriptedJudge({"a": "I cannot rate this", "b": "Score: 9"}))
    with pytest.raises(RewardError, match=r"judge reward 'quality': none of 2 responses"):
        reward(["q", "q"], ["a", "b"], [{}, {}])


def test_processes_standardise_by_the_moments_of_every_process_batch() -> None:
    """Two workers, each scoring its own completions: both add both batches (in rank order),
    so they hold the same moments and standardise alike, by the moments of all values."""
    import numpy as np

    from kubetune_trainer.evaluation.rewards import RunningMoments

    batches = {0: [[1.0, 2.0], [10.0]], 1: [[3.0, 5.0, 8.0], [0.0, -4.0]]}
    step = 0

    def worker(rank: int):
        def gather(batch: RunningMoments) -> list[RunningMoments]:
            everyone = [RunningMoments.of(batches[r][step]) for r in (0, 1)]
            assert everyone[rank] == batch
            return everyone

        rating = sources({"name": "rating", "type": "externalColumn", "normalize": "running"})
        return build_reward(rating, 0.0, tokenizer=None, gather=gather)

    workers = [worker(0), worker(1)]
    seen: list[float] = []
    for step in (0, 1):
        seen += batches[0][step] + batches[1][step]
        for rank, reward in enumerate(workers):
            values = batches[rank][step]
            scored = reward(
                ["q"] * len(values), ["c"] * len(values), [{"score": v} for v in values]
            )
            expected = (np.array(values) - np.mean(seen)) / np.std(seen)
            assert scored == pytest.approx(list(expected))
    assert workers[0].state_dict() == workers[1].state_dict()


def test_judge_objective_asks_the_endpoint_of_its_spec_with_its_key(monkeypatch) -> None:
    from kubetune_trainer.evaluation.judge import JudgeError
    from kubetune_trainer.plan import secret_env_name

    from .test_eval_metrics import StubEndpoint, reply

    endpoint = StubEndpoint(lambda hit, body: reply("Score: 4"))
    try:
        key = {"name": "judge-creds", "key": "token"}
        judge = {"endpoint": endpoint.url, "model": "judge-1", "apiKeySecret": key}
        quality = sources({"name": "quality", "type": "judge", "judge": judge})
        variable = secret_env_name(quality[0].judge.api_key_secret)
        monkeypatch.delenv(variable, raising=False)
        where = r"spec\.grpo\.rewards\[0\]\.judge\.apiKeySecret"
        with pytest.raises(JudgeError, match=rf"{where}: secret judge-creds/token .*{variable}"):
            build_reward(quality, 1.0, tokenizer=None, field_path="spec.grpo.rewards")
        monkeypatch.setenv(variable, "sk-test")
        reward = build_reward(quality, 1.0, tokenizer=None)
        assert reward(["What is 2+2?"], ["4"], [{}]) == [0.75]
        headers, body = endpoint.hits[0]
        assert headers["authorization"] == "Bearer sk-test"
        assert body["model"] == "judge-1"
    finally:
        endpoint.close()
