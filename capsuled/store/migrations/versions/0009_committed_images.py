"""committed_images: image references made by `commit`, owned by one project

Revision ID: 0009
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "committed_images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("ref", sa.String(400), nullable=False, unique=True),
        sa.Column("project_id", sa.String(255), nullable=False, index=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("image_id", sa.String(128), nullable=True),
        sa.Column("container_uuid", sa.String(36), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin")


def downgrade() -> None:
    op.drop_table("committed_images")
