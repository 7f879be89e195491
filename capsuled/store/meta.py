"""Deployment-wide facts kept in the database (e.g. the instance id that scopes Docker labels)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from capsuled.store.tables import Meta


def get_meta(session: Session, key: str) -> str | None:
    row = session.get(Meta, key)
    return row.value if row else None


def set_meta(session: Session, key: str, value: str) -> None:
    session.merge(Meta(key=key, value=value))
