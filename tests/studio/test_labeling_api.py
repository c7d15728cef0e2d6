"""Labeling through the JSON API against a real PostgreSQL: assignment reaches the overlap,
models stay hidden until the vote, skip and undo, and every refusal stores nothing."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from kubetune_studio.config import Settings
from kubetune_studio.store.schema import Assignment, Campaign, Item, Skip, Vote
from tests.studio.conftest import RunningStudio, start_studio
from tests.studio.studio_support import Api, admin_api, count, set_up_campaign

LABELERS = {
    "ann@example.com": "ann-password",
    "bob@example.com": "bob-password",
    "cat@example.com": "cat-password",
}


def responses(prompts: int) -> list[dict]:
    rows = []
    for i in range(prompts):
        rows.append({"prompt": f"What is {i} + 1?", "model": "base", "response": str(i)})
        rows.append({"prompt": f"What is {i} + 1?", "model": "tuned", "response": str(i + 1)})
    return rows


@pytest.fixture
def campaign(studio: RunningStudio) -> str:
    admin = admin_api(studio.url)
    set_up_campaign(admin, "arith", responses(6), LABELERS, labels_per_item=2, gold_every=0)
    admin.close()
    return "arith"


def test_every_item_reaches_its_overlap_and_no_more(studio: RunningStudio, campaign: str) -> None:
    apis = [Api(studio.url, email, password) for email, password in LABELERS.items()]
    active = list(apis)
    while active:  # labelers take turns, as concurrent people would
        for api in list(active):
            item = api.ok("GET", f"/api/campaigns/{campaign}/next")["item"]
            if item is None:
                active.remove(api)
                continue
            api.ok(
                "POST",
                f"/api/campaigns/{campaign}/votes",
                json={"item_id": item["item_id"], "choice": "b", "confidence": 4},
            )
    with studio.db.sessions() as session:
        per_item = {}
        for vote in session.scalars(select(Vote)):
            per_item.setdefault(vote.item_id, set()).add(vote.labeler_id)
    assert len(per_item) == 6
    assert all(len(labelers) == 2 for labelers in per_item.values()), per_item
    report = admin_api(studio.url).ok("GET", f"/api/campaigns/{campaign}/report")
    assert report["overview"]["items_at_overlap"] == 6


def test_models_stay_hidden_until_the_vote_reveals_them(
    studio: RunningStudio, campaign: str
) -> None:
    api = Api(studio.url, "ann@example.com", LABELERS["ann@example.com"])
    shown = api.ok("GET", f"/api/campaigns/{campaign}/next")
    assert "base" not in str(shown["item"]) and "tuned" not in str(shown["item"])
    again = api.ok("GET", f"/api/campaigns/{campaign}/next")
    assert again["item"]["item_id"] == shown["item"]["item_id"], "a reload keeps the same item"
    answer = api.ok(
        "POST",
        f"/api/campaigns/{campaign}/votes",
        json={"item_id": shown["item"]["item_id"], "choice": "a", "reasoning": "shorter"},
    )
    assert sorted(answer["revealed"].values()) == ["base", "tuned"]
    # The revealed model A answered what was shown as A (tuned answers i + 1, base i).
    a_text = shown["item"]["response_a"]
    prompt_number = int(shown["item"]["prompt"][0]["content"].split()[2])
    assert answer["revealed"]["a"] == ("tuned" if a_text == str(prompt_number + 1) else "base")


def test_skip_and_undo(studio: RunningStudio, campaign: str) -> None:
    api = Api(studio.url, "bob@example.com", LABELERS["bob@example.com"])
    first = api.ok("GET", f"/api/campaigns/{campaign}/next")["item"]["item_id"]
    api.ok("POST", f"/api/campaigns/{campaign}/skip", json={"item_id": first})
    second = api.ok("GET", f"/api/campaigns/{campaign}/next")["item"]["item_id"]
    assert second != first
    api.ok("POST", f"/api/campaigns/{campaign}/votes", json={"item_id": second, "choice": "tie"})
    third = api.ok("GET", f"/api/campaigns/{campaign}/next")["item"]["item_id"]
    assert third not in (first, second)
    assert api.ok("POST", f"/api/campaigns/{campaign}/undo") == {"undone": second}
    # The undone item comes back (before the one handed out meanwhile), and can be voted again.
    assert api.ok("GET", f"/api/campaigns/{campaign}/next")["item"]["item_id"] == second
    api.ok("POST", f"/api/campaigns/{campaign}/votes", json={"item_id": second, "choice": "a"})
    with studio.db.sessions() as session:
        votes = list(session.scalars(select(Vote)))
        assert [(v.item_id, v.choice) for v in votes] == [(second, "a")]
        assert count(session, Skip) == 1


def _counts(studio: RunningStudio) -> tuple[int, int, int]:
    with studio.db.sessions() as session:
        return count(session, Vote), count(session, Skip), count(session, Assignment)


def test_refusals_name_the_problem_and_store_nothing(studio: RunningStudio, campaign: str) -> None:
    admin = admin_api(studio.url)
    set_up_campaign(admin, "other", responses(2), {"dan@example.com": "dan-password"})
    other_item = Api(studio.url, "dan@example.com", "dan-password").ok(
        "GET", "/api/campaigns/other/next"
    )["item"]["item_id"]

    ann = Api(studio.url, "ann@example.com", LABELERS["ann@example.com"])
    item = ann.ok("GET", f"/api/campaigns/{campaign}/next")["item"]["item_id"]
    ann.ok("POST", f"/api/campaigns/{campaign}/votes", json={"item_id": item, "choice": "a"})
    current = ann.ok("GET", f"/api/campaigns/{campaign}/next")["item"]["item_id"]
    with studio.db.sessions() as session:
        not_given = session.scalar(
            select(Item.id)
            .join(Campaign, Campaign.id == Item.campaign_id)
            .where(Campaign.slug == campaign, Item.id.not_in([item, current]))
            .limit(1)
        )
    before = _counts(studio)

    def refused(api: Api, body: dict, status: int, text: str, slug: str = campaign) -> None:
        reply = api.post(f"/api/campaigns/{slug}/votes", json=body)
        assert reply.status_code == status, reply.text
        assert text in reply.json()["error"], reply.json()
        assert _counts(studio) == before

    refused(ann, {"item_id": 999999, "choice": "a"}, 404, "item 999999: no such item")
    refused(ann, {"item_id": item, "choice": "b"}, 409, "already voted")
    refused(
        ann,
        {"item_id": current, "choice": "a", "reasoning": "x" * 2001},
        422,
        "reasoning: at most 2000 characters (got 2001)",
    )
    refused(ann, {"item_id": current, "choice": "maybe"}, 422, "choice: one of a, b, tie")
    refused(ann, {"item_id": not_given, "choice": "a"}, 403, "not the item you were given")
    refused(ann, {"item_id": other_item, "choice": "a"}, 404, "no such item in campaign 'arith'")
    outsider = Api(studio.url, "dan@example.com", "dan-password")
    refused(outsider, {"item_id": current, "choice": "a"}, 403, "not a labeler of this campaign")
    labeler_as_admin = ann.post("/api/campaigns/arith/state", json={"state": "closed"})
    assert labeler_as_admin.status_code == 403
    assert "admin" in labeler_as_admin.json()["error"]

    # A browser session (cookie) without its CSRF token cannot vote.
    login = httpx.post(
        f"{studio.url}/api/login",
        json={"email": "ann@example.com", "password": LABELERS["ann@example.com"]},
    ).json()
    cookie = {"kubetune_studio_session": login["token"]}
    no_token = httpx.post(
        f"{studio.url}/api/campaigns/{campaign}/votes",
        json={"item_id": current, "choice": "a"},
        cookies=cookie,
    )
    assert no_token.status_code == 403 and "CSRF token" in no_token.json()["error"]
    assert _counts(studio) == before
    # The same through the labeling page's form.
    page_form = {"item_id": str(current), "choice": "a"}
    no_field = httpx.post(f"{studio.url}/campaigns/{campaign}/vote", data=page_form, cookies=cookie)
    assert no_field.status_code == 403 and "CSRF token missing or wrong" in no_field.text
    wrong = httpx.post(
        f"{studio.url}/campaigns/{campaign}/vote",
        data=page_form | {"csrf_token": "forged"},
        cookies=cookie,
    )
    assert wrong.status_code == 403
    assert _counts(studio) == before
    with_token = httpx.post(
        f"{studio.url}/api/campaigns/{campaign}/votes",
        json={"item_id": current, "choice": "a"},
        cookies=cookie,
        headers={"X-CSRF-Token": login["csrf_token"]},
    )
    assert with_token.status_code == 201, with_token.text


def test_oversized_bodies_and_bursts_are_refused(studio_settings: Settings, studio_db) -> None:
    settings = studio_settings.model_copy(
        update={"rate_limit": "20/minute", "max_body_bytes": 4096}
    )
    with start_studio(settings, studio_db) as url:
        admin = admin_api(url)
        big = admin.post("/api/labelers", content=b"{" + b" " * 5000 + b"}")
        assert big.status_code == 413 and "larger than 4096 bytes" in big.json()["error"]
        codes = [admin.get("/api/campaigns").status_code for _ in range(25)]
        assert codes.count(429) >= 4 and set(codes) == {200, 429}, codes
        wrong = [
            httpx.post(f"{url}/api/login", json={"email": "x@example.com", "password": "nope"})
            for _ in range(3)
        ]
        assert {r.status_code for r in wrong} == {401}
        assert wrong[0].json()["error"] == "email or password is wrong"
