"""The webhook supervisor: one OutboxRelay per subscription, run by a bounded pool.

Subscriptions come and go through the API, on any replica; the supervisor looks at the
table every `webhooks.poll` seconds (and at once when this replica made or deleted one)
and keeps one relay (reader `webhook:<uuid>`, its project's records only) per row. The
relays have no thread of their own: `webhooks.workers` threads run their rounds, at
most `webhooks.project_workers` of one project at a time, so a thousand subscriptions
cost a fixed number of threads and a slow receiver delays only its own project.

A relay runs when its project has records it has not seen (this replica's commits wake
the supervisor; other replicas' are seen at the next poll), when dead letters wait for
redelivery, and every third of its lease to keep the lease (or take it over from a
replica that died). After a failed delivery it waits with back-off (`retry_initial`
doubling up to `retry_max`), whatever new records arrive meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from capsuled.api.relay.egress import Poster
from capsuled.api.relay.webhooks import BudgetSpent, WebhookSink
from capsuled.api.relay.worker import DeliveryFailed, OutboxRelay, owner_id
from capsuled.config import WebhookSettings
from capsuled.domain.backoff import Backoff
from capsuled.domain.webhooks import RetryPolicy
from capsuled.store import outbox
from capsuled.store import subscriptions as repo
from capsuled.store.crypto import SecretBox
from capsuled.store.engine import Store

LOG = logging.getLogger(__name__)
BATCH = 20
_MIN_CYCLE = 0.05  # seconds: commits in a burst wake the loop once, not once each


@dataclass
class _Entry:
    uuid: str
    project: str
    relay: OutboxRelay
    sink: WebhookSink
    backoff: Backoff
    due: float = 0.0  # monotonic time of its next round
    backing_off: bool = False  # new records do not bring a retry forward
    seen: int = 0  # its project's newest seq when its last round began
    running: bool = False
    gone: bool = False
    redeliver: bool = False


def lease_times(settings: WebhookSettings) -> tuple[float, float]:
    """(round budget, lease ttl): a round stops starting deliveries after the budget, and
    one delivery takes at most `timeout`, so the lease outlives any round."""
    budget = 3 * settings.timeout
    return budget, max(30.0, budget + 2 * settings.timeout + 10)


class WebhookSupervisor:
    def __init__(self, store: Store, box: SecretBox, settings: WebhookSettings,
                 poster: Poster, owner: str | None = None) -> None:
        self._store, self._box, self._settings, self._poster = store, box, settings, poster
        self._owner = owner or owner_id()
        self._budget, self._ttl = lease_times(settings)
        self._policy = RetryPolicy(settings.retry_initial, settings.retry_max,
                                   settings.retry_window, settings.max_attempts)
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="webhook")
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._heads: dict[str, int] = {}  # project → newest seq seen
        self._through: int | None = None  # outbox seq up to which _heads is complete
        self._wake = threading.Event()
        self._committed = threading.Event()
        self._rescan = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._store.outbox_listeners.append(self.wake)
        self._thread = threading.Thread(target=self._loop, name="webhook-supervisor",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        try:
            self._store.outbox_listeners.remove(self.wake)
        except ValueError:
            pass
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)  # rounds end within `timeout`
        for entry in list(self._entries.values()):
            entry.relay.stop(0)  # gives the lease up: another replica goes on at once

    def wake(self, _newest: int = 0) -> None:
        """A commit wrote outbox records (called in the committing thread)."""
        self._committed.set()
        self._wake.set()

    def rescan(self) -> None:
        """Subscriptions or dead letters changed through this replica: look now."""
        self._rescan.set()
        self._wake.set()

    def entries(self) -> dict[str, str]:
        """uuid → project of the subscriptions served (for tests and diagnostics)."""
        with self._lock:
            return {u: e.project for u, e in self._entries.items()}

    # -- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        next_scan = 0.0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if started >= next_scan or self._rescan.is_set():
                    self._rescan.clear()
                    self._scan()
                    next_scan = started + self._settings.poll
                    self._committed.set()  # and other replicas' records
                if self._committed.is_set():
                    self._committed.clear()
                    self._look()
            except Exception:  # noqa: BLE001 - the loop outlives a database outage
                LOG.exception("webhook supervisor: reading subscriptions failed")
            self._dispatch()
            wait = min([next_scan, *self._idle_dues()]) - time.monotonic()
            self._wake.wait(max(_MIN_CYCLE, wait))
            self._wake.clear()
            self._stop.wait(max(0.0, _MIN_CYCLE - (time.monotonic() - started)))

    def _idle_dues(self) -> list[float]:
        with self._lock:
            return [e.due for e in self._entries.values() if not e.running]

    def _scan(self) -> None:
        """Serve exactly the subscriptions in the table; note who has queued redeliveries."""
        with self._store.transaction() as s:
            rows = repo.everyone(s)
            queued = repo.with_queued(s)
        now = time.monotonic()
        with self._lock:
            present = {u for u, _ in rows}
            for uuid, entry in list(self._entries.items()):
                if uuid not in present:
                    entry.gone = True
                    if not entry.running:
                        self._drop(entry)
            for uuid, project in rows:
                served = self._entries.get(uuid)
                if served is None:
                    served = self._entries[uuid] = self._entry(uuid, project)
                if uuid in queued and not served.redeliver:
                    served.redeliver = True
                    if not served.backing_off:
                        served.due = now

    def _look(self) -> None:
        """Which projects have records newer than their relays saw: those run now."""
        if not self._entries:
            self._through = None  # nobody to wake: start afresh when someone subscribes
            return
        with self._store.transaction() as s:
            if self._through is None:  # from here on; whatever came before, each reads once
                self._through = outbox.cursor(s).newest
                heads = {entry.project: self._through for entry in list(self._entries.values())}
            else:
                heads = repo.newest_by_project(s, self._through)
        if not heads:
            return
        self._through = max(self._through, *heads.values())
        now = time.monotonic()
        with self._lock:
            self._heads.update(heads)
            for entry in self._entries.values():
                if (entry.project in heads and entry.seen < heads[entry.project]
                        and not entry.backing_off):
                    entry.due = min(entry.due, now)

    def _dispatch(self) -> None:
        now = time.monotonic()
        with self._lock:
            running = [e for e in self._entries.values() if e.running]
            per_project: dict[str, int] = {}
            for e in running:
                per_project[e.project] = per_project.get(e.project, 0) + 1
            free = self._settings.workers - len(running)
            due = sorted((e for e in self._entries.values()
                          if not e.running and not e.gone and e.due <= now), key=lambda e: e.due)
            for entry in due:
                if free <= 0 or self._stop.is_set():
                    return
                if per_project.get(entry.project, 0) >= self._settings.project_workers:
                    continue
                entry.running = True
                entry.seen = max(entry.seen, self._heads.get(entry.project, 0))
                per_project[entry.project] = per_project.get(entry.project, 0) + 1
                free -= 1
                self._pool.submit(self._round, entry)

    def _round(self, entry: _Entry) -> None:
        """One round of a relay, on a pool thread; then when it should run next."""
        delay: float | None = None  # None: when something new comes, or to renew its lease
        failed = False
        redeliver = entry.redeliver
        try:
            more = entry.relay.run_once()
            if redeliver and entry.relay.holds_lease:
                redeliver = entry.sink.redeliver_queued()
                more = more or redeliver
            if more:
                delay = 0.0
        except BudgetSpent:
            delay = 0.0
        except DeliveryFailed as exc:
            failed = True
            LOG.info("webhook %s: %s", entry.uuid, exc)
        except Exception:  # noqa: BLE001 - one subscription's trouble stays its own
            failed = True
            LOG.exception("webhook %s: round failed", entry.uuid)
        with self._lock:
            if failed:
                delay = entry.backoff.next()
            else:
                entry.backoff.reset()
            entry.backing_off = failed
            entry.redeliver = redeliver
            entry.running = False
            entry.due = time.monotonic() + (self._ttl / 3 if delay is None else delay)
            if entry.gone:
                self._drop(entry)
        self._wake.set()

    def _entry(self, uuid: str, project: str) -> _Entry:
        sink = WebhookSink(self._store, self._box, uuid, self._poster, self._policy,
                           self._settings.dead_letters, self._budget,
                           stopping=self._stop.is_set)
        relay = OutboxRelay(self._store, repo.reader_name(uuid), sink, project_id=project,
                            owner=self._owner, lease_ttl=self._ttl, batch=BATCH)
        backoff = Backoff(self._settings.retry_initial, self._settings.retry_max)
        return _Entry(uuid, project, relay, sink, backoff)

    def _drop(self, entry: _Entry) -> None:
        """Forget a deleted subscription (called under the lock; its reader is gone)."""
        self._entries.pop(entry.uuid, None)
