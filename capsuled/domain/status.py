"""Zun's status names and how a capsule's status follows from its containers.

Zun copies only the sandbox's state into the capsule, so a crashed app container leaves
the capsule Running. Here every child counts:

    deleting                                   → Deleting
    a sync error, or an init container failed  → Error
    sandbox or some container not up yet       → Creating
    every app container running                → Running
    some app container in restart back-off     → Restarting
    every app container paused                 → Paused
    some running, some exited or paused        → Running (the reason names the others)
    all exited: all 0 → Stopped; else          → Error
"""

from __future__ import annotations

from enum import Enum

from capsuled.domain.channel import CapsuleReport, ContainerReport


class Status(str, Enum):
    CREATING = "Creating"
    CREATED = "Created"
    RUNNING = "Running"
    STOPPED = "Stopped"
    PAUSED = "Paused"
    RESTARTING = "Restarting"
    REBUILDING = "Rebuilding"
    UPDATING = "Updating"  # extension: going to a new revision (domain/rollout.py)
    DELETING = "Deleting"
    DELETED = "Deleted"
    ERROR = "Error"
    UNKNOWN = "Unknown"
    DEAD = "Dead"


_STATE_TO_STATUS = {
    "created": Status.CREATED,
    "running": Status.RUNNING,
    "paused": Status.PAUSED,
    "restarting": Status.RESTARTING,
    "exited": Status.STOPPED,
    "dead": Status.DEAD,
    "removing": Status.DELETING,
    "missing": Status.CREATING,
}


def container_status(c: ContainerReport) -> tuple[Status, str | None]:
    """A child's Zun status and reason from what the runtime reports."""
    if c.error:
        return Status.ERROR, c.error
    status = _STATE_TO_STATUS.get(c.state, Status.UNKNOWN)
    reason = None
    if c.state == "exited" and c.exit_code is not None:
        reason = f"exited with code {c.exit_code}" + (" (out of memory)" if c.oom_killed else "")
    elif c.state == "restarting":
        reason = f"restarting after exit code {c.exit_code} ({c.restart_count} restarts)"
    elif c.state == "running" and c.health == "unhealthy":
        reason = "unhealthy: its health check fails"
    return status, reason


def derive_capsule_status(report: CapsuleReport, deleting: bool) -> tuple[Status, str | None]:
    if deleting:
        return Status.DELETING, None
    if report.error:
        return Status.ERROR, report.error
    inits = [c for c in report.containers if c.role == "init"]
    apps = [c for c in report.containers if c.role == "app"]
    for c in inits:
        if c.error or (c.state == "exited" and c.exit_code not in (0, None)):
            detail = c.error or f"exited with code {c.exit_code}"
            return Status.ERROR, f"init container {c.name} failed: {detail}"
    for c in apps:
        if c.error:
            return Status.ERROR, f"container {c.name}: {c.error}"
    if report.sandbox_state != "running":
        return Status.CREATING, report.progress or "starting the sandbox"
    if any(c.state in ("missing", "created") for c in [*inits, *apps]) or any(
            c.state == "running" for c in inits):
        return Status.CREATING, report.progress
    if all(c.state == "running" for c in apps):
        return Status.RUNNING, None
    restarting = [c for c in apps if c.state == "restarting"]
    if restarting:
        names = ", ".join(f"{c.name} (exit code {c.exit_code}, {c.restart_count} restarts)"
                          for c in restarting)
        return Status.RESTARTING, f"restarting: {names}"
    exited = [c for c in apps if c.state in ("exited", "dead")]
    paused = [c for c in apps if c.state == "paused"]
    running = [c for c in apps if c.state == "running"]
    if paused and len(paused) == len(apps):
        return Status.PAUSED, "all containers paused"
    gone = ", ".join(f"{c.name} (exit code {c.exit_code})" for c in exited)
    if running or paused:
        parts = [f"{len(exited)} of {len(apps)} containers exited: {gone}"] if exited else []
        if paused:
            parts.append("paused: " + ", ".join(c.name for c in paused))
        return Status.RUNNING, "; ".join(parts)
    if exited and all(c.exit_code == 0 for c in exited):
        return Status.STOPPED, "all containers exited with code 0"
    if exited:
        return Status.ERROR, f"containers exited: {gone}"
    return Status.UNKNOWN, None
