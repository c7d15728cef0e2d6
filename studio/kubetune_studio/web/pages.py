"""The HTML pages: login, a labeler's campaigns, the labeling page, and the admin views.

Every form posts with the session's CSRF token; after a post the browser is redirected (303)
to a page, so reloading never posts twice.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from kubetune_studio import analysis, campaigns, labeling
from kubetune_studio.errors import Invalid, StudioError, Unauthenticated, validated
from kubetune_studio.store.schema import Experiment, Vote
from kubetune_studio.web.app import Studio, studio_of
from kubetune_studio.web.auth import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Caller,
    check_csrf,
    check_login_csrf,
    identify,
    log_in,
    log_out,
    require_admin,
    require_caller,
)
from kubetune_studio.web.views import campaign_report, leaderboard_svg

router = APIRouter()
CHOICE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad"}


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    studio = studio_of(request)
    return studio.templates.TemplateResponse(
        request, template, {"choice_labels": CHOICE_LABELS, **context}, status_code=status
    )


def error_page(request: Request, exc: StudioError) -> Response:
    if isinstance(exc, Unauthenticated):
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    return render(request, "error.html", status=exc.status, message=exc.message, caller=None)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _lease(studio: Studio) -> timedelta:
    return timedelta(minutes=studio.settings.assignment_lease_minutes)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _posted_by(session: Session, request: Request, form: dict[str, str]) -> Caller:
    caller = require_caller(session, request)
    check_csrf(caller, request, form.get(CSRF_FIELD))
    return caller


# ----------------------------------------------------------------------------- login


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(
        request, "login.html", csrf_token=token, next=_safe_next(request), caller=None
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=studio_of(request).settings.secure_cookies,
    )
    return response


def _safe_next(request: Request) -> str:
    target = request.query_params.get("next") or "/"
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.post("/login")
async def login(request: Request) -> Response:
    studio = studio_of(request)
    form = await _form(request)
    check_login_csrf(request, form.get(CSRF_FIELD))
    try:
        with studio.transaction() as session:
            _, token, _ = log_in(
                session,
                form.get("email", ""),
                form.get("password", ""),
                studio.settings.session_hours,
            )
    except Unauthenticated as exc:
        fresh = secrets.token_urlsafe(32)
        response = render(
            request,
            "login.html",
            status=401,
            csrf_token=fresh,
            next=_safe_next(request),
            error=exc.message,
            caller=None,
        )
        response.set_cookie(LOGIN_CSRF_COOKIE, fresh, httponly=True, samesite="strict")
        return response
    response = _redirect(_safe_next(request))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(studio.settings.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=studio.settings.secure_cookies,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    studio = studio_of(request)
    form = await _form(request)
    with studio.transaction() as session:
        caller = _posted_by(session, request, form)
        log_out(session, caller.login)
    response = _redirect("/login")
    response.delete_cookie(SESSION_COOKIE)
    return response


# ----------------------------------------------------------------------------- labelers


@router.get("/")
async def home(request: Request) -> Response:
    studio = studio_of(request)
    with studio.transaction() as session:
        caller = identify(session, request)
        if caller is None:
            return _redirect("/login")
        rows = []
        for campaign in labeling.labeler_campaigns(session, caller.labeler):
            mine = labeling.is_member(session, campaign, caller.labeler)
            done = (
                labeling.progress(session, campaign, caller.labeler, _lease(studio))
                if mine
                else None
            )
            rows.append({"campaign": campaign, "member": mine, "progress": done})
        return render(request, "home.html", caller=caller, rows=rows)


@router.get("/campaigns/{slug}/label")
async def label_page(slug: str, request: Request) -> Response:
    studio = studio_of(request)
    with studio.transaction() as session:
        caller = require_caller(session, request)
        campaign = labeling.member_campaign(session, caller.labeler, slug)
        item, progress = labeling.next_item(session, campaign, caller.labeler, _lease(studio))
        return render(
            request,
            "label.html",
            caller=caller,
            campaign=campaign,
            item=item,
            progress=progress,
            revealed=_revealed(session, caller, request.query_params.get("voted")),
            notice=request.query_params.get("notice"),
        )


def _revealed(session: Session, caller: Caller, vote_id: str | None) -> dict[str, Any] | None:
    """The models behind the labeler's own just-cast vote, shown after it."""
    if not vote_id or not vote_id.isdigit():
        return None
    vote = session.get(Vote, int(vote_id))
    if vote is None or vote.labeler_id != caller.labeler.id:
        return None
    item = vote.item
    if item.is_gold:
        return {"choice": vote.choice, "gold": True, "gold_choice": item.gold_choice}
    return {
        "choice": vote.choice,
        "gold": False,
        "model_a": item.response_a.model.name,
        "model_b": item.response_b.model.name,
    }


