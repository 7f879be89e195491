"""Counts for operators (/metrics): capsules and containers by project and status."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, literal, select, union_all
from sqlalchemy.orm import Session

from capsuled.store.tables import Capsule, Container


@dataclass(frozen=True)
class StatusCount:
    kind: str  # capsule | container (bare ones and capsules' members alike)
    project_id: str
    status: str
    count: int


def status_counts(session: Session) -> list[StatusCount]:
    """One grouped query over both tables (one round trip; each side reads its table
    once). As many rows as (project, status) pairs in use: bounded by the projects."""
    capsules = (select(literal("capsule").label("kind"), Capsule.project_id, Capsule.status,
                       func.count().label("n"))
                .group_by(Capsule.project_id, Capsule.status))
    containers = (select(literal("container").label("kind"), Container.project_id,
                         Container.status, func.count().label("n"))
                  .group_by(Container.project_id, Container.status))
    return [StatusCount(str(kind), str(project), str(status), int(n))
            for kind, project, status, n in session.execute(union_all(capsules, containers))]
