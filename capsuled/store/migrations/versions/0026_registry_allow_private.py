"""registries.allow_private: whether image search may reach the registry at a loopback,
private, link-local, multicast or reserved address (its domain was set by an admin)

Existing registries start without it: who made them is not known to have been an admin,
and a member's registry on 127.0.0.1 is what the check exists to refuse. An admin who
sets a registry's domain again (PATCH, the same value will do) grants it.

Revision ID: 0026
Revises: 0025
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registries") as batch:
        batch.add_column(sa.Column("allow_private", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("registries") as batch:
        batch.drop_column("allow_private")
