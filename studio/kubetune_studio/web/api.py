"""The JSON API: what scripts, simulated labelers and the training side use.

Authenticate with ``POST /api/login`` and send ``Authorization: Bearer TOKEN``. Every refusal is
``{"error": "one line naming the field or item"}`` with a 4xx status, and stores nothing.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from kubetune_studio import analysis, campaigns, generation, importer, labeling
from kubetune_studio.errors import Invalid, NotFound, validated
from kubetune_studio.web.app import Studio, studio_of
from kubetune_studio.web.auth import (
    Caller,
    check_csrf,
    log_in,
    log_out,
    require_admin,
    require_caller,
)
from kubetune_studio.web.views import campaign_report

router = APIRouter(prefix="/api")


async def json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise Invalid("body: not valid JSON") from None


async def text_body(request: Request) -> str:
    raw = await request.body()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("body: not UTF-8 text") from None


def _caller(session: Session, request: Request, *, admin: bool = False) -> Caller:
    caller = require_caller(session, request)
    if admin:
        require_admin(caller)
    return caller


def _change(session: Session, request: Request, *, admin: bool = False) -> Caller:
    """The caller of a request that changes something (CSRF-checked when by cookie)."""
    caller = _caller(session, request, admin=admin)
    check_csrf(caller, request, None)
    return caller


class LoginInput(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1000)


@router.post("/login")
async def login(request: Request) -> JSONResponse:
    studio = studio_of(request)
    given = validated(LoginInput, await json_body(request))
    with studio.transaction() as session:
        labeler, token, csrf = log_in(
            session, given.email, given.password, studio.settings.session_hours
        )
        return JSONResponse(
            {
                "token": token,
                "csrf_token": csrf,
                "email": labeler.email,
                "is_admin": labeler.is_admin,
            }
        )


@router.post("/logout")
async def logout(request: Request) -> JSONResponse:
    studio = studio_of(request)
    with studio.transaction() as session:
        caller = _change(session, request)
        log_out(session, caller.login)
    return JSONResponse({"ok": True})


@router.get("/campaigns")
async def my_campaigns(request: Request) -> JSONResponse:
    studio = studio_of(request)
    with studio.transaction() as session:
        caller = _caller(session, request)
        found = labeling.labeler_campaigns(session, caller.labeler)
        return JSONResponse([{"slug": c.slug, "title": c.title, "state": c.state} for c in found])


def _lease(studio: Studio) -> timedelta:
    return timedelta(minutes=studio.settings.assignment_lease_minutes)


@router.get("/campaigns/{slug}/next")
async def next_item(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    with studio.transaction() as session:
        caller = _caller(session, request)
        campaign = labeling.member_campaign(session, caller.labeler, slug)
        shown, progress = labeling.next_item(session, campaign, caller.labeler, _lease(studio))
        return JSONResponse(
            {
                "item": None if shown is None else shown.__dict__,
                "progress": progress.__dict__,
            }
        )


@router.post("/campaigns/{slug}/votes")
async def vote(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    given = validated(labeling.VoteInput, await json_body(request))
    with studio.transaction() as session:
        caller = _change(session, request)
        campaign = labeling.member_campaign(session, caller.labeler, slug)
        recorded = labeling.vote(session, campaign, caller.labeler, given)
        return JSONResponse(
            {
                "vote_id": recorded.vote_id,
                "item_id": recorded.item_id,
                "choice": recorded.choice,
                "revealed": {"a": recorded.model_a, "b": recorded.model_b},
            },
            status_code=201,
        )


class ItemInput(BaseModel):
    item_id: int


@router.post("/campaigns/{slug}/skip")
async def skip(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    given = validated(ItemInput, await json_body(request))
    with studio.transaction() as session:
        caller = _change(session, request)
        campaign = labeling.member_campaign(session, caller.labeler, slug)
        labeling.skip(session, campaign, caller.labeler, given.item_id)
    return JSONResponse({"skipped": given.item_id})


@router.post("/campaigns/{slug}/undo")
async def undo(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    with studio.transaction() as session:
        caller = _change(session, request)
        campaign = labeling.member_campaign(session, caller.labeler, slug)
        item_id = labeling.undo_last(session, campaign, caller.labeler)
    return JSONResponse({"undone": item_id})


# ----------------------------------------------------------------------------- admin


class LabelerInput(BaseModel):
    email: str
    password: str = Field(max_length=1000)
    name: str = Field(default="", max_length=200)
    is_admin: bool = False


@router.post("/labelers")
async def add_labeler(request: Request) -> JSONResponse:
    studio = studio_of(request)
    given = validated(LabelerInput, await json_body(request))
    with studio.transaction() as session:
        _change(session, request, admin=True)
        labeler = campaigns.create_labeler(
            session, given.email, given.password, name=given.name, is_admin=given.is_admin
        )
        return JSONResponse({"id": labeler.id, "email": labeler.email}, status_code=201)


@router.post("/campaigns")
async def create_campaign(request: Request) -> JSONResponse:
    studio = studio_of(request)
    spec = validated(campaigns.CampaignSpec, await json_body(request))
    with studio.transaction() as session:
        _change(session, request, admin=True)
        campaign = campaigns.create_campaign(session, spec)
        return JSONResponse({"slug": campaign.slug, "state": campaign.state}, status_code=201)


class MembersInput(BaseModel):
    emails: list[str] = Field(min_length=1)


@router.post("/campaigns/{slug}/members")
async def add_members(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    given = validated(MembersInput, await json_body(request))
    with studio.transaction() as session:
        _change(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        added = campaigns.add_members(session, campaign, given.emails)
        return JSONResponse({"members": sorted(lab.email for lab in added)})


def _origin(request: Request, default: str) -> str:
    return (request.query_params.get("origin") or default)[:500]


@router.post("/campaigns/{slug}/responses")
async def import_responses(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    origin = _origin(request, "upload")
    rows = importer.parse_lines(
        (await text_body(request)).splitlines(), origin, importer.response_row
    )
    with studio.transaction() as session:
        _change(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        outcome = campaigns.import_responses(session, campaign, rows, origin)
        made = campaigns.build_items(session, campaign) if campaign.state == "collecting" else 0
        return JSONResponse({**outcome.__dict__, "items_made": made})


@router.post("/campaigns/{slug}/prompts")
async def import_prompts(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    origin = _origin(request, "upload")
    rows = importer.parse_lines(
        (await text_body(request)).splitlines(), origin, importer.prompt_row
    )
    with studio.transaction() as session:
        _change(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        return JSONResponse({"added": campaigns.add_prompts(session, campaign, rows)})


@router.post("/campaigns/{slug}/gold")
async def import_gold(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    origin = _origin(request, "upload")
    rows = importer.parse_lines((await text_body(request)).splitlines(), origin, importer.gold_row)
    with studio.transaction() as session:
        _change(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        return JSONResponse({"added": campaigns.add_gold(session, campaign, rows, origin)})


class GenerateInput(BaseModel):
    max_tokens: int = Field(default=256, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0, le=2)


@router.post("/campaigns/{slug}/generate")
async def generate(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    given = validated(GenerateInput, await json_body(request))
    with studio.transaction() as session:
        _change(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        outcome = generation.fill_missing(
            session, campaign, max_tokens=given.max_tokens, temperature=given.temperature
        )
        return JSONResponse(outcome.__dict__)


class StateInput(BaseModel):
    state: str


@router.post("/campaigns/{slug}/state")
async def set_state(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    given = validated(StateInput, await json_body(request))
    with studio.transaction() as session:
        _change(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        campaigns.set_state(session, campaign, given.state)
        return JSONResponse({"slug": slug, "state": campaign.state})


@router.get("/campaigns/{slug}/report")
async def report(slug: str, request: Request) -> JSONResponse:
    """Overview, agreement, per-labeler quality (with exclusion reasons) and win rates."""
    studio = studio_of(request)
    with studio.transaction() as session:
        _caller(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        return JSONResponse(campaign_report(session, campaign))


@router.get("/campaigns/{slug}/arena")
async def arena_leaderboard(slug: str, request: Request) -> JSONResponse:
    """The arena's leaderboards (human, judge, both), leaked items, daily cap."""
    from kubetune_studio.web.views import arena_report

    studio = studio_of(request)
    with studio.transaction() as session:
        _caller(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        return JSONResponse(arena_report(session, campaign))


@router.post("/experiments")
async def create_experiment(request: Request) -> JSONResponse:
    from kubetune_studio import router as ab

    studio = studio_of(request)
    spec = validated(ab.ExperimentSpec, await json_body(request))
    with studio.transaction() as session:
        _change(session, request, admin=True)
        experiment = ab.create_experiment(session, spec)
        return JSONResponse({"slug": experiment.slug}, status_code=201)


@router.get("/experiments/{slug}/results")
async def experiment_results(slug: str, request: Request) -> JSONResponse:
    """Per-arm feedback rates with intervals, differences with the control, stopped arms."""
    from kubetune_studio import router as ab

    studio = studio_of(request)
    with studio.transaction() as session:
        _caller(session, request, admin=True)
        return JSONResponse(ab.results(session, ab.get_experiment(session, slug)))


@router.post("/campaigns/{slug}/snapshots")
async def create_snapshot(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    with studio.transaction() as session:
        _change(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        record = analysis.create_snapshot(session, campaign, studio.settings.snapshot_root)
        return JSONResponse(
            {"version": record.version, "location": record.location, "manifest": record.manifest},
            status_code=201,
        )


@router.get("/campaigns/{slug}/snapshots")
async def list_snapshots(slug: str, request: Request) -> JSONResponse:
    studio = studio_of(request)
    with studio.transaction() as session:
        _caller(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        return JSONResponse(
            [
                {
                    "version": s.version,
                    "location": s.location,
                    "pairs": s.manifest["counts"]["pairs"],
                }
                for s in analysis.snapshots(session, campaign)
            ]
        )


def _version(text: str) -> int | None:
    if text == "latest":
        return None
    if not text.isdigit():
        raise Invalid(f"snapshot '{text}': a version number or 'latest'")
    return int(text)


@router.get("/campaigns/{slug}/snapshots/{version}/{name}")
async def snapshot_file(slug: str, version: str, name: str, request: Request):
    studio = studio_of(request)
    with studio.transaction() as session:
        _caller(session, request, admin=True)
        campaign = campaigns.get_campaign(session, slug)
        record = analysis.get_snapshot(session, campaign, _version(version))
        if record is None:
            raise NotFound(f"campaign '{slug}': no snapshot {version}")
        if name == "manifest.json":
            return PlainTextResponse(
                json.dumps(record.manifest, indent=2, sort_keys=True) + "\n",
                media_type="application/json",
            )
        if name == "train.jsonl":
            return PlainTextResponse(record.data, media_type="application/jsonl")
        raise NotFound(f"snapshot {version}: no file '{name}' (train.jsonl, manifest.json)")
