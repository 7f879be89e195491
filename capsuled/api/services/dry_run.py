"""Dry runs (`?dry_run=true` on capsule create and update, for `capsule diff`): the whole
create or update path runs, validation, host access, quota, placement and all, in a
transaction that is then rolled back, so the answer is what the real request would do
and nothing is stored, claimed, recorded or announced (the outbox writes its records
only at commit; a rollback writes none)."""

from __future__ import annotations

from dataclasses import dataclass

from capsuled.domain.spec import CapsuleSpec
from capsuled.domain.update import Change


@dataclass(frozen=True)
class Rehearsal:
    """What a create (`current` None) or an update would do."""

    name: str | None
    new: CapsuleSpec  # as it would be stored (defaults filled in, identities carried)
    current: CapsuleSpec | None = None
    change: Change | None = None  # an update's plan; None for a create
    uuid: str | None = None
    revision: int | None = None  # the capsule's revision now
    status: str | None = None  # a create's: Creating, or Error when no host fits
    status_reason: str | None = None

    @property
    def changed(self) -> bool:
        return self.current is None or self.new != self.current


class Rehearsed(Exception):
    """Raised at the end of a dry run's transaction, so that it rolls back."""

    def __init__(self, rehearsal: Rehearsal) -> None:
        super().__init__("dry run")
        self.rehearsal = rehearsal
