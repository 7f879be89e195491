"""Running totals of what is claimed: per project (what quotas count) and per host (what
the scheduler subtracts from its capacity), so that neither sums every row on each create.

A claim is what one capsule or bare container holds (`Claim`): a capsule counts itself,
its container rows, its cpu and memory columns (during an update the larger of the two
specs') and its volumes' sizes; a bare container counts itself, its cpu, memory and disk.
Project totals add every claim of the project, placed or not; host totals add the claims
placed on the host (a deleting one holds its claim until its row goes).

How the totals stay exact, whoever writes: `install` hooks the session factory, so no
store function has to remember them.

- At each flush, `_track` finds the capsules and bare containers whose claim the flush
  changes (new, deleted, a changed host/cpu/memory/disk, a container or volume row added,
  removed or resized), reads each one's claim as stored before the flush (one query) and
  as it will be after, and queues the difference in the session.
- Just before the commit (before the outbox numbers its records), `_apply` adds the
  queued differences to the total rows: one UPDATE per project, then per host, in key
  order. These rows are thus locked last (only the outbox counter after them) and held
  only through the commit, so they add no deadlock; and a change and its totals commit
  together. A rollback (or a savepoint's) drops what it queued.
- Readers (`project`, `hosts`) add the session's own queued differences to what is
  stored. The quota check reads under the project's lock row and the scheduler under the
  host rows' locks (placement.py), which every increase of a claim also holds through its
  commit, so what they read is exact; decreases (an agent's report that a capsule is
  gone) may commit meanwhile, which only makes the read conservative.

`recount` derives the same totals from the rows (what the code did on every create before
issue 16); `check` compares, `repair` overwrites the totals with the recount (`capsuled db
recount`). CPU is a float sum: totals and recount agree to `CPU_TOLERANCE`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import bindparam, event, func, insert, inspect, select, update
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from capsuled.store import savepoints
from capsuled.store.tables import Capsule, Container, HostUsage, ProjectUsage, Volume, table

_QUEUE = "capsuled.usage.queue"
_COMMITTING = "capsuled.usage.committing"
CPU_TOLERANCE = 1e-6
BARE = "bare"


@dataclass(frozen=True, slots=True)
class Amounts:
    """Totals (or a difference of totals) of claims."""

    capsules: int = 0
    containers: int = 0
    cpu: float = 0.0
    memory: int = 0
    disk: int = 0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(self.capsules + other.capsules, self.containers + other.containers,
                       self.cpu + other.cpu, self.memory + other.memory, self.disk + other.disk)

    def __neg__(self) -> Amounts:
        return Amounts(-self.capsules, -self.containers, -self.cpu, -self.memory, -self.disk)

    def __bool__(self) -> bool:
        return any((self.capsules, self.containers, abs(self.cpu) > 1e-12, self.memory,
                    self.disk))

    def same(self, other: Amounts) -> bool:
        """Equal, the CPU float sum to CPU_TOLERANCE."""
        return (abs(self.cpu - other.cpu) <= CPU_TOLERANCE
                and (self.capsules, self.containers, self.memory, self.disk)
                == (other.capsules, other.containers, other.memory, other.disk))


ZERO = Amounts()
_FIELDS = tuple(f.name for f in fields(Amounts))


@dataclass(frozen=True, slots=True)
class Claim:
    """What one capsule or bare container holds, and for whom and where."""

    project_id: str
    host: str | None
    amounts: Amounts


@dataclass
class _Queued:
    """Differences queued by one flush, in the (nested) transaction that made them."""

    transaction: SessionTransaction | None
    projects: dict[str, Amounts] = field(default_factory=dict)
    hosts: dict[str, Amounts] = field(default_factory=dict)

    def add(self, claim: Claim, sign: int) -> None:
        amounts = claim.amounts if sign > 0 else -claim.amounts
        self.projects[claim.project_id] = self.projects.get(claim.project_id, ZERO) + amounts
        if claim.host is not None:
            self.hosts[claim.host] = self.hosts.get(claim.host, ZERO) + amounts


# -- reading --------------------------------------------------------------------------------

def project(session: Session, project_id: str) -> Amounts:
    """The project's totals, with this session's own changes not yet committed."""
    row = session.execute(_PROJECT_ROW, {"project": project_id}).first()
    stored = ZERO if row is None else _amounts(row)
    return stored + _pending(session, "projects").get(project_id, ZERO)


def hosts(session: Session, only: str | None = None) -> dict[str, Amounts]:
    """Every host's totals (or `only` that host's; hosts with nothing placed may be
    missing), with this session's own changes not yet committed."""
    rows = session.execute(_HOST_ROWS) if only is None else session.execute(
        _HOST_ROWS.where(table(HostUsage).c.host == only))
    out = {row[0]: _amounts(row[1:]) for row in rows}
    for host, more in _pending(session, "hosts").items():
        if only is not None and host != only:
            continue
        out[host] = out.get(host, ZERO) + more
    return out


