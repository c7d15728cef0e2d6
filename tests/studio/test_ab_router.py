"""The live A/B router against a real PostgreSQL, called through the ``openai`` client: two
stand-in model endpoints (tests/studio/upstream.py) behind it, the split over 1000 users within
its binomial interval, stickiness, streaming, feedback rows in the store, the guard stopping a
planted-worse arm, an experiment concluded by hand, and refusals that store nothing."""

from __future__ import annotations

import contextlib
import random
import re
from collections import Counter
from collections.abc import Iterator

import httpx
import openai
import pytest
from scipy.stats import binom
from sqlalchemy import func, select

from kubetune_studio import router
from kubetune_studio.cli import main as studio_main
from kubetune_studio.store.database import transaction
from kubetune_studio.store.schema import Arm, Exchange, Feedback
from tests.studio.conftest import RunningStudio, StudioDatabase
from tests.studio.studio_support import admin_api, count
from tests.studio.upstream import upstream_app
from tests.support.asgi import serving

ASK = [{"role": "user", "content": "Name a prime number."}]


@contextlib.contextmanager
def experiment(
    db: StudioDatabase, weights: dict[str, float], **settings
) -> Iterator[tuple[openai.OpenAI, httpx.Client]]:
    """Upstreams named after the arms, the experiment in the store, and the router serving it:
    an ``openai`` client for chat and an HTTP client for feedback."""
    with contextlib.ExitStack() as stack:
        arms = [
            router.ArmSpec(
                name=name,
                endpoint=stack.enter_context(serving(upstream_app(name))) + "/v1",
                weight=weight,
            )
            for name, weight in weights.items()
        ]
        with transaction(db.sessions) as session:
            router.create_experiment(
                session, router.ExperimentSpec(slug="prime", arms=arms, **settings)
            )
        base = stack.enter_context(serving(router.create_router_app(db.sessions, "prime")))
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        http = stack.enter_context(httpx.Client(base_url=base, timeout=30))
        yield client, http


def arm_of(answer) -> str:
    return answer.choices[0].message.content.split(" says: ")[0]


def ask(client: openai.OpenAI, user: str):
    return client.chat.completions.create(model="prime", messages=ASK, user=user)


def test_split_matches_the_weights_over_1000_users_and_each_keeps_their_arm(
    studio_db: StudioDatabase,
) -> None:
    with experiment(studio_db, {"control": 7.0, "candidate": 3.0}) as (client, http):
        first = {f"user-{n}": arm_of(ask(client, f"user-{n}")) for n in range(1000)}
        split = Counter(first.values())
        low, high = binom.interval(0.999, 1000, 0.7)
        print(f"split over 1000 users: {dict(split)} (99.9% interval for control {low}-{high})")
        assert low <= split["control"] <= high
        for user in list(first)[:40]:
            assert arm_of(ask(client, user)) == first[user]
            by_header = http.post(
                "/v1/chat/completions", json={"messages": ASK}, headers={"X-Session-Id": user}
            )
            assert by_header.json()["choices"][0]["message"]["content"].startswith(first[user])
    with transaction(studio_db.sessions) as session:
        recorded = Counter(
            name
            for (name,) in session.execute(
                select(Arm.name).join(Exchange, Exchange.arm_id == Arm.id).limit(1000)
            )
        )
        assert count(session, Exchange) == 1080
    assert recorded == split


