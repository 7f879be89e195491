"""Quota limits (per project, per class) and usage: the project's running totals
(store/usage.py), kept in the transaction of every change that holds resources and
checked against a recount of the rows by the tests (and `capsuled db recount`)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import bindparam, event, literal, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from capsuled.store import usage as totals
from capsuled.store.tables import ProjectLock, Quota, QuotaClass, table

RESOURCES = ("capsules", "containers", "cpu", "memory", "disk")
DEFAULT_CLASS = "default"


def ensure_lock_row(session: Session, project_id: str) -> None:
    """Create the project's lock row (and its usage row); commit this on its own, before
    `lock_project`."""
    if session.get(ProjectLock, project_id) is None:
        # The usage row first: its lookup would flush a pending lock row outside the try.
        totals.ensure_rows(session, project_id=project_id)
        session.add(ProjectLock(project_id=project_id, version=0))
        try:
            session.flush()
        except IntegrityError:
            session.rollback()  # another request created it first: just as good


_LOCKED = "capsuled.quotas.locked"


def lock_project(session: Session, project_id: str) -> None:
    """Take the project's write lock for the rest of the transaction: a row update,
    which every engine serialises, before any quota read. Once per transaction (a
    create's steps each ask for it): the lock is held until the transaction ends."""
    locked: set[str] = session.info.setdefault(_LOCKED, set())
    if project_id in locked and session.in_transaction():
        return
    session.execute(_LOCK, {"project": project_id})
    locked.add(project_id)


_T = table(ProjectLock).c
# Built once, Core (not ORM-enabled): a create runs it, and building costs more than running.
_LOCK = update(table(ProjectLock)).where(_T.project_id == bindparam("project")).values(
    version=_T.version + 1)


def install(factory: sessionmaker[Session]) -> None:
    """Forget which projects a session locked when its transaction ends."""
    def forget(session: Session, *_: object) -> None:
        session.info.pop(_LOCKED, None)
    event.listen(factory, "after_commit", forget)
    event.listen(factory, "after_soft_rollback", _forget_if_outer)


def _forget_if_outer(session: Session, previous: SessionTransaction) -> None:
    if not previous.nested:  # a savepoint's rollback keeps the outer transaction's locks
        session.info.pop(_LOCKED, None)


def usage(session: Session, project_id: str) -> dict[str, float]:
    """What the project holds now (its running totals)."""
    used = totals.project(session, project_id)
    return {r: float(getattr(used, r)) for r in RESOURCES}


def class_limits(session: Session, name: str, defaults: Mapping[str, float]) -> dict[str, float]:
    out = {r: float(defaults[r]) for r in RESOURCES}
    for row in session.scalars(select(QuotaClass).where(QuotaClass.class_name == name)):
        if row.resource in out:
            out[row.resource] = row.hard_limit
    return out


def project_limits(session: Session, project_id: str, defaults: Mapping[str, float]) -> dict[str, float]:
    """The default class's limits, overridden by the project's own: one query (every
    create asks), the class's rows first."""
    out = {r: float(defaults[r]) for r in RESOURCES}
    for _, resource, limit in session.execute(_LIMITS, {"cls": DEFAULT_CLASS,
                                                        "project": project_id}):
        if resource in out:
            out[resource] = limit
    return out


_Q, _QC = table(Quota).c, table(QuotaClass).c
_LIMITS = union_all(
    select(literal(0).label("rank"), _QC.resource, _QC.hard_limit)
    .where(_QC.class_name == bindparam("cls")),
    select(literal(1).label("rank"), _Q.resource, _Q.hard_limit)
    .where(_Q.project_id == bindparam("project"))).order_by("rank")


def set_project_limits(session: Session, project_id: str, values: Mapping[str, float]) -> None:
    for resource, limit in values.items():
        row = session.scalars(select(Quota).where(Quota.project_id == project_id,
                                                  Quota.resource == resource)).first()
        if row is None:
            session.add(Quota(project_id=project_id, resource=resource, hard_limit=limit))
        else:
            row.hard_limit = limit


def delete_project_limits(session: Session, project_id: str) -> None:
    for row in session.scalars(select(Quota).where(Quota.project_id == project_id)).all():
        session.delete(row)


def set_class_limits(session: Session, name: str, values: Mapping[str, float]) -> None:
    for resource, limit in values.items():
        row = session.scalars(select(QuotaClass).where(QuotaClass.class_name == name,
                                                       QuotaClass.resource == resource)).first()
        if row is None:
            session.add(QuotaClass(class_name=name, resource=resource, hard_limit=limit))
        else:
            row.hard_limit = limit
