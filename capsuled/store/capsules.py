"""Capsule rows: create, find by uuid or name within a project, list, mark for deletion,
and fold the agent's observations back in."""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass

from sqlalchemy import Select, exists, select, update
from sqlalchemy.orm import Session, selectinload

from capsuled.domain.channel import Assignment, CapsuleReport
from capsuled.domain.spec import CapsuleSpec
from capsuled.domain.status import Status, container_status, derive_capsule_status
from capsuled.errors import Conflict, InvalidInput, NotFound
from capsuled.store.tables import Capsule, CapsuleLabel, Container, Event, Host, Volume, utcnow

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
SORT_KEYS = {"id", "uuid", "name", "status", "created_at", "updated_at", "cpu", "memory", "host"}


@dataclass(frozen=True)
class Page:
    limit: int
    marker: str | None = None
    sort_key: str = "id"
    sort_dir: str = "asc"


def _eager(stmt: Select[tuple[Capsule]]) -> Select[tuple[Capsule]]:
    return stmt.options(selectinload(Capsule.containers), selectinload(Capsule.volumes))


def bump_host_revision(session: Session, host: str | None) -> None:
    """Every change to a host's desired set bumps its revision, which wakes its agent."""
    if host:
        session.execute(update(Host).where(Host.name == host).values(revision=Host.revision + 1))


def create_capsule(session: Session, spec: CapsuleSpec, project_id: str, user_id: str,
                   host: str | None, status: Status = Status.CREATING,
                   status_reason: str | None = None) -> Capsule:
    capsule_uuid = str(uuidlib.uuid4())
    containers = [c.model_copy(update={"uuid": str(uuidlib.uuid4())}) for c in spec.init_containers]
    apps = [c.model_copy(update={"uuid": str(uuidlib.uuid4())}) for c in spec.containers]
    spec = spec.model_copy(update={"init_containers": containers, "containers": apps})
    row = Capsule(uuid=capsule_uuid, name=spec.name, project_id=project_id, user_id=user_id,
                  labels=spec.labels, annotations=spec.annotations,
                  spec=spec.model_dump(mode="json"), status=status.value,
                  status_reason=status_reason, cpu=spec.total_cpu(), memory=spec.total_memory(),
                  host=host, created_at=utcnow())
    row.containers = [
        Container(uuid=c.uuid, role=c.role, position=i, name=c.name, project_id=project_id,
                  user_id=user_id, image=c.image, status=status.value)
        for i, c in enumerate(spec.all_containers)]
    row.volumes = [
        Volume(uuid=str(uuidlib.uuid4()), name=v.name, type=v.type, size=v.size,
               auto_remove=v.auto_remove, project_id=project_id, user_id=user_id)
        for v in spec.volumes]
    row.label_rows = [CapsuleLabel(key=k, value=v) for k, v in spec.labels.items()]
    session.add(row)
    session.flush()
    add_event(session, row, "Normal", "Accepted",
              f"capsule accepted, scheduled to {host}" if host else "capsule accepted")
    bump_host_revision(session, host)
    return row


def add_event(session: Session, capsule: Capsule, type_: str, reason: str, message: str,
              container: str | None = None) -> None:
    session.add(Event(capsule_id=capsule.id, type=type_, reason=reason, message=message,
                      container=container, created_at=utcnow(), project_id=capsule.project_id,
                      user_id=capsule.user_id))


def get_capsule(session: Session, ident: str, project_id: str | None) -> Capsule:
    """By uuid, else by name; scoped to a project unless `project_id` is None (admin)."""
    stmt = _eager(select(Capsule))
    if project_id is not None:
        stmt = stmt.where(Capsule.project_id == project_id)
    if UUID_RE.match(ident):
        found = session.scalars(stmt.where(Capsule.uuid == ident.lower())).all()
    else:
        found = session.scalars(stmt.where(Capsule.name == ident).limit(2)).all()
    if not found:
        raise NotFound(f"Capsule {ident} could not be found.")
    if len(found) > 1:
        raise Conflict(f"Multiple capsules exist with name {ident}. Please use the capsule uuid instead.")
    return found[0]


