"""The transactional outbox: change records written with the change, read in seq order.

Store functions that change a capsule or a bare container call `record(session, ...)`;
the records wait in the session and are numbered and inserted just before it commits
(`install` hooks the session factory), so

- a change and its records commit together or not at all (a rollback drops both);
- numbering updates the one `outbox_counter` row, whose lock the writer then holds
  through its commit: a record with a higher seq cannot become visible before one with
  a lower seq (the classic outbox gap, where a reader skips a sequence number that
  commits later, cannot happen), and no number is ever skipped. The lock is taken last
  and held only for the insert and the commit, after every other lock of the transaction
  (project, host), so it adds no deadlock.

Readers keep their own cursor (the last seq they handled) and read `seq > cursor`.
Old records are pruned by count and age (`configure`); `pruned_through` says how far.
Durable readers (store/outbox_readers.py) hold pruning back until they have read.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, event, func, insert, select, update
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from capsuled.store import savepoints
from capsuled.store.tables import OutboxCounter, OutboxReader, OutboxRecord, table, utcnow

LOG = logging.getLogger(__name__)
_PENDING = "capsuled.outbox.pending"
_WRITTEN = "capsuled.outbox.written"
COUNTER_ID = 1
PRUNE_EVERY = 256  # records between two prunes (each prune is one indexed delete)


@dataclass(frozen=True)
class OutboxRetention:
    """How many records are kept, and for how long (whichever is shorter)."""

    records: int = 100_000
    max_age: timedelta = timedelta(days=7)
    # Records still owed to a durable reader (a notifier whose broker is down) are kept
    # beyond `records` and `max_age`, but not past this many: a reader that stalls for
    # good cannot grow the table without bound (it then loses the oldest, and says so).
    reader_records: int = 1_000_000


_retention = OutboxRetention()


def configure(retention: OutboxRetention) -> None:
    """Set once at start-up by the composition root (limits.outbox_*)."""
    global _retention
    _retention = retention


def record(session: Session, *, project_id: str, kind: str, uuid: str, name: str | None,
           event_type: str, reason: str, message: str = "", status: str | None = None,
           labels: dict[str, Any] | None = None) -> None:
    """Queue one change record; it is written if, and when, `session` commits."""
    pending: list[tuple[SessionTransaction | None, dict[str, Any]]] = \
        session.info.setdefault(_PENDING, [])
    pending.append((savepoints.current(session), {"project_id": project_id, "kind": kind, "object_uuid": uuid,
                    "object_name": name, "labels": dict(labels or {}),
                    "event_type": event_type, "reason": reason[:64], "message": message,
                    "status": status, "created_at": utcnow()}))


def refused(session: Session, *, project_id: str, kind: str, name: str | None,
            message: str, labels: dict[str, Any] | None = None) -> None:
    """A create the project's quota refused: nothing was made, so the record names a new
    uuid of its own (the refused request's) and status `Refused`."""
    record(session, project_id=project_id, kind=kind, uuid=str(uuidlib.uuid4()), name=name,
           event_type=f"{kind}.create.error", reason="QuotaExceeded", message=message,
           status="Refused", labels=labels)


def install(factory: sessionmaker[Session], on_commit: Callable[[int], None]) -> None:
    """Write queued records before each commit of `factory`'s sessions; after the commit,
    `on_commit(newest seq)` (which wakes this replica's watchers)."""
    event.listen(factory, "before_commit", _write_pending)
    event.listen(factory, "after_commit", lambda s: _announce(s, on_commit))
    # Not after_rollback: it fires for a savepoint's rollback too, without saying which.
    event.listen(factory, "after_soft_rollback", _rolled_back)


def _write_pending(session: Session) -> None:
    pending = [row for _txn, row in session.info.pop(_PENDING, [])]
    if not pending:
        return
    newest = _take_numbers(session, len(pending))
    first = newest - len(pending) + 1
    for offset, row in enumerate(pending):
        row["seq"] = first + offset
    session.execute(_INSERT, pending)
    if (first - 1) // PRUNE_EVERY != newest // PRUNE_EVERY:  # crossed a multiple
        _prune(session, newest, pending[-1]["created_at"])
    session.info[_WRITTEN] = newest


def _take_numbers(session: Session, count: int) -> int:
    """Reserve `count` numbers (the row stays locked until commit) and return the last."""
    params = {"count": count, "counter": COUNTER_ID}
    if session.get_bind().dialect.update_returning:  # SQLite ≥ 3.35, PostgreSQL: one round trip
        got = session.execute(_BUMP_RETURNING, params).scalar()
        if got is not None:
            return int(got)
    elif session.execute(_BUMP, params).rowcount > 0:  # type: ignore[attr-defined]
        return _read_seq(session)
    # A schema made without the migration (which inserts the row): make it once.
    session.execute(insert(OutboxCounter).values(id=COUNTER_ID, seq=0, pruned_through=0))
    session.execute(_BUMP, params)
    return _read_seq(session)


# Built once, Core (the counter is never loaded as an object): every change runs these,
# and building a statement costs more CPU than running it.
_C = table(OutboxCounter).c
_BUMP = update(table(OutboxCounter)).where(_C.id == bindparam("counter")).values(
    seq=_C.seq + bindparam("count"))
_BUMP_RETURNING = _BUMP.returning(_C.seq)
_INSERT = insert(table(OutboxRecord))


def _read_seq(session: Session) -> int:
    newest = session.scalar(select(OutboxCounter.seq).where(OutboxCounter.id == COUNTER_ID))
    assert newest is not None
    return int(newest)


def _prune(session: Session, newest: int, now: datetime) -> None:
    keep = _retention
    by_count = newest - keep.records
    by_age = session.scalar(select(OutboxRecord.seq).where(
        OutboxRecord.created_at < now - keep.max_age).order_by(OutboxRecord.seq.desc()).limit(1))
    through = max(by_count, by_age or 0)
    owed = session.scalar(select(func.min(OutboxReader.seq)))
    if owed is not None:  # keep what a durable reader has not handled yet
        through = max(min(through, int(owed)), newest - keep.reader_records)
    if through <= 0:
        return
    session.execute(delete(OutboxRecord).where(OutboxRecord.seq <= through),
                    execution_options={"synchronize_session": False})
    session.execute(update(OutboxCounter).where(OutboxCounter.id == COUNTER_ID,
                                                OutboxCounter.pruned_through < through)
                    .values(pruned_through=through))


def _announce(session: Session, on_commit: Callable[[int], None]) -> None:
    newest = session.info.pop(_WRITTEN, None)
    if newest is None:
        return
    try:
        on_commit(int(newest))
    except Exception:  # noqa: BLE001 - a missed wake-up costs a poll interval, not a record
        LOG.exception("waking the outbox's readers failed")


def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_WRITTEN, None)


