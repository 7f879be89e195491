"""bare containers, container actions, service fields on hosts

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# MariaDB: double precision, microseconds, byte-wise comparison (as capsuled.store.tables).
DOUBLE = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")
DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("disabled_reason", sa.String(255), nullable=True))
        batch.add_column(sa.Column("forced_down", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("report_count", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("containers") as batch:
        batch.add_column(sa.Column("spec", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("cpu", DOUBLE, nullable=False, server_default="0"))
        batch.add_column(sa.Column("memory", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("desired_state", sa.String(10), nullable=False,
                                   server_default="running"))
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("deleting", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_index("ix_containers_host", ["host"], unique=False)
    op.create_table(
        "container_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("container_uuid", sa.String(36), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("start_time", DATETIME, nullable=False),
        sa.Column("finish_time", DATETIME, nullable=True),
        sa.Column("message", sa.String(255), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_container_actions_container_uuid", "container_actions", ["container_uuid"])


def downgrade() -> None:
    op.drop_index("ix_container_actions_container_uuid", table_name="container_actions")
    op.drop_table("container_actions")
    with op.batch_alter_table("containers") as batch:
        batch.drop_index("ix_containers_host")
        for col in ("deleting", "generation", "desired_state", "memory", "cpu", "host", "spec"):
            batch.drop_column(col)
    with op.batch_alter_table("hosts") as batch:
        for col in ("report_count", "forced_down", "disabled_reason"):
            batch.drop_column(col)