def _cols(model: type[ProjectUsage] | type[HostUsage]) -> list[Any]:
    return [getattr(model, f) for f in _FIELDS]


# Built once, Core: every create reads both (building an ORM-enabled select costs more
# than running it).
_PROJECT_ROW = select(*(table(ProjectUsage).c[f] for f in _FIELDS)).where(
    table(ProjectUsage).c.project_id == bindparam("project"))
_HOST_ROWS = select(table(HostUsage).c.host, *(table(HostUsage).c[f] for f in _FIELDS))


def _amounts(row: Iterable[Any]) -> Amounts:
    c, n, cpu, mem, disk = row
    return Amounts(int(c or 0), int(n or 0), float(cpu or 0.0), int(mem or 0), int(disk or 0))


def _pending(session: Session, which: str) -> dict[str, Amounts]:
    out: dict[str, Amounts] = {}
    for queued in session.info.get(_QUEUE, ()):
        for key, more in getattr(queued, which).items():
            out[key] = out.get(key, ZERO) + more
    return out


# -- the recount: the truth the totals must equal ----------------------------------------

@dataclass(frozen=True)
class Totals:
    projects: dict[str, Amounts]
    hosts: dict[str, Amounts]


def recount(session: Session) -> Totals:
    """Every project's and host's totals summed from the rows (O(rows): for checks and
    repairs, never on a request's path)."""
    projects: dict[str, Amounts] = {}
    placed: dict[str, Amounts] = {}

    def add(out: dict[str, Amounts], key: str | None, amounts: Amounts) -> None:
        if key is not None:
            out[key] = out.get(key, ZERO) + amounts

    members = (select(Container.capsule_id, func.count().label("n"))
               .where(Container.capsule_id.is_not(None)).group_by(Container.capsule_id)
               .subquery())
    sizes = (select(Volume.capsule_id, func.sum(Volume.size).label("disk"))
             .group_by(Volume.capsule_id).subquery())
    for pid, host, n, cpu, mem, members_n, disk in session.execute(
            select(Capsule.project_id, Capsule.host, func.count(), func.sum(Capsule.cpu),
                   func.sum(Capsule.memory), func.sum(func.coalesce(members.c.n, 0)),
                   func.sum(func.coalesce(sizes.c.disk, 0)))
            .outerjoin(members, members.c.capsule_id == Capsule.id)
            .outerjoin(sizes, sizes.c.capsule_id == Capsule.id)
            .group_by(Capsule.project_id, Capsule.host)):
        amounts = _amounts((n, members_n, cpu, mem, disk))
        add(projects, pid, amounts)
        add(placed, host, amounts)
    for pid, host, n, cpu, mem, disk in session.execute(
            select(Container.project_id, Container.host, func.count(), func.sum(Container.cpu),
                   func.sum(Container.memory), func.sum(Container.disk))
            .where(Container.role == BARE).group_by(Container.project_id, Container.host)):
        amounts = _amounts((0, n, cpu, mem, disk))
        add(projects, pid, amounts)
        add(placed, host, amounts)
    return Totals(projects, placed)


def stored(session: Session) -> Totals:
    """The running totals as they are in the tables."""
    return Totals({r[0]: _amounts(r[1:]) for r in session.execute(
                      select(ProjectUsage.project_id, *_cols(ProjectUsage)))},
                  {r[0]: _amounts(r[1:]) for r in session.execute(
                      select(HostUsage.host, *_cols(HostUsage)))})


@dataclass(frozen=True)
class Drift:
    """A total that differs from the recount."""

    kind: str  # project | host
    key: str
    stored: Amounts
    counted: Amounts


def check(session: Session) -> list[Drift]:
    """Where the running totals differ from the recount (empty: exact)."""
    have, want = stored(session), recount(session)
    return [*_diff("project", have.projects, want.projects),
            *_diff("host", have.hosts, want.hosts)]


def _diff(kind: str, have: dict[str, Amounts], want: dict[str, Amounts]) -> Iterator[Drift]:
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key, ZERO), want.get(key, ZERO)
        if not a.same(b):
            yield Drift(kind, key, a, b)


def repair(session: Session) -> list[Drift]:
    """Make the totals the recount, and say what was wrong. The total rows are locked
    first (in the order writers lock them), so a change committing meanwhile adds its
    difference after this commits, on top of the recounted value."""
    _lock_all(session)
    drifts = check(session)
    for d in drifts:
        _set(session, ProjectUsage if d.kind == "project" else HostUsage, d.key, d.counted)
    return drifts