def test_a_streamed_answer_arrives_whole_and_is_recorded(studio_db: StudioDatabase) -> None:
    with experiment(studio_db, {"alpha": 1.0, "beta": 1.0}) as (client, _):
        chunks = list(
            client.chat.completions.create(model="prime", messages=ASK, user="ann", stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == "prime"
        assert text.split(" says: ")[1] == "Name a prime number."
        plain = ask(client, "ann")
        assert arm_of(plain) == text.split(" says: ")[0]  # the same user, the same arm
    with transaction(studio_db.sessions) as session:
        row = session.scalar(select(Exchange).where(Exchange.response_id == chunks[0].id))
        assert row is not None and row.streamed and row.reply == text
        assert row.arm.name == text.split(" says: ")[0]


def test_feedback_lands_in_postgresql_and_the_guard_stops_a_planted_worse_arm(
    studio: RunningStudio,
) -> None:
    liked = {"good": 0.8, "worse": 0.4}
    rng = random.Random(3)
    posted = 0
    with experiment(
        studio.db, {"good": 1.0, "worse": 1.0}, guard_min_feedback=40, guard_confidence=0.99
    ) as (client, http):
        for n in range(600):
            answer = ask(client, f"visitor-{n}")
            thumbs = "up" if rng.random() < liked[arm_of(answer)] else "down"
            reply = http.post("/v1/feedback", json={"response_id": answer.id, "thumbs": thumbs})
            assert reply.status_code == 201, reply.text
            posted += 1
            with transaction(studio.db.sessions) as session:
                if session.scalar(select(Arm.stopped_at).where(Arm.name == "worse")):
                    break
        after = Counter(arm_of(ask(client, f"late-{n}")) for n in range(100))
    assert after == {"good": 100}
    admin = admin_api(studio.url)
    results = admin.ok("GET", "/api/experiments/prime/results")
    arms = {a["name"]: a for a in results["arms"]}
    print(
        f"guard stopped 'worse' after {posted} feedbacks: {arms['worse']['stop_reason']}; "
        f"difference {arms['worse']['difference_vs_control']:+.3f} "
        f"[{arms['worse']['difference_low']:+.3f}, {arms['worse']['difference_high']:+.3f}]"
    )
    assert not arms["worse"]["running"] and "below good's" in arms["worse"]["stop_reason"]
    assert arms["good"]["running"]
    assert arms["worse"]["significant"] and arms["worse"]["difference_high"] < 0
    page = admin.get("/admin/experiments/prime")
    assert page.status_code == 200 and "stopped: thumbs-up rate" in page.text
    assert 'href="/admin/experiments/prime"' in admin.get("/admin").text
    with transaction(studio.db.sessions) as session:
        assert count(session, Feedback) == posted
        ups = session.scalar(select(func.count()).where(Feedback.thumbs_up.is_(True)))
    assert ups == arms["good"]["thumbs_up"] + arms["worse"]["thumbs_up"]


def test_a_side_by_side_answer_takes_a_pairwise_choice(studio_db: StudioDatabase) -> None:
    with experiment(studio_db, {"alpha": 1.0, "beta": 1.0}) as (client, http):
        both = client.chat.completions.create(
            model="prime", messages=ASK, user="cat", extra_body={"compare": True}
        )
        shown = [c.message.content.split(" says: ")[0] for c in both.choices]
        assert sorted(shown) == ["alpha", "beta"]
        reply = http.post("/v1/feedback", json={"response_id": both.id, "preferred": 1})
        assert reply.status_code == 201, reply.text
    with transaction(studio_db.sessions) as session:
        feedback = session.scalar(select(Feedback))
        assert feedback.kind == "pairwise"
        assert session.get(Arm, feedback.preferred_arm_id).name == shown[1]
        found = router.results(session, router.get_experiment(session, "prime"))
    assert found["pairwise"] == [
        {"arms": ["alpha", "beta"], "preferred": {"alpha": 0, "beta": 0, "tie": 0} | {shown[1]: 1}}
    ]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"thumbs": "sideways"}, 422, r"^thumbs: Input should be 'up' or 'down'"),
        ({"thumbs": "up", "preferred": 0}, 422, r"^body: give either 'thumbs'"),
        ({"preferred": 1}, 422, r"^preferred: this answer showed one response"),
        ({"thumbs": "up", "response_id": "chatcmpl-ab-made-up"}, 404, r"^response_id: no answer"),
        ({"thumbs": "down"}, 409, r"^response_id: '.*' has feedback already"),
    ],
)
def test_refused_feedback_is_one_line_naming_the_field_and_stores_nothing(
    studio_db: StudioDatabase, body: dict, status: int, message: str
) -> None:
    with experiment(studio_db, {"alpha": 1.0, "beta": 1.0}) as (client, http):
        answer = ask(client, "dan")
        if status == 409:
            assert (
                http.post(
                    "/v1/feedback", json={"response_id": answer.id, "thumbs": "up"}
                ).status_code
                == 201
            )
        with transaction(studio_db.sessions) as session:
            before = count(session, Feedback)
        reply = http.post("/v1/feedback", json={"response_id": answer.id} | body)
        assert reply.status_code == status
        assert re.match(message, reply.json()["error"]["message"]), reply.text
        with transaction(studio_db.sessions) as session:
            assert count(session, Feedback) == before


