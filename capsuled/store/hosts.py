"""Compute hosts: registration, heartbeats, the desired-set revision, and used capacity."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Collection, Mapping
from typing import Any
from dataclasses import dataclass, field
from datetime import datetime
from sqlalchemy import Executable, bindparam, delete, false, func, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from capsuled.domain.channel import HostInfo
from capsuled.domain.ports import HostPortKey
from capsuled.store import usage as totals
from capsuled.store.host_ports import PortHolder, held, service_ports
from capsuled.store.tables import Capsule, Container, Host, HostBeat, table, utcnow


@dataclass(frozen=True)
class HostCapacity:
    name: str
    enabled: bool
    last_seen: datetime | None
    forced_down: bool
    availability_zone: str
    labels: dict[str, str]
    cpus: float
    memory_mb: int
    cpu_used: float
    memory_used: int
    containers: int = 0
    disk_gb: int = 0
    disk_used: int = 0  # GiB claimed by capsule volumes
    # Fixed host ports claimed there (store/host_ports.py), and those services publish on
    # every host (store/host_ports.service_ports), with their holders.
    ports: Mapping[HostPortKey, PortHolder] = field(default_factory=dict)
    # Its underlay address when its project networks span hosts (store/overlay.py).
    underlay: str | None = None


def register_host(session: Session, info: HostInfo, ops_key_sha256: str | None = None) -> Host:
    """Create or update the host. Of its ops key only the digest is kept (the API derives
    the key again, api/services/agents.py), unless an agent of before derived keys sent
    its key itself."""
    host = session.scalars(select(Host).where(Host.name == info.name)).first()
    if host is None:  # new: a deleted host's beats (if a batch raced its delete) go
        forget_beats(session, info.name)
        host = Host(uuid=str(uuidlib.uuid4()), name=info.name, revision=0, created_at=utcnow())
        session.add(host)
    host.cpus, host.memory_mb, host.disk_gb = info.cpus, info.memory_mb, info.disk_gb
    host.availability_zone, host.labels = info.availability_zone, dict(info.labels)
    host.info = {"os": info.os, "kernel_version": info.kernel_version,
                 "architecture": info.architecture, "runtime": info.runtime,
                 "ops_url": info.ops_url, "ops_nonce": info.ops_nonce,
                 "ops_key_sha256": ops_key_sha256,
                 "underlay_address": str(info.underlay_address) if info.underlay_address
                 else None}
    if info.ops_key and not info.ops_nonce:
        host.info["ops_key"] = info.ops_key
    totals.ensure_rows(session, host=info.name)
    session.flush()
    record_beats(session, {info.name: (utcnow(), 1)})  # registering counts as a beat
    session.expire(host, ["last_seen", "report_count"])
    return host


def heartbeats(session: Session, seen: Mapping[str, tuple[datetime, int]]) -> None:
    """Many hosts' heartbeats at once: host → (its last beat, how many). Written to
    host_beats only, never to the host rows, so a batch never waits for a create's
    claim (`lock_hosts`); unknown hosts are skipped (a plain read, which locks nothing)."""
    known = set(session.scalars(select(_H.name).where(_H.name.in_(sorted(seen)))))
    record_beats(session, {n: seen[n] for n in known})


# Rows per upsert statement: 3 parameters a row stays under SQLite's oldest limit of
# 999; a batch is one statement unless a thousand hosts beat within one period.
_ROWS_PER_UPSERT = 300


def record_beats(session: Session, seen: Mapping[str, tuple[datetime, int]]) -> None:
    """Upsert host → (last seen, beats to add) into host_beats: one multi-row statement
    in the dialect's upsert, rows in name order so that two replicas' batches lock them
    in the same order and never deadlock."""
    names = sorted(seen)
    for i in range(0, len(names), _ROWS_PER_UPSERT):
        rows = [{"host": n, "last_seen": seen[n][0], "beats": seen[n][1]}
                for n in names[i:i + _ROWS_PER_UPSERT]]
        session.execute(_upsert(session.get_bind().dialect.name, rows))


def _upsert(dialect: str, rows: list[dict[str, object]]) -> Executable:
    beats = table(HostBeat)
    if dialect == "postgresql":
        pg = postgresql.insert(beats).values(rows)
        return pg.on_conflict_do_update(index_elements=[beats.c.host], set_={
            "last_seen": pg.excluded.last_seen, "beats": beats.c.beats + pg.excluded.beats})
    if dialect in ("mysql", "mariadb"):
        my = mysql.insert(beats).values(rows)
        return my.on_duplicate_key_update(last_seen=my.inserted.last_seen,
                                          beats=beats.c.beats + my.inserted.beats)
    if dialect == "sqlite":
        lite = sqlite.insert(beats).values(rows)
        return lite.on_conflict_do_update(index_elements=[beats.c.host], set_={
            "last_seen": lite.excluded.last_seen, "beats": beats.c.beats + lite.excluded.beats})
    raise ValueError(f"no upsert for the {dialect} dialect")


def forget_beats(session: Session, name: str) -> None:
    """A deleted host's beats go with it."""
    session.execute(delete(HostBeat).where(HostBeat.host == name))


def host_revision(session: Session, name: str) -> int:
    return session.scalar(select(Host.revision).where(Host.name == name)) or 0


def revisions(session: Session) -> dict[str, int]:
    """Every host's desired-set revision, by name (what the API's watch board compares)."""
    return {name: rev or 0 for name, rev in session.execute(select(Host.name, Host.revision))}


def list_hosts(session: Session) -> list[Host]:
    return list(session.scalars(select(Host).order_by(Host.id)).all())


