"""Capsule rows: create, find by uuid or name within a project, list, mark for deletion,
and fold the agent's observations back in."""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Text, cast, delete, exists, func, insert, select
from sqlalchemy.orm import Session, joinedload, selectinload

from capsuled.domain.addresses import parse_stored
from capsuled.domain.channel import Assignment, CapsuleReport, ContainerReport
from capsuled.domain.spec import CapsuleSpec
from capsuled.domain.fold import CapsuleState, ChildState, EventRecord, fold_report
from capsuled.domain.rollout import Rollout
from capsuled.domain.status import Status
from capsuled.domain.template import short
from capsuled.errors import Conflict, InvalidInput, NotFound
from capsuled.store import host_ports, outbox, overlay, revisions, rollouts, security_groups
from capsuled.store.hosts import bump_revisions
from capsuled.store.tables import (Capsule, CapsuleLabel, Container, ContainerAction, Event, Host,
                                   Volume, table, utcnow)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
SORT_KEYS = {"id", "uuid", "name", "status", "created_at", "updated_at", "cpu", "memory", "host"}


@dataclass(frozen=True)
class Page:
    limit: int
    marker: str | None = None
    sort_key: str = "id"
    sort_dir: str = "asc"


@dataclass(slots=True)
class CapsuleRow:
    """A listed capsule: its row's columns, its containers and volumes, read without the ORM.

    A page of 1,000 capsules is 3,000 rows; as ORM objects (identity map, instance state,
    change tracking, selectin loaders) they cost several times what the columns do. Lists
    only render, so they get these read-only rows, whose attributes have the same names
    as Capsule's, but for the spec: its JSON text, which pydantic parses into a CapsuleSpec
    in one step (json.loads and then model_validate take half as long again)."""

    id: int
    uuid: str
    name: str | None
    project_id: str
    user_id: str
    labels: dict[str, Any]
    annotations: dict[str, Any]
    spec_json: str  # the spec column's JSON text: CapsuleSpec.model_validate_json parses it
    status: str
    status_reason: str | None
    cpu: float
    memory: int
    host: str | None
    generation: int
    deleting: bool
    restart_count: int
    sandbox_id: str | None
    created_at: datetime
    updated_at: datetime | None
    revision: int
    rollout: dict[str, Any] | None
    containers: list[ContainerRow] = field(default_factory=list)
    volumes: list[VolumeRow] = field(default_factory=list)


@dataclass(slots=True)
class ContainerRow:
    """A listed capsule's container (slots: attribute reads cost a tenth of a Row's)."""

    capsule_id: int
    uuid: str
    role: str
    position: int
    name: str
    project_id: str
    user_id: str
    image: str
    status: str
    status_reason: str | None
    runtime_id: str | None
    exit_code: int | None
    restart_count: int
    started_at: str | None
    finished_at: str | None
    created_at: datetime
    updated_at: datetime | None
    addresses: list[Any] | None
    probe: dict[str, Any] | None


@dataclass(slots=True)
class VolumeRow:
    capsule_id: int
    uuid: str
    name: str
    type: str
    size: int | None
    auto_remove: bool
    docker_volume: str | None
    project_id: str
    user_id: str


def _columns(entity: Any, row: type, skip: tuple[str, ...] = ()) -> list[Any]:
    return [cast(entity.spec, Text) if f.name == "spec_json" else getattr(entity, f.name)
            for f in fields(row) if f.name not in skip]


_ROW_COLUMNS = _columns(Capsule, CapsuleRow, ("containers", "volumes"))
_CONTAINER_COLUMNS = _columns(Container, ContainerRow)
_VOLUME_COLUMNS = _columns(Volume, VolumeRow)
_IN_CHUNK = 500  # ids per IN (...) list, as SQLAlchemy's selectin loader does


def _eager(stmt: Select[Capsule]) -> Select[Capsule]:
    return stmt.options(selectinload(Capsule.containers), selectinload(Capsule.volumes))


