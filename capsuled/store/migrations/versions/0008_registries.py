"""registries: a project's private registries (credentials encrypted), and the registry
each container pulls its image through

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "registries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("domain", sa.String(255), nullable=False, index=True),
        sa.Column("username_enc", sa.Text(), nullable=True),
        sa.Column("password_enc", sa.Text(), nullable=True),
        sa.Column("project_id", sa.String(255), nullable=False, index=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=True),
        sa.UniqueConstraint("project_id", "name", name="uq_registries_project_name"),
        mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin",
    )
    with op.batch_alter_table("containers") as batch:
        batch.add_column(sa.Column("registry_id", sa.String(36), nullable=True))
        batch.create_index("ix_containers_registry_id", ["registry_id"])


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_index("ix_containers_registry_id")
        batch.drop_column("registry_id")
    op.drop_table("registries")
