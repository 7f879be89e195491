"""An update under way (a rollout) and the health gate that ends it. Pure.

While a capsule goes to a new revision it shows the status `Updating`; the status its
containers would give it (what `domain.status` derives from the agent's report) is kept
in the rollout as `observed`. The rollout ends in one of three ways, decided by `judge`
from the stored rows and the time, by whichever API replica looks first (an agent report
landing, or the rollout supervisor's tick, api/services/rollouts.py):

    done       the agent reports the new revision in place (`converged`), the capsule's
               containers run, every watched container is ready (its readiness and
               startup probes passed, where it has them), has never restarted, and has
               stayed so for minReadySeconds
    failed     the deadline (progressDeadlineSeconds after the start) passed first, or
               the capsule went to Error (an init container failed, an image could not be
               pulled, a container could not be made)
    progressing otherwise; the reason says what is still missing

A failed update rolls back by itself (store/rollouts.py): a new revision with the old
spec, as a rollout of kind `rollback` that is never rolled back again; a rollback that
fails ends with a warning and the capsule keeps what it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from capsuled.domain.status import Status

Kind = Literal["update", "rollback"]


class Rollout(BaseModel):
    """Stored as JSON on the capsule (capsules.rollout) while an update is under way."""

    model_config = ConfigDict(extra="ignore")  # written by a newer replica: still readable

    kind: Kind
    from_revision: int
    to_revision: int
    started_at: datetime
    deadline: datetime
    min_ready_seconds: int = 0
    watched: list[str] = Field(default_factory=list)  # app containers, by name
    automatic: bool = False  # a rollback the capsule started by itself
    restores: int | None = None  # a rollback: the revision whose spec it brings back
    cause: str | None = None  # a rollback's reason (the failure it answers)
    # What the agent last reported of the new revision: whether it reported at all (until
    # then `observed` is what the old revision's containers said), whether its plan is done
    # (every container on the new spec), and the status the containers give the capsule.
    reported: bool = False
    converged: bool = False
    observed: str = Status.CREATING.value
    observed_reason: str | None = None
    # Since when every gate held.
    ready_since: datetime | None = None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json")


def start(kind: Kind, from_revision: int, to_revision: int, now: datetime,
          progress_deadline_seconds: int, min_ready_seconds: int, watched: Sequence[str],
          automatic: bool = False, restores: int | None = None, cause: str | None = None,
          observed: str = Status.CREATING.value) -> Rollout:
    return Rollout(kind=kind, from_revision=from_revision, to_revision=to_revision,
                   started_at=now, deadline=now + timedelta(seconds=progress_deadline_seconds),
                   min_ready_seconds=min_ready_seconds, watched=list(watched),
                   automatic=automatic, restores=restores, cause=cause, observed=observed)


@dataclass(frozen=True)
class Member:
    """One of the capsule's app containers as the rows hold it."""

    name: str
    status: str
    ready: bool  # domain.conditions.container_ready, and its probes' verdict where it has them
    restarts: int  # of the container made for the new revision


Outcome = Literal["progressing", "done", "failed"]


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    rollout: Rollout  # with ready_since / restarts brought up to date


def judge(r: Rollout, members: Sequence[Member], now: datetime) -> Verdict:
    if r.reported and r.observed == Status.ERROR.value:
        return Verdict("failed", r.observed_reason or "the capsule went to Error", r)
    watched = [m for m in members if m.name in r.watched]
    missing = _missing(r, watched)
    if now >= r.deadline:
        seconds = round((r.deadline - r.started_at).total_seconds())
        return Verdict("failed", f"not ready within progressDeadlineSeconds ({seconds}s): "
                       + (missing or "ready, but not for minReadySeconds"), r)
    if missing:
        return Verdict("progressing", missing, r.model_copy(update={"ready_since": None}))
    if r.ready_since is None:
        r = r.model_copy(update={"ready_since": now})
    assert r.ready_since is not None
    if now - r.ready_since >= timedelta(seconds=r.min_ready_seconds):
        return Verdict("done", "ready", r)
    return Verdict("progressing", f"ready; waiting minReadySeconds ({r.min_ready_seconds}s)", r)


def _missing(r: Rollout, watched: Sequence[Member]) -> str:
    """What keeps the rollout from being done ('' when nothing)."""
    if not r.reported:
        return "waiting for the agent"
    if not r.converged:
        return "the agent is replacing containers"
    if r.observed != Status.RUNNING.value:
        return f"the capsule is {r.observed}" + (f" ({r.observed_reason})" if r.observed_reason else "")
    down = [f"{m.name} is {m.status}" for m in watched if m.status != Status.RUNNING.value]
    # A new container that already restarted has crashed: it is not ready, whatever it
    # shows now (its restart count only grows, so this holds until the rollout ends).
    crashed = [f"{m.name} restarted {m.restarts} time{'s' if m.restarts > 1 else ''}"
               for m in watched if m.status == Status.RUNNING.value and m.restarts]
    unready = [m.name for m in watched
               if m.status == Status.RUNNING.value and not m.restarts and not m.ready]
    parts = down + crashed + ([f"not ready: {', '.join(unready)}"] if unready else [])
    return "; ".join(parts)


def summary(r: Rollout, reason: str) -> str:
    """The capsule's status reason while it is Updating."""
    what = (f"rolling back to revision {r.restores} (as revision {r.to_revision})"
            if r.kind == "rollback" else f"updating to revision {r.to_revision}")
    return f"{what}: {reason}"
