"""outbox_readers: durable cursors (and leases) of the outbox's notifiers and webhooks

Revision ID: 0013
Revises: 0012
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "outbox_readers",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("lease_until", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        **_MYSQL)


def downgrade() -> None:
    op.drop_table("outbox_readers")