@router.post("/campaigns/{slug}/vote")
async def vote(slug: str, request: Request) -> Response:
    studio = studio_of(request)
    form = await _form(request)
    with studio.transaction() as session:
        caller = _posted_by(session, request, form)
        campaign = labeling.member_campaign(session, caller.labeler, slug)
        given = validated(
            labeling.VoteInput,
            {
                "item_id": form.get("item_id"),
                "choice": form.get("choice"),
                "confidence": form.get("confidence") or None,
                "reasoning": form.get("reasoning"),
                "time_spent_ms": form.get("time_spent_ms") or None,
            },
        )
        recorded = labeling.vote(session, campaign, caller.labeler, given)
    return _redirect(f"/campaigns/{slug}/label?voted={recorded.vote_id}")


@router.post("/campaigns/{slug}/skip")
async def skip(slug: str, request: Request) -> Response:
    studio = studio_of(request)
    form = await _form(request)
    item_id = form.get("item_id", "")
    with studio.transaction() as session:
        caller = _posted_by(session, request, form)
        campaign = labeling.member_campaign(session, caller.labeler, slug)
        if not item_id.isdigit():
            raise Invalid("item_id: not an item id")
        labeling.skip(session, campaign, caller.labeler, int(item_id))
    return _redirect(f"/campaigns/{slug}/label?notice=skipped")


@router.post("/campaigns/{slug}/undo")
async def undo(slug: str, request: Request) -> Response:
    studio = studio_of(request)
    form = await _form(request)
    with studio.transaction() as session:
        caller = _posted_by(session, request, form)
        campaign = labeling.member_campaign(session, caller.labeler, slug)
        labeling.undo_last(session, campaign, caller.labeler)
    return _redirect(f"/campaigns/{slug}/label?notice=undone")


# ----------------------------------------------------------------------------- admin


@router.get("/admin")
async def admin_home(request: Request) -> Response:
    studio = studio_of(request)
    with studio.transaction() as session:
        caller = require_caller(session, request)
        require_admin(caller)
        found = labeling.labeler_campaigns(session, caller.labeler)
        rows = [(c, analysis.overview(session, c)) for c in found]
        experiments = list(session.scalars(select(Experiment).order_by(Experiment.created_at)))
        return render(request, "admin.html", caller=caller, rows=rows, experiments=experiments)


@router.get("/admin/experiments/{slug}")
async def admin_experiment(slug: str, request: Request) -> Response:
    from kubetune_studio import router as ab

    studio = studio_of(request)
    with studio.transaction() as session:
        caller = require_caller(session, request)
        require_admin(caller)
        found = ab.results(session, ab.get_experiment(session, slug))
        return render(request, "admin_experiment.html", caller=caller, results=found)


@router.get("/admin/campaigns/{slug}")
async def admin_campaign(slug: str, request: Request) -> Response:
    studio = studio_of(request)
    with studio.transaction() as session:
        caller = require_caller(session, request)
        require_admin(caller)
        campaign = campaigns.get_campaign(session, slug)
        report = campaign_report(session, campaign)
        plots = {
            voters: Markup(leaderboard_svg(board))
            for voters, board in (report["arena"] or {}).get("leaderboards", {}).items()
        }
        return render(
            request,
            "admin_campaign.html",
            caller=caller,
            report=report,
            plots=plots,
            notice=request.query_params.get("notice"),
        )


@router.post("/admin/campaigns/{slug}/snapshots")
async def admin_snapshot(slug: str, request: Request) -> Response:
    studio = studio_of(request)
    form = await _form(request)
    with studio.transaction() as session:
        caller = _posted_by(session, request, form)
        require_admin(caller)
        campaign = campaigns.get_campaign(session, slug)
        record = analysis.create_snapshot(session, campaign, studio.settings.snapshot_root)
    return _redirect(f"/admin/campaigns/{slug}?notice=snapshot+v{record.version}+written")


@router.post("/admin/campaigns/{slug}/state")
async def admin_state(slug: str, request: Request) -> Response:
    studio = studio_of(request)
    form = await _form(request)
    with studio.transaction() as session:
        caller = _posted_by(session, request, form)
        require_admin(caller)
        campaign = campaigns.get_campaign(session, slug)
        state = form.get("state", "")
        if state not in ("collecting", "closed"):
            raise Invalid("state: collecting or closed")
        campaigns.set_state(session, campaign, state)
    return _redirect(f"/admin/campaigns/{slug}?notice={state}")
