"""The studio's tables (SQLAlchemy 2 ORM). Alembic migrations under ``migrations/versions``
create them; a unit test fails when these classes and the migrations' result differ.

A campaign compares two or more models on a prompt set. Each prompt has one response per model;
an *item* is a pair of responses to one prompt shown as A and B (positions drawn at random when
the item is made), or a *gold* item whose better answer is known. Labelers (people, or a judge
model for the arena) cast one *vote* per item: a, b, tie or both_bad.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

CHOICES = ("a", "b", "tie", "both_bad")
CAMPAIGN_STATES = ("draft", "collecting", "closed")
PAIRINGS = ("baseline", "all-pairs")
LABELER_KINDS = ("human", "judge")
PAIR_SAMPLINGS = ("uniform", "adaptive")
EXPERIMENT_STATES = ("running", "stopped")
FEEDBACK_KINDS = ("thumbs", "pairwise")


def now() -> datetime:
    return datetime.now(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names, so later migrations can name what they change (SQLite needs names too)."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Labeler(Base):
    """A person (or, for the arena, a judge model) who votes; admins manage campaigns."""

    __tablename__ = "labelers"
    __table_args__ = (CheckConstraint(f"kind IN {LABELER_KINDS}", name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    kind: Mapped[str] = mapped_column(String(16), default="human")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    label_count: Mapped[int] = mapped_column(Integer, default=0)
    """Votes cast, over all campaigns (kept current by each vote and undo)."""
    agreement_rate: Mapped[float | None] = mapped_column(Float, default=None)
    """Agreement with the consensus in the latest quality computation of any campaign."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class LoginSession(Base):
    """A login: the browser cookie or API bearer token is stored only as its SHA-256."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    labeler: Mapped[Labeler] = relationship()


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint(f"state IN {CAMPAIGN_STATES}", name="state"),
        CheckConstraint(f"pairing IN {PAIRINGS}", name="pairing"),
        CheckConstraint("labels_per_item >= 1", name="labels_per_item"),
        CheckConstraint(f"pair_sampling IN {PAIR_SAMPLINGS}", name="pair_sampling"),
        CheckConstraint("daily_vote_cap IS NULL OR daily_vote_cap >= 1", name="daily_vote_cap"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(16), default="draft")
    baseline_model: Mapped[str] = mapped_column(String(200))
    pairing: Mapped[str] = mapped_column(String(16), default="baseline")
    prompt_set: Mapped[str] = mapped_column(String(500), default="")
    """Where the prompts came from (a file name, a URI), for the record."""
    labels_per_item: Mapped[int] = mapped_column(Integer, default=3)
    gold_every: Mapped[int] = mapped_column(Integer, default=10)
    """A gold item after every this many regular items a labeler votes on (0: none)."""
    min_gold_agreement: Mapped[float] = mapped_column(Float, default=0.7)
    min_gold_votes: Mapped[int] = mapped_column(Integer, default=3)
    min_consensus_agreement: Mapped[float] = mapped_column(Float, default=0.5)
    min_consensus_votes: Mapped[int] = mapped_column(Integer, default=10)
    min_median_seconds: Mapped[float] = mapped_column(Float, default=2.0)
    """A labeler whose median time per vote is below this is flagged as suspiciously fast."""
    exclude_fast: Mapped[bool] = mapped_column(Boolean, default=False)
    """Whether suspicious speed alone excludes a labeler (otherwise it is only shown)."""
    seed: Mapped[int] = mapped_column(Integer, default=0)
    pair_sampling: Mapped[str] = mapped_column(String(16), default="uniform")
    """Arena (all-pairs) campaigns: which pair of models a labeler gets next, ``uniform`` or
    ``adaptive`` (towards the pairs whose order is least certain)."""
    daily_vote_cap: Mapped[int | None] = mapped_column(Integer, default=None)
    """Most votes a labeler may cast in this campaign per UTC day (None: no cap)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    models: Mapped[list[CampaignModel]] = relationship(
        back_populates="campaign", order_by="CampaignModel.id"
    )


class CampaignModel(Base):
    """A model a campaign compares; its responses are imported or fetched from ``endpoint``."""

    __tablename__ = "campaign_models"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str | None] = mapped_column(String(500), default=None)
    """Base URL of an OpenAI-compatible API (``http://host:port/v1``)."""
    served_name: Mapped[str | None] = mapped_column(String(200), default=None)
    """The model name sent to the endpoint (default: ``name``)."""

    campaign: Mapped[Campaign] = relationship(back_populates="models")


