"""The studio's web application: labeling pages (server-rendered, no asset from the internet),
the admin pages, and the JSON API under ``/api``.

Server-rendered pages rather than Gradio: the pages are a few forms, so plain HTML forms keep
CSRF protection, sessions, keyboard shortcuts and the admin's tables under our control, need no
JavaScript bundle from a CDN, and share one FastAPI process (and one set of refusals) with the
API the simulated labelers and scripts use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubetune_studio.config import Settings
from kubetune_studio.errors import StudioError
from kubetune_studio.security import token_hash
from kubetune_studio.store.database import make_engine, session_factory
from kubetune_studio.web.auth import SESSION_COOKIE, bearer_token

log = logging.getLogger("kubetune_studio")
HERE = Path(__file__).parent
IMPORT_PATHS = ("/responses", "/prompts", "/gold")


@dataclass
class Studio:
    """What the routes share, kept on ``app.state.studio`` (one per application)."""

    settings: Settings
    sessions: sessionmaker[Session]
    templates: Jinja2Templates
    limiter: MovingWindowRateLimiter

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed before the route answers, or rolled back whole
        when it raises (a refused request stores nothing)."""
        with self.sessions() as session, session.begin():
            yield session


def studio_of(request: Request) -> Studio:
    return request.app.state.studio


def create_app(settings: Settings, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    from kubetune_studio.web import api, pages

    if sessions is None:
        sessions = session_factory(make_engine(settings.database_url))
    app = FastAPI(title="kubetune studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = Studio(
        settings=settings,
        sessions=sessions,
        templates=Jinja2Templates(directory=str(HERE / "templates")),
        limiter=MovingWindowRateLimiter(MemoryStorage()),
    )
    app.add_middleware(RateLimit, studio=app.state.studio)
    app.add_middleware(BodyLimit, settings=settings)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_exception_handler(StudioError, _refused)
    app.add_api_route("/healthz", _health, methods=["GET"], include_in_schema=False)
    return app


async def _health(request: Request) -> JSONResponse:
    """Ready when the database answers (the probes of the chart's Deployment)."""
    try:
        with studio_of(request).sessions() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0]
        log.warning("event=unhealthy reason=%s", first)
        return JSONResponse({"ok": False, "error": "database unreachable"}, status_code=503)
    return JSONResponse({"ok": True})


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StudioError)
    log.info("event=refused path=%s status=%d reason=%s", request.url.path, exc.status, exc.message)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    from kubetune_studio.web.pages import error_page

    return error_page(request, exc)


class BodyLimit:
    """Refuses a request body over the limit (imports have a larger one) with 413, whether the
    size is declared or only seen while streaming."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = (
            self.settings.max_import_bytes
            if path.startswith("/api/") and path.endswith(IMPORT_PATHS)
            else self.settings.max_body_bytes
        )
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_too_large(send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _send_too_large(send, limit)


class _TooLarge(Exception):
    pass


async def _send_too_large(send: Send, limit: int) -> None:
    body = f'{{"error": "request body larger than {limit} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RateLimit:
    """Requests per client in a moving window (the ``limits`` library): a client is its login
    (bearer token or session cookie), else its address; logins have their own, lower limit."""

    def __init__(self, app: ASGIApp, studio: Studio) -> None:
        self.app = app
        self.studio = studio

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"].startswith("/static/")
            or scope["path"] == "/healthz"
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        settings = self.studio.settings
        address = request.client.host if request.client else "unknown"
        if request.method == "POST" and scope["path"] in ("/login", "/api/login"):
            limit, key = settings.login_rate_limit, f"login:{address}"
        else:
            token = bearer_token(request) or request.cookies.get(SESSION_COOKIE)
            key = f"token:{token_hash(token)}" if token else f"address:{address}"
            limit = settings.rate_limit
        if not self.studio.limiter.hit(parse(limit), key):
            body = f'{{"error": "too many requests (limit {limit}); wait and try again"}}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"60")],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
            return
        await self.app(scope, receive, send)
