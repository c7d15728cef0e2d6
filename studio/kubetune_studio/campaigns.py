"""Admin operations on the store: labelers, campaigns, their prompts, responses, items, members.

Each function takes an open session inside a transaction (the caller commits); refusals raise
:mod:`kubetune_studio.errors` with a message that names the field.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kubetune_studio.errors import Conflict, Invalid, NotFound
from kubetune_studio.importer import GoldRow, PromptRow, ResponseRow, prompt_key
from kubetune_studio.security import hash_password
from kubetune_studio.store.schema import (
    PAIR_SAMPLINGS,
    PAIRINGS,
    Campaign,
    CampaignMember,
    CampaignModel,
    Item,
    Labeler,
    Prompt,
    Response,
)

SLUG = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class ModelSpec(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    endpoint: str | None = Field(default=None, max_length=500)
    """Base URL of an OpenAI-compatible API, e.g. ``http://host:8000/v1``."""
    served_name: str | None = Field(default=None, max_length=200)


class CampaignSpec(BaseModel):
    """What an admin gives to create a campaign (the JSON body of ``POST /api/campaigns``)."""

    slug: str
    title: str = Field(default="", max_length=200)
    models: list[ModelSpec] = Field(min_length=2)
    baseline: str
    pairing: str = "baseline"
    prompt_set: str = Field(default="", max_length=500)
    labels_per_item: int = Field(default=3, ge=1, le=50)
    gold_every: int = Field(default=10, ge=0, le=1000)
    min_gold_agreement: float = Field(default=0.7, ge=0, le=1)
    min_gold_votes: int = Field(default=3, ge=1)
    min_consensus_agreement: float = Field(default=0.5, ge=0, le=1)
    min_consensus_votes: int = Field(default=10, ge=1)
    min_median_seconds: float = Field(default=2.0, ge=0)
    exclude_fast: bool = False
    seed: int = 0
    pair_sampling: str = "uniform"
    """Arena (all-pairs) campaigns: ``uniform`` or ``adaptive`` (towards uncertain pairs)."""
    daily_vote_cap: int | None = Field(default=None, ge=1)

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("lower-case letters, digits and '-', at most 63 characters")
        return value

    @field_validator("pairing")
    @classmethod
    def _pairing(cls, value: str) -> str:
        if value not in PAIRINGS:
            raise ValueError(f"one of {', '.join(PAIRINGS)}")
        return value

    @field_validator("pair_sampling")
    @classmethod
    def _pair_sampling(cls, value: str) -> str:
        if value not in PAIR_SAMPLINGS:
            raise ValueError(f"one of {', '.join(PAIR_SAMPLINGS)}")
        return value

    @model_validator(mode="after")
    def _baseline_is_a_model(self) -> CampaignSpec:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("models: names must be unique")
        if self.baseline not in names:
            raise ValueError(f"baseline: '{self.baseline}' is not one of the models {names}")
        return self


def get_campaign(session: Session, slug: str) -> Campaign:
    campaign = session.scalar(select(Campaign).where(Campaign.slug == slug))
    if campaign is None:
        raise NotFound(f"campaign '{slug}': no such campaign")
    return campaign


def find_labeler(session: Session, email: str) -> Labeler:
    labeler = session.scalar(select(Labeler).where(Labeler.email == email.strip().lower()))
    if labeler is None:
        raise NotFound(f"email: no labeler '{email}'")
    return labeler


def create_labeler(
    session: Session, email: str, password: str, *, name: str = "", is_admin: bool = False
) -> Labeler:
    email = email.strip().lower()
    if not EMAIL.match(email) or len(email) > 254:
        raise Invalid(f"email: '{email}' is not an email address")
    if len(password) < 8:
        raise Invalid("password: at least 8 characters")
    if session.scalar(select(Labeler).where(Labeler.email == email)) is not None:
        raise Conflict(f"email: a labeler '{email}' exists already")
    labeler = Labeler(
        email=email, name=name[:200], password_hash=hash_password(password), is_admin=is_admin
    )
    session.add(labeler)
    session.flush()
    return labeler


