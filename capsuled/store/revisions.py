"""A capsule's revisions: each spec it has had, with who made it, when and why.

Written only by `capsules.change_spec` (and `capsules.create_capsule` for revision 1), so
every change of a spec is a revision. Numbers only grow; only the newest
`limits.revisions_per_capsule` are kept, and always the current one and the one an update
under way came from (what a rollback goes back to)."""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from capsuled.domain.spec import CapsuleSpec
from capsuled.errors import NotFound
from capsuled.store.tables import Capsule, CapsuleRevision, table, utcnow

MAX_CAUSE_CHARS = 1024

# Set once at start-up from limits.revisions_per_capsule by the composition root.
_keep = 10


def configure(keep: int) -> None:
    global _keep
    _keep = max(2, keep)  # the current revision and one to roll back to


def record(session: Session, capsule: Capsule, spec: CapsuleSpec, user_id: str,
           cause: str | None, number: int) -> None:
    """Add revision `number` of `capsule` (flushed: the capsule has its id). Core, not a
    flushed object: every create writes one, and nothing tracks revisions in the session."""
    session.execute(_INSERT, {
        "capsule_id": capsule.id, "revision": number, "spec": spec.model_dump(mode="json"),
        "project_id": capsule.project_id, "user_id": user_id,
        "change_cause": (cause or "")[:MAX_CAUSE_CHARS] or None, "created_at": utcnow()})
    _prune(session, capsule, number)


_INSERT = insert(table(CapsuleRevision))


def _prune(session: Session, capsule: Capsule, newest: int) -> None:
    keep_from = newest - _keep + 1
    if keep_from <= 1:
        return
    pinned = {newest, capsule.revision}
    rollout = capsule.rollout or {}
    for key in ("from_revision", "restores"):
        if isinstance(rollout.get(key), int):
            pinned.add(rollout[key])
    session.execute(delete(CapsuleRevision).where(
        CapsuleRevision.capsule_id == capsule.id, CapsuleRevision.revision < keep_from,
        CapsuleRevision.revision.not_in(pinned)), execution_options={"synchronize_session": False})


def list_for(session: Session, capsule: Capsule) -> list[CapsuleRevision]:
    """Oldest first."""
    return list(session.scalars(select(CapsuleRevision).where(
        CapsuleRevision.capsule_id == capsule.id).order_by(CapsuleRevision.revision)).all())


def get(session: Session, capsule: Capsule, number: int) -> CapsuleRevision:
    row = session.scalars(select(CapsuleRevision).where(
        CapsuleRevision.capsule_id == capsule.id, CapsuleRevision.revision == number)).first()
    if row is None:
        raise NotFound(f"revision: capsule {capsule.name or capsule.uuid} has no revision "
                       f"{number} (or it is no longer kept); see its revisions")
    return row


def previous(session: Session, capsule: Capsule) -> CapsuleRevision:
    """The newest kept revision before the current one: what a rollback goes back to."""
    row = session.scalars(select(CapsuleRevision).where(
        CapsuleRevision.capsule_id == capsule.id, CapsuleRevision.revision < capsule.revision)
        .order_by(CapsuleRevision.revision.desc()).limit(1)).first()
    if row is None:
        raise NotFound(f"revision: capsule {capsule.name or capsule.uuid} has no revision "
                       f"before {capsule.revision} to roll back to")
    return row


def set_outcome(session: Session, capsule: Capsule, number: int, outcome: str,
                reason: str | None = None) -> None:
    row = session.scalars(select(CapsuleRevision).where(
        CapsuleRevision.capsule_id == capsule.id, CapsuleRevision.revision == number)).first()
    if row is not None:
        row.outcome, row.outcome_reason = outcome, reason
