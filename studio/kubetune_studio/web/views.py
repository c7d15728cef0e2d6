"""A campaign's report as plain data, shared by the admin page and ``GET /api/.../report``."""

from __future__ import annotations

from html import escape
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kubetune_studio import analysis
from kubetune_studio.store.schema import Campaign, Labeler


def campaign_report(session: Session, campaign: Campaign) -> dict[str, Any]:
    assessed = analysis.quality(session, campaign)
    emails = dict(
        session.execute(
            select(Labeler.id, Labeler.email).where(Labeler.id.in_(list(assessed.labelers)))
        ).all()
    )
    seen = analysis.overview(session, campaign)
    return {
        "campaign": {
            "slug": campaign.slug,
            "title": campaign.title,
            "state": campaign.state,
            "baseline": campaign.baseline_model,
            "models": [m.name for m in campaign.models],
            "labels_per_item": campaign.labels_per_item,
        },
        "overview": seen.__dict__,
        "agreement": {
            "krippendorff_alpha": assessed.alpha,
            "krippendorff_alpha_before_exclusions": assessed.alpha_all,
            "mean_cohen_kappa": assessed.mean_kappa,
            "cohen_kappa_pairs": [
                {"labelers": [emails[a], emails[b]], "kappa": kappa}
                for (a, b), kappa in sorted(assessed.kappas.items())
            ],
        },
        "labelers": [
            {
                "email": emails[q.labeler_id],
                "votes": q.votes,
                "gold_votes": q.gold_votes,
                "gold_agreement": q.gold_agreement,
                "consensus_agreement": q.consensus_agreement,
                "consensus_comparisons": q.consensus_comparisons,
                "median_seconds": q.median_seconds,
                "excluded": q.excluded,
                "reasons": q.reasons,
            }
            for q in sorted(assessed.labelers.values(), key=lambda q: emails[q.labeler_id])
        ],
        "arena": arena_report(session, campaign) if campaign.pairing == "all-pairs" else None,
        "win_rates": [w.__dict__ for w in analysis.win_rates(session, campaign, assessed)],
        "snapshots": [
            {"version": s.version, "location": s.location, "pairs": s.manifest["counts"]["pairs"]}
            for s in analysis.snapshots(session, campaign)
        ],
    }


def arena_report(session: Session, campaign: Campaign) -> dict[str, Any]:
    """The leaderboard from human votes, and from the judge's and both when a judge voted."""
    boards: dict[str, Any] = {}
    judged = bool(analysis.votes(session, campaign, "judge"))
    for voters in analysis.VOTERS if judged else ("human",):
        board, found = analysis.arena_leaderboard(session, campaign, voters)
        boards[voters] = board.to_json() | {
            "discarded_leaked": found.discarded_leaked,
            "discarded_excluded": found.discarded_excluded,
        }
    from kubetune_studio.judging import campaign_agreement

    return {
        "judge_agreement": campaign_agreement(session, campaign),
        "sampling": campaign.pair_sampling,
        "daily_vote_cap": campaign.daily_vote_cap,
        "leaked_items": [
            {"item": item, "names": name}
            for item, name in sorted(analysis.leaked_items(session, campaign).items())
        ],
        "leaderboards": boards,
    }


def leaderboard_svg(board: dict[str, Any], width: int = 560) -> str:
    """The ratings with their intervals as an inline SVG (one row per model, best on top)."""
    rows = board["ratings"]
    if not rows:
        return ""
    low = min(r["low"] for r in rows)
    high = max(r["high"] for r in rows)
    span = max(high - low, 1.0)
    left, right, row_height = 140, 20, 26
    height = row_height * len(rows) + 30

    def x(value: float) -> float:
        return left + (value - low) / span * (width - left - right)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="leaderboard-plot" width="{width}" '
        f'height="{height}" role="img" aria-label="ratings with 95% intervals">'
    ]
    for n, r in enumerate(rows):
        y = 15 + n * row_height
        parts.append(
            f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" font-size="12">'
            f"{escape(r['model'])}</text>"
            f'<line x1="{x(r["low"]):.1f}" x2="{x(r["high"]):.1f}" y1="{y}" y2="{y}" '
            'stroke="#4a6fa5" stroke-width="3"/>'
            f'<circle cx="{x(r["rating"]):.1f}" cy="{y}" r="4.5" fill="#1d3557"/>'
        )
    axis_y = height - 8
    parts.append(
        f'<text x="{left}" y="{axis_y}" font-size="11">{low:.0f}</text>'
        f'<text x="{width - right}" y="{axis_y}" font-size="11" text-anchor="end">{high:.0f}'
        "</text></svg>"
    )
    return "".join(parts)
