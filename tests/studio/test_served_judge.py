"""A judge answered by ``kubetune serve`` votes on an arena campaign (``kubetune-studio judge
--serve``), before the people do; simulated people then agree with whatever it chose at a planted
rate, and the studio's judge–human agreement recovers that rate within its interval.

The judge is the builtin tiny model after a short SFT on the judge's own prompt format (the
pairwise prompt the studio sends, answered ``Verdict: A`` when A is the shorter response, else
``Verdict: B``): a model this small judges nothing well, but it answers in the format, which is
all the pipeline needs — serving, both orders asked, disagreement a tie, votes stored as the
judge's, agreement computed against the people's later votes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from kubetune_studio.cli import main
from kubetune_studio.judging import SAME_AS_TIE
from kubetune_studio.store.schema import Labeler, Vote
from kubetune_trainer.evaluation.judge import pairwise_messages
from tests.studio.conftest import RunningStudio
from tests.studio.studio_support import Api, admin_api, set_up_campaign

PROMPTS = 100
PLANTED_AGREEMENT = 0.75
PEOPLE = {f"{who}@example.com": f"{who}-password" for who in ("ada", "bo")}


def terse(n: int) -> str:
    return f"It is {n}."


def wordy(n: int) -> str:
    return f"Well, after thinking about it for a while, I would say that it is {n}."


def judge_training_rows(count: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for n in range(1000, 1000 + count):
        a, b = (terse(n), wordy(n)) if rng.random() < 0.5 else (wordy(n), terse(n))
        verdict = "A" if len(a) < len(b) else "B"
        messages = pairwise_messages([{"role": "user", "content": f"What is {n}?"}], a, b)
        reply = {"role": "assistant", "content": f"Verdict: {verdict}"}
        rows.append({"messages": [*messages, reply]})
    return rows


def train_judge(tmp_path: Path) -> Path:
    data = tmp_path / "judge.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in judge_training_rows(320)))
    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tiny-judge", "namespace": "studio"},
        "spec": {
            "method": "sft",
            "model": {"source": "builtin://tiny-llama"},
            "data": {"sources": [{"uri": str(data)}]},
            "training": {
                "maxSteps": 40,
                "learningRate": 3e-3,
                "perDeviceBatchSize": 8,
                "maxLength": 320,
                "logEverySteps": 10,
            },
            "checkpoint": {"everySteps": 1000},
        },
    }
    job_file = tmp_path / "judge.yaml"
    job_file.write_text(yaml.safe_dump(job))
    storage = tmp_path / "runs"
    env = os.environ | {"OMP_NUM_THREADS": "1", "KUBETUNE_METRICS_PORT": "0"}
    command = [sys.executable, "-m", "kubetune.cli", "run", "--local", str(job_file)]
    done = subprocess.run([*command, "--storage", str(storage), "--mode", "single"], env=env)
    assert done.returncode == 0
    return storage / "studio" / "tiny-judge" / "output"


def test_a_judge_served_by_kubetune_serve_votes_and_its_agreement_is_recovered(
    studio: RunningStudio,
    tmp_path: Path,
    tier_cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    judge_model = train_judge(tmp_path)
    admin = admin_api(studio.url)
    responses = [
        {"prompt": f"What is {n}?", "model": model, "response": answer(n)}
        for n in range(PROMPTS)
        for model, answer in (("terse", terse), ("wordy", wordy))
    ]
    set_up_campaign(
        admin,
        "served",
        responses,
        PEOPLE,
        models=("terse", "wordy"),
        baseline="wordy",
        labels_per_item=1,
        gold_every=0,
        min_consensus_votes=1000,
    )

    monkeypatch.setenv("KUBETUNE_STUDIO_DATABASE_URL", studio.db.url)
    capsys.readouterr()
    code = main(["judge", "served", "--serve", str(judge_model), "--model", "tiny-judge"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"voted on {PROMPTS} of {PROMPTS} items" in out, out
    with studio.db.sessions() as session:
        judged = dict(
            session.execute(
                select(Vote.item_id, Vote.choice)
                .join(Labeler, Labeler.id == Vote.labeler_id)
                .where(Labeler.kind == "judge")
            ).all()
        )
    assert len(judged) == PROMPTS

    # The judge's votes fill no item: the people still get every one of them.
    rng = random.Random(7)
    people = [Api(studio.url, email, password) for email, password in PEOPLE.items()]
    votes = agreeing = 0
    while people:
        for person in list(people):
            item = person.ok("GET", "/api/campaigns/served/next")["item"]
            if item is None:
                people.remove(person)
                continue
            judge_choice = SAME_AS_TIE[judged[item["item_id"]]]
            if rng.random() < PLANTED_AGREEMENT:
                choice = judge_choice
            else:
                choice = rng.choice([c for c in ("a", "b", "tie") if c != judge_choice])
            agreeing += choice == judge_choice
            votes += 1
            body = {"item_id": item["item_id"], "choice": choice, "time_spent_ms": 5000}
            person.ok("POST", "/api/campaigns/served/votes", json=body)
    assert votes == PROMPTS

    report = admin.ok("GET", "/api/campaigns/served/arena")
    assert report["leaderboards"]["judge"]["battles"] == PROMPTS
    agreement = report["judge_agreement"]["overall"]
    assert agreement["value"] == pytest.approx(agreeing / votes)
    with capsys.disabled():
        shares = {c: list(judged.values()).count(c) for c in ("a", "b", "tie")}
        print(
            f"served judge: votes {shares}; agreement {agreement['value']:.3f} "
            f"[{agreement['low']:.3f}, {agreement['high']:.3f}] (planted {PLANTED_AGREEMENT})"
        )
    assert agreement["low"] <= PLANTED_AGREEMENT <= agreement["high"], agreement
