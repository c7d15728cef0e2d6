"""The arena against a real PostgreSQL: three models in every pair, simulated people voting
through the JSON API with adaptive pair draws, a scripted OpenAI-compatible judge voting on the
same items through ``kubetune-studio judge``, the leaderboards for humans, the judge and both,
judge–human agreement recovering its planted rate, and voter hygiene (a response that names its
model, a daily cap) as the admin sees it."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

import pytest
from fastapi import FastAPI, Request

from kubetune_studio.cli import main
from tests.studio.conftest import RunningStudio
from tests.studio.studio_support import Api, admin_api, set_up_campaign
from tests.support.asgi import serving

QUALITY = {"orca-7b": 3, "lynx-3b": 2, "puma-1b": 1}
PLANTED_AGREEMENT = 0.75
PROMPTS = 40


def responses() -> list[dict]:
    rows = []
    for n in range(PROMPTS):
        for model, quality in QUALITY.items():
            text = f"Answer {n}, written with care level {quality}."
            if n == 0 and model == "orca-7b":
                text = "As Orca-7B, " + text  # names its model: votes on it are discarded
            category = "math" if n % 2 else "writing"
            rows.append(
                {"prompt": f"Question {n}?", "model": model, "response": text, "category": category}
            )
    return rows


def care(text: str) -> int:
    return int(re.search(r"care level (\d)", text).group(1))


def scripted_judge() -> FastAPI:
    """A stand-in judge: an OpenAI-compatible endpoint that reads the two responses of the
    pairwise prompt and prefers the one written with more care, whatever its position."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        body = await request.json()
        user = body["messages"][-1]["content"]
        first = user.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
        second = user.split("[Response B]\n")[1]
        verdict = "A" if care(first) > care(second) else "B"
        return {
            "id": "judge-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"Verdict: {verdict}"},
                    "finish_reason": "stop",
                }
            ],
        }

    return app


@dataclass
class Voted:
    votes: int
    agreeing: int


def vote_all(studio: RunningStudio, slug: str, emails: list[str], seed: int) -> Voted:
    """People who agree with the judge's choice (the more careful answer) with probability
    PLANTED_AGREEMENT, else pick one of the other two answers; they take turns until done."""
    rng = random.Random(seed)
    people = [Api(studio.url, email, email.split("@")[0] + "-password") for email in emails]
    voted = agreeing = 0
    active = list(people)
    while active:
        for person in list(active):
            item = person.ok("GET", f"/api/campaigns/{slug}/next")["item"]
            if item is None:
                active.remove(person)
                continue
            better = "a" if care(item["response_a"]) > care(item["response_b"]) else "b"
            if rng.random() < PLANTED_AGREEMENT:
                choice = better
            else:
                choice = rng.choice([c for c in ("a", "b", "tie") if c != better])
            agreeing += choice == better
            person.ok(
                "POST",
                f"/api/campaigns/{slug}/votes",
                json={"item_id": item["item_id"], "choice": choice, "time_spent_ms": 5000},
            )
            voted += 1
    for person in people:
        person.close()
    return Voted(voted, agreeing)


