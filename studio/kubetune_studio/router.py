"""The live A/B router: an OpenAI-compatible ``/v1/chat/completions`` in front of an
experiment's arms, and the feedback users give on its answers.

- A request names its user (the ``user`` field of the chat request, or an ``X-Session-Id``
  header); :func:`kubetune_studio.abtest.assign_arm` picks the running arm that answers, so a
  user keeps their arm. The arm's endpoint is asked through the ``openai`` client (streaming
  or not), and the exchange is stored: which arm answered, the messages and the reply. The
  answer's ``id`` is the router's own (feedback names it) and its ``model`` is the experiment,
  so users cannot tell the arms apart.
- ``"compare": true`` in the body (``extra_body`` of the ``openai`` client) asks two arms and
  returns both answers as choices 0 and 1; the user's feedback is then which was better.
- ``POST /v1/feedback`` takes ``{"response_id", "thumbs": "up"|"down"}`` or, for a compared
  answer, ``{"response_id", "preferred": 0|1|"tie"}``; one feedback per answer. After each, the
  guard (:func:`kubetune_studio.abtest.guard`) may stop an arm: it gets no more traffic and its
  reason shows in the results.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kubetune_studio import abtest
from kubetune_studio.campaigns import SLUG
from kubetune_studio.errors import Conflict, Invalid, NotFound, StudioError, validated
from kubetune_studio.store.database import transaction
from kubetune_studio.store.schema import Arm, Exchange, Experiment, Feedback, now

log = logging.getLogger("kubetune_studio.router")
MAX_USER_KEY = 200


class ArmSpec(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    endpoint: str = Field(min_length=1, max_length=500)
    """Base URL of an OpenAI-compatible API, e.g. ``http://host:8000/v1``."""
    served_name: str | None = Field(default=None, max_length=200)
    weight: float = Field(default=1.0, gt=0)