def bump_host_revision(session: Session, host: str | None) -> None:
    """Every change to a host's desired set bumps its revision, which wakes its agent
    (Core: Host objects a session holds keep their old revision; hosts.host_revision
    reads the column)."""
    if host:
        bump_revisions(session, (host,))


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
                  user_id=user_id, image=c.image, status=status.value, registry_id=c.registry)
        for i, c in enumerate(spec.all_containers)]
    row.volumes = [
        Volume(uuid=str(uuidlib.uuid4()), name=v.name, type=v.type, size=v.size,
               auto_remove=v.auto_remove, project_id=project_id, user_id=user_id)
        for v in spec.volumes]
    row.label_rows = [CapsuleLabel(key=k, value=v) for k, v in spec.labels.items()]
    host_ports.claim(session, row, spec)  # its fixed host ports, with its CPU and memory
    session.add(row)
    session.flush()
    revisions.record(session, row, spec, user_id, "created", 1)
    # Members read events: which host it went to is for administrators (the capsule's
    # admin-only `host` field), not for the message.
    # Its first event: nothing to count it on or to prune yet (add_event's two queries),
    # and no object to flush.
    session.execute(_INSERT_EVENT, {
        "capsule_id": row.id, "type": "Normal", "reason": "Accepted",
        "message": "capsule accepted and scheduled" if host else "capsule accepted",
        "container": None, "created_at": utcnow(), "project_id": project_id,
        "user_id": user_id})
    changed(session, row, "capsule.create.start", "Accepted", "capsule accepted")
    if host:
        changed(session, row, "capsule.update", "Scheduled", "capsule placed on a host")
    elif status is Status.ERROR:
        changed(session, row, "capsule.create.error", "Unschedulable", status_reason or "")
    bump_host_revision(session, host)
    return row


_INSERT_EVENT = insert(table(Event))


def changed(session: Session, capsule: Capsule, event_type: str, reason: str,
            message: str = "", status: str | None = None) -> None:
    """The outbox record of a change to `capsule` (committed with it)."""
    outbox.record(session, project_id=capsule.project_id, kind="capsule", uuid=capsule.uuid,
                  name=capsule.name, event_type=event_type, reason=reason, message=message,
                  status=status or capsule.status, labels=capsule.labels)


def change_spec(session: Session, capsule: Capsule, spec: CapsuleSpec,
                event: EventRecord | None = None, *, user_id: str, cause: str,
                rollout: bool = False) -> int:
    """The one way a capsule's spec changes (a resize, an added container, an update or a
    rollback): the spec becomes a new revision (its number is returned), its cpu and
    memory totals and its host-port claims are written (the caller checked that new ports
    are free: Placement.ensure_ports), the generation goes up so that the agent reconciles
    it, and its host's revision wakes that agent. `event`, which describes the change, is
    recorded in the same transaction. While an update is under way only the rollout
    itself (`rollout`, store/rollouts.py) changes the spec: anything else is a 409, so
    that the agent is never given a mix of two changes."""
    if capsule.rollout is not None and not rollout:
        raise Conflict(rollouts.busy_message(capsule))
    moved = set(security_groups.groups_in(capsule.spec)) ^ set(spec.security_groups)
    number = capsule.revision + 1
    capsule.spec = spec.model_dump(mode="json")
    capsule.cpu, capsule.memory = spec.total_cpu(), spec.total_memory()
    host_ports.claim(session, capsule, spec, keep=rollout)
    capsule.generation += 1
    capsule.revision = number
    capsule.updated_at = utcnow()
    session.flush()
    revisions.record(session, capsule, spec, user_id, cause, number)
    if event is not None:
        add_event(session, capsule, event.type, event.reason, event.message, event.container)
    changed(session, capsule, "capsule.update", event.reason if event else "SpecChanged",
            event.message if event else "the capsule's spec changed")
    bump_host_revision(session, capsule.host)
    if moved:
        security_groups.members_changed(session, capsule.project_id, moved, capsule.host)
    return number


