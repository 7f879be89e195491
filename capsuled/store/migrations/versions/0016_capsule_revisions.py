"""capsule_revisions, and on capsules the current revision and the rollout under way

Every existing capsule gets its spec as revision 1.

Revision ID: 0016
Revises: 0018
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0016"
down_revision = "0018"
branch_labels = None
depends_on = None

_TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    with op.batch_alter_table("capsules") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("rollout", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("rollout_deadline", _TS, nullable=True))
        batch.create_index("ix_capsules_rollout_deadline", ["rollout_deadline"], unique=False)
    op.create_table(
        "capsule_revisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("capsule_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("change_cause", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=True),
        sa.Column("outcome_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["capsule_id"], ["capsules.id"], ondelete="CASCADE"),
        sa.UniqueConstraint("capsule_id", "revision", name="uq_capsule_revisions"),
        **_MYSQL)
    op.create_index("ix_capsule_revisions_capsule_id", "capsule_revisions", ["capsule_id"])
    op.execute(
        "INSERT INTO capsule_revisions (capsule_id, revision, spec, project_id, user_id, "
        "change_cause, created_at) SELECT id, 1, spec, project_id, user_id, 'created', "
        "created_at FROM capsules")


def downgrade() -> None:
    op.drop_table("capsule_revisions")
    with op.batch_alter_table("capsules") as batch:
        batch.drop_index("ix_capsules_rollout_deadline")
        batch.drop_column("rollout_deadline")
        batch.drop_column("rollout")
        batch.drop_column("revision")
