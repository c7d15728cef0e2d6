"""LLM-as-judge against any OpenAI-compatible ``/v1/chat/completions`` endpoint (through the
``openai`` client).

- single: the judge rates each response 1–5 and must reply ``Score: N``;
- pairwise: the judge compares the model's response with the baseline's and must reply
  ``Verdict: A``, ``Verdict: B`` or ``Verdict: tie``. Every prompt is asked twice, with the
  responses in both positions, so a judge that favours a position gains nothing: the model's
  score for the prompt is the mean of its two outcomes (win 1, tie ½, loss 0).

A reply without exactly one readable score or verdict (or a body that is not a chat completion)
is a *parse failure*: counted, reported with examples, never scored. A request that still fails
after its retries (connection errors, timeouts, HTTP 429 and 5xx are retried with exponential
backoff; other HTTP errors are not) is a *request failure*, also counted and never scored.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune_trainer.plan import CriticSpec, JudgeSpec, secret_env_name

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Verdict = Literal["A", "B", "tie"]

SINGLE_SYSTEM = (
    "You are an impartial judge. Rate how well the assistant's response answers the user, for "
    "correctness, helpfulness and clarity, on a scale from 1 (very poor) to 5 (excellent). "
    "Reply with exactly one line: 'Score: N', where N is 1, 2, 3, 4 or 5."
)
PAIRWISE_SYSTEM = (
    "You are an impartial judge. Two assistants, A and B, answered the same user. Decide which "
    "response is better for correctness, helpfulness and clarity; the order in which they are "
    "shown says nothing about their quality. Reply with exactly one line: 'Verdict: A', "
    "'Verdict: B' or 'Verdict: tie'."
)

_SCORE = re.compile(r"\bscore\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE_SCORE = re.compile(r"^\s*\**\s*([1-5])\s*\**\s*\.?\s*$")
_VERDICT = re.compile(r"\bverdict\s*[:=]\s*\**\s*\[?\s*(A|B|tie)\b", re.IGNORECASE)
_BARE_VERDICT = re.compile(r"^\s*\**\s*\[?\s*(A|B|tie)\s*\]?\s*\**\s*\.?\s*$", re.IGNORECASE)
REPLY_TOKENS = 64
"""Longest judge reply requested: room for a short remark before the score line."""


class JudgeError(RuntimeError):
    """The judge could not be asked (bad configuration)."""


class RequestFailed(RuntimeError):
    """No reply from the endpoint after the retries, or an HTTP error that is not retried."""


class MalformedReply(ValueError):
    """The endpoint answered, but not with a chat completion."""


def api_key_from_env(
    spec: JudgeSpec | CriticSpec, field_path: str = "judge.apiKeySecret"
) -> str | None:
    """The judge's API key, from the variable its secret reference maps to (see
    :func:`kubetune_trainer.plan.secret_env_name`); None when no secret is referenced."""
    if spec.api_key_secret is None:
        return None
    name = secret_env_name(spec.api_key_secret)
    value = os.environ.get(name)
    if not value:
        raise JudgeError(
            f"{field_path}: secret {spec.api_key_secret.name}/{spec.api_key_secret.key} is "
            f"not in the environment (expected variable {name})"
        )
    return value


def base_url(endpoint: str) -> str:
    """The API base of an endpoint given as a base URL (http://host:8000/v1) or as the full
    chat-completions URL."""
    base = endpoint.rstrip("/")
    return base.removesuffix("/chat/completions")


class ChatClient:
    """Chat completions from an OpenAI-compatible endpoint through the ``openai`` client: its
    timeout per request, and its retries of connection errors, timeouts, HTTP 408, 409, 429
    and 5xx (exponential backoff, honouring Retry-After); other HTTP errors are not retried."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_seconds: float = 60.0,
        retries: int = 3,
    ) -> None:
        import openai

        self.url = base_url(endpoint)
        self.model = model
        # The client insists on a key; an endpoint without authentication ignores it.
        self._client = openai.OpenAI(
            base_url=self.url,
            api_key=api_key or "none",
            timeout=timeout_seconds,
            max_retries=retries,
        )
        self.retries = retries

    @classmethod
    def from_spec(cls, spec: JudgeSpec, *, field_path: str = "judge") -> ChatClient:
        return cls(
            spec.endpoint,
            spec.model,
            api_key=api_key_from_env(spec, f"{field_path}.apiKeySecret"),
            timeout_seconds=spec.timeout_seconds,
            retries=spec.retries,
        )

    def complete(
        self, messages: Messages, *, max_tokens: int = REPLY_TOKENS, temperature: float = 0.0
    ) -> str:
        """The content of the first choice; raises RequestFailed or MalformedReply."""
        import openai

        try:
            reply = self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
            )
        except openai.APIStatusError as err:
            detail = err.response.text[:200]
            raise RequestFailed(f"{self.url}: HTTP {err.status_code}: {detail}") from None
        except openai.APIConnectionError as err:  # timeouts included
            tries = self.retries + 1
            raise RequestFailed(
                f"{self.url}: {tries} attempt(s) failed; last: {type(err).__name__}: {err}"
            ) from None
        except openai.APIResponseValidationError as err:
            raise MalformedReply(f"not a chat completion: {err}") from None
        return _content(reply)


