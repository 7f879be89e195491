"""Indexes on (project_id, name) of capsules and containers

A lookup by name within a project (every bare create checks the name is free; show,
delete and apply find capsules by name) had only the one-column indexes, and SQLite,
without statistics, could walk every container of a big project for it.

Revision ID: 0027
Revises: 0026
"""
from __future__ import annotations

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_capsules_project_name", "capsules", ["project_id", "name"])
    op.create_index("ix_containers_project_name", "containers", ["project_id", "name"])


def downgrade() -> None:
    op.drop_index("ix_containers_project_name", table_name="containers")
    op.drop_index("ix_capsules_project_name", table_name="capsules")