@dataclass(frozen=True)
class Retention:
    """How much history is kept: per capsule, the newest `events` events, and per
    container the newest `actions` actions; anything older than `max_age` goes too."""

    events: int = 200
    actions: int = 200
    max_age: timedelta = timedelta(days=7)
    revisions: int = 10


# Set once at start-up from the settings (limits.events_per_capsule, …) by the
# composition root; every writer of history prunes with it as it writes.
_retention = Retention()


def configure_retention(retention: Retention) -> None:
    global _retention
    _retention = retention
    revisions.configure(retention.revisions)


def retention() -> Retention:
    return _retention


# An event equal to one of the capsule's newest few is counted on that one (kubelet does
# the same): a sync failing on every retry interleaves its failure with status changes.
_AGGREGATE_WITHIN = 10


def add_event(session: Session, capsule: Capsule, type_: str, reason: str, message: str,
              container: str | None = None) -> None:
    """Record one event (see add_events)."""
    add_events(session, capsule, [EventRecord(type_, reason, message, container)])


def add_events(session: Session, capsule: Capsule, events: Sequence[EventRecord]) -> None:
    """Record events, in order. One equal to one of the capsule's newest (a sync that fails
    on every retry) only counts up that one; new ones prune what is past retention. One
    read, one insert and one prune for all of them: an agent's report carries several (a
    capsule's start: the sandbox and each container), and each on its own cost a third
    of the report's time."""
    if not events:
        return
    now = utcnow()
    recent = session.scalars(select(Event).where(Event.capsule_id == capsule.id)
                             .order_by(Event.id.desc()).limit(_AGGREGATE_WITHIN)).all()
    stored = {EventRecord(e.type, e.reason, e.message, e.container).key: e
              for e in reversed(recent)}  # the newest of equal ones wins
    rows: list[dict[str, Any]] = []  # the new ones, in order
    at: dict[tuple[str, str, str, str | None], int] = {}  # key → its newest new row
    for event in events:
        key = event.key
        if key in at:
            if len(rows) - at[key] <= _AGGREGATE_WITHIN:  # among the newest few
                row = rows[at[key]]
                row["count"], row["last_at"] = row["count"] + 1, now
                continue
        elif key in stored and len(rows) + _newer_than(recent, stored[key]) < _AGGREGATE_WITHIN:
            same = stored[key]
            same.count = (same.count or 1) + 1
            same.last_at = now
            continue
        at[key] = len(rows)
        rows.append({"capsule_id": capsule.id, "type": event.type, "reason": event.reason,
                     "message": event.message, "container": event.container,
                     "created_at": now, "count": 1, "last_at": None,
                     "project_id": capsule.project_id, "user_id": capsule.user_id})
    if rows:
        session.execute(_INSERT_EVENT, rows)
        _prune_events(session, capsule.id, now)


def _newer_than(recent: Sequence[Event], event: Event) -> int:
    """How many of `recent` (newest first) are newer than `event`."""
    return next(i for i, e in enumerate(recent) if e is event)


def _prune_events(session: Session, capsule_id: int, now: datetime) -> None:
    keep = _retention
    session.flush()
    oldest_kept = session.scalar(select(Event.id).where(Event.capsule_id == capsule_id)
                                 .order_by(Event.id.desc()).offset(keep.events - 1).limit(1))
    stale = func.coalesce(Event.last_at, Event.created_at) < now - keep.max_age
    if oldest_kept is not None:
        stale = stale | (Event.id < oldest_kept)
    session.execute(delete(Event).where(Event.capsule_id == capsule_id, stale),
                    execution_options={"synchronize_session": False})