def _content(reply: object) -> str:
    try:
        content = reply.choices[0].message.content  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError):
        raise MalformedReply(f"not a chat completion: {str(reply)[:200]!r}") from None
    if not isinstance(content, str):
        raise MalformedReply(f"message content is not text: {content!r}")
    return content


# --------------------------------------------------------------------------- prompts, parsing


def render_conversation(prompt: Messages) -> str:
    """A chat prompt as text for the judge: a lone user turn as is, else one line per turn."""
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n".join(f"{turn['role'].capitalize()}: {turn['content']}" for turn in prompt)


def single_messages(prompt: Messages, response: str, reference: str | None = None) -> Messages:
    user = f"[Question]\n{render_conversation(prompt)}\n\n"
    if reference is not None:
        user += f"[Reference answer]\n{reference}\n\n"
    user += f"[Response]\n{response}"
    return [{"role": "system", "content": SINGLE_SYSTEM}, {"role": "user", "content": user}]


def pairwise_messages(prompt: Messages, response_a: str, response_b: str) -> Messages:
    user = (
        f"[Question]\n{render_conversation(prompt)}\n\n"
        f"[Response A]\n{response_a}\n\n[Response B]\n{response_b}"
    )
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]


def parse_score(reply: str) -> int | None:
    """The 1–5 score in a reply ('Score: 4', or just '4'); None when there is no score, several
    different ones, or one outside 1–5."""
    found = set(_SCORE.findall(reply))
    if not found:
        bare = _BARE_SCORE.match(reply)
        return int(bare.group(1)) if bare else None
    if len(found) != 1:
        return None
    value = float(found.pop())
    if not value.is_integer() or not 1 <= value <= 5:
        return None
    return int(value)


def parse_verdict(reply: str) -> Verdict | None:
    """A, B or tie from a reply ('Verdict: A', or just 'A'); None when absent or ambiguous."""
    found = {v.upper() if v.lower() != "tie" else "tie" for v in _VERDICT.findall(reply)}
    if not found:
        bare = _BARE_VERDICT.match(reply)
        if not bare:
            return None
        found = {bare.group(1).upper() if bare.group(1).lower() != "tie" else "tie"}
    if len(found) != 1:
        return None
    return found.pop()  # type: ignore[return-value]


# --------------------------------------------------------------------------- judging


@dataclass
class _Asked:
    reply: str | None = None
    error: str | None = None
    """Why there is no reply: request failure or malformed body."""
    malformed: bool = False


@dataclass
class JudgeResult:
    value: float | None
    """single: mean score (1–5); pairwise: the model's win rate against the baseline (0–1).
    None when nothing could be scored."""
    details: dict[str, Any] = field(default_factory=dict)
    scores: list[float | None] = field(default_factory=list)
    """Per prompt: its score (single) or the model's outcome (pairwise), None if unscored."""


def _ask_all(client: ChatClient, conversations: Sequence[Messages], parallel: int) -> list[_Asked]:
    def ask(messages: Messages) -> _Asked:
        try:
            return _Asked(reply=client.complete(messages))
        except RequestFailed as err:
            return _Asked(error=str(err))
        except MalformedReply as err:
            return _Asked(error=str(err), malformed=True)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(ask, conversations))


