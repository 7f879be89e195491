"""host_beats: hosts' heartbeats (last_seen, report_count) move out of `hosts`, whose
rows every create locks, into a table of their own (host name → last seen, beats)

Revision ID: 0025
Revises: 0024
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
_TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table("host_beats",
                    sa.Column("host", sa.String(255), primary_key=True),
                    sa.Column("last_seen", _TIMESTAMP, nullable=False),
                    sa.Column("beats", sa.Integer(), nullable=False, server_default="0"),
                    **_MYSQL)
    # A host never seen has no row (its last_seen reads NULL, as before).
    op.execute("INSERT INTO host_beats (host, last_seen, beats) "
               "SELECT name, last_seen, coalesce(report_count, 0) FROM hosts "
               "WHERE last_seen IS NOT NULL")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("last_seen")
        batch.drop_column("report_count")


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("report_count", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("last_seen", _TIMESTAMP, nullable=True))
    op.execute("UPDATE hosts SET "
               "last_seen = (SELECT b.last_seen FROM host_beats b WHERE b.host = hosts.name), "
               "report_count = coalesce((SELECT b.beats FROM host_beats b "
               "WHERE b.host = hosts.name), 0)")
    op.drop_table("host_beats")
