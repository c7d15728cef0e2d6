"""What a labeler does: get the next item, vote, skip, undo the last vote.

A labeler holds at most one open assignment per campaign: asking for the next item again returns
the same one, and a vote or skip must name exactly that item, so an item id changed in a form
or a request (another item, another campaign's, a made-up one) is refused. Model names are
never part of what a labeler is shown before voting; the vote's answer reveals them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kubetune_studio import queue
from kubetune_studio.errors import Conflict, Forbidden, NotFound
from kubetune_studio.store.schema import (
    CHOICES,
    Assignment,
    Campaign,
    CampaignMember,
    Item,
    Labeler,
    Skip,
    Vote,
    now,
)

MAX_REASONING = 2000
MAX_TIME_SPENT_MS = 24 * 3600 * 1000


class VoteInput(BaseModel):
    """A vote as a labeler sends it (form fields or JSON)."""

    item_id: int
    choice: str
    confidence: int | None = Field(default=None, ge=1, le=5)
    reasoning: str | None = None
    time_spent_ms: int | None = Field(default=None, ge=0, le=MAX_TIME_SPENT_MS)

    @field_validator("choice")
    @classmethod
    def _choice(cls, value: str) -> str:
        if value not in CHOICES:
            raise ValueError(f"one of {', '.join(CHOICES)}")
        return value

    @field_validator("reasoning")
    @classmethod
    def _reasoning(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if len(value) > MAX_REASONING:
            raise ValueError(f"at most {MAX_REASONING} characters (got {len(value)})")
        return value or None


@dataclass(frozen=True)
class Shown:
    """An item as the labeler sees it: no model names."""

    item_id: int
    prompt: list[dict[str, str]]
    response_a: str
    response_b: str
    category: str | None


@dataclass(frozen=True)
class Progress:
    voted: int
    skipped: int
    remaining: int
    """Items this labeler could still be handed (an upper bound: others fill items too)."""


@dataclass(frozen=True)
class Recorded:
    vote_id: int
    item_id: int
    choice: str
    model_a: str | None
    model_b: str | None
    """Revealed once the vote is stored (None for a gold item)."""


def member_campaign(session: Session, labeler: Labeler, slug: str) -> Campaign:
    """The campaign, when the labeler belongs to it (admins see every campaign)."""
    campaign = session.scalar(select(Campaign).where(Campaign.slug == slug))
    if campaign is None:
        raise NotFound(f"campaign '{slug}': no such campaign")
    if not labeler.is_admin and not is_member(session, campaign, labeler):
        raise Forbidden(f"campaign '{slug}': you are not a labeler of this campaign")
    return campaign


def is_member(session: Session, campaign: Campaign, labeler: Labeler) -> bool:
    return (
        session.get(CampaignMember, {"campaign_id": campaign.id, "labeler_id": labeler.id})
        is not None
    )


def labeler_campaigns(session: Session, labeler: Labeler) -> list[Campaign]:
    query = select(Campaign).order_by(Campaign.created_at)
    if not labeler.is_admin:
        query = query.join(CampaignMember, CampaignMember.campaign_id == Campaign.id).where(
            CampaignMember.labeler_id == labeler.id
        )
    return list(session.scalars(query))


def _require_member(session: Session, campaign: Campaign, labeler: Labeler) -> None:
    if not is_member(session, campaign, labeler):
        raise Forbidden(f"campaign '{campaign.slug}': you are not a labeler of this campaign")


def _require_collecting(campaign: Campaign) -> None:
    if campaign.state != "collecting":
        raise Conflict(f"campaign '{campaign.slug}' is {campaign.state}, not collecting votes")


def open_assignment(session: Session, campaign: Campaign, labeler: Labeler) -> Assignment | None:
    return session.scalar(
        select(Assignment)
        .join(Item, Item.id == Assignment.item_id)
        .where(Assignment.labeler_id == labeler.id, Item.campaign_id == campaign.id)
    )


def _candidates(
    session: Session, campaign: Campaign, labeler: Labeler, lease_start: datetime
) -> list[queue.Candidate]:
    done = select(Vote.item_id).where(Vote.labeler_id == labeler.id)
    skipped = select(Skip.item_id).where(Skip.labeler_id == labeler.id)
    # The overlap is of people: a judge's votes (kubetune-studio judge) fill no item.
    votes = (
        select(Vote.item_id, func.count().label("n"))
        .join(Item, Item.id == Vote.item_id)
        .join(Labeler, Labeler.id == Vote.labeler_id)
        .where(Item.campaign_id == campaign.id, Labeler.kind == "human")
        .group_by(Vote.item_id)
        .subquery()
    )
    held = (
        select(Assignment.item_id, func.count().label("n"))
        .join(Item, Item.id == Assignment.item_id)
        .where(
            Item.campaign_id == campaign.id,
            Assignment.assigned_at >= lease_start,
            Assignment.labeler_id != labeler.id,
        )
        .group_by(Assignment.item_id)
        .subquery()
    )
    rows = session.execute(
        select(
            Item.id,
            Item.is_gold,
            func.coalesce(votes.c.n, 0) + func.coalesce(held.c.n, 0),
        )
        .outerjoin(votes, votes.c.item_id == Item.id)
        .outerjoin(held, held.c.item_id == Item.id)
        .where(Item.campaign_id == campaign.id, Item.id.not_in(done), Item.id.not_in(skipped))
    )
    return [queue.Candidate(item_id, bool(gold), int(filled)) for item_id, gold, filled in rows]


def _progress_counts(session: Session, campaign: Campaign, labeler: Labeler) -> tuple[int, int]:
    rows = session.execute(
        select(Item.is_gold, func.count())
        .join(Vote, Vote.item_id == Item.id)
        .where(Item.campaign_id == campaign.id, Vote.labeler_id == labeler.id)
        .group_by(Item.is_gold)
    )
    counts = {bool(gold): n for gold, n in rows}
    return counts.get(False, 0), counts.get(True, 0)


def progress(session: Session, campaign: Campaign, labeler: Labeler, lease: timedelta) -> Progress:
    regular, gold = _progress_counts(session, campaign, labeler)
    candidates = _candidates(session, campaign, labeler, now() - lease)
    return _progress(session, campaign, labeler, regular + gold, candidates)


def _progress(
    session: Session,
    campaign: Campaign,
    labeler: Labeler,
    voted: int,
    candidates: list[queue.Candidate],
) -> Progress:
    skipped = session.scalar(
        select(func.count())
        .select_from(Skip)
        .join(Item, Item.id == Skip.item_id)
        .where(Item.campaign_id == campaign.id, Skip.labeler_id == labeler.id)
    )
    remaining = sum(1 for c in candidates if c.is_gold or c.filled < campaign.labels_per_item)
    return Progress(voted=voted, skipped=skipped or 0, remaining=remaining)


def next_item(
    session: Session, campaign: Campaign, labeler: Labeler, lease: timedelta
) -> tuple[Shown | None, Progress]:
    """The labeler's open item, or a newly assigned one (None when nothing is left), and the
    labeler's progress."""
    _require_member(session, campaign, labeler)
    _require_collecting(campaign)
    regular, gold = _progress_counts(session, campaign, labeler)
    candidates = _candidates(session, campaign, labeler, now() - lease)
    done = _progress(session, campaign, labeler, regular + gold, candidates)
    _require_under_cap(session, campaign, labeler)
    current = open_assignment(session, campaign, labeler)
    if current is not None:
        return shown(session.get_one(Item, current.item_id)), done
    chosen = queue.next_item(
        candidates,
        queue.LabelerProgress(regular, gold),
        overlap=campaign.labels_per_item,
        gold_every=campaign.gold_every,
        seed=campaign.seed,
        labeler_id=labeler.id,
        prefer=_drawn_pair_items(session, campaign, labeler, regular + gold),
    )
    if chosen is None:
        return None, done
    session.add(Assignment(item_id=chosen, labeler_id=labeler.id))
    session.flush()
    return shown(session.get_one(Item, chosen)), done


