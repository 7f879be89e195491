"""Which transaction queued what. Work a session queues until it commits (outbox records,
usage differences) belongs to the transaction or savepoint that was current when it was
queued. SQLAlchemy reports a savepoint's rollback with the same events as the whole
transaction's, so each queue drops, on a rollback, only what the rolled-back transaction
and the savepoints within it queued."""

from __future__ import annotations

from sqlalchemy.orm import Session, SessionTransaction


def current(session: Session) -> SessionTransaction | None:
    """The innermost transaction of `session`: its open savepoint, else the transaction."""
    return session.get_nested_transaction() or session.get_transaction()


def within(txn: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    """Whether `txn` is `ancestor` or a savepoint inside it."""
    while txn is not None:
        if txn is ancestor:
            return True
        txn = txn.parent
    return False
