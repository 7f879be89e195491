"""capsule_services, service_host_ports: services (VIP, selector, ports) and the host ports
they publish on every host; capsules.draining

Revision ID: 0020
Revises: 0019
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "capsule_services",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("ports", sa.JSON(), nullable=False),
        sa.Column("vip", sa.String(15), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_capsule_services_project_name"),
        **_MYSQL)
    op.create_index("ix_capsule_services_project_id", "capsule_services", ["project_id"])
    op.create_table(
        "service_host_ports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("service_id", sa.Integer(),
                  sa.ForeignKey("capsule_services.id", ondelete="CASCADE"), nullable=False),
        sa.Column("protocol", sa.String(3), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.UniqueConstraint("protocol", "port", name="uq_service_host_ports_protocol_port"),
        **_MYSQL)
    op.create_index("ix_service_host_ports_service_id", "service_host_ports", ["service_id"])
    # A plain ADD COLUMN, never batch mode: on SQLite a batch copies the table and drops
    # the old one, and with foreign keys on that drop cascades to every child row
    # (containers, events, host ports, …).
    op.add_column("capsules", sa.Column("draining", sa.Boolean(), nullable=False,
                                        server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("capsules") as batch:
        batch.drop_column("draining")
    op.drop_table("service_host_ports")
    op.drop_table("capsule_services")