def ensure_admin(session: Session, email: str, password: str) -> Labeler:
    """The admin account with this email, created or given this password."""
    existing = session.scalar(select(Labeler).where(Labeler.email == email.strip().lower()))
    if existing is None:
        return create_labeler(session, email, password, name="admin", is_admin=True)
    existing.password_hash = hash_password(password)
    existing.is_admin = True
    existing.active = True
    return existing


def create_campaign(session: Session, spec: CampaignSpec) -> Campaign:
    if session.scalar(select(Campaign).where(Campaign.slug == spec.slug)) is not None:
        raise Conflict(f"slug: a campaign '{spec.slug}' exists already")
    campaign = Campaign(
        slug=spec.slug,
        title=spec.title,
        baseline_model=spec.baseline,
        pairing=spec.pairing,
        prompt_set=spec.prompt_set,
        labels_per_item=spec.labels_per_item,
        gold_every=spec.gold_every,
        min_gold_agreement=spec.min_gold_agreement,
        min_gold_votes=spec.min_gold_votes,
        min_consensus_agreement=spec.min_consensus_agreement,
        min_consensus_votes=spec.min_consensus_votes,
        min_median_seconds=spec.min_median_seconds,
        exclude_fast=spec.exclude_fast,
        seed=spec.seed,
        pair_sampling=spec.pair_sampling,
        daily_vote_cap=spec.daily_vote_cap,
    )
    session.add(campaign)
    session.flush()
    for model in spec.models:
        session.add(
            CampaignModel(
                campaign_id=campaign.id,
                name=model.name,
                endpoint=model.endpoint,
                served_name=model.served_name,
            )
        )
    session.flush()
    return campaign


def add_members(session: Session, campaign: Campaign, emails: Sequence[str]) -> list[Labeler]:
    wanted = [e.strip().lower() for e in emails]
    found = {
        lab.email: lab for lab in session.scalars(select(Labeler).where(Labeler.email.in_(wanted)))
    }
    missing = [e for e in wanted if e not in found]
    if missing:
        raise NotFound(f"emails: no labeler {', '.join(missing)}")
    members = set(
        session.scalars(
            select(CampaignMember.labeler_id).where(CampaignMember.campaign_id == campaign.id)
        )
    )
    for labeler in found.values():
        if labeler.id not in members:
            session.add(CampaignMember(campaign_id=campaign.id, labeler_id=labeler.id))
    session.flush()
    return list(found.values())


def _prompt(session: Session, campaign: Campaign, messages, category: str | None) -> Prompt:
    key = prompt_key(messages)
    prompt = session.scalar(
        select(Prompt).where(Prompt.campaign_id == campaign.id, Prompt.key == key)
    )
    if prompt is None:
        prompt = Prompt(campaign_id=campaign.id, key=key, messages=messages, category=category)
        session.add(prompt)
        session.flush()
    elif category and not prompt.category:
        prompt.category = category
    return prompt


def add_prompts(session: Session, campaign: Campaign, rows: Sequence[PromptRow]) -> int:
    """Adds the prompts not there yet; how many were new."""
    before = _count(session, Prompt, campaign)
    for row in rows:
        _prompt(session, campaign, row.prompt, row.category)
    return _count(session, Prompt, campaign) - before


@dataclass(frozen=True)
class ImportOutcome:
    added: int
    replaced: int
    prompts: int


def import_responses(
    session: Session, campaign: Campaign, rows: Sequence[ResponseRow], origin: str
) -> ImportOutcome:
    """Stores each row's response (replacing an earlier one for the same prompt and model).

    Refused whole when a row names a model the campaign does not compare."""
    models = {m.name: m for m in campaign.models}
    unknown = sorted({r.model for r in rows} - models.keys())
    if unknown:
        raise Invalid(
            f"{origin}: field 'model': {', '.join(unknown)} not in campaign "
            f"'{campaign.slug}' (models: {', '.join(models)})"
        )
    prompts_before = _count(session, Prompt, campaign)
    added = replaced = 0
    for row in rows:
        prompt = _prompt(session, campaign, row.prompt, row.category)
        model = models[row.model]
        existing = session.scalar(
            select(Response).where(Response.prompt_id == prompt.id, Response.model_id == model.id)
        )
        if existing is None:
            session.add(
                Response(prompt_id=prompt.id, model_id=model.id, text=row.response, origin=origin)
            )
            added += 1
        else:
            existing.text, existing.origin = row.response, origin
            replaced += 1
    session.flush()
    return ImportOutcome(added, replaced, _count(session, Prompt, campaign) - prompts_before)


