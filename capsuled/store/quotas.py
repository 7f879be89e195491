"""Quota limits (per project, per class) and usage: the project's running totals
(store/usage.py), kept in the transaction of every change that holds resources and
checked against a recount of the rows by the tests (and `capsuled db recount`)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from capsuled.store import usage as totals
from capsuled.store.tables import ProjectLock, Quota, QuotaClass

RESOURCES = ("capsules", "containers", "cpu", "memory", "disk")
DEFAULT_CLASS = "default"


def ensure_lock_row(session: Session, project_id: str) -> None:
    """Create the project's lock row (and its usage row); commit this on its own, before
    `lock_project`."""
    if session.get(ProjectLock, project_id) is None:
        session.add(ProjectLock(project_id=project_id, version=0))
        totals.ensure_rows(session, project_id=project_id)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()  # another request created it first: just as good


def lock_project(session: Session, project_id: str) -> None:
    """Take the project's write lock for the rest of the transaction: a row update,
    which every engine serialises, before any quota read."""
    session.execute(update(ProjectLock).where(ProjectLock.project_id == project_id)
                    .values(version=ProjectLock.version + 1))


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
    out = class_limits(session, DEFAULT_CLASS, defaults)
    for row in session.scalars(select(Quota).where(Quota.project_id == project_id)):
        if row.resource in out:
            out[row.resource] = row.hard_limit
    return out


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
