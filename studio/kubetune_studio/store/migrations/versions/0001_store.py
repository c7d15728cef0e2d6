"""The store: labelers, sessions, campaigns, prompts, responses, items, votes

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("baseline_model", sa.String(length=200), nullable=False),
        sa.Column("pairing", sa.String(length=16), nullable=False),
        sa.Column("prompt_set", sa.String(length=500), nullable=False),
        sa.Column("labels_per_item", sa.Integer(), nullable=False),
        sa.Column("gold_every", sa.Integer(), nullable=False),
        sa.Column("min_gold_agreement", sa.Float(), nullable=False),
        sa.Column("min_gold_votes", sa.Integer(), nullable=False),
        sa.Column("min_consensus_agreement", sa.Float(), nullable=False),
        sa.Column("min_consensus_votes", sa.Integer(), nullable=False),
        sa.Column("min_median_seconds", sa.Float(), nullable=False),
        sa.Column("exclude_fast", sa.Boolean(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "pairing IN ('baseline', 'all-pairs')", name=op.f("ck_campaigns_pairing")
        ),
        sa.CheckConstraint(
            "state IN ('draft', 'collecting', 'closed')", name=op.f("ck_campaigns_state")
        ),
        sa.CheckConstraint("labels_per_item >= 1", name=op.f("ck_campaigns_labels_per_item")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
        sa.UniqueConstraint("slug", name=op.f("uq_campaigns_slug")),
    )
    op.create_table(
        "labelers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("label_count", sa.Integer(), nullable=False),
        sa.Column("agreement_rate", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('human', 'judge')", name=op.f("ck_labelers_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labelers")),
        sa.UniqueConstraint("email", name=op.f("uq_labelers_email")),
    )
    op.create_table(
        "campaign_members",
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_members_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["labeler_id"],
            ["labelers.id"],
            name=op.f("fk_campaign_members_labeler_id_labelers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "labeler_id", name=op.f("pk_campaign_members")),
    )
    op.create_table(
        "campaign_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("endpoint", sa.String(length=500), nullable=True),
        sa.Column("served_name", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_models_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_models")),
        sa.UniqueConstraint("campaign_id", "name", name=op.f("uq_campaign_models_campaign_id")),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("category", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_prompts_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("campaign_id", "key", name=op.f("uq_prompts_campaign_id")),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["labeler_id"],
            ["labelers.id"],
            name=op.f("fk_sessions_labeler_id_labelers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_sessions_token_hash")),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("origin", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["campaign_models.id"],
            name=op.f("fk_responses_model_id_campaign_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            ["prompts.id"],
            name=op.f("fk_responses_prompt_id_prompts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_responses")),
        sa.UniqueConstraint("prompt_id", "model_id", name=op.f("uq_responses_prompt_id")),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("response_a_id", sa.Integer(), nullable=False),
        sa.Column("response_b_id", sa.Integer(), nullable=False),
        sa.Column("is_gold", sa.Boolean(), nullable=False),
        sa.Column("gold_choice", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "gold_choice IS NULL OR gold_choice IN ('a', 'b', 'tie', 'both_bad')",
            name=op.f("ck_items_gold_choice"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_items_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"],
            ["prompts.id"],
            name=op.f("fk_items_prompt_id_prompts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["response_a_id"],
            ["responses.id"],
            name=op.f("fk_items_response_a_id_responses"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["response_b_id"],
            ["responses.id"],
            name=op.f("fk_items_response_b_id_responses"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
    )
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_items_campaign_id"), ["campaign_id"], unique=False)

    op.create_table(
        "assignments",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_assignments_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["labeler_id"],
            ["labelers.id"],
            name=op.f("fk_assignments_labeler_id_labelers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("item_id", "labeler_id", name=op.f("pk_assignments")),
    )
    op.create_table(
        "skips",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_skips_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["labeler_id"],
            ["labelers.id"],
            name=op.f("fk_skips_labeler_id_labelers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("item_id", "labeler_id", name=op.f("pk_skips")),
    )
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("labeler_id", sa.Integer(), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.SmallInteger(), nullable=True),
        sa.Column("reasoning", sa.Text(), nullable=True),
        sa.Column("time_spent_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("choice IN ('a', 'b', 'tie', 'both_bad')", name=op.f("ck_votes_choice")),
        sa.CheckConstraint(
            "confidence IS NULL OR (confidence >= 1 AND confidence <= 5)",
            name=op.f("ck_votes_confidence"),
        ),
        sa.CheckConstraint(
            "time_spent_ms IS NULL OR time_spent_ms >= 0", name=op.f("ck_votes_time")
        ),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_votes_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["labeler_id"],
            ["labelers.id"],
            name=op.f("fk_votes_labeler_id_labelers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_votes")),
        sa.UniqueConstraint("item_id", "labeler_id", name=op.f("uq_votes_item_id")),
    )
    with op.batch_alter_table("votes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_votes_labeler_id"), ["labeler_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("votes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_votes_labeler_id"))

    op.drop_table("votes")
    op.drop_table("skips")
    op.drop_table("assignments")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_items_campaign_id"))

    op.drop_table("items")
    op.drop_table("responses")
    op.drop_table("sessions")
    op.drop_table("prompts")
    op.drop_table("campaign_models")
    op.drop_table("campaign_members")
    op.drop_table("labelers")
    op.drop_table("campaigns")
