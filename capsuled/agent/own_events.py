"""The Docker events a sync caused itself, so that they do not sync its unit again.

A sync that makes a capsule's containers sees Docker's `create` and `start` events of each
while it runs, and every one marked the capsule for another sync (agent/workers.py: an
event while running → dirty): a list and an inspect of every container right after the
sync had inspected each of them, competing with the report it had just sent (measured:
10-20 ms of a capsule's start, on its critical path). So while a capsule's sync runs, the
event loop hands its `create` and `start` events here instead; when the sync ends, those
of containers it made (and inspected once started) are dropped, and any other one syncs
the capsule again. Every other event (`die`, `oom`, `destroy`, a restart's later `start`
after a `die`) wakes the capsule as before, and an event that arrives after the sync
ended syncs it as before. A bare container's sync notes what it created or started the
same way (its next step observes it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

_HELD = frozenset({"create", "start"})


@dataclass
class _Sync:
    made: set[str] = field(default_factory=set)
    held: list[str] = field(default_factory=list)  # container ids


class OwnEvents:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, _Sync] = {}  # capsule uuid → its running sync

    def begin(self, capsule: str) -> None:
        with self._lock:
            self._open[capsule] = _Sync()

    def made(self, capsule: str, container_id: str) -> None:
        """The running sync of `capsule` made `container_id` and inspected it started."""
        with self._lock:
            sync = self._open.get(capsule)
            if sync is not None:
                sync.made.add(container_id)

    def hold(self, capsule: str, container_id: str, action: str) -> bool:
        """Keep the event for the end of the capsule's running sync (True), or not (False:
        no sync runs, or it is not a create or a start): the caller wakes the capsule."""
        if action not in _HELD:
            return False
        with self._lock:
            sync = self._open.get(capsule)
            if sync is None:
                return False
            sync.held.append(container_id)
            return True

    def end(self, capsule: str) -> bool:
        """The sync ended: whether an event it held was not its own (sync again)."""
        with self._lock:
            sync = self._open.pop(capsule, None)
        return sync is not None and any(cid not in sync.made for cid in sync.held)
