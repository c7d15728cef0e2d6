"""An OpenAI-compatible chat-completions server for one model (FastAPI on uvicorn), what
``kubetune serve`` runs.

Endpoints:

- ``POST /v1/chat/completions``: ``messages`` (roles system/user/assistant; text content, or a
  list of text parts), ``max_tokens`` (or ``max_completion_tokens``; default: 128, at most what
  the context leaves), ``temperature`` (0–2, default 1; 0 is greedy), ``n`` (1–16), ``stop`` (a
  string or up to 4), ``stream`` (server-sent events, OpenAI's chunk format, with
  ``stream_options.include_usage``), ``seed`` (accepted; sampled requests share the server's
  random stream, so a seed does not reproduce a completion), ``score`` (for a score-conditioned
  model: the score asked for; default the highest it was trained on). Other fields are ignored.
- ``GET /v1/models``: the served model, by its name (the job's, or ``--served-model-name``);
- ``GET /health``: 200 while the generation loop runs; ``GET /metrics``: Prometheus.

Requests are generated together by continuous batching (:mod:`.engine`): a long prompt cannot
make a short one wait for it. Limits: a prompt and its completion must fit the model's context
(else 400 ``context_length_exceeded``, as OpenAI answers); at most ``max_requests`` in flight
(else 503, try again); a generation taking longer than ``timeout_seconds`` is stopped (504); a
body over ``max_body_bytes`` is refused with 413. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``. One log line per request. With an API key,
``/v1`` requests must carry ``Authorization: Bearer KEY`` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from kubetune_trainer.evaluation.measures import Messages
from kubetune_trainer.serving.engine import Engine, EngineSettings, GenerationFailed, Overloaded

log = logging.getLogger("kubetune.serve")

DEFAULT_MAX_TOKENS = 128
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ServerSettings:
    model_name: str
    """The id clients send as ``model`` and /v1/models lists."""
    api_key: str | None = None
    max_tokens_limit: int = 4096
    timeout_seconds: float = 120.0
    """Longest a generation may take; it is stopped after that (504)."""
    max_body_bytes: int = 1024 * 1024
    engine: EngineSettings = field(default_factory=EngineSettings)
    record_requests: bool = False
    """Keep every chat-completion request body (tests that check what a client sent)."""


class RequestError(ValueError):
    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: HTTPStatus = HTTPStatus.BAD_REQUEST,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


# --------------------------------------------------------------------------- request parsing


@dataclass(frozen=True)
class ChatRequest:
    messages: Messages
    max_tokens: int | None
    temperature: float
    n: int
    stops: list[str]
    stream: bool
    include_usage: bool
    score: float | None = None
    """The score asked of a score-conditioned model (``chat_template_kwargs`` of its template)."""


def _messages(value: Any) -> Messages:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    out: Messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object", param=where)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}", param=where)
        if isinstance(content, list):
            parts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text"):
                    raise RequestError(
                        f"{where}.content: only text parts are supported", param=where
                    )
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        if not isinstance(content, str):
            raise RequestError(f"{where}.content must be text", param=where)
        out.append({"role": role, "content": content})
    return out


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"'{name}' must be a number from {low} to {high}", param=name)
    return float(value)


def _integer(
    body: dict[str, Any], name: str, default: int | None, low: int, high: int
) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"'{name}' must be an integer from {low} to {high}", param=name)
    return value


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > 4
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise RequestError("'stop' must be a string or a list of up to 4 strings", param="stop")
    return stops


def parse_chat_request(body: Any, served: str, max_tokens_limit: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served:
        raise RequestError(
            f"model '{model}' is not served here; this server serves '{served}'",
            param="model",
            status=HTTPStatus.NOT_FOUND,
            code="model_not_found",
        )
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    max_tokens = _integer(body, "max_completion_tokens", None, 1, max_tokens_limit)
    max_tokens = _integer(body, "max_tokens", max_tokens, 1, max_tokens_limit)
    n = _integer(body, "n", 1, 1, 16) or 1
    if stream and n > 1:
        raise RequestError("'n' above 1 cannot be streamed; ask without stream", param="n")
    _integer(body, "seed", None, -(2**63), 2**63 - 1)
    return ChatRequest(
        messages=_messages(body.get("messages")),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        n=n,
        stops=_stops(body.get("stop")),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        score=_score(body.get("score")),
    )


def _score(value: Any) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise RequestError("'score' must be a number", param="score")
    return value


def completion_budget(prompt_tokens: int, requested: int | None, context: int) -> int:
    """How many tokens to generate: the request's max_tokens, or the default capped by what the
    context leaves; a prompt and completion over the context is refused as OpenAI refuses it."""
    if requested is None:
        if prompt_tokens < context:
            return min(DEFAULT_MAX_TOKENS, context - prompt_tokens)
        requested = 1
    if prompt_tokens + requested > context:
        raise RequestError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} "
            "in the completion). Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )
    return requested


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    positions = [text.find(s) for s in stops if s in text]
    return (text[: min(positions)], True) if positions else (text, False)


def safe_prefix(text: str, stops: list[str]) -> str:
    """The part of a growing completion that can be sent: not a partly decoded character, nor
    an ending that may grow into a stop string."""
    text = text.rstrip("\ufffd")
    held = max(
        (n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0
    )
    return text[: len(text) - held]


# --------------------------------------------------------------------------- metrics


class ServerMetrics:
    """Prometheus series of one server (its own registry)."""

    def __init__(self, model: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.model = model
        self.requests = Counter(
            "kubetune_serve_requests",
            "HTTP requests answered, by path and status code",
            ["model", "path", "code"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "kubetune_serve_tokens",
            "Tokens processed, by kind (prompt or completion)",
            ["model", "kind"],
            registry=self.registry,
        )
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.latency = Histogram(
            "kubetune_serve_request_duration_seconds",
            "Time from request to the last byte of its response (chat completions)",
            ["model"],
            buckets=buckets,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "kubetune_serve_time_to_first_token_seconds",
            "Time from request to its first generated token",
            ["model"],
            buckets=buckets,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "kubetune_serve_requests_in_flight",
            "Chat completions being generated or waiting for their turn",
            ["model"],
            registry=self.registry,
        )

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# --------------------------------------------------------------------------- the app


@dataclass
class Generated:
    text: str
    finish_reason: str
    completion_tokens: int


class ChatService:
    """What the routes call: one model's engine, settings and metrics."""

    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = ServerMetrics(settings.model_name)
        self.created = int(time.time())
        self.requests: list[dict[str, Any]] = []
        """Bodies of the chat-completion requests received, when record_requests is set."""

    async def generate(
        self, prompt: list[int], request: ChatRequest, budget: int, started: float
    ) -> AsyncIterator[tuple[str, Generated | None]]:
        """(text to send, None) as the completion grows, then ("", the whole completion)."""
        sent = ""
        tokens: list[int] = []
        finish = "length"
        first = True
        decode = self.engine.tokenizer.decode
        steps = self.engine.generate(prompt, max_new_tokens=budget, temperature=request.temperature)
        async with contextlib.aclosing(steps):  # a stop string or a timeout cancels it
            async for step in steps:
                if first and step.tokens:
                    first = False
                    self.metrics.first_token.labels(self.settings.model_name).observe(
                        time.monotonic() - started
                    )
                tokens = step.tokens
                text, stopped = cut_at_stop(decode(tokens, skip_special_tokens=True), request.stops)
                if stopped:
                    finish = "stop"
                    if len(text) > len(sent):
                        yield text[len(sent) :], None
                    sent = text
                    break
                if step.finished:
                    finish = "stop" if tokens and tokens[-1] in self.engine.eos else "length"
                    if len(text) > len(sent):
                        yield text[len(sent) :], None
                    sent = text
                    break
                ready = safe_prefix(text, request.stops)
                if len(ready) > len(sent):
                    yield ready[len(sent) :], None
                    sent = ready
        self.metrics.tokens.labels(self.settings.model_name, "completion").inc(len(tokens))
        yield "", Generated(sent, finish, len(tokens))


