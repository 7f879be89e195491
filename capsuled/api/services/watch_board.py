"""Which agents' long polls to wake, on one API replica.

Before this board every change to any desired set (a create, a delete, an update) woke
every agent's long poll on the replica, and each re-read the store: a thousand agents
made a create cost a thousand queries, and while waiting each re-read its revision
every quarter second (4,000 queries a second at rest, per replica).

Now one thread reads every host's revision in one query, after each change this
replica committed or heard of (`kick`: its own commits and, on PostgreSQL, other
replicas' notices) and at least every `poll` seconds (what other replicas commit on an
engine without notices), and fires the signals of exactly the hosts whose revision
moved. A create therefore wakes one agent. It reads only while someone waits, and at
most once per `gap` (10 ms): a burst of creates shares reads instead of paying one each
(at a few hundred creates a second those reads were a tenth of the server's CPU), while
a change on a quiet board is still read at once.

The service views (`services_for`) follow the same host signals (a host's projects,
which its view covers, change only with its desired set) and also `services_all`,
which the control plane fires when something any view may show changed: a service,
or the serving state of a capsule of a project with services.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from capsuled.api.services.signals import Signal

LOG = logging.getLogger(__name__)


class WatchBoard:
    def __init__(self, read: Callable[[], dict[str, int]], kick: Signal,
                 poll: float = 0.25, gap: float = 0.01) -> None:
        self._read = read  # host name → revision, one query
        self._kick = kick
        self._poll = poll
        self._gap = gap
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._waiting = 0
        self._known: dict[str, int] = {}
        self._read_at = float("-inf")  # monotonic time of the last successful read
        self._assigned: dict[str, Signal] = {}
        self._services: dict[str, Signal] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.reads = 0  # store reads so far (tests and the benchmark count them)

    # -- what waiters use ------------------------------------------------------------------
    def assigned(self, host: str) -> Signal:
        """Fired when `host`'s desired set changed."""
        return self._signal(self._assigned, host)

    def revision(self, host: str) -> int | None:
        """`host`'s revision as the last read saw it, if that read is recent (at most a
        few poll periods old); None when unknown, so the caller reads the store."""
        with self._lock:
            if time.monotonic() - self._read_at > self._poll * 4 + 1.0:
                return None
            return self._known.get(host)

    def services_for(self, host: str) -> Signal:
        """Fired when `host`'s service view may have changed."""
        return self._signal(self._services, host)

    def services_all(self) -> None:
        """Something every service view may show changed: wake them all."""
        with self._lock:
            signals = list(self._services.values())
        for s in signals:
            s.fire()

    def waiting(self) -> _Waiting:
        """`with board.waiting():` around a wait keeps the reader thread reading."""
        return _Waiting(self)

    @property
    def waiters(self) -> int:
        """Long polls waiting now."""
        with self._lock:
            return self._waiting

    def stop(self) -> None:
        self._stop.set()
        self._kick.fire()
        with self._lock:
            self._idle.notify_all()

    # -- the reader ------------------------------------------------------------------------
    def _signal(self, table: dict[str, Signal], host: str) -> Signal:
        with self._lock:
            found = table.get(host)
            if found is None:
                found = table[host] = Signal()
            return found

    def _enter(self) -> None:
        with self._lock:
            self._waiting += 1
            self._idle.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watch-board", daemon=True)
                self._thread.start()

    def _leave(self) -> None:
        with self._lock:
            self._waiting -= 1

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while self._waiting == 0 and not self._stop.is_set():
                    self._idle.wait()
            seen = self._kick.seq
            began = time.monotonic()
            try:
                self.read_once()
            except Exception as exc:  # noqa: BLE001 - waiters still time out and re-read
                LOG.warning("reading the hosts' revisions failed: %s", exc)
            self._kick.wait_blocking(seen, self._poll)
            # Kicks that land meanwhile are covered by the next read, whose `seen` is
            # taken after this pause.
            pause = began + self._gap - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)

    def read_once(self) -> list[str]:
        """Read every revision; fire the hosts whose revision moved (their names)."""
        revisions = self._read()
        self.reads += 1
        with self._lock:
            # A host first seen fires too: its waiter may have read the store before
            # this revision was committed (a spurious wake-up only costs a re-read).
            moved = [h for h, r in revisions.items() if self._known.get(h) != r]
            self._known = revisions
            self._read_at = time.monotonic()
            fire = [t[h] for h in moved for t in (self._assigned, self._services) if h in t]
        for s in fire:
            s.fire()
        return moved


class _Waiting:
    def __init__(self, board: WatchBoard) -> None:
        self._board = board

    def __enter__(self) -> None:
        self._board._enter()

    def __exit__(self, *exc: object) -> None:
        self._board._leave()
