"""Hosts, their agent services and availability zones (Zun's /v1/hosts, /v1/services,
/v1/availability_zones).

One agent per host is one "service" with the binary name `capsuled-agent`; Zun's name
for the same role, `zun-compute`, is accepted wherever a binary is named so that the zun
CLI's `service-disable HOST zun-compute` habit works. Disabling a host or forcing it down
takes it out of scheduling; what already runs there keeps running.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from capsuled.errors import Conflict, InvalidInput, NotFound
from capsuled.store import hosts as host_repo
from capsuled.store.engine import Store
from capsuled.store.tables import Host, utcnow

AGENT_BINARY = "capsuled-agent"
BINARY_ALIASES = frozenset({AGENT_BINARY, "zun-compute"})


@dataclass(frozen=True)
class HostState:
    """A host row with what is derived from it: liveness and usage."""

    uuid: str
    id: int
    name: str
    cpus: float
    memory_mb: int
    disk_gb: int
    availability_zone: str
    labels: dict[str, str]
    info: dict[str, str]
    enabled: bool
    disabled_reason: str | None
    forced_down: bool
    report_count: int
    last_seen: datetime | None
    created_at: datetime
    updated_at: datetime | None
    up: bool
    cpu_used: float
    memory_used: int
    containers: int


class HostService:
    def __init__(self, store: Store, host_down_after: timedelta) -> None:
        self._store = store
        self._down_after = host_down_after

    def list(self) -> list[HostState]:
        return self._states()

    def get(self, ident: str) -> HostState:
        for h in self._states():
            if ident in (h.uuid, h.name):
                return h
        raise NotFound(f"Host {ident} could not be found.")


    def set_disabled(self, host: object, binary: object, disabled: bool,
                     reason: object = None) -> HostState:
        if reason is not None and (not isinstance(reason, str) or len(reason) > 255):
            raise InvalidInput("disabled_reason: must be a string of at most 255 characters")
        with self._store.transaction() as s:
            row = self._service_row(s, host, binary)
            row.enabled = not disabled
            row.disabled_reason = (reason or None) if disabled else None
            row.updated_at = utcnow()
            name = row.name
        return self._state_of(name)

    def set_forced_down(self, host: object, binary: object,
                        forced_down: bool) -> HostState:
        with self._store.transaction() as s:
            row = self._service_row(s, host, binary)
            row.forced_down = forced_down
            row.updated_at = utcnow()
            name = row.name
        return self._state_of(name)

    def delete(self, host: object, binary: object) -> None:
        """Forget a host. Refused while its agent is alive (it would be a host nobody
        schedules to but that still runs things) or while anything is placed on it."""
        now = utcnow()
        with self._store.transaction() as s:
            row = self._service_row(s, host, binary)
            if self._alive(row, now):
                raise Conflict(f"Host {row.name} is up: stop its agent or force it down "
                               f"before deleting its service.")
            placed = host_repo.placed_count(s, row.name)
            if placed:
                raise Conflict(f"Host {row.name} still has {placed} capsule(s) or container(s) "
                               f"placed on it; delete them first.")
            host_repo.forget_beats(s, row.name)
            s.delete(row)

    def availability_zones(self) -> builtins.list[str]:
        # Any authenticated user may see the zones (they choose one in templates).
        with self._store.transaction() as s:
            return sorted({h.availability_zone for h in host_repo.list_hosts(s)})

    # --- helpers --------------------------------------------------------------------------

    def _service_row(self, s: Session, host: object, binary: object) -> Host:
        if not isinstance(host, str) or not host:
            raise InvalidInput("host: is required")
        if not isinstance(binary, str) or not binary:
            raise InvalidInput("binary: is required")
        if binary not in BINARY_ALIASES:
            raise NotFound(f"Service {binary} on host {host} could not be found "
                           f"(hosts run {AGENT_BINARY}).")
        row = host_repo.find_host(s, host)
        if row is None:
            raise NotFound(f"Service {binary} on host {host} could not be found.")
        return row

    def _alive(self, row: Host, now: datetime) -> bool:
        return (not row.forced_down and row.last_seen is not None
                and now - row.last_seen <= self._down_after)

    def _states(self) -> builtins.list[HostState]:
        now = utcnow()
        with self._store.transaction() as s:
            used = host_repo.usage(s)
            return [_state(h, self._alive(h, now), used.get(h.name, (0.0, 0, 0)))
                    for h in host_repo.list_hosts(s)]

    def _state_of(self, name: str) -> HostState:
        for h in self._states():
            if h.name == name:
                return h
        raise NotFound(f"Host {name} could not be found.")


def _state(h: Host, up: bool, used: tuple[float, int, int]) -> HostState:
    return HostState(uuid=h.uuid, id=h.id, name=h.name, cpus=h.cpus, memory_mb=h.memory_mb,
                     disk_gb=h.disk_gb, availability_zone=h.availability_zone,
                     labels=dict(h.labels or {}), info=dict(h.info or {}), enabled=h.enabled,
                     disabled_reason=h.disabled_reason, forced_down=bool(h.forced_down),
                     report_count=h.report_count or 0, last_seen=h.last_seen,
                     created_at=h.created_at, updated_at=h.updated_at, up=up,
                     cpu_used=used[0], memory_used=used[1], containers=used[2])

