"""Durable readers of the outbox: a named cursor (the last seq handled) and a lease.

A reader (the AMQP notifier, one webhook subscription) is served by at most one process
at a time: whoever holds its lease. Every API replica runs the same relay; the lease,
taken and renewed with one conditional UPDATE, decides which of them delivers, and
passes to another replica when the holder dies (its lease runs out). Delivery is
at-least-once: a holder that crashed after delivering and before `advance` committed
leaves those records to be delivered again, and consumers dedupe on `seq`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from capsuled.store import outbox
from capsuled.store.tables import OutboxReader, utcnow


@dataclass(frozen=True)
class Lease:
    """A lease on reader `name`, held by `owner`, whose cursor was `seq` when taken."""

    name: str
    owner: str
    seq: int


def ensure(session: Session, name: str, start: int | None = None) -> None:
    """Make reader `name` if it does not exist, starting after `start` (None: after the
    newest record now, so a new reader does not replay history)."""
    if session.get(OutboxReader, name) is not None:
        return
    seq = outbox.cursor(session).newest if start is None else start
    try:
        with session.begin_nested():
            session.execute(insert(OutboxReader).values(name=name, seq=seq, updated_at=utcnow()))
    except IntegrityError:
        pass  # another replica made it first: the same reader


def take(session: Session, name: str, owner: str, ttl: timedelta) -> Lease | None:
    """Take or renew the lease on `name` for `ttl`; None while another owner holds it."""
    now = utcnow()
    done = session.execute(
        update(OutboxReader)
        .where(OutboxReader.name == name,
               or_(OutboxReader.owner == owner, OutboxReader.owner.is_(None),
                   OutboxReader.lease_until < now))
        .values(owner=owner, lease_until=now + ttl, updated_at=now))
    if done.rowcount == 0:  # type: ignore[attr-defined]
        return None
    seq = session.scalar(select(OutboxReader.seq).where(OutboxReader.name == name))
    return None if seq is None else Lease(name, owner, int(seq))


def advance(session: Session, lease: Lease, seq: int) -> bool:
    """Move the cursor to `seq`; False if the lease was lost meanwhile (another owner took
    it after it ran out: stop delivering, it will redeliver from its own cursor)."""
    done = session.execute(
        update(OutboxReader)
        .where(OutboxReader.name == lease.name, OutboxReader.owner == lease.owner)
        .values(seq=case((OutboxReader.seq < seq, seq), else_=OutboxReader.seq),
                updated_at=utcnow()))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def release(session: Session, lease: Lease) -> None:
    """Give the lease up at once (a clean shutdown), so another replica need not wait."""
    session.execute(update(OutboxReader)
                    .where(OutboxReader.name == lease.name, OutboxReader.owner == lease.owner)
                    .values(owner=None, lease_until=None))


def drop(session: Session, name: str) -> None:
    """Forget reader `name` (its subscription was deleted): it no longer holds pruning."""
    session.execute(delete(OutboxReader).where(OutboxReader.name == name))


def position(session: Session, name: str) -> int | None:
    return session.scalar(select(OutboxReader.seq).where(OutboxReader.name == name))


def positions(session: Session, limit: int) -> list[tuple[str, int]]:
    """(name, cursor) of the `limit` readers furthest behind, slowest first."""
    rows = session.execute(select(OutboxReader.name, OutboxReader.seq)
                           .order_by(OutboxReader.seq, OutboxReader.name).limit(limit))
    return [(str(name), int(seq)) for name, seq in rows]


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(OutboxReader)) or 0)


def slowest(session: Session) -> int | None:
    """The smallest cursor of any reader: records after it are still owed to someone."""
    return session.scalar(select(func.min(OutboxReader.seq)))

