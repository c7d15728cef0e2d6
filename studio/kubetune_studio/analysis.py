"""A campaign's figures from the store: quality (agreement, exclusions), win rates, snapshots.

Reads rows, hands them to the pure functions of :mod:`agreement`, :mod:`results` and
:mod:`snapshot`, and writes back what is kept (labelers' agreement rates, snapshot records).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from kubetune_studio import agreement, arena, results, snapshot
from kubetune_studio.errors import Invalid
from kubetune_studio.store.database import head_revision
from kubetune_studio.store.schema import (
    Campaign,
    CampaignMember,
    CampaignModel,
    Item,
    Labeler,
    Prompt,
    Response,
    Snapshot,
    Vote,
)


def thresholds(campaign: Campaign) -> agreement.Thresholds:
    return agreement.Thresholds(
        min_gold_agreement=campaign.min_gold_agreement,
        min_gold_votes=campaign.min_gold_votes,
        min_consensus_agreement=campaign.min_consensus_agreement,
        min_consensus_votes=campaign.min_consensus_votes,
        min_median_seconds=campaign.min_median_seconds,
        exclude_fast=campaign.exclude_fast,
    )


def votes(
    session: Session, campaign: Campaign, kind: str | None = "human"
) -> list[agreement.VoteRecord]:
    """The campaign's votes by labelers of this kind (``human``, ``judge``; None: all)."""
    query = (
        select(Vote.item_id, Vote.labeler_id, Vote.choice, Vote.time_spent_ms)
        .join(Item, Item.id == Vote.item_id)
        .where(Item.campaign_id == campaign.id)
        .order_by(Vote.id)
    )
    if kind is not None:
        query = query.join(Labeler, Labeler.id == Vote.labeler_id).where(Labeler.kind == kind)
    return [agreement.VoteRecord(*row) for row in session.execute(query)]


def gold_answers(session: Session, campaign: Campaign) -> dict[int, str]:
    rows = session.execute(
        select(Item.id, Item.gold_choice).where(
            Item.campaign_id == campaign.id, Item.is_gold.is_(True)
        )
    )
    return {item_id: choice for item_id, choice in rows}


def quality(session: Session, campaign: Campaign) -> agreement.Quality:
    """Assess the campaign's labelers; each one's consensus agreement is stored on them."""
    assessed = agreement.assess(
        votes(session, campaign), gold_answers(session, campaign), thresholds(campaign)
    )
    for labeler_id, q in assessed.labelers.items():
        if q.consensus_agreement is not None:
            session.get_one(Labeler, labeler_id).agreement_rate = q.consensus_agreement
    return assessed


def pairings(session: Session, campaign: Campaign) -> list[results.Pairing]:
    response_a, response_b = aliased(Response), aliased(Response)
    model_a, model_b = aliased(CampaignModel), aliased(CampaignModel)
    rows = session.execute(
        select(Item.id, model_a.name, model_b.name)
        .join(response_a, response_a.id == Item.response_a_id)
        .join(response_b, response_b.id == Item.response_b_id)
        .join(model_a, model_a.id == response_a.model_id)
        .join(model_b, model_b.id == response_b.model_id)
        .where(Item.campaign_id == campaign.id, Item.is_gold.is_(False))
    )
    return [results.Pairing(*row) for row in rows]


def win_rates(
    session: Session, campaign: Campaign, assessed: agreement.Quality
) -> list[results.WinRate]:
    found = pairings(session, campaign)
    every_vote = votes(session, campaign)
    return [
        results.win_rate(found, every_vote, m.name, campaign.baseline_model, assessed.excluded)
        for m in campaign.models
        if m.name != campaign.baseline_model
    ]


@dataclass(frozen=True)
class Overview:
    items: int
    gold_items: int
    votes: int
    items_at_overlap: int
    labelers: int


def overview(session: Session, campaign: Campaign) -> Overview:
    per_item = (
        select(Item.id, func.count(Vote.id).label("n"))
        .outerjoin(Vote, Vote.item_id == Item.id)
        .where(Item.campaign_id == campaign.id, Item.is_gold.is_(False))
        .group_by(Item.id)
        .subquery()
    )
    return Overview(
        items=session.scalar(select(func.count()).select_from(per_item)) or 0,
        gold_items=session.scalar(
            select(func.count())
            .select_from(Item)
            .where(Item.campaign_id == campaign.id, Item.is_gold.is_(True))
        )
        or 0,
        votes=session.scalar(
            select(func.count())
            .select_from(Vote)
            .join(Item, Item.id == Vote.item_id)
            .where(Item.campaign_id == campaign.id)
        )
        or 0,
        items_at_overlap=session.scalar(
            select(func.count())
            .select_from(per_item)
            .where(per_item.c.n >= campaign.labels_per_item)
        )
        or 0,
        labelers=session.scalar(
            select(func.count())
            .select_from(CampaignMember)
            .where(CampaignMember.campaign_id == campaign.id)
        )
        or 0,
    )


