"""Updates and rollbacks in the store: start one, fold what the agent reports into it, and
end it (done, or failed and rolled back) under a lock on the capsule's row.

The agent only ever sees the capsule's spec, which is one revision at a time: an update
writes the new revision's spec in one transaction (`begin`), and an automatic rollback
writes the old revision's spec back as a new revision, also in one transaction. So an
agent killed at any moment, restarted, converges on whichever revision is the spec then,
never on a mix.

Claims: while a rollout is under way the capsule claims the larger of the two specs' CPU
and memory, and its volume rows are the union of both (each at the larger size), so that
a rollback never needs room another capsule took meanwhile; when it ends, the claim
shrinks to the spec's own. An update's growth is checked against quota and the host by
the API service before `begin` (api/services/rollouts.py); an automatic rollback needs
no check, since it stays within that claim.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import ObjectDeletedError

from capsuled.domain.conditions import container_ready
from capsuled.domain.fold import EventRecord
from capsuled.domain.rollout import Kind, Member, Rollout, judge, start, summary
from capsuled.domain.spec import CapsuleSpec
from capsuled.domain.status import Status
from capsuled.domain.update import Change, plan_change
from capsuled.errors import NotFound
from capsuled.store import capsules as repo
from capsuled.store import host_ports
from capsuled.store import revisions
from capsuled.store.tables import Capsule, CapsuleLabel, Container, Volume, utcnow

SYSTEM_USER = "capsuled"  # who an automatic rollback is recorded as


def busy_message(capsule: Capsule) -> str:
    r = current(capsule)
    what = f"to revision {r.to_revision}" if r is not None else ""
    return (f"Capsule {capsule.name or capsule.uuid} is being updated {what}; wait until the "
            "update is done (capsule update --wait waits), or roll it back.").replace("  ", " ")


def current(capsule: Capsule) -> Rollout | None:
    return None if capsule.rollout is None else Rollout.model_validate(capsule.rollout)


def lock_row(session: Session, *where: ColumnElement[bool]) -> None:
    """Take the row lock of the capsule `where` finds (SQLite: the database write lock) for
    the rest of the transaction: a write that changes nothing, which every engine
    serialises. What is read after it is what the last holder committed."""
    session.execute(update(Capsule).where(*where).values(revision=Capsule.revision),
                    execution_options={"synchronize_session": False})


def lock(session: Session, capsule: Capsule) -> None:
    """Take the capsule's row lock, then read the row again: rollout decisions are made on
    what the last holder committed, so two replicas never both end (or roll back) one
    rollout."""
    lock_row(session, Capsule.id == capsule.id)
    try:
        session.refresh(capsule)
    except ObjectDeletedError:
        raise NotFound(f"Capsule {capsule.uuid} could not be found.") from None


def locked(session: Session, capsule: Capsule) -> Rollout | None:
    """The capsule's rollout, read under its lock (no lock when there is none)."""
    if capsule.rollout is None:
        return None
    lock(session, capsule)
    return current(capsule)


@dataclass(frozen=True)
class Growth:
    """What going to a new spec adds to a capsule's claim (never negative)."""

    containers: int
    cpu: float
    memory: int
    disk: int


def growth(capsule: Capsule, new: CapsuleSpec) -> Growth:
    sizes = {v.name: v.size or 0 for v in capsule.volumes}
    disk = sum(max(0, (v.size or 0) - sizes.get(v.name, 0)) for v in new.volumes)
    return Growth(containers=max(0, len(new.all_containers) - len(capsule.containers)),
                  cpu=max(0.0, round(new.total_cpu() - float(capsule.cpu), 3)),
                  memory=max(0, new.total_memory() - int(capsule.memory)), disk=disk)


def begin(session: Session, capsule: Capsule, new: CapsuleSpec, *, kind: Kind, user_id: str,
          cause: str, now: datetime | None = None, automatic: bool = False,
          restores: int | None = None, why: str | None = None) -> Change:
    """Make `new` the capsule's spec as a new revision, to be rolled out: the capsule shows
    Updating until `judge` ends it. The caller has checked what it may change and claim."""
    now = now or utcnow()
    spec = CapsuleSpec.model_validate(capsule.spec)
    change = plan_change(spec, new)
    prior = current(capsule)
    if prior is not None and not automatic:  # a rollback supersedes an update under way
        revisions.set_outcome(session, capsule, prior.to_revision, "Superseded",
                              f"revision {capsule.revision + 1} replaced it before it was ready")
    observed = prior.observed if prior is not None else capsule.status
    if observed in (Status.UPDATING.value, Status.DELETING.value):
        observed = Status.CREATING.value
    claim = (max(float(capsule.cpu), change.new.total_cpu()),
             max(int(capsule.memory), change.new.total_memory()))
    number = capsule.revision + 1
    r = start(kind, capsule.revision, number, now, change.new.progress_deadline_seconds,
              change.new.min_ready_seconds, change.watched, automatic=automatic,
              restores=restores, cause=why, observed=observed)
    capsule.rollout, capsule.rollout_deadline = r.to_json(), r.deadline
    capsule.status, capsule.status_reason = Status.UPDATING.value, summary(r, "starting")
    _sync_rows(session, capsule, change.new)
    repo.change_spec(session, capsule, change.new, _started_event(r, change), user_id=user_id,
                     cause=cause, rollout=True)
    capsule.cpu, capsule.memory = claim
    return change