class ExperimentSpec(BaseModel):
    slug: str
    title: str = Field(default="", max_length=200)
    arms: list[ArmSpec] = Field(min_length=2)
    guard_confidence: float = Field(default=0.99, gt=0.5, lt=1)
    guard_min_feedback: int = Field(default=100, ge=1)

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("lower-case letters, digits and '-', at most 63 characters")
        return value

    @model_validator(mode="after")
    def _unique_arms(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arms: names must be unique")
        return self


class FeedbackInput(BaseModel):
    response_id: str = Field(min_length=1, max_length=64)
    thumbs: Literal["up", "down"] | None = None
    preferred: Literal[0, 1, "tie"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> FeedbackInput:
        if (self.thumbs is None) == (self.preferred is None):
            raise ValueError("give either 'thumbs' (up or down) or 'preferred' (0, 1 or tie)")
        return self


# --------------------------------------------------------------------------- the store


def create_experiment(session: Session, spec: ExperimentSpec) -> Experiment:
    if session.scalar(select(Experiment).where(Experiment.slug == spec.slug)) is not None:
        raise Conflict(f"slug: an experiment '{spec.slug}' exists already")
    experiment = Experiment(
        slug=spec.slug,
        title=spec.title,
        guard_confidence=spec.guard_confidence,
        guard_min_feedback=spec.guard_min_feedback,
    )
    session.add(experiment)
    session.flush()
    for arm in spec.arms:
        session.add(
            Arm(
                experiment_id=experiment.id,
                name=arm.name,
                endpoint=arm.endpoint,
                served_name=arm.served_name,
                weight=arm.weight,
            )
        )
    session.flush()
    return experiment


def get_experiment(session: Session, slug: str) -> Experiment:
    experiment = session.scalar(select(Experiment).where(Experiment.slug == slug))
    if experiment is None:
        raise NotFound(f"experiment '{slug}': no such experiment")
    return experiment


def running_arms(experiment: Experiment) -> list[Arm]:
    return [a for a in experiment.arms if a.stopped_at is None]


def conclude(session: Session, slug: str, keep: str | None) -> list[str]:
    """Ends an experiment by hand. With ``keep``, every other running arm stops and the kept arm
    answers every request from now on (the router keeps serving); without it the experiment
    stops and its router refuses requests. Returns the arms stopped."""
    experiment = get_experiment(session, slug)
    if experiment.state != "running":
        raise Conflict(f"experiment '{slug}' is stopped already")
    running = running_arms(experiment)
    if keep is None:
        experiment.state = "stopped"
        log.warning("event=experiment-stopped experiment=%s", slug)
        session.flush()
        return []
    if keep not in {a.name for a in running}:
        names = ", ".join(a.name for a in running)
        raise Invalid(
            f"keep: '{keep}' is not a running arm of experiment '{slug}' (running: {names})"
        )
    stopped = [a for a in running if a.name != keep]
    for arm in stopped:
        arm.stopped_at = now()
        arm.stop_reason = f"concluded by hand, {keep} kept"
        log.warning(
            "event=arm-stopped experiment=%s arm=%s reason=concluded keep=%s", slug, arm.name, keep
        )
    session.flush()
    return [a.name for a in stopped]


def _feedback_counts(session: Session, experiment: Experiment) -> dict[int, tuple[int, int]]:
    rows = session.execute(
        select(Exchange.arm_id, Feedback.thumbs_up, func.count())
        .join(Feedback, Feedback.exchange_id == Exchange.id)
        .where(Exchange.experiment_id == experiment.id, Feedback.kind == "thumbs")
        .group_by(Exchange.arm_id, Feedback.thumbs_up)
    )
    counts: dict[int, list[int]] = {a.id: [0, 0] for a in experiment.arms}
    for arm_id, up, n in rows:
        counts[arm_id][0 if up else 1] += n
    return {arm_id: (up, down) for arm_id, (up, down) in counts.items()}


def apply_guard(session: Session, experiment: Experiment) -> list[str]:
    """Stops the arms the guard finds significantly worse; their names."""
    counts = _feedback_counts(session, experiment)
    stops = abtest.guard(
        [
            abtest.ArmFeedback(a.name, *counts[a.id], running=a.stopped_at is None)
            for a in experiment.arms
        ],
        confidence=experiment.guard_confidence,
        min_feedback=experiment.guard_min_feedback,
    )
    for arm in experiment.arms:
        if arm.name in stops:
            arm.stopped_at = now()
            arm.stop_reason = stops[arm.name]
            log.warning(
                "event=arm-stopped experiment=%s arm=%s reason=%s",
                experiment.slug,
                arm.name,
                stops[arm.name],
            )
    session.flush()
    return sorted(stops)


def record_feedback(session: Session, experiment: Experiment, given: FeedbackInput) -> Feedback:
    exchange = session.scalar(
        select(Exchange).where(
            Exchange.response_id == given.response_id, Exchange.experiment_id == experiment.id
        )
    )
    if exchange is None:
        raise NotFound(f"response_id: no answer '{given.response_id}' in this experiment")
    compared = exchange.second_arm_id is not None
    if given.thumbs is not None and compared:
        raise Invalid("thumbs: this answer showed two responses; give 'preferred' (0, 1 or tie)")
    if given.preferred is not None and not compared:
        raise Invalid("preferred: this answer showed one response; give 'thumbs' (up or down)")
    if session.scalar(select(Feedback.id).where(Feedback.exchange_id == exchange.id)):
        raise Conflict(f"response_id: '{given.response_id}' has feedback already")
    if given.thumbs is not None:
        record = Feedback(exchange_id=exchange.id, kind="thumbs", thumbs_up=given.thumbs == "up")
    else:
        preferred = {0: exchange.arm_id, 1: exchange.second_arm_id, "tie": None}[given.preferred]
        record = Feedback(exchange_id=exchange.id, kind="pairwise", preferred_arm_id=preferred)
    session.add(record)
    session.flush()
    apply_guard(session, experiment)
    return record


def results(session: Session, experiment: Experiment) -> dict[str, Any]:
    counts = _feedback_counts(session, experiment)
    requests = dict(
        session.execute(
            select(Exchange.arm_id, func.count())
            .where(Exchange.experiment_id == experiment.id)
            .group_by(Exchange.arm_id)
        ).all()
    )
    rates = {a.id: abtest.rate(*counts[a.id]) for a in experiment.arms}
    control = experiment.arms[0]
    arms = []
    for arm in experiment.arms:
        versus = None if arm is control else abtest.difference(rates[arm.id], rates[control.id])
        arms.append(
            {
                "name": arm.name,
                "weight": arm.weight,
                "running": arm.stopped_at is None,
                "stop_reason": arm.stop_reason,
                "requests": requests.get(arm.id, 0),
                "thumbs_up": rates[arm.id].up,
                "thumbs_down": rates[arm.id].down,
                "rate": rates[arm.id].value,
                "rate_low": rates[arm.id].low,
                "rate_high": rates[arm.id].high,
                "difference_vs_control": None if versus is None else versus.value,
                "difference_low": None if versus is None else versus.low,
                "difference_high": None if versus is None else versus.high,
                "significant": None if versus is None else versus.significant,
            }
        )
    names = {a.id: a.name for a in experiment.arms}
    pairwise: dict[tuple[str, str], dict[str, int]] = {}
    rows = session.execute(
        select(Exchange.arm_id, Exchange.second_arm_id, Feedback.preferred_arm_id)
        .join(Feedback, Feedback.exchange_id == Exchange.id)
        .where(Exchange.experiment_id == experiment.id, Feedback.kind == "pairwise")
    )
    for first, second, preferred in rows:
        one, other = sorted((names[first], names[second]))
        tally = pairwise.setdefault((one, other), {one: 0, other: 0, "tie": 0})
        tally[names[preferred] if preferred is not None else "tie"] += 1
    return {
        "experiment": experiment.slug,
        "state": experiment.state,
        "control": control.name,
        "confidence": 0.95,
        "guard": {
            "confidence": experiment.guard_confidence,
            "min_feedback": experiment.guard_min_feedback,
        },
        "arms": arms,
        "pairwise": [
            {"arms": list(pair), "preferred": tally} for pair, tally in sorted(pairwise.items())
        ],
    }


# --------------------------------------------------------------------------- the application


class ChatInput(BaseModel):
    """What the router reads of a chat request; the rest is passed to the arm as it came."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    compare: bool = False
    user: str | None = Field(default=None, min_length=1, max_length=MAX_USER_KEY)

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for n, message in enumerate(value):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"[{n}].role: missing or not a string")
        return value


FORWARDED_OUT = {"model", "compare", "stream", "user", "messages"}


@dataclass
class Router:
    sessions: sessionmaker[Session]
    experiment: str
    api_key: str | None
    timeout_seconds: float
    clients: dict[str, Any] = field(default_factory=dict)
    """One ``openai`` client per endpoint, so connections are reused."""

    def client(self, arm: Arm):
        import openai

        base = arm.endpoint.rstrip("/").removesuffix("/chat/completions")
        if base not in self.clients:
            self.clients[base] = openai.OpenAI(
                base_url=base,
                api_key=self.api_key or "none",
                timeout=self.timeout_seconds,
                max_retries=1,
            )
        return self.clients[base]


def _arm_shares(arms: list[Arm]) -> list[abtest.ArmShare]:
    return [abtest.ArmShare(a.name, a.weight) for a in arms]


def _completion(router: Router, arm: Arm, messages: list[Any], extra: dict[str, Any]) -> Any:
    return router.client(arm).chat.completions.create(
        model=arm.served_name or arm.name, messages=messages, **extra
    )


def _text(completion: Any) -> str:
    return completion.choices[0].message.content or ""


def _choose(router: Router, user: str, compare: bool) -> tuple[Experiment, list[Arm]]:
    """The arm that answers ``user`` (two for a side-by-side answer, while two arms still run:
    once the guard or a conclusion leaves one, it answers alone)."""
    with transaction(router.sessions) as session:
        experiment = get_experiment(session, router.experiment)
        if experiment.state != "running":
            raise Conflict(f"experiment '{experiment.slug}' is stopped")
        arms = running_arms(experiment)
        shares = _arm_shares(arms)
        by_name = {a.name: a for a in arms}
        if compare and len(arms) > 1:
            chosen = [by_name[n] for n in abtest.assign_pair(experiment.slug, user, shares)]
        else:
            chosen = [by_name[abtest.assign_arm(experiment.slug, user, shares)]]
        session.expunge_all()
        return experiment, chosen


def _store_exchange(router: Router, **fields: Any) -> None:
    with transaction(router.sessions) as session:
        experiment = get_experiment(session, router.experiment)
        session.add(Exchange(experiment_id=experiment.id, **fields))


def chat(router: Router, body: Any, session_header: str | None) -> Any:
    if not isinstance(body, dict):
        raise Invalid("body: expected a JSON object (a chat completion request)")
    given = validated(ChatInput, body)
    user = given.user or session_header
    if not user:
        raise Invalid(
            "user: give the request's 'user' field or an X-Session-Id header "
            "(each user keeps the arm they were given)"
        )
    if len(user) > MAX_USER_KEY:
        raise Invalid(f"user: at most {MAX_USER_KEY} characters")
    if given.compare and given.stream:
        raise Invalid("stream: a compared answer (compare: true) is not streamed")
    experiment, arms = _choose(router, user, given.compare)
    compared = len(arms) == 2
    extra = {k: v for k, v in body.items() if k not in FORWARDED_OUT}
    response_id = "chatcmpl-ab-" + secrets.token_hex(12)
    if given.stream:
        return _stream(router, experiment, arms[0], given, user, extra, response_id)
    import openai

    try:
        answers = [_completion(router, arm, given.messages, extra) for arm in arms]
    except openai.APIError as err:
        raise Unavailable(f"arm endpoint: {type(err).__name__}: {str(err)[:200]}") from None
    _store_exchange(
        router,
        response_id=response_id,
        arm_id=arms[0].id,
        second_arm_id=arms[1].id if compared else None,
        user_key=user,
        messages=given.messages,
        reply=_text(answers[0]),
        second_reply=_text(answers[1]) if compared else None,
        streamed=False,
    )
    document = answers[0].model_dump(exclude_none=True)
    document["id"], document["model"] = response_id, experiment.slug
    if compared:
        second = answers[1].model_dump(exclude_none=True)["choices"][0]
        document["choices"] = [document["choices"][0] | {"index": 0}, second | {"index": 1}]
    return document


def _stream(
    router: Router,
    experiment: Experiment,
    arm: Arm,
    given: ChatInput,
    user: str,
    extra: dict[str, Any],
    response_id: str,
) -> Iterator[str]:
    import openai

    try:
        chunks = router.client(arm).chat.completions.create(
            model=arm.served_name or arm.name, messages=given.messages, stream=True, **extra
        )
    except openai.APIError as err:
        raise Unavailable(f"arm endpoint: {type(err).__name__}: {str(err)[:200]}") from None
    _store_exchange(
        router,
        response_id=response_id,
        arm_id=arm.id,
        user_key=user,
        messages=given.messages,
        reply="",
        streamed=True,
    )

    def events() -> Iterator[str]:
        pieces: list[str] = []
        for chunk in chunks:
            document = chunk.model_dump(exclude_none=True)
            document["id"], document["model"] = response_id, experiment.slug
            for choice in document.get("choices", []):
                pieces.append(choice.get("delta", {}).get("content") or "")
            yield f"data: {json.dumps(document)}\n\n"
        yield "data: [DONE]\n\n"
        with transaction(router.sessions) as session:
            exchange = session.scalar(select(Exchange).where(Exchange.response_id == response_id))
            if exchange is not None:
                exchange.reply = "".join(pieces)

    return events()


class Unavailable(StudioError):
    status = 502


def create_router_app(
    sessions: sessionmaker[Session],
    experiment: str,
    *,
    api_key: str | None = None,
    timeout_seconds: float = 120.0,
) -> FastAPI:
    """The router for one experiment (its arms are read from the store on each request, so an
    arm the guard stops gets no more traffic at once)."""
    router = Router(sessions, experiment, api_key, timeout_seconds)
    app = FastAPI(title="kubetune A/B router", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StudioError)
    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StudioError)
        log.info("event=refused path=%s status=%d reason=%s", request.url.path, exc.status, exc)
        return JSONResponse(
            {"error": {"message": exc.message, "type": type(exc).__name__}}, status_code=exc.status
        )

    async def json_of(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise Invalid("body: not JSON") from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        from starlette.concurrency import run_in_threadpool

        body = await json_of(request)
        answer = await run_in_threadpool(chat, router, body, request.headers.get("x-session-id"))
        if isinstance(answer, dict):
            return JSONResponse(answer)
        return StreamingResponse(answer, media_type="text/event-stream")

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        from starlette.concurrency import run_in_threadpool

        given = validated(FeedbackInput, await json_of(request))

        def store() -> dict[str, Any]:
            with transaction(sessions) as session:
                found = get_experiment(session, experiment)
                record = record_feedback(session, found, given)
                return {"response_id": given.response_id, "kind": record.kind}

        return JSONResponse(await run_in_threadpool(store), status_code=201)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [{"id": experiment, "object": "model", "owned_by": "ab"}]}
        )

    @app.get("/healthz")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app
