"""project_usage, host_usage: running totals of what projects and hosts have claimed
(store/usage.py), backfilled from a recount of the rows

Revision ID: 0024
Revises: 0020
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0024"
down_revision = "0020"
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
_DOUBLE = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")

# Every claim, one row each: a capsule (itself, its container rows, cpu, memory, its
# volumes' sizes) and a bare container (itself, cpu, memory, disk). The recount of
# store/usage.py, written here in SQL so that this migration never changes with the code.
_CLAIMS = """
    SELECT c.project_id AS project_id, c.host AS host, 1 AS capsules,
           (SELECT count(*) FROM containers m WHERE m.capsule_id = c.id) AS containers,
           c.cpu AS cpu, c.memory AS memory,
           (SELECT coalesce(sum(v.size), 0) FROM volumes v WHERE v.capsule_id = c.id) AS disk
      FROM capsules c
    UNION ALL
    SELECT b.project_id, b.host, 0, 1, b.cpu, b.memory, coalesce(b.disk, 0)
      FROM containers b WHERE b.role = 'bare'
"""
_SUMS = ("coalesce(sum(u.capsules), 0), coalesce(sum(u.containers), 0), "
         "coalesce(sum(u.cpu), 0), coalesce(sum(u.memory), 0), coalesce(sum(u.disk), 0)")


def _columns(key: str) -> list[sa.Column[Any]]:
    return [sa.Column(key, sa.String(255), primary_key=True),
            sa.Column("capsules", sa.Integer(), nullable=False, server_default="0"),
            sa.Column("containers", sa.Integer(), nullable=False, server_default="0"),
            sa.Column("cpu", _DOUBLE, nullable=False, server_default="0"),
            sa.Column("memory", sa.BigInteger(), nullable=False, server_default="0"),
            sa.Column("disk", sa.BigInteger(), nullable=False, server_default="0")]


def upgrade() -> None:
    op.create_table("project_usage", *_columns("project_id"), **_MYSQL)
    op.create_table("host_usage", *_columns("host"), **_MYSQL)
    op.execute(f"INSERT INTO project_usage (project_id, capsules, containers, cpu, memory, disk) "
               f"SELECT u.project_id, {_SUMS} FROM ({_CLAIMS}) u GROUP BY u.project_id")
    op.execute(f"INSERT INTO host_usage (host, capsules, containers, cpu, memory, disk) "
               f"SELECT u.host, {_SUMS} FROM ({_CLAIMS}) u WHERE u.host IS NOT NULL "
               f"GROUP BY u.host")


def downgrade() -> None:
    op.drop_table("host_usage")
    op.drop_table("project_usage")
