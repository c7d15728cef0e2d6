"""An OpenAI-compatible chat-completions server for one model, small enough for a tiny model on
a CPU (stdlib ``ThreadingHTTPServer``; generations run one at a time).

Endpoints:

- ``GET /v1/models``: the served model;
- ``POST /v1/chat/completions``: ``messages`` (roles system/user/assistant; text content, or a
  list of text parts), ``max_tokens`` (or ``max_completion_tokens``; default 128),
  ``temperature`` (0–2, default 1; 0 is greedy), ``n`` (1–16), ``seed``, ``stop`` (a string or
  up to 4), ``score`` (for a score-conditioned model: the score asked for; default the highest
  it was trained on). Other request fields are ignored; ``stream`` is refused. Errors use
  OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

With an API key, requests must carry ``Authorization: Bearer KEY`` (401 otherwise).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubetune_trainer.evaluation.measures import Messages
from kubetune_trainer.serving.inference import ChatModel, ScoreNotSupported

log = logging.getLogger("kubetune.serve")

DEFAULT_MAX_TOKENS = 128
MAX_BODY_BYTES = 4 * 1024 * 1024
ROLES = ("system", "user", "assistant")


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
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": self.code,
            }
        }


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


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    positions = [text.find(s) for s in stops if s in text]
    return (text[: min(positions)], True) if positions else (text, False)


class ChatCompletionServer(ThreadingHTTPServer):
    """Serves one :class:`ChatModel`; ``port=0`` picks a free port (see :attr:`url`)."""

    daemon_threads = True

    def __init__(
        self,
        chat_model: ChatModel,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_tokens_limit: int = 4096,
        record_requests: bool = False,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.chat_model = chat_model
        self.api_key = api_key
        self.max_tokens_limit = max_tokens_limit
        self.record_requests = record_requests
        self.requests: list[dict[str, Any]] = []
        """Bodies of the chat-completion requests received, when record_requests is set."""
        self.created = int(time.time())
        self._record_lock = threading.Lock()

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. http://127.0.0.1:8000/v1."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start_background(self) -> threading.Thread:
        """Serve from a daemon thread (tests, notebooks); stop with shutdown()."""
        thread = threading.Thread(target=self.serve_forever, name="kubetune-serve", daemon=True)
        thread.start()
        return thread

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.chat_model.name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "kubetune",
                }
            ],
        }

    def chat_completion(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        if self.record_requests:
            with self._record_lock:
                self.requests.append(body)
        if body.get("stream"):
            raise RequestError("streaming is not supported by this server", param="stream")
        model = body.get("model")
        if model is not None and model != self.chat_model.name:
            raise RequestError(
                f"model '{model}' is not served here; this server serves '{self.chat_model.name}'",
                param="model",
                status=HTTPStatus.NOT_FOUND,
                code="model_not_found",
            )
        messages = _messages(body.get("messages"))
        limit = self.max_tokens_limit
        max_tokens = _integer(body, "max_completion_tokens", None, 1, limit)
        max_tokens = _integer(body, "max_tokens", max_tokens or DEFAULT_MAX_TOKENS, 1, limit)
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        n = _integer(body, "n", 1, 1, 16)
        seed = _integer(body, "seed", None, 0, 2**63 - 1)
        stops = _stops(body.get("stop"))
        score = body.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise RequestError("'score' must be a number", param="score")
        started = time.monotonic()
        try:
            (samples,) = self.chat_model.complete(
                [messages],
                max_new_tokens=max_tokens,
                temperature=temperature,
                n=n,
                seed=seed,
                score=score,
            )
        except ScoreNotSupported as err:
            raise RequestError(str(err), param="score") from None
        choices = []
        for index, completion in enumerate(samples):
            text, stopped = _cut_at_stop(completion.text, stops)
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop" if stopped else completion.finish_reason,
                    "logprobs": None,
                }
            )
        prompt_tokens = samples[0].prompt_tokens
        completion_tokens = sum(c.completion_tokens for c in samples)
        log.info(
            "event=chat_completion model=%s n=%d prompt_tokens=%d completion_tokens=%d "
            "seconds=%.3f",
            self.chat_model.name,
            n,
            prompt_tokens,
            completion_tokens,
            time.monotonic() - started,
        )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.chat_model.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    server: ChatCompletionServer
    server_version = "kubetune-serve"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=http_request client=%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        error = RequestError(
            "missing or wrong API key (Authorization: Bearer ...)",
            status=HTTPStatus.UNAUTHORIZED,
            code="invalid_api_key",
        )
        self._send(error.status, error.body())
        return False

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self._path() == "/v1/models":
            self._send(HTTPStatus.OK, self.server.models())
        else:
            self._not_found()

    def do_POST(self) -> None:
        if not self._authorised():
            return
        if self._path() != "/v1/chat/completions":
            self._not_found()
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise RequestError(f"request body over {MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                raise RequestError("the request body is not valid JSON") from None
            self._send(HTTPStatus.OK, self.server.chat_completion(body))
        except RequestError as err:
            self._send(err.status, err.body())
        except Exception as err:  # the server must outlive a failing generation
            log.exception("event=chat_completion_failed")
            error = RequestError(
                f"generation failed: {type(err).__name__}: {err}",
                status=HTTPStatus.INTERNAL_SERVER_ERROR,
            )
            self._send(error.status, error.body())

    def _not_found(self) -> None:
        error = RequestError(
            f"no route {self.command} {self.path}; this server has GET /v1/models and "
            "POST /v1/chat/completions",
            status=HTTPStatus.NOT_FOUND,
        )
        self._send(error.status, error.body())


def serve(
    chat_model: ChatModel, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM handled by the caller)."""
    server = ChatCompletionServer(chat_model, host=host, port=port, api_key=api_key)
    log.info("event=serving model=%s url=%s", chat_model.name, server.url)
    print(f"serving {chat_model.name} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
