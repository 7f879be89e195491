"""The outbox as the API shows it: pages of change records after a seq, scoped by project,
and the hub that wakes this replica's watch streams when a commit wrote records."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from capsuled.api.policy import Policy
from capsuled.errors import Gone
from capsuled.identity.base import Principal
from capsuled.store import outbox
from capsuled.store.capsules import UUID_RE
from capsuled.store.engine import Store
from capsuled.store.tables import OutboxRecord


@dataclass(frozen=True)
class Selector:
    """Which records a reader wants: a project (None: all), one object, some labels."""

    project_id: str | None
    capsule: str | None = None  # a name or a uuid
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, record: OutboxRecord) -> bool:
        labels = record.labels or {}
        return all(labels.get(k) == v for k, v in self.labels)


@dataclass(frozen=True)
class Batch:
    """Records after a seq, and the seq up to which the outbox was read: the next read
    starts there (records skipped by the label filter are not read again)."""

    records: list[OutboxRecord]
    through: int
    head: int  # the newest seq of the deployment: a watch from here sees only what follows


class EventService:
    def __init__(self, store: Store, policy: Policy) -> None:
        self._store = store
        self._policy = policy

    def scope(self, who: Principal, all_projects: bool) -> str | None:
        """The caller's project; None (every project) only for `event:get_all_all_projects`.
        Asked by anyone else it is a 403: a stream that silently narrowed would mislead."""
        if not all_projects:
            return who.project_id
        self._policy.enforce("event:get_all_all_projects", who)
        return None

    def head(self) -> int:
        with self._store.transaction() as s:
            return outbox.cursor(s).newest

    def read(self, selector: Selector, since: int | None, limit: int) -> Batch:
        """Up to `limit` records after `since` (None: from the oldest kept); Gone if some
        after `since` were pruned (the reader has lost them and must start over)."""
        with self._store.transaction() as s:
            # The counter first: every record up to it has committed (numbers are taken
            # under the counter's lock, released by the commit), so nothing up to it can
            # appear later and the next read may start after it.
            cur = outbox.cursor(s)
            if since is not None and since < cur.pruned_through:
                raise Gone(f"since: records after {since} up to {cur.pruned_through} were "
                           "pruned (limits.outbox_records, outbox_max_age); start again "
                           f"with since={cur.pruned_through} or without since")
            start = since if since is not None else cur.pruned_through
            uuid = name = None
            if selector.capsule is not None:
                if UUID_RE.match(selector.capsule):
                    uuid = selector.capsule.lower()
                else:
                    name = selector.capsule
            rows = [r for r in outbox.read(s, start, selector.project_id, limit, uuid, name)
                    if r.seq <= cur.newest]
        through = rows[-1].seq if len(rows) == limit else max(start, cur.newest)
        return Batch([r for r in rows if selector.matches(r)], through, cur.newest)


class OutboxHub:
    """Wakes the watch streams of this replica (on its event loop) when a commit of this
    process wrote records, and on PostgreSQL when another replica's notice arrives
    (`also_wakes`); streams also re-read every `api.watch_poll` seconds, which is how
    other replicas' commits are seen on the other engines. Writers only schedule a
    wake-up: a slow or stuck watcher never holds them."""

    def __init__(self) -> None:
        self._newest = 0
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def committed(self, newest: int) -> None:
        """Called by the store, in the committing thread."""
        with self._lock:
            self._newest = max(self._newest, newest)
        self.wake()

    def wake(self) -> None:
        """Wake every waiter to re-read (another replica committed something)."""
        with self._lock:
            waiters = list(self._waiters)
        for loop, ready in waiters:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:
                pass

    def also_wakes(self, on_notice: Callable[[str], None]) -> Callable[[str], None]:
        """`on_notice`, which then wakes this hub's waiters too."""
        def both(topic: str) -> None:
            on_notice(topic)
            self.wake()
        return both

    async def wait(self, after: int, timeout: float) -> None:
        """Until a commit newer than `after` is announced, or `timeout` seconds."""
        ready = asyncio.Event()
        me = (asyncio.get_running_loop(), ready)
        with self._lock:
            if self._newest > after:
                return
            self._waiters.add(me)
        try:
            with anyio.move_on_after(timeout):
                await ready.wait()
        finally:
            with self._lock:
                self._waiters.discard(me)
