"""Self-critique's decisions without a model: the critic's reply format, which revision is
kept, the training rows and their mixture, the stage over scripted critics, and the requests
an endpoint critic sends."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kubetune_trainer.evaluation.rewards import build_reward
from kubetune_trainer.plan import CriticSpec, RewardSource
from kubetune_trainer.recipes.self_critique import (
    CRITIC_SYSTEM,
    PROVENANCE_COLUMNS,
    CriticReply,
    EndpointCritic,
    Step,
    best_revision,
    critic_messages,
    critique_and_revise,
    mark_kept,
    mix_revisions,
    parse_critic_reply,
    prompts_of,
    revision_rows,
    summarize,
)

Messages = list[dict[str, str]]


def user(text: str) -> Messages:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ("Critique: wrong digit.\nRevision: 7", ("wrong digit.", "7")),
        ("critique: ok\nrevision:   it is 7\nthat is all", ("ok", "it is 7\nthat is all")),
        ("**Critique:** off by one\n**Revision:** 348", ("off by one", "348")),
        ("Revision: 7", ("", "7")),
        ("Critique: fine", None),
        ("Critique: fine\nRevision:   ", None),
        ("Critique: a\nRevision: 1\nRevision: 2", None),
        ("The revision: 7", None),  # not on a line of its own
    ],
)  # fmt: skip
def test_critic_replies_parse_into_critique_and_revision(
    reply: str, parsed: tuple[str, str] | None
) -> None:
    assert parse_critic_reply(reply) == parsed


def test_the_critic_is_asked_with_the_system_prompt_the_request_and_the_answer() -> None:
    prompt = [*user("Hi"), {"role": "assistant", "content": "Hello"}, *user("Last digit of 347?")]
    asked = critic_messages(prompt, "4")
    assert asked[0] == {"role": "system", "content": CRITIC_SYSTEM}
    assert asked[1]["content"] == (
        "[Request]\nUser: Hi\nAssistant: Hello\nUser: Last digit of 347?\n\n[Answer]\n4"
    )
    assert critic_messages(user("Q?"), "A")[1]["content"] == "[Request]\nQ?\n\n[Answer]\nA"


@pytest.mark.parametrize(
    ("original", "revisions", "kept"),
    [
        (0.0, [1.0], 0),
        (1.0, [1.0], None),  # not strictly better
        (1.0, [0.0], None),
        (0.0, [None], None),  # no revision (parse or request failure)
        (0.0, [0.5, 2.0, 2.0], 1),  # the best, the earliest on ties
        (0.0, [None, 0.5], 1),
        (-1.0, [-0.5], 0),
    ],
)
def test_the_best_revision_is_kept_only_when_strictly_better(
    original: float, revisions: list[float | None], kept: int | None
) -> None:
    assert best_revision(original, revisions) == kept


def step(
    prompt_index: int, sample: int, round_: int, original: float, revised: float | None
) -> Step:
    return Step(
        prompt_index=prompt_index,
        prompt=user(f"q{prompt_index}"),
        answer=str(prompt_index),
        sample=sample,
        round=round_,
        original=f"a{prompt_index}.{sample}",
        original_score=original,
        critiqued="",
        revision=None if revised is None else f"r{prompt_index}.{sample}.{round_}",
        revision_score=revised,
    )


def test_each_answer_keeps_at_most_its_best_round() -> None:
    steps = mark_kept(
        [
            step(0, 0, 1, 0.0, 1.0),
            step(0, 0, 2, 0.0, 2.0),  # the second round improved on the first
            step(0, 1, 1, 0.0, 1.0),
            step(0, 1, 2, 0.0, 0.0),  # and here made it worse: round 1 is kept
            step(1, 0, 1, 2.0, 2.0),
            step(1, 0, 2, 2.0, None),
        ]
    )
    assert [s.kept for s in steps] == [False, True, True, False, False, False]
    rows = revision_rows(steps, "messages")
    assert rows == [
        {"messages": [*user("q0"), {"role": "assistant", "content": "r0.0.2"}], "answer": "0"},
        {"messages": [*user("q0"), {"role": "assistant", "content": "r0.1.1"}], "answer": "0"},
    ]
    assert revision_rows(steps, "prompt-completion")[0] == {
        "prompt": user("q0"),
        "completion": [{"role": "assistant", "content": "r0.0.2"}],
        "answer": "0",
    }
    assert tuple(steps[0].to_json()) == PROVENANCE_COLUMNS  # the saved dataset's columns
    summary = summarize(steps)
    assert (summary.answers, summary.revisions, summary.kept) == (3, 5, 2)
    assert summary.kept_original_mean == 0.0 and summary.kept_revision_mean == 1.5


def test_critique_weight_is_the_share_of_revision_rows() -> None:
    data = [{"id": f"d{i}"} for i in range(90)]
    revisions = [{"id": f"r{i}"} for i in range(10)]
    for weight, expected in ((0.5, 50), (0.25, 25), (0.9, 90)):
        mixed, counts = mix_revisions(data, revisions, weight, seed=3)
        assert len(mixed) == 100 and counts == [100 - expected, expected]
        assert sum(r["id"].startswith("r") for r in mixed) == expected
        # Revisions asked for more rows than there are repeat whole, then sample the rest.
        repeats = Counter(r["id"] for r in mixed if r["id"].startswith("r"))
        assert max(repeats.values()) - min(repeats.values()) <= 1
    alone, counts = mix_revisions(data, revisions, 1.0, seed=3)
    assert sorted(r["id"] for r in alone) == sorted(r["id"] for r in revisions)
    assert mix_revisions(data, revisions, 0.5, seed=3) == mix_revisions(
        data, revisions, 0.5, seed=3
    )


def test_prompts_are_the_distinct_prompts_before_the_last_answer() -> None:
    rows = [
        {"messages": [*user("a"), {"role": "assistant", "content": "1"}], "answer": "1"},
        {"messages": [*user("a"), {"role": "assistant", "content": "one"}], "answer": "1"},
        {"prompt": user("b"), "completion": [{"role": "assistant", "content": "2"}]},
        {"messages": [*user("c"), {"role": "assistant", "content": "3"}], "score": 4.0},
    ]
    assert prompts_of(rows, None) == [
        {"prompt": user("a"), "answer": "1"},
        {"prompt": user("b")},
        {"prompt": user("c"), "score": 4.0},
    ]
    assert [p["prompt"] for p in prompts_of(rows, 2)] == [user("a"), user("b")]


class ScriptedCritic:
    """Replies from a table keyed by the critiqued text; None is a failed request."""

    name = "scripted"

    def __init__(self, table: dict[str, str | None]) -> None:
        self.table = table
        self.asked: list[Messages] = []

    def replies(self, conversations: Sequence[Messages]) -> list[CriticReply]:
        self.asked += conversations
        found = []
        for messages in conversations:
            text = self.table[messages[-1]["content"].rsplit("[Answer]\n", 1)[1]]
            found.append(CriticReply(error="HTTP 500") if text is None else CriticReply(text=text))
        return found


def test_the_stage_scores_critiques_revises_and_keeps() -> None:
    reward = build_reward([RewardSource(type="answerMatch")], 1.0, tokenizer=None)
    prompts = [{"prompt": user("2+2?"), "answer": "4"}, {"prompt": user("3+3?"), "answer": "6"}]
    critic = ScriptedCritic(
        {
            "5": "Critique: off by one\nRevision: 4",
            "4": "Critique: right\nRevision: 4",
            "7": "I cannot say",
            "8": None,
            "6": "Critique: right\nRevision: 6",
        }
    )
    steps = critique_and_revise(prompts, [["5", "4"], ["7", "8"]], critic, reward, rounds=2)
    found = [
        (s.prompt_index, s.sample, s.round, s.critiqued, s.revision, s.revision_score, s.kept)
        for s in steps
    ]
    assert found == [
        (0, 0, 1, "5", "4", 1.0, True),
        (0, 1, 1, "4", "4", 1.0, False),  # as good as the answer: not kept
        (1, 0, 1, "7", None, None, False),
        (1, 1, 1, "8", None, None, False),
        (0, 0, 2, "4", "4", 1.0, False),  # round 2 revises round 1's revision; no better
        (0, 1, 2, "4", "4", 1.0, False),
    ]
    assert steps[2].error is not None and steps[2].error.startswith("parse failure")
    assert steps[3].error == "request failed: HTTP 500"
    assert all(s.original_score == (1.0 if s.original == "4" else 0.0) for s in steps)
    summary = summarize(steps)
    assert (summary.parse_failures, summary.request_failures, summary.kept) == (1, 1, 1)
    assert len(critic.asked) == 6


def test_an_endpoint_critic_sends_the_protocol_through_the_openai_client() -> None:
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body | {"path": self.path, "auth": self.headers["Authorization"]})
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
            payload = json.dumps(reply).encode()
            self.send_response(200 if len(bodies) == 1 else 400)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = CriticSpec(
            endpoint=f"http://127.0.0.1:{server.server_address[1]}/v1",
            model="critic-7b",
            max_tokens=64,
            temperature=0.2,
            retries=0,
            parallel=1,
        )
        asked = [critic_messages(user("Q?"), "A"), critic_messages(user("R?"), "B")]
        replies = EndpointCritic(spec).replies(asked)
    finally:
        server.shutdown()
        server.server_close()
    assert replies[0] == CriticReply(text="ok")
    assert replies[1].text is None and "HTTP 400" in (replies[1].error or "")
    first = bodies[0]
    assert first["path"] == "/v1/chat/completions" and first["model"] == "critic-7b"
    assert (first["max_tokens"], first["temperature"]) == (64, 0.2)
    assert first["messages"] == asked[0]


def test_the_critics_api_key_reaches_the_trainer_by_reference(job) -> None:
    from kubetune.api import FineTuneJob
    from kubetune.builders.common import secret_env
    from kubetune.planner import make_plan
    from kubetune_trainer.plan import SecretKeyRef, secret_env_name

    key = {"name": "critic-api", "key": "token"}
    job["spec"]["selfCritique"] = {
        "critic": {"endpoint": "http://critic:8000/v1", "model": "c", "apiKeySecret": key},
        "rewards": [{"type": "answerMatch"}],
    }
    parsed = FineTuneJob.model_validate(job)
    env = secret_env(parsed.spec, make_plan(parsed))
    assert {
        "name": secret_env_name(SecretKeyRef(**key)),
        "valueFrom": {"secretKeyRef": key},
    } in env
