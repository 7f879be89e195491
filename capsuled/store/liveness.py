"""What a silent host means for what runs on it: its capsules and bare containers turn
Unknown (once, with a reason and an event) until its agent reports again, which re-derives
their real status from what it observes. A host that was only late (its heartbeats
resume) is told so in the heartbeat's answer (`marked_unknown`), and its agent reports
everything again."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from capsuled.domain.status import Status
from capsuled.store.capsules import add_event
from capsuled.store.tables import Capsule, Container, Host

UNKNOWN = Status.UNKNOWN.value


def silent_hosts(session: Session, now: datetime, down_after: timedelta) -> list[Host]:
    return list(session.scalars(select(Host).where(or_(
        Host.forced_down.is_(True), Host.last_seen.is_(None),
        Host.last_seen < now - down_after))).all())


def marked_unknown(session: Session, hosts: Collection[str]) -> set[str]:
    """Those of `hosts` with anything placed on them Unknown: their agents, heartbeating
    again, must report everything afresh (what they observe did not change, so they would
    not). Two indexed reads whatever the number of hosts (one batch of heartbeats)."""
    if not hosts:
        return set()
    out = set(session.scalars(select(Capsule.host).distinct().where(
        Capsule.host.in_(hosts), Capsule.status == UNKNOWN, Capsule.deleting.is_(False))))
    out |= set(session.scalars(select(Container.host).distinct().where(
        Container.role == "bare", Container.host.in_(hosts), Container.status == UNKNOWN,
        Container.deleting.is_(False))))
    return {h for h in out if h is not None}


def mark_unknown(session: Session, now: datetime, down_after: timedelta) -> int:
    """Mark what is placed on silent hosts Unknown; how many capsules and containers changed."""
    changed = 0
    for host in silent_hosts(session, now, down_after):
        since = f"since {host.last_seen:%Y-%m-%d %H:%M:%S} UTC" if host.last_seen else "ever"
        # Shown to members (status_reason, events): the host's name is for administrators.
        why = ("its host is forced down" if host.forced_down
               else f"its host is down: no heartbeat {since}")
        for capsule in session.scalars(select(Capsule).where(
                Capsule.host == host.name, Capsule.status != UNKNOWN,
                Capsule.deleting.is_(False))).all():
            add_event(session, capsule, "Warning", "HostDown",
                      f"{capsule.status} → {UNKNOWN}: {why}")
            capsule.status, capsule.status_reason, capsule.updated_at = UNKNOWN, why, now
            for c in capsule.containers:
                c.status, c.status_reason = UNKNOWN, why
            changed += 1
        for row in session.scalars(select(Container).where(
                Container.role == "bare", Container.host == host.name,
                Container.status != UNKNOWN, Container.deleting.is_(False))).all():
            row.status, row.status_reason, row.updated_at = UNKNOWN, why, now
            changed += 1
    return changed