def _drawn_pair_items(
    session: Session, campaign: Campaign, labeler: Labeler, votes_cast: int
) -> set[int]:
    """For an arena campaign sampling adaptively, the items of the pair of models drawn for
    this labeler's next vote (weighted towards uncertain pairs); otherwise none."""
    if campaign.pairing != "all-pairs" or campaign.pair_sampling != "adaptive":
        return set()
    from kubetune_studio import analysis, arena

    sides = {p.item_id: p for p in analysis.pairings(session, campaign)}
    battles = [
        arena.battle_from_vote(sides[v.item_id].model_a, sides[v.item_id].model_b, v.choice)
        for v in analysis.votes(session, campaign, None)
        if v.item_id in sides
    ]
    names = [m.name for m in campaign.models]
    weights = arena.pair_weights(names, battles, "adaptive")
    pair = arena.draw_pair(weights, queue.draw_number(campaign.seed, labeler.id, votes_cast))
    return {p.item_id for p in sides.values() if {p.model_a, p.model_b} == set(pair)}


def shown(item: Item) -> Shown:
    return Shown(
        item_id=item.id,
        prompt=item.prompt.messages,
        response_a=item.response_a.text,
        response_b=item.response_b.text,
        category=item.prompt.category,
    )


def _assigned_item(
    session: Session, campaign: Campaign, labeler: Labeler, item_id: int
) -> tuple[Item, Assignment]:
    _require_member(session, campaign, labeler)
    _require_collecting(campaign)
    item = session.get(Item, item_id)
    if item is None or item.campaign_id != campaign.id:
        raise NotFound(f"item {item_id}: no such item in campaign '{campaign.slug}'")
    if session.scalar(
        select(Vote.id).where(Vote.item_id == item_id, Vote.labeler_id == labeler.id)
    ):
        raise Conflict(f"item {item_id}: you have already voted on this item")
    assignment = session.get(Assignment, {"item_id": item_id, "labeler_id": labeler.id})
    if assignment is None:
        raise Forbidden(
            f"item {item_id}: not the item you were given; reload to get your current item"
        )
    return item, assignment