class CampaignMember(Base):
    __tablename__ = "campaign_members"

    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), primary_key=True
    )
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("campaign_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the prompt's canonical JSON: the same prompt imported twice is one prompt."""
    messages: Mapped[list[Any]] = mapped_column(JSON)
    category: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Response(Base):
    """One model's answer to one prompt; ``model_id`` is NULL for a gold item's responses."""

    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "model_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    model_id: Mapped[int | None] = mapped_column(
        ForeignKey("campaign_models.id", ondelete="CASCADE"), default=None
    )
    text: Mapped[str] = mapped_column(Text)
    origin: Mapped[str] = mapped_column(String(500), default="")
    """Where it came from: the import file, or the endpoint that generated it."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    model: Mapped[CampaignModel | None] = relationship()


class Item(Base):
    """Two responses to one prompt as a labeler sees them: ``response_a`` is shown as A."""

    __tablename__ = "items"
    __table_args__ = (
        CheckConstraint(f"gold_choice IS NULL OR gold_choice IN {CHOICES}", name="gold_choice"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    response_a_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    response_b_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_choice: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    prompt: Mapped[Prompt] = relationship()
    response_a: Mapped[Response] = relationship(foreign_keys=[response_a_id])
    response_b: Mapped[Response] = relationship(foreign_keys=[response_b_id])


class Assignment(Base):
    """An item handed to a labeler and not yet voted on or skipped; counts toward its overlap
    until the lease runs out."""

    __tablename__ = "assignments"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), primary_key=True
    )
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Skip(Base):
    __tablename__ = "skips"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Vote(Base):
    """One labeler's verdict on one item (a second vote on the same item is refused)."""

    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("item_id", "labeler_id"),
        CheckConstraint(f"choice IN {CHOICES}", name="choice"),
        CheckConstraint(
            "confidence IS NULL OR (confidence >= 1 AND confidence <= 5)",
            name="confidence",
        ),
        CheckConstraint("time_spent_ms IS NULL OR time_spent_ms >= 0", name="time"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), index=True
    )
    choice: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[int | None] = mapped_column(SmallInteger, default=None)
    reasoning: Mapped[str | None] = mapped_column(Text, default=None)
    time_spent_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    item: Mapped[Item] = relationship()
    labeler: Mapped[Labeler] = relationship()


class Snapshot(Base):
    """A versioned export of a campaign's accepted preferences (see kubetune_studio.snapshot).

    The data is kept here as well as at ``location``, so the studio can serve any version
    (``studio://`` data sources) whatever storage it was written to."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("campaign_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    location: Mapped[str] = mapped_column(String(1000))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Experiment(Base):
    """A live A/B experiment: the router splits chat traffic between its arms by weight."""

    __tablename__ = "ab_experiments"
    __table_args__ = (CheckConstraint(f"state IN {EXPERIMENT_STATES}", name="state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(16), default="running")
    guard_confidence: Mapped[float] = mapped_column(Float, default=0.99)
    """An arm is stopped when the whole interval (at this confidence) of its feedback rate
    minus the best other arm's is below zero."""
    guard_min_feedback: Mapped[int] = mapped_column(Integer, default=100)
    """Thumbs each of the two arms needs before the guard may stop one."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    arms: Mapped[list[Arm]] = relationship(back_populates="experiment", order_by="Arm.id")


class Arm(Base):
    """A model endpoint of an experiment and its share of the traffic."""

    __tablename__ = "ab_arms"
    __table_args__ = (
        UniqueConstraint("experiment_id", "name"),
        CheckConstraint("weight > 0", name="weight"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("ab_experiments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(500))
    """Base URL of an OpenAI-compatible API (``http://host:port/v1``)."""
    served_name: Mapped[str | None] = mapped_column(String(200), default=None)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    stop_reason: Mapped[str | None] = mapped_column(Text, default=None)

    experiment: Mapped[Experiment] = relationship(back_populates="arms")


class Exchange(Base):
    """One chat request the router answered: which arm answered (and, when the user was shown
    two answers side by side, which arm gave the second)."""

    __tablename__ = "ab_exchanges"

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[str] = mapped_column(String(64), unique=True)
    """The ``id`` of the chat completion the user got; feedback names it."""
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("ab_experiments.id", ondelete="CASCADE"), index=True
    )
    arm_id: Mapped[int] = mapped_column(ForeignKey("ab_arms.id", ondelete="CASCADE"))
    second_arm_id: Mapped[int | None] = mapped_column(
        ForeignKey("ab_arms.id", ondelete="CASCADE"), default=None
    )
    user_key: Mapped[str] = mapped_column(String(200))
    messages: Mapped[list[Any]] = mapped_column(JSON)
    reply: Mapped[str] = mapped_column(Text, default="")
    second_reply: Mapped[str | None] = mapped_column(Text, default=None)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    arm: Mapped[Arm] = relationship(foreign_keys=[arm_id])
    second_arm: Mapped[Arm | None] = relationship(foreign_keys=[second_arm_id])


class Feedback(Base):
    """A user's verdict on one exchange: thumbs up or down on a single answer, or which of two
    answers shown side by side was better (``preferred_arm_id`` NULL: a tie)."""

    __tablename__ = "ab_feedback"
    __table_args__ = (CheckConstraint(f"kind IN {FEEDBACK_KINDS}", name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    exchange_id: Mapped[int] = mapped_column(
        ForeignKey("ab_exchanges.id", ondelete="CASCADE"), unique=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    thumbs_up: Mapped[bool | None] = mapped_column(Boolean, default=None)
    preferred_arm_id: Mapped[int | None] = mapped_column(
        ForeignKey("ab_arms.id", ondelete="CASCADE"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    exchange: Mapped[Exchange] = relationship()
