"""overlay_projects and overlay_blocks: project networks across hosts, allocated centrally

Revision ID: 0018
Revises: 0017
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "overlay_projects",
        sa.Column("project_id", sa.String(255), primary_key=True),
        sa.Column("vni", sa.Integer(), nullable=False, unique=True),
        sa.Column("subnet", sa.String(18), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
        **_MYSQL)
    op.create_table(
        "overlay_blocks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.String(255),
                  sa.ForeignKey("overlay_projects.project_id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("block", sa.String(18), nullable=False, unique=True),
        sa.Column("gateway", sa.String(15), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("project_id", "host", name="uq_overlay_blocks_project_host"),
        **_MYSQL)
    op.create_index("ix_overlay_blocks_host", "overlay_blocks", ["host"])


def downgrade() -> None:
    op.drop_table("overlay_blocks")
    op.drop_table("overlay_projects")