def test_a_chat_request_without_a_user_is_refused_naming_the_field(
    studio_db: StudioDatabase,
) -> None:
    with experiment(studio_db, {"alpha": 1.0, "beta": 1.0}) as (client, _):
        with pytest.raises(openai.UnprocessableEntityError, match=r"user: give the request's"):
            client.chat.completions.create(model="prime", messages=ASK)
        with pytest.raises(openai.UnprocessableEntityError, match=r"messages: List should have"):
            client.chat.completions.create(model="prime", messages=[], user="eve")
    with transaction(studio_db.sessions) as session:
        assert count(session, Exchange) == 0


def test_a_concluded_experiment_serves_the_kept_arm_and_a_stopped_one_refuses(
    studio_db: StudioDatabase, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("KUBETUNE_STUDIO_DATABASE_URL", studio_db.url)

    def studio_cli(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = studio_main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    def arm_states() -> dict[str, str | None]:
        with transaction(studio_db.sessions) as session:
            return dict(session.execute(select(Arm.name, Arm.stop_reason)).all())

    with experiment(studio_db, {"alpha": 1.0, "beta": 2.0, "gamma": 1.0}) as (client, http):
        # A refused conclusion names the flag, exits 65 and changes nothing.
        code, out, err = studio_cli("ab-stop", "prime", "--keep", "delta")
        assert code == 65 and out == "", out
        assert err == (
            "kubetune-studio: keep: 'delta' is not a running arm of experiment 'prime' "
            "(running: alpha, beta, gamma)\n"
        )
        assert arm_states() == {"alpha": None, "beta": None, "gamma": None}

        code, out, _ = studio_cli("ab-stop", "prime", "--keep", "gamma")
        assert code == 0 and out == (
            "experiment prime concluded: gamma answers every request; stopped alpha, beta\n"
        )
        assert arm_states() == {
            "alpha": "concluded by hand, gamma kept",
            "beta": "concluded by hand, gamma kept",
            "gamma": None,
        }
        # Users who had alpha or beta now get gamma; a side-by-side request gets it alone.
        assert Counter(arm_of(ask(client, f"visitor-{n}")) for n in range(40)) == {"gamma": 40}
        alone = client.chat.completions.create(
            model="prime", messages=ASK, user="cat", extra_body={"compare": True}
        )
        assert [arm_of(alone)] == [c.message.content.split(" says: ")[0] for c in alone.choices]
        assert arm_of(alone) == "gamma"
        reply = http.post("/v1/feedback", json={"response_id": alone.id, "thumbs": "up"})
        assert reply.status_code == 201, reply.text

        # Stopped: the router refuses, a second stop is refused, nothing more is stored.
        assert studio_cli("ab-stop", "prime") == (
            0,
            "experiment prime stopped: its router refuses requests from now on\n",
            "",
        )
        with transaction(studio_db.sessions) as session:
            exchanges = count(session, Exchange)
        with pytest.raises(openai.ConflictError, match=r"experiment 'prime' is stopped"):
            ask(client, "dan")
        assert studio_cli("ab-stop", "prime", "--keep", "gamma") == (
            1,
            "",
            "kubetune-studio: experiment 'prime' is stopped already\n",
        )
        with transaction(studio_db.sessions) as session:
            assert count(session, Exchange) == exchanges
    code, out, _ = studio_cli("ab-results", "prime")
    assert code == 0 and "experiment prime (stopped)" in out
    assert "stopped: concluded by hand, gamma kept" in out
