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
from collections.abc import Callable

import anyio.to_thread

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


class Signal:
    """Wakes waiters, threads or coroutines in an event loop, when something happened in
    this process (a desired set changed, a report landed).

    `seq` counts the firings: a waiter reads it before it reads the store and passes it
    to `wait`, so a firing in between is not missed. Changes committed by another API
    replica are not seen here; waiters re-read the store every few hundred milliseconds
    for those."""

    def __init__(self) -> None:
        self.seq = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def fire(self) -> None:
        with self._lock:
            self.seq += 1
            waiters, self._waiters = self._waiters, set()
            self._cond.notify_all()
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)

    def wait_blocking(self, seen: int, timeout: float) -> None:
        """In a thread: return after a firing newer than `seen`, or after `timeout`."""
        with self._lock:
            if self.seq == seen:
                self._cond.wait(timeout)

    async def wait(self, seen: int, timeout: float) -> None:
        """In an event loop: return after a firing newer than `seen`, or after `timeout`."""
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


ASSIGNED, REPORTED = "assigned", "reported"


class ControlPlane:
    def __init__(self, store: Store, publish: Callable[[str], None] | None = None) -> None:
        self._store = store
        self.assigned = Signal()  # some desired set changed
        self.reported = Signal()  # some agent report landed
        # Tells the other API replicas (store/notify.py); without it they re-read.
        self.publish = publish

    def notify(self) -> None:
        """Wake watchers after a commit that changed some desired set."""
        self.assigned.fire()
        if self.publish is not None:
            self.publish(ASSIGNED)

    def on_notice(self, topic: str) -> None:
        """Another replica (or this one) published `topic`."""
        {ASSIGNED: self.assigned, REPORTED: self.reported}.get(topic, self.assigned).fire()

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
        """The host's desired set once its revision passes `after_revision`, or as it is
        after `timeout` seconds (in a thread: the all-in-one agent)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.assigned.seq
            got = self._assignments(host, after_revision, time.monotonic() >= deadline)
            if got is not None:
                return got
            self.assigned.wait_blocking(seen, min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    async def watch_async(self, host: str, after_revision: int, timeout: float) -> Assignments:
        """`watch` for the HTTP channel: a waiting agent holds no thread."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.assigned.seq
            got = await anyio.to_thread.run_sync(self._assignments, host, after_revision,
                                                 time.monotonic() >= deadline)
            if got is not None:
                return got
            await self.assigned.wait(seen, min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def _assignments(self, host: str, after_revision: int, final: bool) -> Assignments | None:
        with self._store.transaction() as s:
            revision = host_repo.host_revision(s, host)
            if revision <= after_revision and not final:
                return None
            return Assignments(host=host, revision=revision,
                               capsules=capsule_repo.assignments_for(s, host),
                               containers=container_repo.bare_assignments_for(s, host))

    def report(self, host: str, reports: list[CapsuleReport],
               containers: list[BareReport] | None = None) -> None:
        with self._store.transaction() as s:
            for r in reports:
                capsule_repo.apply_report(s, host, r)
            for b in containers or []:
                container_repo.apply_bare_report(s, host, b)
        self.reported.fire()
        if self.publish is not None:
            self.publish(REPORTED)
