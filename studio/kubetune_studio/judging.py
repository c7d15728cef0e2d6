"""An LLM judge votes on a campaign's items beside the humans, and how far to trust it.

The judge is the trainer's pairwise judge (:mod:`kubetune_trainer.evaluation.judge`, torch-free):
its prompt, its reply parsing and its ``openai`` client with retries. Every item is asked twice,
with the responses in both positions; the two verdicts combine into one vote, and when they
disagree (a judge swayed by position) the vote is a tie. A reply that cannot be read, or a
request that fails, casts no vote and is counted.

Judge–human agreement compares the judge's vote on an item with each human vote on it ("both
bad" counts as a tie on either side): an item's agreement is the share of its human votes that
match the judge, the overall figure is the mean over items with a bootstrap 95% interval that
resamples items (votes on one item are not independent), and the same per prompt category.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kubetune_studio import analysis
from kubetune_studio.agreement import VoteRecord
from kubetune_studio.errors import Invalid
from kubetune_studio.security import hash_password
from kubetune_studio.store.schema import Item, Labeler, Prompt, Vote
from kubetune_trainer.evaluation.statistics import bootstrap_mean

if TYPE_CHECKING:
    from kubetune_trainer.evaluation.judge import ChatClient

SAME_AS_TIE = {"a": "a", "b": "b", "tie": "tie", "both_bad": "tie"}


def combine_verdicts(shown_in_order: str | None, shown_swapped: str | None) -> str | None:
    """One vote from the judge's two verdicts on an item: ``shown_in_order`` with the item's A
    shown as A, ``shown_swapped`` with it shown as B. Verdicts are ``A``, ``B`` or ``tie``;
    None when either verdict is missing. Disagreement between the orders is a tie."""
    if shown_in_order is None or shown_swapped is None:
        return None
    first = {"A": "a", "B": "b", "tie": "tie"}[shown_in_order]
    second = {"A": "b", "B": "a", "tie": "tie"}[shown_swapped]
    return first if first == second else "tie"


@dataclass
class JudgeRun:
    judge: str
    asked: int = 0
    voted: int = 0
    position_ties: int = 0
    """Votes that are ties because the two orders disagreed."""
    unscored: int = 0
    errors: list[str] = field(default_factory=list)


def judge_labeler(session: Session, model: str) -> Labeler:
    """The labeler that stands for a judge model (kind ``judge``, no usable password)."""
    email = f"judge+{''.join(c if c.isalnum() else '-' for c in model.lower())[:200]}@judge.local"
    labeler = session.scalar(select(Labeler).where(Labeler.email == email))
    if labeler is None:
        labeler = Labeler(
            email=email,
            name=f"judge {model}"[:200],
            password_hash=hash_password(secrets.token_urlsafe(32)),
            kind="judge",
        )
        session.add(labeler)
        session.flush()
    return labeler


def judge_campaign(
    session: Session,
    campaign_slug: str,
    client: ChatClient,
    *,
    parallel: int = 4,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> JudgeRun:
    """The judge's votes on the campaign's regular items it has not voted on yet."""
    # The trainer's judge (torch-free, but it brings the trainer's plan schema), only to judge.
    from kubetune_studio.campaigns import get_campaign
    from kubetune_trainer.evaluation.judge import (
        MalformedReply,
        RequestFailed,
        pairwise_messages,
        parse_verdict,
    )

    if parallel < 1:
        raise Invalid(f"parallel: at least 1 (got {parallel})")
    campaign = get_campaign(session, campaign_slug)
    labeler = judge_labeler(session, client.model)
    done = select(Vote.item_id).where(Vote.labeler_id == labeler.id)
    items = list(
        session.scalars(
            select(Item)
            .where(
                Item.campaign_id == campaign.id,
                Item.is_gold.is_(False),
                Item.id.not_in(done),
            )
            .order_by(Item.id)
            .limit(limit)
        )
    )
    conversations = [
        (item.prompt.messages, item.response_a.text, item.response_b.text) for item in items
    ]

    def ask(conversation: tuple[Any, str, str]) -> tuple[str | None, str | None, str | None]:
        prompt, first, second = conversation
        verdicts: list[str | None] = []
        for a, b in ((first, second), (second, first)):
            try:
                verdicts.append(parse_verdict(client.complete(pairwise_messages(prompt, a, b))))
            except (RequestFailed, MalformedReply) as err:
                return None, None, str(err)
        if progress is not None:
            progress(1)
        return verdicts[0], verdicts[1], None

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        answers = list(pool.map(ask, conversations))
    run = JudgeRun(judge=labeler.email, asked=len(items))
    for item, (in_order, swapped, error) in zip(items, answers, strict=True):
        choice = combine_verdicts(in_order, swapped)
        if choice is None:
            run.unscored += 1
            if len(run.errors) < 5:
                run.errors.append(f"item {item.id}: {error or 'no readable verdict'}")
            continue
        if choice == "tie" and in_order != "tie" and swapped != "tie":
            run.position_ties += 1
        session.add(Vote(item_id=item.id, labeler_id=labeler.id, choice=choice))
        run.voted += 1
    labeler.label_count += run.voted
    session.flush()
    return run


@dataclass(frozen=True)
class Agreement:
    value: float | None
    low: float | None
    high: float | None
    items: int
    comparisons: int


def judge_human_agreement(
    judge_votes: Sequence[VoteRecord],
    human_votes: Sequence[VoteRecord],
    *,
    excluded: Collection[int] = (),
    seed: int = 0,
) -> Agreement:
    """The share of human votes that match the judge's vote on the same item, with a 95%
    interval from resampling items. With several judges, each judge vote is compared."""
    judged: dict[int, list[str]] = defaultdict(list)
    for vote in judge_votes:
        judged[vote.item_id].append(SAME_AS_TIE[vote.choice])
    per_item: dict[int, list[float]] = defaultdict(list)
    for vote in human_votes:
        if vote.labeler_id in excluded or vote.item_id not in judged:
            continue
        for verdict in judged[vote.item_id]:
            per_item[vote.item_id].append(float(SAME_AS_TIE[vote.choice] == verdict))
    scores = [sum(v) / len(v) for _, v in sorted(per_item.items())]
    comparisons = sum(len(v) for v in per_item.values())
    if not scores:
        return Agreement(None, None, None, 0, 0)
    estimate = bootstrap_mean(scores, seed=seed)
    return Agreement(estimate.value, estimate.low, estimate.high, len(scores), comparisons)


def agreement_by_category(
    judge_votes: Sequence[VoteRecord],
    human_votes: Sequence[VoteRecord],
    categories: Mapping[int, str | None],
    *,
    excluded: Collection[int] = (),
    seed: int = 0,
) -> dict[str, Agreement]:
    """:func:`judge_human_agreement` per prompt category (items without one: ``(none)``)."""
    names = sorted({categories.get(v.item_id) or "(none)" for v in judge_votes})
    return {
        name: judge_human_agreement(
            [v for v in judge_votes if (categories.get(v.item_id) or "(none)") == name],
            human_votes,
            excluded=excluded,
            seed=seed,
        )
        for name in names
    }


def campaign_agreement(session: Session, campaign) -> dict[str, Any] | None:
    """Judge–human agreement of a campaign, overall and per category (None: no judge votes)."""
    judge_votes = analysis.votes(session, campaign, "judge")
    if not judge_votes:
        return None
    human_votes = analysis.votes(session, campaign, "human")
    excluded = analysis.quality(session, campaign).excluded
    categories = dict(
        session.execute(
            select(Item.id, Prompt.category)
            .join(Prompt, Prompt.id == Item.prompt_id)
            .where(Item.campaign_id == campaign.id)
        ).all()
    )
    overall = judge_human_agreement(judge_votes, human_votes, excluded=excluded, seed=campaign.seed)
    per_category = agreement_by_category(
        judge_votes, human_votes, categories, excluded=excluded, seed=campaign.seed
    )
    return {
        "overall": overall.__dict__,
        "by_category": {name: found.__dict__ for name, found in per_category.items()},
    }
