"""Quota limits (per project, per class) and usage, which is always derived from the rows
that hold resources, so it cannot drift after a crash or a lost update."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from capsuled.store.tables import Capsule, Container, ProjectLock, Quota, QuotaClass, Volume

RESOURCES = ("capsules", "containers", "cpu", "memory", "disk")
DEFAULT_CLASS = "default"


def ensure_lock_row(session: Session, project_id: str) -> None:
    """Create the project's lock row; commit this on its own, before `lock_project`."""
    if session.get(ProjectLock, project_id) is None:
        session.add(ProjectLock(project_id=project_id, version=0))
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
    capsules, cpu, memory = session.execute(
        select(func.count(Capsule.id), func.coalesce(func.sum(Capsule.cpu), 0.0),
               func.coalesce(func.sum(Capsule.memory), 0))
        .where(Capsule.project_id == project_id)).one()
    containers = session.scalar(select(func.count(Container.id))
                                .where(Container.project_id == project_id)) or 0
    bare_cpu, bare_memory = session.execute(
        select(func.coalesce(func.sum(Container.cpu), 0.0), func.coalesce(func.sum(Container.memory), 0))
        .where(Container.project_id == project_id, Container.role == "bare")).one()
    disk = session.scalar(select(func.coalesce(func.sum(Volume.size), 0))
                          .where(Volume.project_id == project_id)) or 0
    disk += session.scalar(select(func.coalesce(func.sum(Container.disk), 0))
                           .where(Container.project_id == project_id, Container.role == "bare")) or 0
    return {"capsules": float(capsules), "containers": float(containers),
            "cpu": float(cpu) + float(bare_cpu), "memory": float(memory) + float(bare_memory),
            "disk": float(disk)}


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
