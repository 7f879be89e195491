"""outbox and outbox_counter: the change records watch streams (and notifiers) read

Revision ID: 0011
Revises: 0010
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("object_uuid", sa.String(36), nullable=False),
        sa.Column("object_name", sa.String(255), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        **_MYSQL)
    op.create_index("ix_outbox_project_seq", "outbox", ["project_id", "seq"])
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"])
    counter = op.create_table(
        "outbox_counter",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False),
        **_MYSQL)
    op.bulk_insert(counter, [{"id": 1, "seq": 0, "pruned_through": 0}])


def downgrade() -> None:
    op.drop_table("outbox_counter")
    op.drop_index("ix_outbox_created_at", table_name="outbox")
    op.drop_index("ix_outbox_project_seq", table_name="outbox")
    op.drop_table("outbox")
