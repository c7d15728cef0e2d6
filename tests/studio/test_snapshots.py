"""Snapshots written to S3 (a real S3-compatible server) read back by the trainer's own s3://
data source exactly as the studio serves them; versions count up; the manifest counts what was
dropped and why."""

from __future__ import annotations

import json

import pytest

from tests.studio.conftest import RunningStudio, start_studio
from tests.studio.studio_support import Api, admin_api, set_up_campaign
from tests.support.s3 import create_bucket, s3_server

LABELERS = {"ann@example.com": "ann-password", "bob@example.com": "bob-password"}


def read_preferences(uri: str) -> list[dict]:
    from kubetune_trainer.data import load_data
    from kubetune_trainer.plan import DataSpec

    spec = DataSpec.model_validate({"sources": [{"uri": uri, "format": "preference"}]})
    return list(load_data(spec, kind="preference").train)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path) -> str:
    with s3_server() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
        create_bucket(server, "preferences")
        yield server.endpoint


def test_a_snapshot_on_s3_trains_like_the_served_one(studio_settings, studio_db, s3) -> None:
    settings = studio_settings.model_copy(update={"snapshot_root": "s3://preferences/studio"})
    with start_studio(settings, studio_db) as url:
        admin = admin_api(url)
        rows = []
        for i in range(6):
            rows.append({"prompt": f"Say {i}.", "model": "base", "response": f"{i}, I guess."})
            rows.append({"prompt": f"Say {i}.", "model": "tuned", "response": str(i)})
        set_up_campaign(admin, "s3c", rows, LABELERS, labels_per_item=2, gold_every=0)
        for email, password in LABELERS.items():
            api = Api(url, email, password)
            while (item := api.ok("GET", "/api/campaigns/s3c/next")["item"]) is not None:
                shorter = "a" if len(item["response_a"]) < len(item["response_b"]) else "b"
                # Both prefer the shorter answer; bob calls every third item a tie.
                choice = "tie" if email.startswith("bob") and item["item_id"] % 3 == 0 else shorter
                api.ok(
                    "POST",
                    "/api/campaigns/s3c/votes",
                    json={"item_id": item["item_id"], "choice": choice},
                )

        first = admin.ok("POST", "/api/campaigns/s3c/snapshots")
        second = admin.ok("POST", "/api/campaigns/s3c/snapshots")
        assert (first["version"], second["version"]) == (1, 2)
        assert first["location"] == "s3://preferences/studio/s3c/v1"
        counts = first["manifest"]["counts"]
        assert counts["items"] == 6 and counts["votes_used"] == 12
        assert counts["pairs"] + counts.get("dropped_no_majority", 0) == 6

        from_s3 = read_preferences(first["location"])
        served = admin.get("/api/campaigns/s3c/snapshots/1/train.jsonl").text
        assert from_s3 == read_preferences_text(served)
        assert len(from_s3) == counts["pairs"]
        assert all(r["chosen"][0]["content"].isdigit() for r in from_s3)
        manifest = json.loads(admin.get("/api/campaigns/s3c/snapshots/latest/manifest.json").text)
        assert manifest["snapshot"] == 2
        missing = admin.get("/api/campaigns/s3c/snapshots/9/train.jsonl")
        assert missing.status_code == 404 and "no snapshot 9" in missing.json()["error"]


def read_preferences_text(text: str) -> list[dict]:
    """The served rows as the trainer normalises them (through a local file)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "train.jsonl"
        path.write_text(text)
        return read_preferences(str(path))


def test_labelers_cannot_read_snapshots(studio: RunningStudio) -> None:
    admin = admin_api(studio.url)
    set_up_campaign(
        admin,
        "private",
        [
            {"prompt": "p", "model": "base", "response": "x"},
            {"prompt": "p", "model": "tuned", "response": "y"},
        ],
        LABELERS,
    )
    admin.ok("POST", "/api/campaigns/private/snapshots")
    ann = Api(studio.url, "ann@example.com", LABELERS["ann@example.com"])
    refused = ann.get("/api/campaigns/private/snapshots/1/train.jsonl")
    assert refused.status_code == 403 and "admin" in refused.json()["error"]