def _lock_all(session: Session) -> None:
    if session.get_bind().dialect.name == "sqlite":
        # No row locks: a write that changes nothing takes the database's write lock.
        session.execute(update(ProjectUsage).where(ProjectUsage.project_id.is_(None))
                        .values(capsules=ProjectUsage.capsules))
        return
    session.execute(select(ProjectUsage.project_id).order_by(ProjectUsage.project_id)
                    .with_for_update())
    session.execute(select(HostUsage.host).order_by(HostUsage.host).with_for_update())


def _set(session: Session, model: type[ProjectUsage] | type[HostUsage], key: str,
         amounts: Amounts) -> None:
    column = model.project_id if model is ProjectUsage else model.host  # type: ignore[union-attr]
    values = {f: getattr(amounts, f) for f in _FIELDS}
    done = session.execute(update(model).where(column == key).values(**values),
                           execution_options={"synchronize_session": False})
    if done.rowcount == 0:  # type: ignore[attr-defined]
        session.execute(insert(model).values({column.key: key, **values}))


# -- keeping them: the session hooks ---------------------------------------------------------

def install(factory: sessionmaker[Session]) -> None:
    """Track claim changes at every flush of `factory`'s sessions and add them to the
    totals just before each commit. Install before the outbox (store/outbox.py), whose
    counter row must be the last lock a transaction takes."""
    event.listen(factory, "before_flush", _track)
    event.listen(factory, "before_commit", _before_commit)
    event.listen(factory, "after_commit", _forget)
    # Not after_rollback: it fires for a savepoint's rollback too, without saying which.
    event.listen(factory, "after_soft_rollback", _rolled_back)


def _track(session: Session, _context: Any, _instances: Any) -> None:
    with session.no_autoflush:
        queued = _Queued(savepoints.current(session))
        for capsule in _changed_capsules(session):
            _queue_change(session, queued, capsule, _stored_capsule, _capsule_claim)
        for bare in _changed_bare(session):
            _queue_change(session, queued, bare, _stored_bare, _bare_claim)
    if not (queued.projects or queued.hosts):
        return
    if session.info.get(_COMMITTING):
        _write(session, [queued])  # a flush after the totals were written: at once
    else:
        session.info.setdefault(_QUEUE, []).append(queued)


def _queue_change(session: Session, queued: _Queued, obj: Any, stored_claim: Any,
                  claim_of: Any) -> None:
    state = inspect(obj)
    before = None if state.pending else stored_claim(session, obj.id)
    after = None if obj in session.deleted else claim_of(obj)
    if before is not None:
        queued.add(before, -1)
    if after is not None:
        queued.add(after, +1)


_CAPSULE_COLUMNS = ("project_id", "host", "cpu", "memory")
_BARE_COLUMNS = ("project_id", "host", "cpu", "memory", "disk", "role")


def _changed_capsules(session: Session) -> list[Capsule]:
    """Capsules whose claim this flush may change: new, deleted, with a changed column or
    member/volume list, or with a resized volume."""
    out: dict[int, Capsule] = {}
    for obj in session.new:
        if isinstance(obj, Capsule):
            out[id(obj)] = obj
    for obj in session.deleted:
        if isinstance(obj, Capsule):
            out[id(obj)] = obj
    for obj in session.dirty:
        if isinstance(obj, Capsule) and _changed(obj, (*_CAPSULE_COLUMNS, "containers", "volumes")):
            out[id(obj)] = obj
        elif isinstance(obj, Volume) and _changed(obj, ("size",)):
            parent = session.get(Capsule, obj.capsule_id)
            if parent is not None:
                out[id(parent)] = parent
    return list(out.values())


def _changed_bare(session: Session) -> list[Container]:
    out: list[Container] = []
    for obj in (*session.new, *session.deleted):
        if isinstance(obj, Container) and obj.role == BARE:
            out.append(obj)
    for obj in session.dirty:
        if isinstance(obj, Container) and _changed(obj, _BARE_COLUMNS) and (
                obj.role == BARE or _stored_role(session, obj) == BARE):
            out.append(obj)
    return out


def _changed(obj: Any, keys: tuple[str, ...]) -> bool:
    attrs = inspect(obj).attrs
    return any(attrs[k].history.has_changes() for k in keys)


def _stored_role(session: Session, obj: Container) -> str | None:
    return session.scalar(select(Container.role).where(Container.id == obj.id))


