"""terminal sessions: one-time websocket tokens, shared by every API replica

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "terminal_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("container_uuid", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("runtime_id", sa.String(128), nullable=False),
        sa.Column("exec_id", sa.String(128), nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("pending_height", sa.Integer(), nullable=True),
        sa.Column("pending_width", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_terminal_sessions_exec_id", "terminal_sessions", ["exec_id"], unique=False)
    op.create_index("ix_terminal_sessions_expires_at", "terminal_sessions", ["expires_at"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_terminal_sessions_expires_at", table_name="terminal_sessions")
    op.drop_index("ix_terminal_sessions_exec_id", table_name="terminal_sessions")
    op.drop_table("terminal_sessions")