def get_capsule(session: Session, ident: str, project_id: str | None) -> Capsule:
    """By uuid, else by name; scoped to a project unless `project_id` is None (admin).

    One query: containers and volumes are joined in (a capsule has a few of each), where
    selectin loading would take three round trips and twice the CPU."""
    if not storable_ident(ident):
        raise NotFound(f"Capsule {short(ident)} could not be found.")
    stmt = select(Capsule).options(joinedload(Capsule.containers), joinedload(Capsule.volumes))
    if project_id is not None:
        stmt = stmt.where(Capsule.project_id == project_id)
    if UUID_RE.match(ident):
        found = session.scalars(stmt.where(Capsule.uuid == ident.lower())).unique().all()
    else:
        found = session.scalars(stmt.where(Capsule.name == ident).limit(2)).unique().all()
    if not found:
        raise NotFound(f"Capsule {ident} could not be found.")
    if len(found) > 1:
        raise Conflict(f"Multiple capsules exist with name {ident}. Please use the capsule uuid instead.")
    return found[0]


def by_uuids(session: Session, uuids: Collection[str]) -> list[Capsule]:
    """The capsules of `uuids` that still exist, any project's, with their containers and
    volumes (the notifier renders a batch of changes with one read)."""
    if not uuids:
        return []
    return list(session.scalars(_eager(select(Capsule).where(Capsule.uuid.in_(list(uuids))))))


def storable_ident(ident: str) -> bool:
    """Could `ident` be a stored uuid or name? PostgreSQL refuses NUL in a query, and no
    column is wider than 255: such an ident is not found, without asking the database."""
    return "\x00" not in ident and len(ident) <= 255


def list_capsules(session: Session, project_id: str | None, page: Page,
                  labels: dict[str, str] | None = None) -> list[CapsuleRow]:
    """A page of capsules with their containers and volumes, as read-only rows."""
    if page.sort_key not in SORT_KEYS:
        raise InvalidInput(f"sort_key: unknown field {page.sort_key!r}; use one of "
                           + ", ".join(sorted(SORT_KEYS)))
    column = getattr(Capsule, page.sort_key)
    stmt = select(*_ROW_COLUMNS)
    if project_id is not None:
        stmt = stmt.where(Capsule.project_id == project_id)
    for key, value in (labels or {}).items():
        stmt = stmt.where(exists().where(CapsuleLabel.capsule_id == Capsule.id,
                                         CapsuleLabel.key == key, CapsuleLabel.value == value))
    if page.marker is not None:
        # Looked up within what is being listed: another project's uuid is as unknown as
        # a made-up one (it must neither move the page nor confirm that it exists).
        found = select(Capsule.id, column).where(Capsule.uuid == page.marker)
        if project_id is not None:
            found = found.where(Capsule.project_id == project_id)
        marker = session.execute(found).first()
        if marker is None:
            raise NotFound(f"Marker {page.marker} could not be found.")
        marker_id, mval = marker
        if page.sort_dir == "asc":
            stmt = stmt.where((column > mval) | ((column == mval) & (Capsule.id > marker_id)))
        else:
            stmt = stmt.where((column < mval) | ((column == mval) & (Capsule.id < marker_id)))
    order = (column.asc(), Capsule.id.asc()) if page.sort_dir == "asc" else (
        column.desc(), Capsule.id.desc())
    rows = [CapsuleRow(*r) for r in session.execute(stmt.order_by(*order).limit(page.limit))]
    by_id = {r.id: r for r in rows}
    ids = list(by_id)
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start:start + _IN_CHUNK]
        for c in session.execute(select(*_CONTAINER_COLUMNS).where(Container.capsule_id.in_(chunk))
                                 .order_by(Container.capsule_id, Container.position, Container.id)):
            by_id[c[0]].containers.append(ContainerRow(*c))
        for v in session.execute(select(*_VOLUME_COLUMNS).where(Volume.capsule_id.in_(chunk))
                                 .order_by(Volume.id)):
            by_id[v[0]].volumes.append(VolumeRow(*v))
    return rows


