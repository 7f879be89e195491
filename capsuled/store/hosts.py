"""Compute hosts: registration, heartbeats, the desired-set revision, and used capacity."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from capsuled.domain.channel import HostInfo
from capsuled.store.tables import Capsule, Host, utcnow


@dataclass(frozen=True)
class HostCapacity:
    name: str
    enabled: bool
    last_seen: datetime | None
    availability_zone: str
    labels: dict[str, str]
    cpus: float
    memory_mb: int
    cpu_used: float
    memory_used: int


def register_host(session: Session, info: HostInfo) -> Host:
    host = session.scalars(select(Host).where(Host.name == info.name)).first()
    if host is None:
        host = Host(uuid=str(uuidlib.uuid4()), name=info.name, revision=0, created_at=utcnow())
        session.add(host)
    host.cpus, host.memory_mb, host.disk_gb = info.cpus, info.memory_mb, info.disk_gb
    host.availability_zone, host.labels = info.availability_zone, dict(info.labels)
    host.info = {"os": info.os, "kernel_version": info.kernel_version,
                 "architecture": info.architecture, "runtime": info.runtime}
    host.last_seen = utcnow()
    session.flush()
    return host


def heartbeat(session: Session, name: str) -> None:
    host = session.scalars(select(Host).where(Host.name == name)).first()
    if host is not None:
        host.last_seen = utcnow()


def host_revision(session: Session, name: str) -> int:
    return session.scalar(select(Host.revision).where(Host.name == name)) or 0


def capacities(session: Session) -> list[HostCapacity]:
    used = dict((h, (c or 0.0, m or 0)) for h, c, m in session.execute(
        select(Capsule.host, func.sum(Capsule.cpu), func.sum(Capsule.memory))
        .where(Capsule.host.is_not(None)).group_by(Capsule.host)).all())
    return [HostCapacity(name=h.name, enabled=h.enabled, last_seen=h.last_seen,
                         availability_zone=h.availability_zone, labels=dict(h.labels or {}),
                         cpus=h.cpus, memory_mb=h.memory_mb,
                         cpu_used=float(used.get(h.name, (0.0, 0))[0]),
                         memory_used=int(used.get(h.name, (0.0, 0))[1]))
            for h in session.scalars(select(Host).order_by(Host.id)).all()]
