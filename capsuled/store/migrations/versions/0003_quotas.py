"""quotas, quota classes, per-project locks

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# MariaDB: double precision, byte-wise comparison (as capsuled.store.tables).
DOUBLE = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "quotas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("hard_limit", DOUBLE, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "resource", name="uq_quotas_project_resource"),
        **MYSQL_TABLE,
    )
    op.create_index("ix_quotas_project_id", "quotas", ["project_id"], unique=False)
    op.create_table(
        "quota_classes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(255), nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("hard_limit", DOUBLE, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("class_name", "resource", name="uq_quota_classes_name_resource"),
        **MYSQL_TABLE,
    )
    op.create_table(
        "project_locks",
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("project_id"),
        **MYSQL_TABLE,
    )


def downgrade() -> None:
    op.drop_table("project_locks")
    op.drop_table("quota_classes")
    op.drop_index("ix_quotas_project_id", table_name="quotas")
    op.drop_table("quotas")
