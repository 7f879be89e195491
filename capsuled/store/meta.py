"""Deployment-wide facts kept in the database (e.g. the instance id that scopes Docker labels)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from capsuled.errors import Conflict
from capsuled.store.tables import Meta


def get_meta(session: Session, key: str) -> str | None:
    row = session.get(Meta, key)
    return row.value if row else None


def set_meta(session: Session, key: str, value: str) -> None:
    session.merge(Meta(key=key, value=value))


def claim_meta(session: Session, key: str, value: str) -> None:
    """Insert `key` now, or raise Conflict if another transaction has it (committed, or
    in flight: the primary key makes the second one wait, then fail). The first of several
    servers starting on one database wins; the transaction is over for the others."""
    session.add(Meta(key=key, value=value))
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"meta key {key} is already set") from exc