def _started_event(r: Rollout, change: Change) -> EventRecord:
    parts = []
    if change.new_sandbox:
        parts.append(f"a new sandbox ({change.new_sandbox})")
    if change.replaced:
        parts.append("replacing " + ", ".join(change.replaced))
    if change.added:
        parts.append("adding " + ", ".join(change.added))
    probed = [n for n in change.watched if n not in (*change.replaced, *change.added)
              and not change.new_sandbox]
    if probed:
        parts.append("new probes for " + ", ".join(probed))
    detail = f" ({'; '.join(parts)})" if parts else " (no container changes)"
    if r.kind == "rollback":
        how = "automatically " if r.automatic else ""
        return EventRecord("Warning" if r.automatic else "Normal", "RollingBack",
                           f"{how}rolling back to revision {r.restores} as revision "
                           f"{r.to_revision}{detail}" + (f": {r.cause}" if r.cause else ""))
    return EventRecord("Normal", "UpdateStarted", f"updating to revision {r.to_revision}{detail}")


def _sync_rows(session: Session, capsule: Capsule, spec: CapsuleSpec) -> None:
    """Container rows follow the new spec at once (a removed container is gone from the
    API; a kept one keeps its row, uuid and history); volume rows become the union of
    both revisions, at the larger size, until the rollout ends; labels are replaced."""
    wanted = {c.uuid: (i, c) for i, c in enumerate(spec.all_containers)}
    gone = [row for row in capsule.containers if row.uuid not in wanted]
    repo.forget_actions(session, [row.uuid for row in gone])
    for member in gone:
        capsule.containers.remove(member)
    session.flush()  # a name a removed container had may come back under a new uuid
    rows = {row.uuid: row for row in capsule.containers}
    for uuid, (i, c) in wanted.items():
        row = rows.get(uuid)
        if row is None:
            capsule.containers.append(Container(
                uuid=uuid, role=c.role, position=i, name=c.name, project_id=capsule.project_id,
                user_id=capsule.user_id, image=c.image, status=Status.CREATING.value,
                created_at=utcnow(), registry_id=c.registry))
        else:
            row.role, row.position, row.name, row.image, row.registry_id = (
                c.role, i, c.name, c.image, c.registry)
    volumes = {v.name: v for v in capsule.volumes}
    for v in spec.volumes:
        vol = volumes.get(v.name)
        if vol is None:
            capsule.volumes.append(Volume(
                uuid=str(uuidlib.uuid4()), name=v.name, type=v.type, size=v.size,
                auto_remove=v.auto_remove, project_id=capsule.project_id, user_id=capsule.user_id))
        elif (v.size or 0) > (vol.size or 0):
            vol.size = v.size
    if capsule.labels != spec.labels:
        capsule.labels = dict(spec.labels)
        capsule.label_rows = [CapsuleLabel(key=k, value=v) for k, v in spec.labels.items()]
    if capsule.annotations != spec.annotations:
        capsule.annotations = dict(spec.annotations)


def _shrink(session: Session, capsule: Capsule) -> None:
    """The claim back to the spec's own, once no rollback can need more (host ports too)."""
    spec = CapsuleSpec.model_validate(capsule.spec)
    capsule.cpu, capsule.memory = spec.total_cpu(), spec.total_memory()
    host_ports.claim(session, capsule, spec)
    sizes = {v.name: v.size for v in spec.volumes}
    for row in list(capsule.volumes):
        if row.name not in sizes:
            capsule.volumes.remove(row)  # its Docker volume goes with the capsule
        elif row.size != sizes[row.name]:
            row.size = sizes[row.name]


def observe(session: Session, capsule: Capsule, r: Rollout, status: Status, reason: str | None,
            converged: bool | None, now: datetime) -> tuple[str, str | None]:
    """An agent report of the current generation: what its containers say, and whether the
    agent's plan is done (an agent that does not say: it is once the capsule runs).
    Returns the status and reason the capsule shows now."""
    r = r.model_copy(update={
        "observed": status.value, "observed_reason": reason, "reported": True,
        "converged": converged if converged is not None else status is Status.RUNNING})
    return _decide(session, capsule, r, now)