def add_gold(session: Session, campaign: Campaign, rows: Sequence[GoldRow], origin: str) -> int:
    for row in rows:
        prompt = _prompt(session, campaign, row.prompt, row.category)
        first = Response(prompt_id=prompt.id, model_id=None, text=row.response_a, origin=origin)
        second = Response(prompt_id=prompt.id, model_id=None, text=row.response_b, origin=origin)
        session.add_all([first, second])
        session.flush()
        session.add(
            Item(
                campaign_id=campaign.id,
                prompt_id=prompt.id,
                response_a_id=first.id,
                response_b_id=second.id,
                is_gold=True,
                gold_choice=row.answer,
            )
        )
    session.flush()
    return len(rows)


def model_pairs(models: Sequence[str], baseline: str, pairing: str) -> list[tuple[str, str]]:
    """The pairs of models a campaign compares on each prompt."""
    if pairing == "baseline":
        return [(m, baseline) for m in models if m != baseline]
    return list(itertools.combinations(models, 2))


def swap_positions(seed: int, prompt_key_: str, first: str, second: str) -> bool:
    """Whether ``first`` is shown as B: a fair coin per item, reproducible from the seed."""
    digest = hashlib.sha256(f"{seed}:{prompt_key_}:{first}:{second}".encode()).digest()
    return digest[0] & 1 == 1


def build_items(session: Session, campaign: Campaign) -> int:
    """Makes the items missing for every prompt where both models of a pair answered; how many
    were made. Positions are drawn per item, so the baseline is A about half the time."""
    by_name = {m.id: m.name for m in campaign.models}
    responses: dict[int, dict[str, Response]] = {}
    for response in session.scalars(
        select(Response)
        .join(Prompt, Response.prompt_id == Prompt.id)
        .where(Prompt.campaign_id == campaign.id, Response.model_id.is_not(None))
    ):
        responses.setdefault(response.prompt_id, {})[by_name[response.model_id]] = response
    existing = {
        frozenset((a, b))
        for a, b in session.execute(
            select(Item.response_a_id, Item.response_b_id).where(
                Item.campaign_id == campaign.id, Item.is_gold.is_(False)
            )
        )
    }
    keys = dict(
        session.execute(
            select(Prompt.id, Prompt.key).where(Prompt.campaign_id == campaign.id)
        ).all()
    )
    pairs = model_pairs(list(by_name.values()), campaign.baseline_model, campaign.pairing)
    made = 0
    for prompt_id, answered in sorted(responses.items()):
        for first, second in pairs:
            if first not in answered or second not in answered:
                continue
            one, other = answered[first], answered[second]
            if frozenset((one.id, other.id)) in existing:
                continue
            if swap_positions(campaign.seed, keys[prompt_id], first, second):
                one, other = other, one
            session.add(
                Item(
                    campaign_id=campaign.id,
                    prompt_id=prompt_id,
                    response_a_id=one.id,
                    response_b_id=other.id,
                )
            )
            made += 1
    session.flush()
    return made


def set_state(session: Session, campaign: Campaign, state: str) -> None:
    if state == "collecting":
        build_items(session, campaign)
        items = _count(session, Item, campaign)
        if not items:
            raise Conflict(
                f"campaign '{campaign.slug}': no items yet (import responses for at least two "
                "models on the same prompts first)"
            )
    campaign.state = state
    session.flush()


def _count(session: Session, table, campaign: Campaign) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(table).where(table.campaign_id == campaign.id)
        )
        or 0
    )
