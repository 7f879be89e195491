"""host_ports: fixed host ports claimed by capsules; containers.published_ports (JSON)

Revision ID: 0017
Revises: 0013
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0013"
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "host_ports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("protocol", sa.String(3), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("capsule_id", sa.Integer(), sa.ForeignKey("capsules.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.UniqueConstraint("host", "protocol", "port", name="uq_host_ports_host_protocol_port"),
        **_MYSQL)
    with op.batch_alter_table("containers") as batch:
        batch.add_column(sa.Column("published_ports", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("published_ports")
    op.drop_table("host_ports")
