"""Pick a host for a capsule: filter out hosts that cannot take it, then spread.

Pure: it sees capacities, never the database. Issue-level scheduling (labels, hints,
pack weigher, optimistic claims across replicas) extends this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from capsuled.store.hosts import HostCapacity


class NoValidHost(Exception):
    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        detail = "; ".join(f"{h}: {r}" for h, r in reasons.items()) or "no hosts registered"
        super().__init__(f"There are not enough hosts available. ({detail})")


@dataclass(frozen=True)
class Request:
    cpu: float
    memory: int
    availability_zone: str | None = None


def _rejects(host: HostCapacity, req: Request, now: datetime, down_after: timedelta) -> str | None:
    if not host.enabled:
        return "disabled"
    if host.forced_down:
        return "forced down"
    if host.last_seen is None or now - host.last_seen > down_after:
        return "down (no heartbeat)"
    if req.availability_zone and host.availability_zone != req.availability_zone:
        return f"in availability zone {host.availability_zone}, not {req.availability_zone}"
    if host.cpus - host.cpu_used < req.cpu:
        return f"needs {req.cpu} CPU, {host.cpus - host.cpu_used:g} free"
    if host.memory_mb - host.memory_used < req.memory:
        return f"needs {req.memory} MiB, {host.memory_mb - host.memory_used} MiB free"
    return None


def select_host(hosts: list[HostCapacity], req: Request, now: datetime,
                down_after: timedelta = timedelta(seconds=180)) -> str:
    reasons: dict[str, str] = {}
    fits: list[HostCapacity] = []
    for h in hosts:
        why = _rejects(h, req, now, down_after)
        if why is None:
            fits.append(h)
        else:
            reasons[h.name] = why
    if not fits:
        raise NoValidHost(reasons)
    # Spread: most free memory first, then most free CPU, then fewest containers (what
    # tells hosts apart when requests are unset and claim nothing).
    best = max(fits, key=lambda h: (h.memory_mb - h.memory_used, h.cpus - h.cpu_used,
                                    -h.containers))
    return best.name