def _rolled_back(session: Session, previous: SessionTransaction) -> None:
    """A savepoint's rollback drops the records it (and savepoints within it) queued; any
    other rollback drops them all."""
    if not previous.nested:
        _forget(session)
        return
    session.info[_PENDING] = [(txn, row) for txn, row in session.info.get(_PENDING, [])
                              if not savepoints.within(txn, previous)]


# -- reading ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cursor:
    """Where the outbox is: its newest seq, and how far it was pruned."""

    newest: int
    pruned_through: int


def cursor(session: Session) -> Cursor:
    row = session.execute(select(OutboxCounter.seq, OutboxCounter.pruned_through)
                          .where(OutboxCounter.id == COUNTER_ID)).first()
    return Cursor(0, 0) if row is None else Cursor(int(row[0]), int(row[1]))


def read(session: Session, since: int, project_id: str | None, limit: int,
         uuid: str | None = None, name: str | None = None) -> list[OutboxRecord]:
    """Up to `limit` records after `since`, oldest first; one project's (None: all), and
    one object's (by uuid, or by name) if asked."""
    stmt = select(OutboxRecord).where(OutboxRecord.seq > since)
    if project_id is not None:
        stmt = stmt.where(OutboxRecord.project_id == project_id)
    if uuid is not None:
        stmt = stmt.where(OutboxRecord.object_uuid == uuid)
    if name is not None:
        stmt = stmt.where(OutboxRecord.object_name == name)
    return list(session.scalars(stmt.order_by(OutboxRecord.seq).limit(limit)).all())