def test_arena_leaderboards_judge_and_agreement(
    studio: RunningStudio, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = admin_api(studio.url)
    labelers = {f"{who}@example.com": f"{who}-password" for who in ("ada", "bo", "cy")}
    set_up_campaign(
        admin,
        "arena",
        responses(),
        labelers,
        models=tuple(QUALITY),
        baseline="puma-1b",
        pairing="all-pairs",
        pair_sampling="adaptive",
        labels_per_item=2,
        gold_every=0,
        min_consensus_votes=1000,  # these stand-ins disagree by design: nobody is excluded
    )
    voted = vote_all(studio, "arena", list(labelers), seed=4)
    assert voted.votes == PROMPTS * 3 * 2

    monkeypatch.setenv("KUBETUNE_STUDIO_DATABASE_URL", studio.db.url)
    with serving(scripted_judge()) as judge_url:
        capsys.readouterr()
        code = main(["judge", "arena", "--endpoint", judge_url + "/v1", "--model", "judge-8b"])
        out = capsys.readouterr().out
    assert code == 0, out
    assert f"voted on {PROMPTS * 3} of {PROMPTS * 3} items (0 ties" in out

    report = admin.ok("GET", "/api/campaigns/arena/arena")
    human = report["leaderboards"]["human"]
    assert [r["model"] for r in human["ratings"]] == ["orca-7b", "lynx-3b", "puma-1b"]
    assert {(s["better"], s["worse"]) for s in human["significant"]} >= {("orca-7b", "puma-1b")}
    # Prompt 0's two items with orca-7b name it: their 2 x 2 human votes are discarded.
    assert human["discarded_leaked"] == 4 and len(report["leaked_items"]) == 2
    assert human["battles"] == voted.votes - 4
    judge = report["leaderboards"]["judge"]
    assert [r["model"] for r in judge["ratings"]] == ["orca-7b", "lynx-3b", "puma-1b"]
    assert judge["battles"] == PROMPTS * 3 - 2
    assert report["leaderboards"]["all"]["battles"] == human["battles"] + judge["battles"]

    agreement = report["judge_agreement"]["overall"]
    with capsys.disabled():
        print(
            f"judge-human agreement {agreement['value']:.3f} [{agreement['low']:.3f}, "
            f"{agreement['high']:.3f}] (planted {PLANTED_AGREEMENT}; the simulated people "
            f"agreed on {voted.agreeing}/{voted.votes})"
        )
    assert agreement["low"] <= PLANTED_AGREEMENT <= agreement["high"]
    assert agreement["value"] == pytest.approx(voted.agreeing / voted.votes)
    assert set(report["judge_agreement"]["by_category"]) == {"math", "writing"}

    page = admin.get("/admin/campaigns/arena")
    assert page.status_code == 200
    assert "Arena leaderboard" in page.text and "<svg" in page.text
    assert "Judge–human agreement" in page.text

    capsys.readouterr()
    assert main(["arena", "arena", "--voters", "all", "--rounds", "50"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^1 +orca-7b", printed, re.MULTILINE)
    assert "judge-human agreement: " in printed
    document = json.loads(
        (main(["arena", "arena", "--json", "--rounds", "20"]), capsys.readouterr().out)[1]
    )
    assert document["voters"] == "human" and document["discarded_leaked"] == 4


def test_a_daily_cap_refuses_the_vote_after_it_and_stores_nothing(studio: RunningStudio) -> None:
    admin = admin_api(studio.url)
    set_up_campaign(
        admin,
        "capped",
        responses()[:30],
        {"ann@example.com": "ann-password"},
        models=tuple(QUALITY),
        baseline="puma-1b",
        pairing="all-pairs",
        labels_per_item=1,
        gold_every=0,
        daily_vote_cap=3,
    )
    ann = Api(studio.url, "ann@example.com", "ann-password")
    for _ in range(3):
        item = ann.ok("GET", "/api/campaigns/capped/next")["item"]
        ann.ok(
            "POST", "/api/campaigns/capped/votes", json={"item_id": item["item_id"], "choice": "a"}
        )
    refused = ann.get("/api/campaigns/capped/next")
    assert refused.status_code == 409
    assert refused.json()["error"].startswith("campaign 'capped': daily_vote_cap: you have cast")
    report = admin.ok("GET", "/api/campaigns/capped/report")
    assert report["overview"]["votes"] == 3
    bad = admin.post(
        "/api/campaigns",
        json={
            "slug": "bad",
            "models": [{"name": "x"}, {"name": "y"}],
            "baseline": "x",
            "pair_sampling": "greedy",
        },
    )
    assert bad.status_code == 422
    assert bad.json()["error"] == "pair_sampling: one of uniform, adaptive"


def test_votes_of_a_labeler_the_quality_checks_exclude_leave_the_leaderboard(
    studio: RunningStudio,
) -> None:
    admin = admin_api(studio.url)
    gold = [
        {"prompt": f"Gold {n}?", "response_a": "right", "response_b": "wrong", "answer": "a"}
        for n in range(3)
    ]
    people = {"good@example.com": "good-password", "odd@example.com": "odd-password"}
    set_up_campaign(
        admin,
        "checked",
        responses()[:30],
        people,
        gold=gold,
        models=tuple(QUALITY),
        baseline="puma-1b",
        pairing="all-pairs",
        labels_per_item=1,
        gold_every=1,
        min_gold_votes=3,
    )
    regular = {email: 0 for email in people}  # votes on regular items that name no model
    active = {email: Api(studio.url, email, password) for email, password in people.items()}
    while active:  # they take turns
        for email, person in list(active.items()):
            item = person.ok("GET", "/api/campaigns/checked/next")["item"]
            if item is None:
                person.close()
                del active[email]
                continue
            choice = "a" if email.startswith("good") else "b"  # odd contradicts the gold answers
            voted = person.ok(
                "POST",
                "/api/campaigns/checked/votes",
                json={"item_id": item["item_id"], "choice": choice, "time_spent_ms": 5000},
            )
            revealed = set(voted["revealed"].values())
            leaked = "As Orca-7B" in item["response_a"] + item["response_b"]
            regular[email] += None not in revealed and not leaked
    report = admin.ok("GET", "/api/campaigns/checked/report")
    status = {q["email"]: q for q in report["labelers"]}
    assert status["odd@example.com"]["excluded"] and not status["good@example.com"]["excluded"]
    human = report["arena"]["leaderboards"]["human"]
    assert human["discarded_excluded"] == regular["odd@example.com"] > 0
    assert human["battles"] == regular["good@example.com"]
