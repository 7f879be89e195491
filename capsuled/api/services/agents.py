"""The control plane's side of the agent channel: registration, heartbeats, the desired
set per host (watch), and folding status reports into the store.

In all-in-one mode the agent calls this object directly (it satisfies
`domain.channel.AgentChannel`); the HTTP agent endpoints of the multi-host mode will call
the same methods.
"""

from __future__ import annotations

import asyncio
import threading
import time

from capsuled.domain.channel import Assignments, BareReport, CapsuleReport, HostInfo
from capsuled.store import capsules as capsule_repo
from capsuled.store import containers as container_repo
from capsuled.store import hosts as host_repo
from capsuled.store.engine import Store
from capsuled.store.meta import get_meta

# Another API replica may change a host's desired set; re-read the revision this often
# (one indexed single-row read per watching agent), so an assignment reaches its agent
# well within a second whichever replica accepted it.
_POLL_SECONDS = 0.25


class ReportSignal:
    """Wakes request handlers waiting (in an event loop) for agents' reports to land.

    `seq` counts the reports committed in this process: a waiter reads it before it
    reads the store and passes it to `wait`, so a report that lands in between is not
    missed. Reports committed by another API replica are not seen here; waiters re-read
    the store every few hundred milliseconds for those."""

    def __init__(self) -> None:
        self.seq = 0
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def fire(self) -> None:
        with self._lock:
            self.seq += 1
            waiters, self._waiters = self._waiters, set()
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)

    async def wait(self, seen: int, timeout: float) -> None:
        """Return after a report newer than `seen`, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            if self.seq != seen:
                return
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(entry)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ControlPlane:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = threading.Condition()
        self.reported = ReportSignal()

    def notify(self) -> None:
        """Wake watchers in this process after a commit that changed some desired set."""
        with self._changed:
            self._changed.notify_all()

    def instance_id(self) -> str:
        with self._store.transaction() as s:
            return get_meta(s, "instance_id") or ""

    def register(self, host: HostInfo) -> None:
        with self._store.transaction() as s:
            host_repo.register_host(s, host)

    def heartbeat(self, host: str) -> None:
        with self._store.transaction() as s:
            host_repo.heartbeat(s, host)

    def watch(self, host: str, after_revision: int, timeout: float) -> Assignments:
        deadline = time.monotonic() + timeout
        while True:
            with self._store.transaction() as s:
                revision = host_repo.host_revision(s, host)
                if revision > after_revision or time.monotonic() >= deadline:
                    return Assignments(host=host, revision=revision,
                                       capsules=capsule_repo.assignments_for(s, host),
                                       containers=container_repo.bare_assignments_for(s, host))
            with self._changed:
                self._changed.wait(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def report(self, host: str, reports: list[CapsuleReport],
               containers: list[BareReport] | None = None) -> None:
        with self._store.transaction() as s:
            for r in reports:
                capsule_repo.apply_report(s, host, r)
            for b in containers or []:
                container_repo.apply_bare_report(s, host, b)
        self.reported.fire()