def find_host(session: Session, ident: str) -> Host | None:
    """A host by uuid or by name."""
    if "\x00" in ident or len(ident) > 255:  # PostgreSQL refuses NUL; no name is longer
        return None
    return session.scalars(select(Host).where((Host.uuid == ident) | (Host.name == ident))).first()


def usage(session: Session) -> dict[str, tuple[float, int, int]]:
    """Per host: claimed CPU, claimed MiB and container count, from capsules and bare
    containers that are placed there (a deleting one still holds its claim until gone):
    the running totals of store/usage.py."""
    return {name: (u.cpu, u.memory, u.containers) for name, u in totals.hosts(session).items()}


def capacities(session: Session, lock: bool = True, only: str | None = None
               ) -> list[HostCapacity]:
    """Every host (or `only` that one, if it exists) with what is claimed on it. With
    `lock` (what a claim needs: the scheduler picks from these and the caller writes the
    claim in the same transaction) the rows read stay locked until the transaction ends,
    so that two creates, from any API replica, never both see a host's last free unit;
    the usage is read after the lock, so it includes everything committed before.
    Read-only callers, and a claim that only chooses from them (api/services/placement.py),
    pass lock=False."""
    if lock:
        lock_hosts(session, only)
    hosts = session.execute(_CAPACITY_ROWS if only is None else
                            _CAPACITY_ROWS.where(_H.name == only)).all()
    used = totals.hosts(session, only)
    ports = held(session, only)
    everywhere = service_ports(session)  # services publish on every host
    out = []
    for h in hosts:
        u = used.get(h.name, totals.ZERO)
        out.append(HostCapacity(
            name=h.name, enabled=h.enabled, last_seen=h.last_seen,
            forced_down=bool(h.forced_down), availability_zone=h.availability_zone,
            labels=dict(h.labels or {}), cpus=h.cpus, memory_mb=h.memory_mb,
            cpu_used=u.cpu, memory_used=u.memory, containers=u.containers,
            disk_gb=h.disk_gb or 0, disk_used=u.disk,
            ports={**everywhere, **ports.get(h.name, {})},
            underlay=underlay_address(h.info)))
    return out


def underlay_address(info: Mapping[str, Any] | None) -> str | None:
    """The underlay address a host registered (its `info`, as `register_host` writes it),
    if its project networks span hosts."""
    value = (info or {}).get("underlay_address")
    return str(value) if value else None


def bump_revisions(session: Session, names: Collection[str]) -> None:
    """Bump these hosts' desired-set revisions (each change of a desired set does: it
    wakes their agents). On MariaDB by id: an UPDATE by name locks the name's index
    entry before the row, and a holder of the row locks (`lock_hosts`) that then bumped
    by name deadlocked with a delete bumping the same host (seen under concurrent creates
    and deletes); by id, every host lock is taken on the row alone. Elsewhere by name: a
    row lock is the row's, whatever the index (one statement fewer)."""
    if not names:
        return
    if session.get_bind().dialect.name in ("mysql", "mariadb"):
        ids = sorted(session.scalars(_IDS_OF, {"names": sorted(names)}))
        if ids:
            session.execute(_BUMP_IDS, {"ids": ids})
    else:
        session.execute(_BUMP_NAMES, {"names": sorted(names)})


def lock_hosts(session: Session, only: str | None = None) -> None:
    """Lock every host row (or `only` that one) for the rest of the transaction. Every
    host in id order, so lockers never deadlock each other; a holder of one host's lock
    takes no other host's afterwards (placement.py), so it deadlocks no one either.
    SQLite has no row locks: a write that changes nothing takes its database write lock,
    which its pysqlite driver would otherwise take only at the first real write, after the
    reads."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(_TOUCH_NONE)
    elif only is None:
        session.execute(_LOCK_ALL)
    else:
        # By its id, as `_LOCK_ALL` locks: on MariaDB a lock taken through the name's
        # index first, then the row, deadlocked with an all-hosts locker that then
        # updated rows by name (overlay's peers), which takes the two the other way.
        ident = session.scalar(_ID_OF, {"name": only})
        if ident is not None:
            session.execute(_LOCK_ONE, {"id": ident})


# Built once, Core: every placement runs one of them.
_H = table(Host).c
_TOUCH_NONE = update(table(Host)).where(false()).values(revision=_H.revision)
_LOCK_ALL = select(_H.id).order_by(_H.id).with_for_update()
_ID_OF = select(_H.id).where(_H.name == bindparam("name"))
_IDS_OF = select(_H.id).where(_H.name.in_(bindparam("names", expanding=True)))
_BUMP_IDS = update(table(Host)).where(_H.id.in_(bindparam("ids", expanding=True))).values(
    revision=_H.revision + 1)
_BUMP_NAMES = update(table(Host)).where(_H.name.in_(bindparam("names", expanding=True))).values(
    revision=_H.revision + 1)
_LOCK_ONE = select(_H.id).where(_H.id == bindparam("id")).with_for_update()

# Built once, and rows rather than Host objects: every placement reads every host.
_HB = table(HostBeat).c
_CAPACITY_ROWS = select(
    _H.name, _H.enabled,
    select(_HB.last_seen).where(_HB.host == _H.name).scalar_subquery().label("last_seen"),
    _H.forced_down, _H.availability_zone, _H.labels, _H.cpus, _H.memory_mb, _H.disk_gb,
    _H.info).order_by(_H.id)


def placed_count(session: Session, name: str) -> int:
    """Capsules and bare containers still placed on a host."""
    return (session.scalar(select(func.count()).select_from(Capsule).where(Capsule.host == name)) or 0) + \
        (session.scalar(select(func.count()).select_from(Container)
                        .where(Container.role == "bare", Container.host == name)) or 0)
