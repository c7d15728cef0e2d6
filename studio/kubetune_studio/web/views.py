"""A campaign's report as plain data, shared by the admin page and ``GET /api/.../report``."""

from __future__ import annotations

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
        "win_rates": [w.__dict__ for w in analysis.win_rates(session, campaign, assessed)],
        "snapshots": [
            {"version": s.version, "location": s.location, "pairs": s.manifest["counts"]["pairs"]}
            for s in analysis.snapshots(session, campaign)
        ],
    }
