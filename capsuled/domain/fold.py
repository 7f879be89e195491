"""Folding an agent's capsule report into the capsule's state: pure.

Given what the rows hold now (as plain data) and one report, `fold_report` says what the
statuses become and which events describe the change, in the order they are recorded.
The store only applies the result and writes it, in one transaction (DESIGN decision 12),
so the wording of events lives here and a sink can read the same events the store keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from capsuled.domain.channel import CapsuleReport, ContainerReport
from capsuled.domain.status import Status, container_status, derive_capsule_status


@dataclass(frozen=True)
class EventRecord:
    """An event to record on a capsule."""

    type: str  # Normal | Warning
    reason: str
    message: str
    container: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str | None]:
        """Events with equal keys are one event counted up (kubelet's aggregation)."""
        return self.type, self.reason, self.message, self.container


@dataclass(frozen=True)
class ChildState:
    """What a capsule's container row holds now, as far as folding needs it."""

    status: str
    exit_code: int | None
    restart_count: int


@dataclass(frozen=True)
class CapsuleState:
    status: str
    status_reason: str | None
    deleting: bool
    containers: Mapping[str, ChildState]  # by container uuid


@dataclass(frozen=True)
class ChildUpdate:
    """A reported container of the capsule: its new status, and whether it changed
    (status, exit code or restart count) so that its row's update time moves."""

    report: ContainerReport
    status: Status
    reason: str | None
    changed: bool


@dataclass(frozen=True)
class Fold:
    containers: list[ChildUpdate]  # in report order; unknown uuids are left out
    status: Status
    reason: str | None
    changed: bool  # the capsule's status or reason differs from what it was
    sandbox_recreated: bool  # one more restart of the capsule
    events: list[EventRecord]  # in the order they are recorded


def fold_report(state: CapsuleState, report: CapsuleReport) -> Fold:
    """The capsule after `report`. Events come in this order: init containers that failed
    (on the change only, so that re-reports of a blocked capsule don't repeat them), what
    the agent did (the report's own events), then the status change it led to."""
    children = dict(state.containers)
    updates: list[ChildUpdate] = []
    events: list[EventRecord] = []
    for c in report.containers:
        before = children.get(c.uuid)
        if before is None:
            continue
        status, reason = container_status(c)
        changed = (before.status, before.exit_code, before.restart_count) != (
            status.value, c.exit_code, c.restart_count)
        if changed and c.role == "init" and c.state == "exited" and c.exit_code not in (0, None):
            events.append(EventRecord("Warning", "InitFailed",
                                      f"init container {c.name} exited with code {c.exit_code}",
                                      c.name))
        updates.append(ChildUpdate(c, status, reason, changed))
        children[c.uuid] = ChildState(status.value, c.exit_code, c.restart_count)
    events.extend(EventRecord(type_, reason_, message, container)
                  for type_, reason_, message, container in report.events)
    status, reason = derive_capsule_status(report, state.deleting)
    changed = (state.status, state.status_reason) != (status.value, reason)
    if changed and state.status != status.value:
        kind = "Warning" if status in (Status.ERROR, Status.RESTARTING) else "Normal"
        events.append(EventRecord(kind, status.value, f"{state.status} → {status.value}"
                                  + (f": {reason}" if reason else "")))
    return Fold(updates, status, reason, changed, report.sandbox_recreated, events)
