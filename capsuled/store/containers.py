"""Container rows: bare containers (their own desired state and placement), capsule members
added at run time, lookups across both, and the action history."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session, selectinload

from capsuled.domain.addresses import parse_stored
from capsuled.domain.channel import BareReport, ContainerAssignment
from capsuled.domain.fold import EventRecord
from capsuled.domain.spec import BareSpec, CapsuleSpec, ContainerSpec
from capsuled.domain.status import Status, container_status
from capsuled.errors import Conflict, InvalidInput, NotFound
from capsuled.store.capsules import (UUID_RE, Page, bump_host_revision, change_spec,
                                     forget_actions, retention)
from capsuled.domain.template import short
from capsuled.store.capsules import conditions_of, storable_ident
from capsuled.store import outbox, overlay
from capsuled.store.tables import Capsule, Container, ContainerAction, utcnow

SORT_KEYS = {"id", "uuid", "name", "status", "created_at", "updated_at", "cpu", "memory",
             "host", "image"}
BARE = "bare"


def _eager(stmt: Select[Container]) -> Select[Container]:
    return stmt.options(selectinload(Container.capsule))


def create_bare(session: Session, spec: BareSpec, name: str, project_id: str, user_id: str,
                host: str | None, desired_state: str, status: Status = Status.CREATING,
                status_reason: str | None = None) -> Container:
    uuid = str(uuidlib.uuid4())
    spec = spec.model_copy(update={"container": spec.container.model_copy(
        update={"uuid": uuid, "name": name, "role": "app"})})
    c = spec.container
    row = Container(uuid=uuid, capsule_id=None, role=BARE, position=0, name=name,
                    project_id=project_id, user_id=user_id, image=c.image, status=status.value,
                    status_reason=status_reason, spec=spec.model_dump(mode="json"), host=host,
                    cpu=c.cpu or 0.0, memory=c.memory or 0, disk=spec.disk,
                    desired_state=desired_state, generation=1, created_at=utcnow(),
                    registry_id=c.registry)
    session.add(row)
    session.flush()
    changed(session, row, "container.create.start", "Accepted", "container accepted")
    if host:
        changed(session, row, "container.update", "Scheduled", "container placed on a host")
    elif status is Status.ERROR:
        changed(session, row, "container.create.error", "Unschedulable", status_reason or "")
    bump_host_revision(session, host)
    return row


def changed(session: Session, row: Container, event_type: str, reason: str, message: str = "",
            status: str | None = None) -> None:
    """The outbox record of a change to the bare container `row` (committed with it)."""
    labels = ((row.spec or {}).get("container") or {}).get("labels") or {}
    outbox.record(session, project_id=row.project_id, kind="container", uuid=row.uuid,
                  name=row.name, event_type=event_type, reason=reason, message=message,
                  status=status or row.status, labels=labels if isinstance(labels, dict) else {})


def add_member(session: Session, capsule: Capsule, spec: ContainerSpec, user_id: str) -> Container:
    """Add an app container to a running capsule (`run --capsule`): into its spec, which
    the agent reconciles, and as a row, which the API shows."""
    if capsule.deleting:
        raise Conflict(f"Capsule {capsule.name or capsule.uuid} is being deleted.")
    cspec = CapsuleSpec.model_validate(capsule.spec)
    if any(c.name == spec.name for c in cspec.all_containers):
        raise Conflict(f"Capsule {capsule.name or capsule.uuid} already has a container "
                       f"named {spec.name}.")
    volumes = {v.name for v in cspec.volumes}
    missing = [m.name for m in spec.volume_mounts if m.name not in volumes]
    if missing:
        raise InvalidInput([f"mounts: capsule {capsule.name or capsule.uuid} has no volume "
                            f"named {name}" for name in missing])
    uuid = str(uuidlib.uuid4())
    spec = spec.model_copy(update={"uuid": uuid, "role": "app"})
    row = Container(uuid=uuid, capsule_id=capsule.id, role="app",
                    position=len(capsule.containers), name=spec.name,
                    project_id=capsule.project_id, user_id=capsule.user_id, image=spec.image,
                    status=Status.CREATING.value, created_at=utcnow(), registry_id=spec.registry)
    capsule.containers.append(row)
    change_spec(session, capsule, cspec.model_copy(update={"containers": [*cspec.containers, spec]}),
                EventRecord("Normal", "ContainerAdded", f"container {spec.name} added", spec.name),
                user_id=user_id, cause=f"added container {spec.name}")
    return row


def get_container(session: Session, ident: str, project_id: str | None,
                  capsule: Capsule | None = None) -> Container:
    """By uuid (any container), or by name: a bare container's, or one of `capsule`'s."""
    if not storable_ident(ident):
        raise NotFound(f"Container {short(ident)} could not be found.")
    stmt = _eager(select(Container))
    if project_id is not None:
        stmt = stmt.where(Container.project_id == project_id)
    if capsule is not None:
        stmt = stmt.where(Container.capsule_id == capsule.id)
    if UUID_RE.match(ident):
        found = session.scalars(stmt.where(Container.uuid == ident.lower())).all()
    else:
        if capsule is None:
            stmt = stmt.where(Container.role == BARE)
        found = session.scalars(stmt.where(Container.name == ident).limit(2)).all()
    if not found:
        raise NotFound(f"Container {ident} could not be found.")
    if len(found) > 1:
        raise Conflict(f"Multiple containers exist with name {ident}. Please use the container "
                       "uuid instead.")
    return found[0]


def bare_by_uuids(session: Session, uuids: Collection[str]) -> list[Container]:
    """The bare containers of `uuids` that still exist, any project's (the notifier renders
    a batch of changes with one read)."""
    if not uuids:
        return []
    return list(session.scalars(select(Container).where(Container.uuid.in_(list(uuids)),
                                                        Container.role == BARE)))


def list_containers(session: Session, project_id: str | None, page: Page,
                    capsule: Capsule | None = None,
                    filters: dict[str, str] | None = None) -> list[Container]:
    if page.sort_key not in SORT_KEYS:
        raise InvalidInput(f"sort_key: unknown field {page.sort_key!r}; use one of "
                           + ", ".join(sorted(SORT_KEYS)))
    column = getattr(Container, page.sort_key)
    stmt = _eager(select(Container))
    stmt = stmt.where(Container.capsule_id == capsule.id) if capsule is not None else stmt.where(
        Container.role == BARE)
    if project_id is not None:
        stmt = stmt.where(Container.project_id == project_id)
    scope = stmt  # what may be listed here, whatever the filters
    for key, value in (filters or {}).items():
        stmt = stmt.where(getattr(Container, key) == value)
    if page.marker is not None:
        # Only a row within this listing's scope is a marker: another project's (or
        # capsule's) container is as unknown as a made-up uuid.
        marker = session.scalars(scope.where(Container.uuid == page.marker)).first()
        if marker is None:
            raise NotFound(f"Marker {page.marker} could not be found.")
        mval = getattr(marker, page.sort_key)
        if page.sort_dir == "asc":
            stmt = stmt.where((column > mval) | ((column == mval) & (Container.id > marker.id)))
        else:
            stmt = stmt.where((column < mval) | ((column == mval) & (Container.id < marker.id)))
    order = (column.asc(), Container.id.asc()) if page.sort_dir == "asc" else (
        column.desc(), Container.id.desc())
    return list(session.scalars(stmt.order_by(*order).limit(page.limit)).all())


def set_desired(session: Session, row: Container, desired_state: str | None = None,
                spec: BareSpec | None = None) -> None:
    """Change what the agent should converge to; bumps the generation and wakes it."""
    if desired_state is not None and desired_state != row.desired_state:
        row.desired_state = desired_state
        changed(session, row, "container.update", "DesiredState", f"asked to be {desired_state}")
    if spec is not None:
        changed(session, row, "container.update", "SpecChanged", "the container's spec changed")
        row.spec = spec.model_dump(mode="json")
        row.cpu = spec.container.cpu or 0.0
        row.memory = spec.container.memory or 0
    row.generation += 1
    row.updated_at = utcnow()
    bump_host_revision(session, row.host)


def mark_deleting(session: Session, row: Container) -> None:
    if row.host is None:
        changed(session, row, "container.delete.start", "Deleting", "delete requested")
        changed(session, row, "container.delete.end", "Deleted", "container deleted", "Deleted")
        session.delete(row)
        return
    if not row.deleting:
        row.deleting = True
        row.status, row.status_reason = Status.DELETING.value, None
        changed(session, row, "container.delete.start", "Deleting", "delete requested")
        set_desired(session, row)


def bare_assignments_for(session: Session, host: str) -> list[ContainerAssignment]:
    rows = session.execute(
        select(Container.uuid, Container.name, Container.generation, Container.deleting,
               Container.desired_state, Container.runtime_id, Container.spec,
               Container.project_id, Container.addresses)
        .where(Container.host == host, Container.role == BARE).order_by(Container.id)).all()
    return [ContainerAssignment(uuid=u, name=n, generation=g, deleting=d, desired_state=ds,
                                runtime_id=rid, spec=BareSpec.model_validate(sp), project_id=p,
                                addresses=parse_stored(a))
            for u, n, g, d, ds, rid, sp, p, a in rows]


def apply_bare_report(session: Session, host: str, report: BareReport) -> None:
    row = session.scalars(select(Container).where(
        Container.uuid == report.uuid, Container.host == host, Container.role == BARE)).first()
    if row is None or report.generation < row.generation:
        return
    if report.gone:
        if row.deleting or (row.spec or {}).get("auto_remove"):
            overlay.names_changed(session, row.project_id)
            forget_actions(session, [row.uuid])
            changed(session, row, "container.delete.end", "Deleted", "container deleted", "Deleted")
            session.delete(row)
        return
    now = utcnow()
    reason: str | None
    if report.error:
        status, reason = Status.ERROR, report.error
    elif report.container is not None:
        status, reason = container_status(report.container)
        c = report.container
        row.runtime_id, row.exit_code, row.restart_count = c.runtime_id, c.exit_code, c.restart_count
        row.started_at, row.finished_at = c.started_at, c.finished_at
        conditions = conditions_of(c)
        if row.probe != conditions:
            row.probe = conditions
        if c.addresses:  # none seen (stopped, being remade): the last ones stay
            seen = [a.model_dump() for a in c.addresses]
            if row.addresses != seen:
                row.addresses = seen
                overlay.names_changed(session, row.project_id)
        # Unlike an address, a host port Docker picked is the container's only while it
        # runs: shown as it is now.
        ports = [b.model_dump() for b in c.ports] or None
        if row.published_ports != ports:
            row.published_ports = ports
    else:
        return
    if row.deleting:
        status, reason = Status.DELETING, None
    elif row.status == Status.REBUILDING.value and status is Status.CREATING:
        status, reason = Status.REBUILDING, None  # the old container gone, the new one not yet
    if (row.status, row.status_reason) != (status.value, reason):
        row.updated_at = now
    before = row.status
    row.status, row.status_reason = status.value, reason
    if before != row.status:
        ended = before in (Status.CREATING.value, Status.REBUILDING.value) and status not in (
            Status.CREATING, Status.REBUILDING)
        kind = ("container.create.error" if status is Status.ERROR else "container.create.end"
                ) if ended else "container.update"
        changed(session, row, kind, "StatusChanged",
                f"{before} -> {row.status}" + (f": {reason}" if reason else ""))
    if status not in (Status.CREATING, Status.REBUILDING):
        finish_actions(session, row.uuid, "Error" if status is Status.ERROR else None,
                       reason if status is Status.ERROR else None, only=("create", "rebuild"))


# -- actions ------------------------------------------------------------------------------

def record_action(session: Session, container_uuid: str, action: str, request_id: str,
                  project_id: str, user_id: str, finished: bool = False,
                  error: str | None = None) -> ContainerAction:
    now = utcnow()
    row = ContainerAction(container_uuid=container_uuid, action=action, request_id=request_id,
                          project_id=project_id, user_id=user_id, start_time=now,
                          finish_time=now if finished else None,
                          message="Error" if error else None, detail=error)
    session.add(row)
    _prune_actions(session, container_uuid, now)
    return row


def _prune_actions(session: Session, container_uuid: str, now: datetime) -> None:
    """Keep the newest actions of a container, and only finished ones younger than the
    retention age (an unfinished one is still being acted on)."""
    keep = retention()
    session.flush()
    oldest_kept = session.scalar(select(ContainerAction.id).where(
        ContainerAction.container_uuid == container_uuid)
        .order_by(ContainerAction.id.desc()).offset(keep.actions - 1).limit(1))
    stale = ContainerAction.finish_time < now - keep.max_age
    if oldest_kept is not None:
        stale = stale | (ContainerAction.id < oldest_kept)
    session.execute(delete(ContainerAction).where(
        ContainerAction.container_uuid == container_uuid, stale),
        execution_options={"synchronize_session": False})


def finish_actions(session: Session, container_uuid: str, message: str | None,
                   detail: str | None = None, only: tuple[str, ...] | None = None) -> None:
    stmt = select(ContainerAction).where(ContainerAction.container_uuid == container_uuid,
                                         ContainerAction.finish_time.is_(None))
    if only:
        stmt = stmt.where(ContainerAction.action.in_(only))
    for a in session.scalars(stmt).all():
        a.finish_time, a.message, a.detail = utcnow(), message, detail


def list_actions(session: Session, container_uuid: str, limit: int | None = None,
                 marker: str | None = None) -> list[ContainerAction]:
    """Oldest first; after the action whose request id is `marker`."""
    stmt = select(ContainerAction).where(ContainerAction.container_uuid == container_uuid)
    if marker is not None:
        after = session.scalar(select(ContainerAction.id).where(
            ContainerAction.container_uuid == container_uuid,
            ContainerAction.request_id == marker).order_by(ContainerAction.id.desc()).limit(1))
        if after is None:
            raise NotFound(f"Marker {marker} could not be found.")
        stmt = stmt.where(ContainerAction.id > after)
    return list(session.scalars(stmt.order_by(ContainerAction.id).limit(limit)).all())


def force_delete(session: Session, row: Container) -> None:
    """A bare container's row goes now (its quota and host claims with it); if its agent
    comes back it removes the container, and its volumes, as an orphan."""
    forget_actions(session, [row.uuid])
    host = row.host
    changed(session, row, "container.delete.end", "ForceDeleted", "container deleted by force",
            "Deleted")
    session.delete(row)
    bump_host_revision(session, host)


def get_action(session: Session, container_uuid: str, request_id: str) -> ContainerAction:
    if not storable_ident(request_id):
        raise NotFound(f"Action {short(request_id)} could not be found.")
    found = session.scalars(select(ContainerAction).where(
        ContainerAction.container_uuid == container_uuid,
        ContainerAction.request_id == request_id)).first()
    if found is None:
        raise NotFound(f"Action {request_id} could not be found.")
    return found
