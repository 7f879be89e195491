"""host_ports: fixed host ports claimed by capsules; containers.published_ports (JSON)

Revision ID: 0017
Revises: 0015
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0015"
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
    _claim_existing()


def _claim_existing() -> None:
    """Placed capsules whose templates had hostPorts before they were published: their
    sandboxes publish them from now on, so the scheduler must see them as claimed. Older
    capsules first; a port two of them ask for on one host goes to the first (the other
    fails with the port's reason when its sandbox is remade)."""
    capsules = sa.table("capsules", sa.column("id", sa.Integer()), sa.column("host", sa.String()),
                        sa.column("project_id", sa.String()), sa.column("spec", sa.JSON()))
    ports = sa.table("host_ports", sa.column("host", sa.String()), sa.column("protocol", sa.String()),
                     sa.column("port", sa.Integer()), sa.column("capsule_id", sa.Integer()),
                     sa.column("project_id", sa.String()))
    bind = op.get_bind()
    seen: set[tuple[str, str, int]] = set()
    rows = []
    for cid, host, project, spec in bind.execute(
            sa.select(capsules.c.id, capsules.c.host, capsules.c.project_id, capsules.c.spec)
            .where(capsules.c.host.is_not(None)).order_by(capsules.c.id)):
        spec = spec if isinstance(spec, dict) else {}
        for c in [*(spec.get("init_containers") or []), *(spec.get("containers") or [])]:
            for p in (c.get("ports") or []) if isinstance(c, dict) else []:
                hp, proto = (p.get("host_port"), p.get("protocol", "TCP")) if isinstance(p, dict) \
                    else (None, None)
                if isinstance(hp, int) and hp > 0 and proto in ("TCP", "UDP") \
                        and (host, proto, hp) not in seen:
                    seen.add((host, proto, hp))
                    rows.append({"host": host, "protocol": proto, "port": hp, "capsule_id": cid,
                                 "project_id": project})
    if rows:
        op.bulk_insert(ports, rows)


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("published_ports")
    op.drop_table("host_ports")