def pair_sources(session: Session, campaign: Campaign) -> list[snapshot.PairSource]:
    response_a, response_b = aliased(Response), aliased(Response)
    model_a, model_b = aliased(CampaignModel), aliased(CampaignModel)
    rows = session.execute(
        select(
            Item.id,
            Prompt.messages,
            response_a.text,
            response_b.text,
            model_a.name,
            model_b.name,
            Prompt.category,
        )
        .join(Prompt, Prompt.id == Item.prompt_id)
        .join(response_a, response_a.id == Item.response_a_id)
        .join(response_b, response_b.id == Item.response_b_id)
        .join(model_a, model_a.id == response_a.model_id)
        .join(model_b, model_b.id == response_b.model_id)
        .where(Item.campaign_id == campaign.id, Item.is_gold.is_(False))
        .order_by(Item.id)
    )
    return [snapshot.PairSource(*row) for row in rows]


def create_snapshot(session: Session, campaign: Campaign, root: str) -> Snapshot:
    """Builds, writes and records the campaign's next snapshot version."""
    assessed = quality(session, campaign)
    built = snapshot.build(
        pair_sources(session, campaign), votes(session, campaign), assessed.excluded
    )
    version = (
        session.scalar(
            select(func.max(Snapshot.version)).where(Snapshot.campaign_id == campaign.id)
        )
        or 0
    ) + 1
    data = snapshot.data_bytes(built.rows)
    document = snapshot.manifest(
        campaign=campaign.slug,
        version=version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        revision=head_revision(),
        data=data,
        built=built,
        quality=assessed,
        thresholds=thresholds(campaign),
    )
    where = snapshot.write(root, campaign.slug, version, data, document)
    record = Snapshot(
        campaign_id=campaign.id,
        version=version,
        location=where,
        manifest=document,
        data=data.decode(),
    )
    session.add(record)
    session.flush()
    return record


def get_snapshot(session: Session, campaign: Campaign, version: int | None) -> Snapshot | None:
    query = select(Snapshot).where(Snapshot.campaign_id == campaign.id)
    if version is None:
        query = query.order_by(Snapshot.version.desc()).limit(1)
    else:
        query = query.where(Snapshot.version == version)
    return session.scalar(query)


def snapshots(session: Session, campaign: Campaign) -> list[Snapshot]:
    return list(
        session.scalars(
            select(Snapshot)
            .where(Snapshot.campaign_id == campaign.id)
            .order_by(Snapshot.version.desc())
        )
    )


# --------------------------------------------------------------------------- arena

VOTERS = ("human", "judge", "all")


@dataclass(frozen=True)
class ArenaVotes:
    """The battles a leaderboard is fitted on, and the votes left out and why."""

    battles: list[arena.Battle]
    leaked_items: dict[int, str]
    """Items whose responses name a model (item id: the name): their votes are discarded."""
    discarded_leaked: int
    discarded_excluded: int
    """Votes of labelers the quality assessment excluded."""


def leaked_items(session: Session, campaign: Campaign) -> dict[int, str]:
    """Regular items where either response names one of the campaign's models."""
    names = [m.name for m in campaign.models] + [
        m.served_name for m in campaign.models if m.served_name
    ]
    response_a, response_b = aliased(Response), aliased(Response)
    rows = session.execute(
        select(Item.id, response_a.text, response_b.text)
        .join(response_a, response_a.id == Item.response_a_id)
        .join(response_b, response_b.id == Item.response_b_id)
        .where(Item.campaign_id == campaign.id, Item.is_gold.is_(False))
    )
    found = {}
    for item_id, text_a, text_b in rows:
        name = arena.leaked_identity(text_a, names) or arena.leaked_identity(text_b, names)
        if name is not None:
            found[item_id] = name
    return found


def arena_votes(
    session: Session, campaign: Campaign, voters: str, assessed: agreement.Quality
) -> ArenaVotes:
    if voters not in VOTERS:
        raise Invalid(f"voters: '{voters}' is not one of {', '.join(VOTERS)}")
    sides = {p.item_id: p for p in pairings(session, campaign)}
    leaked = leaked_items(session, campaign)
    battles: list[arena.Battle] = []
    discarded_leaked = discarded_excluded = 0
    for vote in votes(session, campaign, None if voters == "all" else voters):
        pairing = sides.get(vote.item_id)
        if pairing is None:  # a gold item
            continue
        if vote.item_id in leaked:
            discarded_leaked += 1
            continue
        if vote.labeler_id in assessed.excluded:
            discarded_excluded += 1
            continue
        battles.append(arena.battle_from_vote(pairing.model_a, pairing.model_b, vote.choice))
    return ArenaVotes(battles, leaked, discarded_leaked, discarded_excluded)


def arena_leaderboard(
    session: Session,
    campaign: Campaign,
    voters: str = "human",
    *,
    rounds: int = arena.DEFAULT_ROUNDS,
) -> tuple[arena.Leaderboard, ArenaVotes]:
    """The campaign's Bradley–Terry leaderboard from the votes of ``voters`` (excluded labelers
    and votes on leaked items left out), seeded by the campaign's seed."""
    found = arena_votes(session, campaign, voters, quality(session, campaign))
    board = arena.leaderboard(
        found.battles, [m.name for m in campaign.models], rounds=rounds, seed=campaign.seed
    )
    return board, found