def mark_deleting(session: Session, capsule: Capsule) -> None:
    """Unplaced capsules go at once; placed ones wait for their agent to clean up."""
    if capsule.host is None:
        changed(session, capsule, "capsule.delete.start", "Deleting", "delete requested")
        changed(session, capsule, "capsule.delete.end", "Deleted", "capsule deleted", "Deleted")
        session.delete(capsule)
        return
    if capsule.deleting:
        return
    capsule.deleting = True
    capsule.generation += 1
    rollouts.abandon(session, capsule, "the capsule is being deleted")
    capsule.status = Status.DELETING.value
    capsule.status_reason = None
    capsule.updated_at = utcnow()
    add_event(session, capsule, "Normal", "Deleting", "delete requested")
    changed(session, capsule, "capsule.delete.start", "Deleting", "delete requested")
    bump_host_revision(session, capsule.host)
    _left(session, capsule)


def _left(session: Session, capsule: Capsule) -> None:
    """Its address no longer admits anyone through its groups (it may soon be another's)."""
    security_groups.members_changed(session, capsule.project_id,
                                    security_groups.groups_in(capsule.spec), capsule.host)


def assignments_for(session: Session, host: str) -> list[Assignment]:
    # The sandbox's last addresses, which every member row holds: the first member's.
    addresses = (select(Container.addresses).where(Container.capsule_id == Capsule.id)
                 .order_by(Container.position, Container.id).limit(1).scalar_subquery())
    rows = session.execute(
        select(Capsule.uuid, Capsule.generation, Capsule.deleting, Capsule.spec, Capsule.project_id,
               addresses)
        .where(Capsule.host == host).order_by(Capsule.id)).all()
    return [Assignment(uuid=u, generation=g, deleting=d, spec=CapsuleSpec.model_validate(s),
                       project_id=p, addresses=parse_stored(a))
            for u, g, d, s, p, a in rows]


def apply_report(session: Session, host: str, report: CapsuleReport) -> None:
    """Fold one observation into the rows. Reports for other hosts' or unknown capsules,
    or for an older generation, are ignored: they can only be late. The capsule's row is
    locked first (rollouts.lock_row), so an update committed while this folds cannot be
    overwritten by what the agent saw of the old spec, and a rollout is judged once."""
    rollouts.lock_row(session, Capsule.uuid == report.uuid, Capsule.host == host)
    capsule = session.scalars(_eager(select(Capsule)).where(
        Capsule.uuid == report.uuid, Capsule.host == host)).first()
    if capsule is None or report.generation < capsule.generation:
        return
    if report.gone:
        if capsule.deleting:
            overlay.names_changed(session, capsule.project_id)
            forget_actions(session, [c.uuid for c in capsule.containers])
            changed(session, capsule, "capsule.delete.end", "Deleted", "capsule deleted", "Deleted")
            session.delete(capsule)
        return
    rollout = rollouts.current(capsule)
    fold = fold_report(_state_of(capsule, rollout), report)
    now = utcnow()
    by_uuid = {c.uuid: c for c in capsule.containers}
    for u in fold.containers:
        row, c = by_uuid[u.report.uuid], u.report
        if u.changed:
            row.updated_at = now
        row.status, row.status_reason = u.status.value, u.reason
        row.runtime_id, row.exit_code, row.restart_count = c.runtime_id, c.exit_code, c.restart_count
        row.started_at, row.finished_at = c.started_at, c.finished_at
        conditions = conditions_of(c)
        if row.probe != conditions:
            row.probe = conditions
    if report.addresses:  # none seen (sandbox stopped or being remade): the last ones stay
        seen = [a.model_dump() for a in report.addresses]
        moved = False
        for row in capsule.containers:
            if row.addresses != seen:
                row.addresses, moved = seen, True
                overlay.names_changed(session, capsule.project_id)
        if moved:  # the firewalls that admit its groups' members admit its new address
            security_groups.members_changed(session, capsule.project_id,
                                            security_groups.groups_in(capsule.spec), host)
    if fold.sandbox_recreated:
        capsule.restart_count += 1
    before, before_reason = capsule.status, capsule.status_reason
    status, reason = fold.status.value, fold.reason
    if rollout is not None:
        # The capsule shows Updating until the rollout ends; what its containers say is
        # kept in the rollout, which this observation may end (or roll back).
        status, reason = rollouts.observe(session, capsule, rollout, fold.status, fold.reason,
                                          report.converged, now)
    capsule.status, capsule.status_reason = status, reason
    status_told = before == capsule.status
    add_events(session, capsule, fold.events)
    for event in fold.events:
        # The fold's own event for a status change (reason: the new status) is the record
        # that ends a create, in Nova's shape; the others are updates.
        is_status = not status_told and event.container is None and event.reason == capsule.status
        status_told = status_told or is_status
        changed(session, capsule, _status_event(before, Status(capsule.status)) if is_status
                else "capsule.update", event.reason,
                f"{event.container}: {event.message}" if event.container else event.message)
    if not status_told:
        changed(session, capsule, _status_event(before, Status(capsule.status)), capsule.status,
                f"{before} -> {capsule.status}" + (f": {capsule.status_reason}"
                                                   if capsule.status_reason else ""))
    if fold.changed or (before, before_reason) != (status, reason):
        capsule.updated_at = now
    capsule.sandbox_id = report.sandbox_id
    if report.draining is not None and capsule.draining != report.draining:
        capsule.draining = report.draining  # services skip it meanwhile (domain/services.py)


