"""agent tokens: the host a token is bound to; events carry their project and user

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("project_id", sa.String(255), nullable=True))
        batch.add_column(sa.Column("user_id", sa.String(255), nullable=True))
        batch.create_index("ix_events_project_id", ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_project_id")
        batch.drop_column("user_id")
        batch.drop_column("project_id")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("host")
