"""Alembic environment: runs on the connection the caller hands over (store.engine.upgrade)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from capsuled.store.tables import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # `alembic` CLI use during development: -x url=...
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///dev.db")
    connection = create_engine(url).connect()

context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
