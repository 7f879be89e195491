"""Pick a host for a capsule: filter out hosts that cannot take it, then spread.

Pure: it sees capacities, never the database. Issue-level scheduling (labels, hints,
pack weigher, optimistic claims across replicas) extends this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

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
    disk: int = 0  # GiB
    labels: Mapping[str, str] = field(default_factory=dict)  # the host must carry all of them


def label_hints(hints: Mapping[str, object] | None) -> dict[str, str]:
    """Zun's scheduler hints `label:<key>` = value, as the labels a host must have."""
    return {k[len("label:"):]: str(v) for k, v in (hints or {}).items() if k.startswith("label:")}


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
    if req.disk and host.disk_gb - host.disk_used < req.disk:
        return f"needs {req.disk} GiB of disk, {host.disk_gb - host.disk_used} GiB free"
    for key, value in req.labels.items():
        if host.labels.get(key) != value:
            return f"lacks label {key}={value}"
    return None


Weigher = Literal["spread", "pack"]


def select_host(hosts: list[HostCapacity], req: Request, now: datetime,
                down_after: timedelta = timedelta(seconds=180), weigher: Weigher = "spread") -> str:
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
    # tells hosts apart when requests are unset and claim nothing). Pack: the opposite,
    # filling the fullest host first so that whole hosts stay free for big requests.
    def room(h: HostCapacity) -> tuple[float, float, int]:
        return (h.memory_mb - h.memory_used, h.cpus - h.cpu_used, -h.containers)
    best = min(fits, key=room) if weigher == "pack" else max(fits, key=room)
    return best.name