def votes_today(session: Session, campaign: Campaign, labeler: Labeler) -> int:
    """The labeler's votes in this campaign since midnight UTC."""
    midnight = now().replace(hour=0, minute=0, second=0, microsecond=0)
    return (
        session.scalar(
            select(func.count())
            .select_from(Vote)
            .join(Item, Item.id == Vote.item_id)
            .where(
                Item.campaign_id == campaign.id,
                Vote.labeler_id == labeler.id,
                Vote.created_at >= midnight,
            )
        )
        or 0
    )


def _require_under_cap(session: Session, campaign: Campaign, labeler: Labeler) -> None:
    cap = campaign.daily_vote_cap
    if cap is not None and votes_today(session, campaign, labeler) >= cap:
        raise Conflict(
            f"campaign '{campaign.slug}': daily_vote_cap: you have cast today's {cap} votes; "
            "come back tomorrow (UTC)"
        )


def vote(session: Session, campaign: Campaign, labeler: Labeler, given: VoteInput) -> Recorded:
    item, assignment = _assigned_item(session, campaign, labeler, given.item_id)
    _require_under_cap(session, campaign, labeler)
    elapsed_ms = int((now() - _aware(assignment.assigned_at)).total_seconds() * 1000)
    record = Vote(
        item_id=item.id,
        labeler_id=labeler.id,
        choice=given.choice,
        confidence=given.confidence,
        reasoning=given.reasoning,
        time_spent_ms=given.time_spent_ms if given.time_spent_ms is not None else elapsed_ms,
    )
    session.add(record)
    session.delete(assignment)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent second vote lost the race
        raise Conflict(f"item {item.id}: you have already voted on this item") from exc
    labeler.label_count += 1
    return Recorded(
        vote_id=record.id,
        item_id=item.id,
        choice=record.choice,
        model_a=None if item.is_gold else item.response_a.model.name,
        model_b=None if item.is_gold else item.response_b.model.name,
    )


def skip(session: Session, campaign: Campaign, labeler: Labeler, item_id: int) -> None:
    _, assignment = _assigned_item(session, campaign, labeler, item_id)
    session.delete(assignment)
    session.add(Skip(item_id=item_id, labeler_id=labeler.id))
    session.flush()


def undo_last(session: Session, campaign: Campaign, labeler: Labeler) -> int:
    """Removes the labeler's latest vote in the campaign and hands that item back to them; its
    id. The item given meanwhile (if any) goes back to the pool."""
    _require_member(session, campaign, labeler)
    _require_collecting(campaign)
    last = session.scalar(
        select(Vote)
        .join(Item, Item.id == Vote.item_id)
        .where(Item.campaign_id == campaign.id, Vote.labeler_id == labeler.id)
        .order_by(Vote.created_at.desc(), Vote.id.desc())
        .limit(1)
    )
    if last is None:
        raise Conflict(f"campaign '{campaign.slug}': you have no vote to undo")
    item_id = last.item_id
    session.execute(
        delete(Assignment).where(
            Assignment.labeler_id == labeler.id,
            Assignment.item_id.in_(select(Item.id).where(Item.campaign_id == campaign.id)),
        )
    )
    session.delete(last)
    session.flush()
    session.add(Assignment(item_id=item_id, labeler_id=labeler.id))
    labeler.label_count = max(0, labeler.label_count - 1)
    session.flush()
    return item_id


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
