"""subscriptions and subscription_dead_letters: webhooks, each a durable outbox reader

Revision ID: 0015
Revises: 0013
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None

_TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("allow_private", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("retry_seq", sa.BigInteger(), nullable=True),
        sa.Column("retry_attempts", sa.Integer(), nullable=False),
        sa.Column("failing_since", _TS, nullable=True),
        sa.Column("probe_after", _TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", _TS, nullable=True),
        sa.Column("last_delivered_seq", sa.BigInteger(), nullable=True),
        sa.Column("last_delivered_at", _TS, nullable=True),
        sa.Column("delivered", sa.BigInteger(), nullable=False),
        sa.Column("failed_attempts", sa.BigInteger(), nullable=False),
        sa.Column("dead_lettered", sa.BigInteger(), nullable=False),
        sa.Column("dead_letters_dropped", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_subscriptions_project_name"),
        **_MYSQL)
    op.create_index("ix_subscriptions_project_id", "subscriptions", ["project_id"])
    op.create_table(
        "subscription_dead_letters",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("subscription_id", sa.Integer(),
                  sa.ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("subscription_id", "seq", name="uq_dead_letters_sub_seq"),
        **_MYSQL)
    op.create_index("ix_subscription_dead_letters_subscription_id",
                    "subscription_dead_letters", ["subscription_id"])
    op.create_index("ix_dead_letters_state", "subscription_dead_letters", ["state"])


def downgrade() -> None:
    op.drop_table("subscription_dead_letters")
    op.drop_table("subscriptions")
