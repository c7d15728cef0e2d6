"""Eval metric arithmetic and the judge's bookkeeping, without models: pass@k against the closed
form, extractors, win rates, judge replies parsed or counted as failures (a stub HTTP server
plays a misbehaving endpoint), pairwise position swap, export gates and the results table."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kubetune_trainer.evaluation.gate import check_gate
from kubetune_trainer.evaluation.judge import (
    ChatClient,
    JudgeError,
    api_key_from_env,
    judge_pairwise,
    judge_single,
    parse_score,
    parse_verdict,
)
from kubetune_trainer.evaluation.measures import (
    extract_answer,
    extract_code,
    mean_pass_at_k,
    pass_at_k,
    score_answers,
    win_rate,
)
from kubetune_trainer.evaluation.suite import results_table
from kubetune_trainer.plan import ExportGate, JudgeSpec, SecretKeyRef, secret_env_name

# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, Fraction(2, 5)),  # 1 - C(3,1)/C(5,1) = 1 - 3/5
        (5, 2, 2, Fraction(7, 10)),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 3, Fraction(9, 10)),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (5, 2, 4, Fraction(1)),  # fewer than k failures: some pick of 4 must pass
        (10, 3, 5, Fraction(11, 12)),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (4, 0, 1, Fraction(0)),  # c = 0
        (4, 0, 4, Fraction(0)),
        (4, 4, 1, Fraction(1)),  # c = n
        (4, 4, 4, Fraction(1)),
        (1, 1, 1, Fraction(1)),
        (1, 0, 1, Fraction(0)),
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: Fraction) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-12)


def test_pass_at_k_matches_the_closed_form_everywhere_and_stays_stable() -> None:
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)
    # Large n: the binomials are astronomically large, the running product is not.
    exact = 1 - Fraction(math.comb(1000 - 17, 100), math.comb(1000, 100))
    assert pass_at_k(1000, 17, 100) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001, rel=1e-12)


def test_pass_at_1_is_the_pass_fraction_and_problems_are_averaged() -> None:
    problems = [[True, False, False, False], [True, True, True, True], [False] * 4]
    by_k = mean_pass_at_k(problems, [1, 2])
    assert by_k[1] == pytest.approx((0.25 + 1 + 0) / 3)
    assert by_k[2] == pytest.approx((0.5 + 1 + 0) / 3)  # 1 - C(3,2)/C(4,2) = 1/2


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_refuses_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_extract_code_reads_the_first_fenced_block() -> None:
    text = "Here you go:\n```python\ndef f():\n    return 1\n```\nand ```python\nx = 2\n```"
    assert extract_code(text) == "def f():\n    return 1\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("```python\nprint(1)\n") == "print(1)\n"  # unclosed fence
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"


# --------------------------------------------------------------------------- accuracy, win rate


def test_extractors_and_scoring() -> None:
    assert extract_answer("The answer is 42.", "lastNumber") == "42"
    assert extract_answer("no digits", "lastNumber") is None
    assert extract_answer("Answer: B (because)", "regex", r"Answer:\s*(\w)") == "B"
    assert extract_answer("  348 \n", "exact") == "348"
    result = score_answers(
        ["so 348", "349", "I do not know", "#### 12.0"],
        ["348", "348", "5", "12"],
        extractor="lastNumber",
    )
    assert (result.correct, result.total, result.no_answer) == (2, 4, 1)
    assert result.accuracy == 0.5


def test_win_rate_counts_ties_half() -> None:
    result = win_rate([1.0, 0.2, 0.5, 0.9], [0.5, 0.4, 0.5, 0.1])
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    assert result.win_rate == pytest.approx((2 + 0.5) / 4)
    assert result.mean_margin == pytest.approx((0.5 - 0.2 + 0 + 0.8) / 4)


# --------------------------------------------------------------------------- judge parsing


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Score: 4", 4),
        ("score=5", 5),
        ("The response is fine.\nScore: **3**", 3),
        ("2", 2),
        ("Score: 4.0", 4),
        ("Score: 6", None),  # out of range
        ("Score: 0", None),
        ("Score: 3.5", None),
        ("Score: 2 ... on second thought Score: 4", None),  # ambiguous
        ("I would say it is good", None),
        ("4 out of 5", None),
        ("", None),
    ],
)
def test_parse_score(reply: str, score: int | None) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Verdict: A", "A"),
        ("verdict: b", "B"),
        ("Verdict: tie", "tie"),
        ("Verdict: [A]", "A"),
        ("B", "B"),
        ("Tie.", "tie"),
        ("Verdict: A\nVerdict: B", None),
        ("Response A is better", None),
        ("", None),
    ],
)
def test_parse_verdict(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


# --------------------------------------------------------------------------- misbehaving endpoint


class StubEndpoint:
    """An HTTP server answering chat completions with whatever ``respond`` returns:
    (status, body bytes). Records every request's headers and body."""

    def __init__(self, respond: Callable[[int, dict[str, Any]], tuple[int, bytes]]) -> None:
        self.respond = respond
        self.hits: list[tuple[dict[str, str], dict[str, Any]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.hits.append((dict(self.headers), body))
                status, payload = stub.respond(len(stub.hits), body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def reply(content: str) -> tuple[int, bytes]:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    return 200, json.dumps(body).encode()


@pytest.fixture
def stub() -> Iterator[Callable[..., StubEndpoint]]:
    made: list[StubEndpoint] = []

    def make(respond: Callable[[int, dict[str, Any]], tuple[int, bytes]]) -> StubEndpoint:
        made.append(StubEndpoint(respond))
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


PROMPTS = [[{"role": "user", "content": f"What is {n} + 1?"}] for n in (3, 7, 9)]


def client_for(endpoint: StubEndpoint, **kwargs: Any) -> ChatClient:
    return ChatClient(endpoint.url, "judge", backoff_seconds=0.01, **kwargs)


def test_malformed_replies_are_parse_failures_never_scores(stub) -> None:
    replies = {1: reply("Score: 5"), 2: reply("I liked it a lot!"), 3: (200, b"<html>oops</html>")}
    endpoint = stub(lambda hit, body: replies[hit])
    result = judge_single(client_for(endpoint), PROMPTS, ["4", "8", "10"], parallel=1)
    assert result.value == 5.0  # only the readable reply is scored
    details = result.details
    assert (details["scored"], details["parse_failures"], details["request_failures"]) == (1, 2, 0)
    assert details["score_counts"] == {"5": 1}
    assert [f["reply"] for f in details["failure_examples"]] == ["I liked it a lot!", None]
    assert "not a chat completion" in details["failure_examples"][1]["error"]
    assert len(endpoint.hits) == 3  # a readable-but-wrong reply is not retried


def test_server_errors_are_retried_then_counted_as_request_failures(stub) -> None:
    endpoint = stub(lambda hit, body: (500, b'{"error": {"message": "boom"}}'))
    result = judge_single(client_for(endpoint, retries=2), PROMPTS[:1], ["4"])
    assert result.value is None
    assert result.details["request_failures"] == 1
    assert result.details["parse_failures"] == 0
    assert len(endpoint.hits) == 3  # the first try and two retries
    assert "HTTP 500" in result.details["failure_examples"][0]["error"]


def test_a_transient_error_is_retried_and_then_scored(stub) -> None:
    endpoint = stub(lambda hit, body: (503, b"busy") if hit == 1 else reply("Score: 2"))
    result = judge_single(client_for(endpoint, retries=1), PROMPTS[:1], ["4"])
    assert result.value == 2.0
    assert len(endpoint.hits) == 2


def test_client_errors_are_not_retried(stub) -> None:
    endpoint = stub(lambda hit, body: (401, b'{"error": {"message": "bad key"}}'))
    result = judge_single(client_for(endpoint, retries=3), PROMPTS[:1], ["4"])
    assert result.details["request_failures"] == 1
    assert len(endpoint.hits) == 1


def test_a_slow_endpoint_times_out_and_is_retried(stub) -> None:
    def slow(hit: int, body: dict[str, Any]) -> tuple[int, bytes]:
        time.sleep(1.0)
        return reply("Score: 5")

    endpoint = stub(slow)
    client = client_for(endpoint, retries=1, timeout_seconds=0.2)
    result = judge_single(client, PROMPTS[:1], ["4"])
    assert result.details["request_failures"] == 1
    assert result.value is None
    assert len(endpoint.hits) == 2


def test_the_api_key_comes_from_the_secret_variable(stub, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = stub(lambda hit, body: reply("Score: 3"))
    spec = JudgeSpec(
        endpoint=endpoint.url,
        model="judge-1",
        api_key_secret=SecretKeyRef(name="judge-creds", key="token"),
    )
    monkeypatch.setenv(secret_env_name(spec.api_key_secret), "sk-test")
    result = judge_single(ChatClient.from_spec(spec), PROMPTS[:1], ["4"])
    assert result.value == 3.0
    headers, body = endpoint.hits[0]
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "judge-1"
    assert body["temperature"] == 0.0


def test_a_missing_secret_names_the_field_and_the_variable(monkeypatch) -> None:
    spec = JudgeSpec(
        endpoint="http://127.0.0.1:9/v1", model="j", api_key_secret={"name": "s", "key": "k"}
    )
    variable = secret_env_name(spec.api_key_secret)
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(JudgeError, match=rf"eval\.metrics\[2\]\.judge\.apiKeySecret.*{variable}"):
        api_key_from_env(spec, "eval.metrics[2].judge.apiKeySecret")


# --------------------------------------------------------------------------- pairwise bookkeeping


class ScriptedJudge:
    """A judge client double deciding from the text it is shown (no HTTP: this checks how
    verdicts combine; the trainer tier runs pairwise judging against a real server)."""

    def __init__(self, decide: Callable[[str, str], str]) -> None:
        self.decide = decide
        self.asked: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], **_: Any) -> str:
        text = messages[-1]["content"]
        a = text.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]
        b = text.split("[Response B]\n", 1)[1]
        with self._lock:
            self.asked.append((a, b))
        return self.decide(a, b)


def test_pairwise_asks_both_orders_and_a_position_biased_judge_gains_nothing() -> None:
    judge = ScriptedJudge(lambda a, b: "Verdict: A")
    result = judge_pairwise(judge, PROMPTS, ["m1", "m2", "m3"], ["b1", "b2", "b3"])  # type: ignore[arg-type]
    assert sorted(judge.asked) == sorted(
        [(m, b) for m, b in zip(["m1", "m2", "m3"], ["b1", "b2", "b3"], strict=True)]
        + [(b, m) for m, b in zip(["m1", "m2", "m3"], ["b1", "b2", "b3"], strict=True)]
    )
    assert result.value == 0.5
    assert result.details["ties"] == 3
    assert result.details["position_consistent"] == 0


def test_pairwise_a_consistent_preference_is_a_win() -> None:
    judge = ScriptedJudge(lambda a, b: "Verdict: A" if a.startswith("good") else "Verdict: B")
    responses, baseline = ["good 1", "bad 2", "good 3"], ["bad 1", "good 2", "bad 3"]
    result = judge_pairwise(judge, PROMPTS, responses, baseline)  # type: ignore[arg-type]
    assert result.value == pytest.approx(2 / 3)
    assert (result.details["wins"], result.details["losses"]) == (2, 1)
    assert result.details["position_consistent"] == 3


def test_pairwise_an_unreadable_reply_leaves_its_prompt_unscored() -> None:
    def decide(a: str, b: str) -> str:
        return "hmm, hard to say" if "m2" in (a, b) and a == "m2" else "Verdict: A"

    judge = ScriptedJudge(decide)
    result = judge_pairwise(judge, PROMPTS, ["m1", "m2", "m3"], ["b1", "b2", "b3"])  # type: ignore[arg-type]
    assert result.details["parse_failures"] == 1
    assert result.details["unscored_prompts"] == 1
    assert result.details["scored"] == 2


# --------------------------------------------------------------------------- gate and table

RESULTS = {
    "model": "builtin://tiny-llama",
    "metrics": {"ppl": 12.5, "quality": None},
    "details": {
        "ppl": {"type": "perplexity", "tokens": 100, "rows": 10, "mean_loss": 2.5257},
        "quality": {
            "type": "judge",
            "mode": "single",
            "scored": 0,
            "total": 3,
            "parse_failures": 3,
            "request_failures": 0,
        },
    },
}


def test_export_gate() -> None:
    assert check_gate(RESULTS, ExportGate(metric="ppl", max=20))[0]
    passed, why = check_gate(RESULTS, ExportGate(metric="ppl", max=10))
    assert not passed and "above max 10" in why
    passed, why = check_gate(RESULTS, ExportGate(metric="ppl", min=13))
    assert not passed and "below min 13" in why
    passed, why = check_gate(RESULTS, ExportGate(metric="quality", min=1))
    assert not passed and "no value" in why


def test_results_table_is_readable() -> None:
    table = results_table(RESULTS)
    lines = table.splitlines()
    assert lines[0] == "model: builtin://tiny-llama"
    assert lines[1].split()[:3] == ["METRIC", "TYPE", "VALUE"]
    assert lines[2].split()[:3] == ["ppl", "perplexity", "12.5000"]
    assert lines[3].split()[:3] == ["quality", "judge", "-"]
    assert "3 parse failures" in lines[3]


def test_a_dataset_without_answers_is_refused_naming_the_field(tmp_path) -> None:
    from kubetune_trainer.evaluation.suite import EvalError, evaluate_metrics
    from kubetune_trainer.plan import EvalSpec, ModelSpec

    data = tmp_path / "qa.jsonl"
    data.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n{"prompt": "And 2 + 2?"}\n')
    metric = {"type": "accuracy", "dataset": {"uri": str(data), "format": "prompt-only"}}
    spec = EvalSpec.model_validate({"metrics": [{"name": "acc", **metric}]})
    with pytest.raises(EvalError, match=r"eval\.metrics\[0\]\.dataset: .*qa\.jsonl row 1 has no"):
        evaluate_metrics(spec, ModelSpec(source="builtin://tiny-llama"))
    missing = EvalSpec.model_validate(
        {"metrics": [{"name": "acc", **metric, "dataset": {"uri": str(tmp_path / "nope.jsonl")}}]}
    )
    with pytest.raises(EvalError, match=r"eval\.metrics\[0\]\.dataset: "):
        evaluate_metrics(missing, ModelSpec(source="builtin://tiny-llama"))
