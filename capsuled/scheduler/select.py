"""Pick a host for a capsule: filter out hosts that cannot take it (down, zone, CPU,
memory, disk, labels, a fixed host port already claimed there), then spread or pack.

Pure: it sees capacities, never the database. Issue-level scheduling (labels, hints,
pack weigher, optimistic claims across replicas) extends this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from capsuled.domain.ports import HostPortKey, describe
from capsuled.store.hosts import HostCapacity


class NoValidHost(Exception):
    """Nothing fits. `str()` is what the requester may read: which of its own requirements
    no host meets, never a host's name or its free capacity (that is other tenants' load).
    `detail` (and `reasons`, per host) are for administrators and the log."""

    def __init__(self, reasons: dict[str, str], unmet: list[str] | None = None) -> None:
        self.reasons = reasons
        self.detail = ("There are not enough hosts available. ("
                       + ("; ".join(f"{h}: {r}" for h, r in reasons.items())
                          or "no hosts registered") + ")")
        super().__init__("There are not enough hosts available. ("
                         + "; ".join(unmet or ["no host is up"]) + ")")


@dataclass(frozen=True)
class Request:
    cpu: float
    memory: int
    availability_zone: str | None = None
    disk: int = 0  # GiB
    labels: Mapping[str, str] = field(default_factory=dict)  # the host must carry all of them
    ports: tuple[HostPortKey, ...] = ()  # fixed host ports that must be free there
    project_id: str | None = None  # whose request: a port's holder is "yours" or not


def label_hints(hints: Mapping[str, object] | None) -> dict[str, str]:
    """Zun's scheduler hints `label:<key>` = value, as the labels a host must have."""
    return {k[len("label:"):]: str(v) for k, v in (hints or {}).items() if k.startswith("label:")}


def _rejects(host: HostCapacity, req: Request, now: datetime, down_after: timedelta
             ) -> tuple[str, str] | None:
    """Why `host` cannot take `req`: (the detail, for administrators; the requirement it
    fails, in words that name neither the host nor its free capacity), or None."""
    if not host.enabled:
        return "disabled", "no host is up"
    if host.forced_down:
        return "forced down", "no host is up"
    if host.last_seen is None or now - host.last_seen > down_after:
        return "down (no heartbeat)", "no host is up"
    if req.availability_zone and host.availability_zone != req.availability_zone:
        return (f"in availability zone {host.availability_zone}, not {req.availability_zone}",
                f"no host is up in availability zone {req.availability_zone}")
    if host.cpus - host.cpu_used < req.cpu:
        return (f"needs {req.cpu} CPU, {host.cpus - host.cpu_used:g} free",
                f"no host has enough free CPU for {req.cpu:g} cores")
    if host.memory_mb - host.memory_used < req.memory:
        return (f"needs {req.memory} MiB, {host.memory_mb - host.memory_used} MiB free",
                f"no host has enough free memory for {req.memory} MiB")
    if req.disk and host.disk_gb - host.disk_used < req.disk:
        return (f"needs {req.disk} GiB of disk, {host.disk_gb - host.disk_used} GiB free",
                f"no host has enough free disk for {req.disk} GiB")
    for key, value in req.labels.items():
        if host.labels.get(key) != value:
            return f"lacks label {key}={value}", f"no host that is up has label {key}={value}"
    for wanted in req.ports:
        holder = host.ports.get(wanted)
        if holder is not None:
            # The requester learns only that it is its own capsule or someone else's.
            whose = (f"your {holder.kind} {holder.capsule}" if holder.project_id == req.project_id
                     else "another project")
            return (f"{describe(wanted)} used by {holder.kind} {holder.capsule} of project "
                    f"{holder.project_id}", f"no host has {describe(wanted)} free{_BY}{whose}")
    return None


_BY = ": used by "


def _merge_holders(unmet: list[str]) -> list[str]:
    """"no host has TCP port 80 free: used by X" and "…: used by Y" as one line naming
    both holders, in first-seen order."""
    out: dict[str, list[str]] = {}
    for line in unmet:
        head, _, holder = line.partition(_BY)
        holders = out.setdefault(head, [])
        if holder and holder not in holders:
            holders.append(holder)
    return [head + (_BY + ", ".join(holders) if holders else "") for head, holders in out.items()]


Weigher = Literal["spread", "pack"]


def select_host(hosts: list[HostCapacity], req: Request, now: datetime,
                down_after: timedelta = timedelta(seconds=180), weigher: Weigher = "spread") -> str:
    """The host for `req`. Spread: most free memory first, then most free CPU, then fewest
    containers (what tells hosts apart when requests are unset and claim nothing). Pack: the
    opposite, filling the fullest host first so that whole hosts stay free for big requests.
    Among equals, the first in `hosts` wins.

    One pass with the filters of `_rejects` inlined and no per-host allocation: this runs
    for every create over every host (~0.3 µs a host). The reasons are worked out only
    when nothing fits."""
    cutoff = now - down_after
    zone, cpu, memory, disk = req.availability_zone, req.cpu, req.memory, req.disk
    labels = tuple(req.labels.items())
    ports = req.ports
    pack = weigher == "pack"
    best: HostCapacity | None = None
    best_mem, best_cpu = 0.0, 0.0
    for h in hosts:
        if not h.enabled or h.forced_down or h.last_seen is None or h.last_seen < cutoff:
            continue
        if zone and h.availability_zone != zone:
            continue
        free_cpu = h.cpus - h.cpu_used
        free_mem = h.memory_mb - h.memory_used
        if free_cpu < cpu or free_mem < memory:
            continue
        if disk and h.disk_gb - h.disk_used < disk:
            continue
        if labels and any(h.labels.get(k) != v for k, v in labels):
            continue
        if ports and any(p in h.ports for p in ports):
            continue
        if best is not None:
            if free_mem != best_mem:
                if (free_mem > best_mem) == pack:
                    continue
            elif free_cpu != best_cpu:
                if (free_cpu > best_cpu) == pack:
                    continue
            elif h.containers == best.containers or (h.containers < best.containers) == pack:
                continue
        best, best_mem, best_cpu = h, free_mem, free_cpu
    if best is None:
        why = {h.name: r for h in hosts if (r := _rejects(h, req, now, down_after)) is not None}
        unmet = _merge_holders(list(dict.fromkeys(public for _, public in why.values())))
        if len(unmet) > 1 and "no host is up" in unmet:
            unmet.remove("no host is up")  # the hosts that are up are the news
        raise NoValidHost({h: detail for h, (detail, _) in why.items()}, unmet)
    return best.name
