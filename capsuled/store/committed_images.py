"""Who owns each committed image reference (table committed_images).

A reference is claimed before the host commits, under the table's unique key, so two
projects committing the same name at once cannot both win; a failed commit gives back a
claim it made."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from capsuled.errors import Conflict
from capsuled.store.tables import CommittedImage, table, utcnow


def owner(session: Session, ref: str) -> str | None:
    """The project that committed `ref` (normalised), if any."""
    return session.scalar(select(CommittedImage.project_id).where(CommittedImage.ref == ref))


def owners(session: Session, refs: Collection[str]) -> dict[str, str]:
    """The projects that committed any of `refs` (normalised), by ref: one query."""
    if not refs:
        return {}
    return {ref: project for ref, project in session.execute(
        _OWNERS, {"refs": sorted(set(refs))})}


# Built once, Core: every create asks.
_CI = table(CommittedImage).c
_OWNERS = select(_CI.ref, _CI.project_id).where(_CI.ref.in_(bindparam("refs", expanding=True)))


def claim(session: Session, ref: str, project_id: str, container_uuid: str) -> bool:
    """Make `ref` this project's; True if the claim is new (to give back on failure).
    Conflict, naming `repository`, when another project owns it."""
    current = owner(session, ref)
    if current is not None:
        if current != project_id:
            raise Conflict(f"repository: {ref} is an image of another project; "
                           "choose another repository or tag")
        return False
    try:
        with session.begin_nested():
            session.add(CommittedImage(ref=ref, project_id=project_id,
                                       container_uuid=container_uuid, created_at=utcnow()))
    except IntegrityError:
        raise Conflict(f"repository: {ref} is being committed by another request; "
                       "try again") from None
    return True


def record(session: Session, ref: str, project_id: str, host: str, image_id: str,
           container_uuid: str) -> None:
    row = session.scalars(select(CommittedImage).where(CommittedImage.ref == ref,
                                                       CommittedImage.project_id == project_id)).first()
    if row is None:
        return
    row.host, row.image_id, row.container_uuid = host, image_id, container_uuid


def give_back(session: Session, ref: str, project_id: str) -> None:
    session.execute(delete(CommittedImage).where(CommittedImage.ref == ref,
                                                 CommittedImage.project_id == project_id))