def list_capsules(session: Session, project_id: str | None, page: Page,
                  labels: dict[str, str] | None = None) -> list[Capsule]:
    if page.sort_key not in SORT_KEYS:
        raise InvalidInput(f"sort_key: unknown field {page.sort_key!r}; use one of "
                           + ", ".join(sorted(SORT_KEYS)))
    column = getattr(Capsule, page.sort_key)
    stmt = _eager(select(Capsule))
    if project_id is not None:
        stmt = stmt.where(Capsule.project_id == project_id)
    for key, value in (labels or {}).items():
        stmt = stmt.where(exists().where(CapsuleLabel.capsule_id == Capsule.id,
                                         CapsuleLabel.key == key, CapsuleLabel.value == value))
    if page.marker is not None:
        marker = session.scalars(select(Capsule).where(Capsule.uuid == page.marker)).first()
        if marker is None:
            raise NotFound(f"Marker {page.marker} could not be found.")
        after = (column, Capsule.id) if page.sort_dir == "asc" else (column, Capsule.id)
        mval = getattr(marker, page.sort_key)
        if page.sort_dir == "asc":
            stmt = stmt.where((after[0] > mval) | ((after[0] == mval) & (Capsule.id > marker.id)))
        else:
            stmt = stmt.where((after[0] < mval) | ((after[0] == mval) & (Capsule.id < marker.id)))
    order = (column.asc(), Capsule.id.asc()) if page.sort_dir == "asc" else (
        column.desc(), Capsule.id.desc())
    return list(session.scalars(stmt.order_by(*order).limit(page.limit)).all())


def mark_deleting(session: Session, capsule: Capsule) -> None:
    """Unplaced capsules go at once; placed ones wait for their agent to clean up."""
    if capsule.host is None:
        session.delete(capsule)
        return
    if capsule.deleting:
        return
    capsule.deleting = True
    capsule.generation += 1
    capsule.status = Status.DELETING.value
    capsule.status_reason = None
    capsule.updated_at = utcnow()
    add_event(session, capsule, "Normal", "Deleting", "delete requested")
    bump_host_revision(session, capsule.host)


def assignments_for(session: Session, host: str) -> list[Assignment]:
    rows = session.execute(
        select(Capsule.uuid, Capsule.generation, Capsule.deleting, Capsule.spec, Capsule.project_id)
        .where(Capsule.host == host).order_by(Capsule.id)).all()
    return [Assignment(uuid=u, generation=g, deleting=d, spec=CapsuleSpec.model_validate(s),
                       project_id=p)
            for u, g, d, s, p in rows]


def apply_report(session: Session, host: str, report: CapsuleReport) -> None:
    """Fold one observation into the rows. Reports for other hosts' or unknown capsules,
    or for an older generation, are ignored: they can only be late."""
    capsule = session.scalars(_eager(select(Capsule)).where(
        Capsule.uuid == report.uuid, Capsule.host == host)).first()
    if capsule is None or report.generation < capsule.generation:
        return
    if report.gone:
        if capsule.deleting:
            session.delete(capsule)
        return
    now = utcnow()
    by_uuid = {c.uuid: c for c in capsule.containers}
    for c in report.containers:
        row = by_uuid.get(c.uuid)
        if row is None:
            continue
        status, reason = container_status(c)
        if (row.status, row.exit_code, row.restart_count) != (status.value, c.exit_code, c.restart_count):
            row.updated_at = now
            if c.role == "init" and c.state == "exited" and c.exit_code not in (0, None):
                # Recorded here, on the change, so that re-reports of a blocked capsule don't repeat it.
                add_event(session, capsule, "Warning", "InitFailed",
                          f"init container {c.name} exited with code {c.exit_code}", c.name)
        row.status, row.status_reason = status.value, reason
        row.runtime_id, row.exit_code, row.restart_count = c.runtime_id, c.exit_code, c.restart_count
        row.started_at, row.finished_at = c.started_at, c.finished_at
    if report.sandbox_recreated:
        capsule.restart_count += 1
    status, reason = derive_capsule_status(report, capsule.deleting)
    if (capsule.status, capsule.status_reason) != (status.value, reason):
        capsule.updated_at = now
        if capsule.status != status.value:
            kind = "Warning" if status in (Status.ERROR, Status.RESTARTING) else "Normal"
            add_event(session, capsule, kind, status.value,
                      f"{capsule.status} → {status.value}" + (f": {reason}" if reason else ""))
    capsule.status, capsule.status_reason = status.value, reason
    capsule.sandbox_id = report.sandbox_id
    for type_, reason_, message, container in report.events:
        add_event(session, capsule, type_, reason_, message, container)


def list_events(session: Session, capsule: Capsule) -> list[Event]:
    return list(session.scalars(
        select(Event).where(Event.capsule_id == capsule.id).order_by(Event.id)).all())