def _failure_example(index: int, asked: _Asked) -> dict[str, Any]:
    return {"index": index, "reply": asked.reply, "error": asked.error}


def judge_single(
    client: ChatClient,
    prompts: Sequence[Messages],
    responses: Sequence[str],
    *,
    references: Sequence[str | None] | None = None,
    parallel: int = 4,
) -> JudgeResult:
    """Mean 1–5 score of each response; unreadable replies and failed requests are counted."""
    references = references if references is not None else [None] * len(prompts)
    conversations = [
        single_messages(p, r, ref) for p, r, ref in zip(prompts, responses, references, strict=True)
    ]
    scores: list[int] = []
    per_prompt: list[float | None] = []
    parse_failures = request_failures = 0
    failures: list[dict[str, Any]] = []
    for index, asked in enumerate(_ask_all(client, conversations, parallel)):
        score = parse_score(asked.reply) if asked.reply is not None else None
        per_prompt.append(None if score is None else float(score))
        if score is not None:
            scores.append(score)
            continue
        if asked.reply is not None or asked.malformed:
            parse_failures += 1
        else:
            request_failures += 1
        if len(failures) < 5:
            failures.append(_failure_example(index, asked))
    details = {
        "mode": "single",
        "total": len(prompts),
        "scored": len(scores),
        "parse_failures": parse_failures,
        "request_failures": request_failures,
        "score_counts": {str(s): n for s, n in sorted(Counter(scores).items())},
        "failure_examples": failures,
    }
    return JudgeResult(sum(scores) / len(scores) if scores else None, details, per_prompt)


_MODEL_OUTCOME_AS_A = {"A": 1.0, "B": 0.0, "tie": 0.5}
_MODEL_OUTCOME_AS_B = {"A": 0.0, "B": 1.0, "tie": 0.5}


def judge_pairwise(
    client: ChatClient,
    prompts: Sequence[Messages],
    responses: Sequence[str],
    baseline_responses: Sequence[str],
    *,
    parallel: int = 4,
) -> JudgeResult:
    """The model's win rate against the baseline, each prompt judged in both orders (model as
    A, then model as B). A prompt counts only when both replies are readable."""
    conversations: list[Messages] = []
    for prompt, mine, theirs in zip(prompts, responses, baseline_responses, strict=True):
        conversations.append(pairwise_messages(prompt, mine, theirs))  # model is A
        conversations.append(pairwise_messages(prompt, theirs, mine))  # model is B
    asked = _ask_all(client, conversations, parallel)
    outcomes: list[float] = []
    per_prompt: list[float | None] = []
    parse_failures = request_failures = consistent = unscored = 0
    failures: list[dict[str, Any]] = []
    for index in range(len(prompts)):
        pair = asked[2 * index], asked[2 * index + 1]
        verdicts = [parse_verdict(a.reply) if a.reply is not None else None for a in pair]
        for reply_index, (a, verdict) in enumerate(zip(pair, verdicts, strict=True)):
            if verdict is not None:
                continue
            if a.reply is not None or a.malformed:
                parse_failures += 1
            else:
                request_failures += 1
            if len(failures) < 5:
                failures.append(_failure_example(2 * index + reply_index, a) | {"prompt": index})
        if verdicts[0] is None or verdicts[1] is None:
            unscored += 1
            per_prompt.append(None)
            continue
        as_a = _MODEL_OUTCOME_AS_A[verdicts[0]]
        as_b = _MODEL_OUTCOME_AS_B[verdicts[1]]
        consistent += as_a == as_b
        outcomes.append((as_a + as_b) / 2)
        per_prompt.append(outcomes[-1])
    details = {
        "mode": "pairwise",
        "total": len(prompts),
        "requests": len(conversations),
        "scored": len(outcomes),
        "unscored_prompts": unscored,
        "parse_failures": parse_failures,
        "request_failures": request_failures,
        "wins": sum(o > 0.5 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o < 0.5 for o in outcomes),
        "position_consistent": consistent,
        "failure_examples": failures,
    }
    return JudgeResult(sum(outcomes) / len(outcomes) if outcomes else None, details, per_prompt)
