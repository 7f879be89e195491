"""Agents' heartbeats, written to the store in batches.

A heartbeat used to be a transaction of its own that updated its host's row. Every
create then locked every host row until it committed (the claim, store/hosts.lock_hosts;
now its chosen host's row, or every row when decided exactly: placement.py), so
with many agents the heartbeats queued behind the creates, each holding one of the
replica's worker threads while it waited: a thousand agents beating every ten seconds
kept a hundred transactions a second waiting on locks, and the reads behind them in
the thread pool (the agents' long polls, reports) waited too.

Here a heartbeat only notes the time in memory; one thread writes what was noted,
every `period`, in one transaction (rows locked in id order, as creates lock them, so
the two never deadlock). A host's `last_seen` lags by at most `period` plus one
create. If the last write failed, heartbeats fail too (Unavailable), so an agent still
learns that the control plane lost its store, as it did when each beat wrote itself.
The same transaction reads which of those hosts have anything Unknown (they were silent
for a while): the next beat of such a host answers True, once, and its agent reports
everything again.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from capsuled.errors import CapsuledError, Unavailable
from capsuled.store import hosts as host_repo
from capsuled.store import liveness as liveness_repo
from capsuled.store.engine import Store
from capsuled.store.tables import utcnow

LOG = logging.getLogger(__name__)


class Heartbeats:
    def __init__(self, store: Store, period: float = 0.5) -> None:
        self._store = store
        self._period = period
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[datetime, int]] = {}  # host → (last beat, beats)
        self._failed: str | None = None  # why the last write failed, until one succeeds
        self._resync: set[str] = set()  # hosts whose next beat asks for a full report
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def beat(self, host: str) -> bool:
        """Note the beat; True when the host's agent should report everything again."""
        with self._lock:
            if self._failed is not None:
                raise Unavailable(f"heartbeats cannot be stored: {self._failed}")
            count = self._pending.get(host, (None, 0))[1]
            self._pending[host] = (utcnow(), count + 1)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
                self._thread.start()
            if host in self._resync:
                self._resync.discard(host)
                return True
            return False

    def flush(self) -> int:
        """Write what was noted; how many hosts. On failure it is kept for the next try."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            with self._store.transaction() as s:
                host_repo.heartbeats(s, batch)
                resync = liveness_repo.marked_unknown(s, list(batch))
        except Exception as exc:
            with self._lock:
                for host, (at, n) in batch.items():
                    newer = self._pending.get(host)
                    self._pending[host] = (newer[0] if newer else at, n + (newer[1] if newer else 0))
                self._failed = exc.message if isinstance(exc, CapsuledError) else str(exc)
            raise
        with self._lock:
            self._failed = None
            self._resync = (self._resync - batch.keys()) | resync  # what this batch read
        return len(batch)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # Nothing but stop() ends this loop: without it no host would stay up.
        while not self._stop.wait(self._period):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - kept for the next round; beats fail meanwhile
                LOG.warning("storing %s heartbeat(s) failed: %s", len(self._pending), exc)
