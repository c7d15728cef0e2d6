"""Arena and live A/B: pair sampling and daily vote caps of campaigns; experiments, their arms,
the exchanges the router answered and the users' feedback

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(
            sa.Column(
                "pair_sampling", sa.String(length=16), nullable=False, server_default="uniform"
            )
        )
        batch.add_column(sa.Column("daily_vote_cap", sa.Integer(), nullable=True))
        batch.create_check_constraint("pair_sampling", "pair_sampling IN ('uniform', 'adaptive')")
        batch.create_check_constraint(
            "daily_vote_cap", "daily_vote_cap IS NULL OR daily_vote_cap >= 1"
        )
    op.create_table(
        "ab_experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("guard_confidence", sa.Float(), nullable=False),
        sa.Column("guard_min_feedback", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('running', 'stopped')", name=op.f("ck_ab_experiments_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ab_experiments")),
        sa.UniqueConstraint("slug", name=op.f("uq_ab_experiments_slug")),
    )
    op.create_table(
        "ab_arms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("endpoint", sa.String(length=500), nullable=False),
        sa.Column("served_name", sa.String(length=200), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.CheckConstraint("weight > 0", name=op.f("ck_ab_arms_weight")),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["ab_experiments.id"],
            name=op.f("fk_ab_arms_experiment_id_ab_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ab_arms")),
        sa.UniqueConstraint("experiment_id", "name", name=op.f("uq_ab_arms_experiment_id")),
    )
    op.create_table(
        "ab_exchanges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("arm_id", sa.Integer(), nullable=False),
        sa.Column("second_arm_id", sa.Integer(), nullable=True),
        sa.Column("user_key", sa.String(length=200), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.Column("second_reply", sa.Text(), nullable=True),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["arm_id"],
            ["ab_arms.id"],
            name=op.f("fk_ab_exchanges_arm_id_ab_arms"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["ab_experiments.id"],
            name=op.f("fk_ab_exchanges_experiment_id_ab_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["second_arm_id"],
            ["ab_arms.id"],
            name=op.f("fk_ab_exchanges_second_arm_id_ab_arms"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ab_exchanges")),
        sa.UniqueConstraint("response_id", name=op.f("uq_ab_exchanges_response_id")),
    )
    op.create_index(
        op.f("ix_ab_exchanges_experiment_id"), "ab_exchanges", ["experiment_id"], unique=False
    )
    op.create_table(
        "ab_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exchange_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("thumbs_up", sa.Boolean(), nullable=True),
        sa.Column("preferred_arm_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('thumbs', 'pairwise')", name=op.f("ck_ab_feedback_kind")),
        sa.ForeignKeyConstraint(
            ["exchange_id"],
            ["ab_exchanges.id"],
            name=op.f("fk_ab_feedback_exchange_id_ab_exchanges"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["preferred_arm_id"],
            ["ab_arms.id"],
            name=op.f("fk_ab_feedback_preferred_arm_id_ab_arms"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ab_feedback")),
        sa.UniqueConstraint("exchange_id", name=op.f("uq_ab_feedback_exchange_id")),
    )


def downgrade() -> None:
    op.drop_table("ab_feedback")
    op.drop_index(op.f("ix_ab_exchanges_experiment_id"), table_name="ab_exchanges")
    op.drop_table("ab_exchanges")
    op.drop_table("ab_arms")
    op.drop_table("ab_experiments")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_constraint(op.f("ck_campaigns_daily_vote_cap"), type_="check")
        batch.drop_constraint(op.f("ck_campaigns_pair_sampling"), type_="check")
        batch.drop_column("daily_vote_cap")
        batch.drop_column("pair_sampling")
