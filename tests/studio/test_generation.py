"""Responses from a real OpenAI-compatible endpoint: ``kubetune-studio generate --serve`` starts
``kubetune serve`` for a builtin model, asks it through the ``openai`` client for every prompt
it has not answered, and the campaign gets its items; the other model's answers come from an
imported file. Bad files and unreachable endpoints are refused with their exit codes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from kubetune_studio.cli import EXIT_DATA, EXIT_UNAVAILABLE, main
from kubetune_studio.store.schema import CampaignModel, Item, Prompt, Response
from tests.studio.conftest import StudioDatabase

PROMPTS = ["What is 12 + 1?", "Add 300 and 1.", "What is 41 + 1?"]


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def studio_cli(studio_db: StudioDatabase, capsys, monkeypatch):
    """``kubetune-studio ARGS`` (its main, in this process) against the test's database."""
    monkeypatch.setenv("KUBETUNE_STUDIO_DATABASE_URL", studio_db.url)

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


@pytest.fixture
def campaign(studio_cli, tmp_path: Path) -> Path:
    spec = tmp_path / "campaign.yaml"
    spec.write_text(
        "slug: served\nmodels: [{name: tiny}, {name: reference}]\nbaseline: reference\n"
    )
    assert studio_cli("create-campaign", str(spec)).returncode == 0
    answers = tmp_path / "reference.jsonl"
    answers.write_text(
        "".join(
            json.dumps({"prompt": p, "model": "reference", "response": "13"}) + "\n"
            for p in PROMPTS
        )
    )
    done = studio_cli("import-responses", "served", str(answers))
    assert done.returncode == 0, done.stderr
    assert "3 responses added, 0 replaced, 3 new prompts" in done.stdout
    return tmp_path


def test_generate_through_kubetune_serve(
    studio_cli, studio_db: StudioDatabase, campaign: Path, tmp_path_factory, monkeypatch
) -> None:
    # The served model is built into a cache of the test's own.
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path_factory.mktemp("kubetune-cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    done = studio_cli(
        "generate", "served", "--serve", "tiny=builtin://tiny-llama", "--max-tokens", "8"
    )
    assert done.returncode == 0, done.stderr
    assert "served: 3 responses generated, 0 failed, 0 items made" in done.stdout
    with studio_db.sessions() as session:
        rows = session.execute(
            select(CampaignModel.name, Response.text, Response.origin).join(
                CampaignModel, CampaignModel.id == Response.model_id
            )
        ).all()
        served = [r for r in rows if r.name == "tiny"]
        assert len(served) == 3
        assert all(r.origin.startswith("http://127.0.0.1:") for r in served)
        assert session.scalar(select(Prompt.id).limit(1)) is not None
    # Opening the campaign pairs each prompt's two answers.
    opened = studio_cli("open", "served")
    assert opened.returncode == 0 and "collecting (3 items, 0 gold)" in opened.stdout
    with studio_db.sessions() as session:
        assert len(session.scalars(select(Item)).all()) == 3


def test_unreachable_endpoint_and_bad_file_exit_codes(studio_cli, campaign: Path) -> None:
    spec = campaign / "down.yaml"
    spec.write_text(
        "slug: down\nmodels: [{name: gone, endpoint: 'http://127.0.0.1:9/v1'}, {name: base}]\n"
        "baseline: base\n"
    )
    assert studio_cli("create-campaign", str(spec)).returncode == 0
    prompts = campaign / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi?"}) + "\n")
    assert studio_cli("import-prompts", "down", str(prompts)).returncode == 0
    down = studio_cli("generate", "down")
    assert down.returncode == EXIT_UNAVAILABLE, down.stderr
    assert "down: 0 responses generated, 1 failed" in down.stdout
    assert "model 'gone', prompt" in down.stderr

    bad = campaign / "bad.jsonl"
    bad.write_text('{"prompt": "x", "model": "tiny"}\n')
    refused = studio_cli("import-responses", "served", str(bad))
    assert refused.returncode == EXIT_DATA
    assert refused.stderr.strip() == (
        f"kubetune-studio: {bad}: row 0 (line 1): field 'response': missing or not a string"
    )
    unknown = campaign / "unknown.jsonl"
    unknown.write_text(json.dumps({"prompt": "x", "model": "gpt-9", "response": "y"}) + "\n")
    refused = studio_cli("import-responses", "served", str(unknown))
    assert refused.returncode == EXIT_DATA
    assert "field 'model': gpt-9 not in campaign 'served'" in refused.stderr