def _error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=int(error.status))


def create_app(service: ChatService) -> FastAPI:
    """The FastAPI application serving ``service``."""
    settings = service.settings
    name = settings.model_name

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await asyncio.to_thread(service.engine.start)
        try:
            yield
        finally:
            await asyncio.to_thread(service.engine.stop)

    app = FastAPI(
        title="kubetune serve",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(RequestLog, metrics=service.metrics)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> Any:
        if err.status_code == HTTPStatus.NOT_FOUND:
            error = RequestError(
                f"no route {request.method} {request.url.path}; this server has POST "
                "/v1/chat/completions, GET /v1/models, /health and /metrics",
                status=HTTPStatus.NOT_FOUND,
            )
        else:
            error = RequestError(str(err.detail), status=HTTPStatus(err.status_code))
        return _error_response(error)

    def authorised(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise RequestError(
                "missing or wrong API key (Authorization: Bearer ...)",
                status=HTTPStatus.UNAUTHORIZED,
                code="invalid_api_key",
            )

    @app.get("/health")
    async def health() -> Any:
        running = service.engine.running
        return JSONResponse(
            {"status": "ok" if running else "stopped", "model": name},
            status_code=200 if running else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Any:
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        try:
            authorised(request)
        except RequestError as err:
            return _error_response(err)
        entry = {"id": name, "object": "model", "created": service.created, "owned_by": "kubetune"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        started = time.monotonic()
        try:
            authorised(request)
            raw = await read_body(request, settings.max_body_bytes)
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                raise RequestError("the request body is not valid JSON") from None
            if settings.record_requests:
                service.requests.append(body)
            chat = parse_chat_request(body, name, settings.max_tokens_limit)
            if chat.score is not None and not service.engine.score_conditioned:
                raise RequestError(
                    f"model {name} was not trained with score conditioning; it takes no score",
                    param="score",
                )
            prompt = service.engine.prompt_ids(chat.messages, score=chat.score)
            budget = completion_budget(len(prompt), chat.max_tokens, service.engine.context_length)
        except RequestError as err:
            return _error_response(err)
        record = request.scope.setdefault("kubetune", {})
        record.update(prompt_tokens=len(prompt), stream=chat.stream, model=name)
        service.metrics.tokens.labels(name, "prompt").inc(len(prompt) * chat.n)
        if chat.stream:
            return StreamingResponse(
                _stream(service, chat, prompt, budget, started, record),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            async with asyncio.timeout(settings.timeout_seconds):
                samples = await _complete(service, chat, prompt, budget, started)
        except TimeoutError:
            return _error_response(_timeout(settings))
        except Overloaded:
            return _error_response(_overloaded(service))
        except GenerationFailed as err:
            return _error_response(
                RequestError(f"generation failed: {err}", status=HTTPStatus.INTERNAL_SERVER_ERROR)
            )
        choices = []
        for index, done in enumerate(samples):
            message = {"role": "assistant", "content": done.text}
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "finish_reason": done.finish_reason,
                    "logprobs": None,
                }
            )
        completion_tokens = sum(d.completion_tokens for d in samples)
        record.update(completion_tokens=completion_tokens, finish=samples[0].finish_reason)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": choices,
            "usage": _usage(len(prompt), completion_tokens),
        }

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over ``limit`` bytes
    (by its Content-Length, or while it streams in)."""
    too_large = RequestError(
        f"the request body is over this server's limit of {limit} bytes",
        status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _timeout(settings: ServerSettings) -> RequestError:
    return RequestError(
        f"the generation took longer than this server's limit of {settings.timeout_seconds:g} s "
        "and was stopped; ask for fewer tokens or try again",
        status=HTTPStatus.GATEWAY_TIMEOUT,
        code="timeout",
    )


def _overloaded(service: ChatService) -> RequestError:
    return RequestError(
        f"the server has {service.settings.engine.max_requests} requests in flight, its limit; "
        "try again shortly",
        status=HTTPStatus.SERVICE_UNAVAILABLE,
        code="server_overloaded",
    )


async def _complete(
    service: ChatService, chat: ChatRequest, prompt: list[int], budget: int, started: float
) -> list[Generated]:
    """n completions (greedy: one, repeated; sampled: n generated side by side)."""

    async def one() -> Generated:
        async for _, done in service.generate(prompt, chat, budget, started):
            if done is not None:
                return done
        raise GenerationFailed("the generation ended without a result")

    if chat.temperature == 0:
        return [await one()] * chat.n
    return list(await asyncio.gather(*(one() for _ in range(chat.n))))


async def _stream(
    service: ChatService,
    chat: ChatRequest,
    prompt: list[int],
    budget: int,
    started: float,
    record: dict[str, Any],
) -> AsyncIterator[bytes]:
    """OpenAI's chat.completion.chunk events, then ``data: [DONE]``."""
    name = service.settings.model_name
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": name,
    }

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return f"data: {json.dumps(base | {'choices': choices} | extra)}\n\n".encode()

    def delta(content: dict[str, str], finish: str | None = None) -> bytes:
        return event([{"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}])

    yield delta({"role": "assistant", "content": ""})
    try:
        async with asyncio.timeout(service.settings.timeout_seconds):
            async for text, done in service.generate(prompt, chat, budget, started):
                if done is not None:
                    record.update(
                        completion_tokens=done.completion_tokens, finish=done.finish_reason
                    )
                    yield delta({}, done.finish_reason)
                    if chat.include_usage:
                        yield event([], usage=_usage(len(prompt), done.completion_tokens))
                elif text:
                    yield delta({"content": text})
    except TimeoutError:
        record.update(finish="timeout")
        yield f"data: {json.dumps(_timeout(service.settings).body())}\n\n".encode()
    except Overloaded:
        record.update(finish="overloaded")
        yield f"data: {json.dumps(_overloaded(service).body())}\n\n".encode()
    yield b"data: [DONE]\n\n"


class RequestLog:
    """ASGI middleware: one log line per request, when its response has been sent entirely
    (streams included), and the request counters and latency."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        model = self.metrics.model
        chat = scope["path"] == "/v1/chat/completions"
        if chat:
            self.metrics.in_flight.labels(model).inc()

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.monotonic() - started
            if chat:
                self.metrics.in_flight.labels(model).dec()
                self.metrics.latency.labels(model).observe(seconds)
            self.metrics.requests.labels(model, _metric_path(scope["path"]), str(status)).inc()
            extra = " ".join(f"{k}={v}" for k, v in scope.get("kubetune", {}).items())
            log.info(
                "event=request method=%s path=%s status=%d seconds=%.3f client=%s %s",
                scope["method"],
                scope["path"],
                status,
                seconds,
                (scope.get("client") or ("-",))[0],
                extra,
            )


def _metric_path(path: str) -> str:
    known = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")
    return path if path in known else "other"


# --------------------------------------------------------------------------- running it


class ChatServer:
    """uvicorn serving one model. ``port=0`` picks a free port (see :attr:`url`)."""

    def __init__(
        self, chat_model: Any, settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        import uvicorn

        engine = Engine(chat_model.model, chat_model.tokenizer, settings.engine)
        self.service = ChatService(engine, settings)
        self.socket = socket.create_server((host, port))
        config = uvicorn.Config(
            create_app(self.service),
            log_config=None,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. http://127.0.0.1:8000/v1."""
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.service.requests

    def run(self) -> None:
        """Serve in this thread until SIGINT or SIGTERM."""
        self.server.run(sockets=[self.socket])

    def start_background(self) -> None:
        """Serve from a daemon thread (tests, benchmarks) once it answers; stop with stop()."""
        self._thread = threading.Thread(target=self.run, name="kubetune-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.socket.close()

    def __enter__(self) -> ChatServer:
        self.start_background()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(chat_model: Any, settings: ServerSettings, *, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    server = ChatServer(chat_model, settings, host=host, port=port)
    log.info("event=serving model=%s url=%s", settings.model_name, server.url)
    print(f"serving {settings.model_name} at {server.url} (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