def tick(session: Session, capsule: Capsule, now: datetime) -> bool:
    """Judge the capsule's rollout by the clock (the deadline, minReadySeconds): the
    supervisor's step. True when the rollout ended or rolled back."""
    try:
        r = locked(session, capsule)
    except NotFound:
        return False  # deleted meanwhile
    if r is None or capsule.deleting:
        return False
    before, revision = capsule.status, capsule.revision
    status, reason = _decide(session, capsule, r, now)
    if (capsule.status, capsule.status_reason) != (status, reason):
        capsule.status, capsule.status_reason, capsule.updated_at = status, reason, now
        if status != before:
            repo.changed(session, capsule, "capsule.update", status, f"{before} -> {status}"
                         + (f": {reason}" if reason else ""))
    return capsule.rollout is None or capsule.revision != revision


def _decide(session: Session, capsule: Capsule, r: Rollout, now: datetime) -> tuple[str, str | None]:
    verdict = judge(r, _members(capsule), now)
    if verdict.outcome == "done":
        return _finish(session, capsule, verdict.rollout)
    if verdict.outcome == "failed":
        return _fail(session, capsule, verdict.rollout, verdict.reason, now)
    _store(capsule, verdict.rollout)
    return Status.UPDATING.value, summary(verdict.rollout, verdict.reason)


def _members(capsule: Capsule) -> list[Member]:
    spec = CapsuleSpec.model_validate(capsule.spec)
    gated = {c.name for c in spec.containers if c.readiness is not None or c.startup is not None}
    return [Member(name=row.name, status=row.status, restarts=row.restart_count,
                   ready=container_ready(row.status, row.probe) and (
                       row.name not in gated or (row.probe or {}).get("ready") is True))
            for row in capsule.containers if row.role == "app"]


def _store(capsule: Capsule, r: Rollout) -> None:
    if capsule.rollout != r.to_json():
        capsule.rollout = r.to_json()


def _end(session: Session, capsule: Capsule) -> None:
    capsule.rollout, capsule.rollout_deadline = None, None
    _shrink(session, capsule)


def _finish(session: Session, capsule: Capsule, r: Rollout) -> tuple[str, str | None]:
    _end(session, capsule)
    revisions.set_outcome(session, capsule, r.to_revision, "Ready")
    if r.kind == "rollback":
        message = f"rolled back to revision {r.restores} (as revision {r.to_revision})" + (
            f" after {r.cause}" if r.cause else "")
        event = EventRecord("Warning" if r.automatic else "Normal", "RolledBack", message)
    else:
        message = f"revision {r.to_revision} is ready"
        event = EventRecord("Normal", "UpdateDone", message)
    _record(session, capsule, event)
    reason = r.observed_reason
    if r.automatic and reason is None:
        reason = message  # says so until the next change of status
    return r.observed, reason


def _fail(session: Session, capsule: Capsule, r: Rollout, why: str,
          now: datetime) -> tuple[str, str | None]:
    revisions.set_outcome(session, capsule, r.to_revision, "Failed", why)
    if r.kind == "rollback":
        _end(session, capsule)
        _record(session, capsule, EventRecord(
            "Warning", "RollbackFailed", f"rolling back to revision {r.restores} (as revision "
            f"{r.to_revision}) failed: {why}; the capsule keeps what it has"))
        return r.observed, f"rollback to revision {r.restores} failed: {why}"
    _record(session, capsule, EventRecord("Warning", "UpdateFailed",
                                          f"revision {r.to_revision} failed: {why}"))
    try:
        back = revisions.get(session, capsule, r.from_revision)
    except NotFound:  # pinned while the rollout lasts; an operator may have removed it
        _end(session, capsule)
        return r.observed, f"revision {r.to_revision} failed: {why}"
    capsule.rollout = r.to_json()  # `begin` reads what the containers said last
    begin(session, capsule, CapsuleSpec.model_validate(back.spec), kind="rollback",
          user_id=SYSTEM_USER, now=now, automatic=True, restores=r.from_revision,
          why=f"revision {r.to_revision} failed: {why}",
          cause=f"automatic rollback to revision {r.from_revision}: revision "
                f"{r.to_revision} failed: {why}")
    assert capsule.status_reason is not None
    return capsule.status, capsule.status_reason


def _record(session: Session, capsule: Capsule, event: EventRecord) -> None:
    repo.add_event(session, capsule, event.type, event.reason, event.message)
    repo.changed(session, capsule, "capsule.update", event.reason, event.message)


def abandon(session: Session, capsule: Capsule, why: str) -> None:
    """The capsule goes (deleted): its rollout ends where it is."""
    r = current(capsule)
    if r is None:
        return
    revisions.set_outcome(session, capsule, r.to_revision, "Superseded", why)
    capsule.rollout, capsule.rollout_deadline = None, None


def rollback_target(session: Session, capsule: Capsule, number: int | None) -> int:
    """The revision a rollback goes back to: `number`, or the one before the current."""
    row = revisions.previous(session, capsule) if number is None else \
        revisions.get(session, capsule, number)
    return row.revision
