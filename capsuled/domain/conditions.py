"""A container's and a capsule's ready and health conditions, from stored status and the
conditions the agent last reported (store Container.probe). Pure.

ready: running and (its probes passed: startup, then readiness; without probes, running
and not found unhealthy by a Docker health check). health: unknown while not running or
before a liveness/startup result or Docker's first check; unhealthy while its last
liveness or startup result (or Docker's check) is a failure; healthy otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

Health = Literal["healthy", "unhealthy", "unknown"]


def container_ready(status: str, probe: dict[str, Any] | None) -> bool:
    if status != "Running":
        return False
    probe = probe or {}
    if isinstance(probe.get("ready"), bool):
        return bool(probe["ready"])
    return probe.get("health") != "unhealthy"


def container_health(status: str, probe: dict[str, Any] | None) -> Health:
    if status != "Running":
        return "unknown"
    probe = probe or {}
    results = probe.get("probes") or {}
    vital = [results[p].get("result") for p in ("startup", "liveness")
             if isinstance(results.get(p), dict)]
    docker = probe.get("health")
    if "failure" in vital or docker == "unhealthy":
        return "unhealthy"
    if "unknown" in vital or docker == "starting":
        return "unknown"
    return "healthy"


def capsule_conditions(status: str, members: Sequence[tuple[str, dict[str, Any] | None]]
                       ) -> tuple[int, int, Health]:
    """(ready, total, health) over a capsule's app containers: (status, probe) each."""
    ready = sum(container_ready(s, p) for s, p in members)
    healths = [container_health(s, p) for s, p in members]
    if status != "Running" or not members:
        health: Health = "unknown"
    elif "unhealthy" in healths:
        health = "unhealthy"
    elif "unknown" in healths:
        health = "unknown"
    else:
        health = "healthy"
    return ready, len(members), health
