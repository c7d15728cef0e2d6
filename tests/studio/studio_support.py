"""Helpers of the studio tier: an API client that logs in, and campaign set-up through the API
the way an admin script would."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-1"


class Api:
    """The studio's JSON API as one logged-in user."""

    def __init__(self, base: str, email: str, password: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=30.0)
        reply = self.http.post("/api/login", json={"email": email, "password": password})
        assert reply.status_code == 200, reply.text
        self.http.headers["Authorization"] = f"Bearer {reply.json()['token']}"

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.http.post(path, **kwargs)

    def ok(self, method: str, path: str, **kwargs) -> Any:
        reply = self.http.request(method, path, **kwargs)
        assert reply.status_code < 300, f"{method} {path}: {reply.status_code} {reply.text}"
        return reply.json()

    def close(self) -> None:
        self.http.close()


def admin_api(base: str) -> Api:
    return Api(base, ADMIN_EMAIL, ADMIN_PASSWORD)


def jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def set_up_campaign(
    admin: Api,
    slug: str,
    responses: list[dict[str, Any]],
    labelers: dict[str, str],
    *,
    gold: list[dict[str, Any]] | None = None,
    models: tuple[str, ...] = ("base", "tuned"),
    baseline: str = "base",
    **settings: Any,
) -> None:
    """Creates the campaign, its labelers and items, and opens it for votes."""
    admin.ok(
        "POST",
        "/api/campaigns",
        json={
            "slug": slug,
            "title": slug,
            "models": [{"name": m} for m in models],
            "baseline": baseline,
            **settings,
        },
    )
    admin.ok("POST", f"/api/campaigns/{slug}/responses", content=jsonl(responses))
    if gold:
        admin.ok("POST", f"/api/campaigns/{slug}/gold", content=jsonl(gold))
    for email, password in labelers.items():
        admin.ok("POST", "/api/labelers", json={"email": email, "password": password})
    admin.ok("POST", f"/api/campaigns/{slug}/members", json={"emails": list(labelers)})
    admin.ok("POST", f"/api/campaigns/{slug}/state", json={"state": "collecting"})


def count(session: Session, table) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0