def _capsule_claim(obj: Capsule) -> Claim:
    disk = sum(v.size or 0 for v in obj.volumes)
    return Claim(obj.project_id, obj.host, Amounts(1, len(obj.containers), float(obj.cpu or 0.0),
                                                   int(obj.memory or 0), int(disk)))


def _stored_capsule(session: Session, capsule_id: int) -> Claim | None:
    """The capsule's claim as its rows stand before this flush."""
    members = (select(func.count()).select_from(Container)
               .where(Container.capsule_id == capsule_id).scalar_subquery())
    disk = (select(func.coalesce(func.sum(Volume.size), 0))
            .where(Volume.capsule_id == capsule_id).scalar_subquery())
    row = session.execute(select(Capsule.project_id, Capsule.host, Capsule.cpu, Capsule.memory,
                                 members, disk).where(Capsule.id == capsule_id)).first()
    if row is None:
        return None
    pid, host, cpu, mem, n, size = row
    return Claim(pid, host, _amounts((1, n, cpu, mem, size)))


def _bare_claim(obj: Container) -> Claim | None:
    if obj.role != BARE:
        return None
    return Claim(obj.project_id, obj.host, Amounts(0, 1, float(obj.cpu or 0.0),
                                                   int(obj.memory or 0), int(obj.disk or 0)))


def _stored_bare(session: Session, container_id: int) -> Claim | None:
    row = session.execute(select(Container.project_id, Container.host, Container.cpu,
                                 Container.memory, Container.disk, Container.role)
                          .where(Container.id == container_id)).first()
    if row is None or row[5] != BARE:
        return None
    pid, host, cpu, mem, disk, _role = row
    return Claim(pid, host, _amounts((0, 1, cpu, mem, disk)))


def _before_commit(session: Session) -> None:
    session.flush()  # every change of this transaction tracked before the totals are written
    session.info[_COMMITTING] = True
    _write(session, session.info.pop(_QUEUE, []))


def _adder(t: Any, key: str) -> Any:
    """UPDATE t SET capsules = capsules + :d_capsules, … WHERE key = :key, built once:
    building an expression costs more CPU than running it (Core, not ORM-enabled: the
    total rows are never loaded as objects)."""
    c = t.c
    return (update(t).where(c[key] == bindparam("key"))
            .values({f: c[f] + bindparam(f"d_{f}") for f in _FIELDS}))


_ADD = {ProjectUsage: _adder(table(ProjectUsage), "project_id"),
        HostUsage: _adder(table(HostUsage), "host")}


def _write(session: Session, queue: list[_Queued]) -> None:
    """Add the queued differences to the total rows: projects, then hosts, in key order
    (the order every writer and `repair` lock them in)."""
    projects: dict[str, Amounts] = {}
    placed: dict[str, Amounts] = {}
    for q in queue:
        for key, more in q.projects.items():
            projects[key] = projects.get(key, ZERO) + more
        for key, more in q.hosts.items():
            placed[key] = placed.get(key, ZERO) + more
    for model, column, changes in ((ProjectUsage, ProjectUsage.project_id, projects),
                                   (HostUsage, HostUsage.host, placed)):
        for key in sorted(changes):
            more = changes[key]
            if not more:
                continue
            done = session.execute(_ADD[model], {"key": key, **{
                f"d_{f}": getattr(more, f) for f in _FIELDS}})
            if done.rowcount == 0:  # type: ignore[attr-defined]
                # No row yet (a project's first claim): absent meant zero.
                session.execute(insert(model).values(
                    {column.key: key, **{f: getattr(more, f) for f in _FIELDS}}))


def _forget(session: Session) -> None:
    session.info.pop(_QUEUE, None)
    session.info.pop(_COMMITTING, None)


def _rolled_back(session: Session, previous: SessionTransaction) -> None:
    """A savepoint's rollback drops what it (and savepoints within it) queued; any other
    rollback drops everything."""
    if not previous.nested:
        _forget(session)
        return
    session.info[_QUEUE] = [q for q in session.info.get(_QUEUE, [])
                            if not savepoints.within(q.transaction, previous)]


def ensure_rows(session: Session, project_id: str | None = None,
                host: str | None = None) -> None:
    """Make a project's or host's total row (zeros) if it has none: with its lock row or
    host row, so that the first claim's commit updates rather than inserts."""
    if project_id is not None and session.get(ProjectUsage, project_id) is None:
        session.add(ProjectUsage(project_id=project_id, capsules=0, containers=0, cpu=0.0,
                                 memory=0, disk=0))
    if host is not None and session.get(HostUsage, host) is None:
        session.add(HostUsage(host=host, capsules=0, containers=0, cpu=0.0, memory=0, disk=0))