def _status_event(before: str, after: Status) -> str:
    """Nova's shape: leaving Creating ends the create (well or in error)."""
    if before == Status.CREATING.value and after not in (Status.CREATING, Status.UPDATING):
        return "capsule.create.error" if after is Status.ERROR else "capsule.create.end"
    return "capsule.update"


def conditions_of(c: ContainerReport) -> dict[str, Any]:
    """What is kept of a report's ready and health conditions (Container.probe)."""
    return {"ready": c.ready, "health": c.health,
            "probes": {k: v.model_dump() for k, v in sorted(c.probes.items())}}


def _state_of(capsule: Capsule, rollout: Rollout | None = None) -> CapsuleState:
    """What folding compares a report with: during an update, what the containers said
    last (the capsule itself shows Updating)."""
    status, reason = ((rollout.observed, rollout.observed_reason) if rollout is not None
                      else (capsule.status, capsule.status_reason))
    return CapsuleState(
        status=status, status_reason=reason, deleting=capsule.deleting,
        containers={c.uuid: ChildState(c.status, c.exit_code, c.restart_count)
                    for c in capsule.containers})


def list_events(session: Session, capsule: Capsule, limit: int | None = None,
                marker: int | None = None) -> list[Event]:
    """Oldest first; after the event `marker` (an id from an earlier page: pruned since or
    not, the page goes on from there)."""
    stmt = select(Event).where(Event.capsule_id == capsule.id)
    if marker is not None:
        stmt = stmt.where(Event.id > marker)
    return list(session.scalars(stmt.order_by(Event.id).limit(limit)).all())


def host_gone(session: Session, host: str | None, now: datetime, down_after: timedelta) -> bool:
    """The host is deleted, forced down or silent for `down_after`: nothing will act on
    what is placed there until (if ever) its agent comes back."""
    if host is None:
        return True
    row = session.scalars(select(Host).where(Host.name == host)).first()
    return (row is None or bool(row.forced_down) or row.last_seen is None
            or row.last_seen < now - down_after)


def force_delete(session: Session, capsule: Capsule) -> None:
    """The rows go now (and with them the quota and host claims). If the agent comes back,
    what it finds of the capsule is an orphan, which it removes, volumes too."""
    host = capsule.host
    forget_actions(session, [c.uuid for c in capsule.containers])
    changed(session, capsule, "capsule.delete.end", "ForceDeleted", "capsule deleted by force",
            "Deleted")
    session.delete(capsule)
    bump_host_revision(session, host)
    _left(session, capsule)


def forget_actions(session: Session, container_uuids: list[str]) -> None:
    """A removed container's action history goes with it: nobody can ask for it any more
    (the container is a 404), and kept it would grow with every create and delete."""
    if container_uuids:
        session.execute(delete(ContainerAction).where(
            ContainerAction.container_uuid.in_(container_uuids)),
            execution_options={"synchronize_session": False})
