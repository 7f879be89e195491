"""Webhook subscriptions and their dead letters.

A subscription is also durable outbox reader `webhook:<uuid>`: made in the same
transaction as its row (starting after the newest record then, so it does not replay
history) and dropped with it, so a deleted subscription no longer holds pruning back.
Lookups are scoped to one project unless the caller may see all: another project's
subscription is the same 404 as a missing one."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete as delete_rows
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from capsuled.domain.template import short
from capsuled.domain.webhooks import Progress
from capsuled.errors import Conflict, NotFound, OverQuota
from capsuled.store import outbox_readers
from capsuled.store.capsules import UUID_RE, storable_ident
from capsuled.store.crypto import SecretBox
from capsuled.store.quotas import lock_project
from capsuled.store.tables import DeadLetter, OutboxRecord, Subscription, utcnow

READER_PREFIX = "webhook:"
DEAD, QUEUED = "dead", "queued"


def reader_name(uuid: str) -> str:
    return f"{READER_PREFIX}{uuid}"


@dataclass(frozen=True)
class NewSubscription:
    project_id: str
    user_id: str
    name: str | None
    url: str
    events: list[str]
    secret: str
    allow_private: bool


def create(session: Session, box: SecretBox, new: NewSubscription, limit: int) -> Subscription:
    """Under the project's lock (its lock row committed before: quotas.ensure_lock_row),
    so concurrent creates cannot pass the limit together."""
    lock_project(session, new.project_id)
    have = session.scalar(select(func.count(Subscription.id)).where(
        Subscription.project_id == new.project_id)) or 0
    if have >= limit:
        raise OverQuota(f"subscriptions: the project has {have} of at most {limit} "
                        "(webhooks.per_project); delete one first")
    if new.name is not None and session.scalars(select(Subscription.id).where(
            Subscription.project_id == new.project_id, Subscription.name == new.name)).first():
        raise Conflict(f"A subscription named {new.name} already exists in this project.")
    row = Subscription(uuid=str(uuidlib.uuid4()), name=new.name, project_id=new.project_id,
                       user_id=new.user_id, url=new.url, events=list(new.events),
                       secret_enc=box.seal(new.secret), allow_private=new.allow_private,
                       created_at=utcnow(), state="active", retry_attempts=0, delivered=0,
                       failed_attempts=0, dead_lettered=0, dead_letters_dropped=0)
    session.add(row)
    session.flush()
    outbox_readers.ensure(session, reader_name(row.uuid))
    return row


def get(session: Session, ident: str, project_id: str | None) -> Subscription:
    """By uuid or name, within `project_id` (None: any project)."""
    missing = NotFound(f"Subscription {short(ident)} could not be found.")
    if not storable_ident(ident):
        raise missing
    stmt = select(Subscription)
    if project_id is not None:
        stmt = stmt.where(Subscription.project_id == project_id)
    if UUID_RE.match(ident):
        found = list(session.scalars(stmt.where(Subscription.uuid == ident.lower())).all())
    else:
        found = list(session.scalars(stmt.where(Subscription.name == ident).limit(2)).all())
    if not found:
        raise missing
    if len(found) > 1:  # one name per project: only an all-projects lookup meets two
        raise Conflict(f"Multiple subscriptions exist with name {ident}. Please use the "
                       "subscription uuid instead.")
    return found[0]


def list_(session: Session, project_id: str | None, limit: int) -> list[Subscription]:
    stmt = select(Subscription)
    if project_id is not None:
        stmt = stmt.where(Subscription.project_id == project_id)
    return list(session.scalars(stmt.order_by(Subscription.id).limit(limit)).all())


def dead_letter_counts(session: Session, rows: Sequence[Subscription]) -> dict[int, int]:
    if not rows:
        return {}
    counts = session.execute(
        select(DeadLetter.subscription_id, func.count(DeadLetter.id))
        .where(DeadLetter.subscription_id.in_([r.id for r in rows]))
        .group_by(DeadLetter.subscription_id)).all()
    return {int(sub): int(n) for sub, n in counts}


def position(session: Session, row: Subscription) -> int | None:
    """The last outbox seq its delivery has handled (delivered, skipped or dead-lettered)."""
    return outbox_readers.position(session, reader_name(row.uuid))


def delete(session: Session, row: Subscription) -> None:
    session.execute(delete_rows(DeadLetter).where(DeadLetter.subscription_id == row.id))
    outbox_readers.drop(session, reader_name(row.uuid))
    session.delete(row)


# -- dead letters, as the API shows and acts on them -----------------------------------------

def dead_letters(session: Session, row: Subscription, after: int | None,
                 limit: int) -> list[DeadLetter]:
    stmt = select(DeadLetter).where(DeadLetter.subscription_id == row.id)
    if after is not None:
        stmt = stmt.where(DeadLetter.seq > after)
    return list(session.scalars(stmt.order_by(DeadLetter.seq).limit(limit)).all())


def queue_redelivery(session: Session, row: Subscription, seq: int | None) -> int:
    """Mark dead letters (one, or all) for redelivery; how many were marked."""
    stmt = update(DeadLetter).where(DeadLetter.subscription_id == row.id,
                                    DeadLetter.state == DEAD).values(state=QUEUED)
    if seq is not None:
        stmt = stmt.where(DeadLetter.seq == seq)
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def discard(session: Session, row: Subscription, seq: int | None) -> int:
    stmt = delete_rows(DeadLetter).where(DeadLetter.subscription_id == row.id)
    if seq is not None:
        stmt = stmt.where(DeadLetter.seq == seq)
    return int(session.execute(stmt, execution_options={"synchronize_session": False})
               .rowcount)  # type: ignore[attr-defined]


# -- what the delivery side reads and writes --------------------------------------------------

def by_uuid(session: Session, uuid: str) -> Subscription | None:
    return session.scalars(select(Subscription).where(Subscription.uuid == uuid)).first()


def everyone(session: Session) -> list[tuple[str, str]]:
    """(uuid, project_id) of every subscription: what the supervisor serves."""
    return [(u, p) for u, p in session.execute(
        select(Subscription.uuid, Subscription.project_id).order_by(Subscription.id)).all()]


def with_queued(session: Session) -> set[str]:
    """Uuids of subscriptions with dead letters waiting for redelivery."""
    return set(session.scalars(
        select(Subscription.uuid).join(DeadLetter, DeadLetter.subscription_id == Subscription.id)
        .where(DeadLetter.state == QUEUED).distinct()).all())


def newest_by_project(session: Session, after: int) -> dict[str, int]:
    """Per project, its newest outbox seq after `after` (which projects changed since)."""
    rows = session.execute(select(OutboxRecord.project_id, func.max(OutboxRecord.seq))
                           .where(OutboxRecord.seq > after)
                           .group_by(OutboxRecord.project_id)).all()
    return {str(p): int(seq) for p, seq in rows}


def progress(row: Subscription) -> Progress:
    return Progress(state=row.state, retry_seq=row.retry_seq, attempts=row.retry_attempts,
                    failing_since=row.failing_since, probe_after=row.probe_after)


@dataclass
class Tally:
    """What one round of delivery did, written to the row in one go."""

    progress: Progress
    delivered: int = 0
    failed_attempts: int = 0
    last_delivered_seq: int | None = None
    last_delivered_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None


def record(session: Session, row: Subscription, tally: Tally) -> None:
    p = tally.progress
    row.state, row.retry_seq, row.retry_attempts = p.state, p.retry_seq, p.attempts
    row.failing_since, row.probe_after = p.failing_since, p.probe_after
    row.delivered += tally.delivered
    row.failed_attempts += tally.failed_attempts
    if tally.last_delivered_seq is not None:
        row.last_delivered_seq, row.last_delivered_at = (tally.last_delivered_seq,
                                                         tally.last_delivered_at)
    if tally.last_error is not None:
        row.last_error, row.last_error_at = tally.last_error[:1000], tally.last_error_at


def add_dead_letter(session: Session, row: Subscription, seq: int, event_type: str, body: str,
                    attempts: int, error: str | None, keep: int) -> None:
    """Keep the event as a dead letter (once per seq: a retried round may meet it again),
    then drop the subscription's oldest beyond `keep`."""
    found = session.scalars(select(DeadLetter).where(DeadLetter.subscription_id == row.id,
                                                     DeadLetter.seq == seq)).first()
    if found is not None:
        found.attempts, found.last_error, found.state = attempts, error and error[:1000], DEAD
        return
    session.add(DeadLetter(subscription_id=row.id, seq=seq, event_type=event_type, body=body,
                           attempts=attempts, last_error=error and error[:1000], state=DEAD,
                           created_at=utcnow()))
    row.dead_lettered += 1
    session.flush()
    have = session.scalar(select(func.count(DeadLetter.id)).where(
        DeadLetter.subscription_id == row.id)) or 0
    if have > keep:
        oldest = list(session.scalars(select(DeadLetter.id).where(
            DeadLetter.subscription_id == row.id).order_by(DeadLetter.seq).limit(have - keep)))
        session.execute(delete_rows(DeadLetter).where(DeadLetter.id.in_(oldest)),
                        execution_options={"synchronize_session": False})
        row.dead_letters_dropped += len(oldest)


def queued(session: Session, row: Subscription, limit: int) -> list[DeadLetter]:
    return list(session.scalars(select(DeadLetter).where(
        DeadLetter.subscription_id == row.id, DeadLetter.state == QUEUED)
        .order_by(DeadLetter.seq).limit(limit)).all())


def redelivered(session: Session, letter_id: int, error: str | None) -> None:
    """A queued dead letter was sent again: gone if it was delivered, else dead again."""
    letter = session.get(DeadLetter, letter_id)
    if letter is None:
        return  # discarded meanwhile
    if error is None:
        session.delete(letter)
    else:
        letter.state, letter.attempts, letter.last_error = DEAD, letter.attempts + 1, error[:1000]
