"""One worker per capsule: syncs of the same capsule never overlap, different capsules
run in parallel, and a burst of wake-ups for one capsule collapses into one more sync.

    idle ──enqueue──▶ queued ──pool thread──▶ running ──done, settled──▶ idle
                        ▲                       │  enqueue while running → dirty
                        └──── dirty, or unsettled after back-off ◀──────┘
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from capsuled.agent.meters import LoopMeter
from capsuled.errors import Unavailable

LOG = logging.getLogger(__name__)

SyncFn = Callable[[str], bool]  # returns True when the capsule is settled


class CapsuleWorkers:
    def __init__(self, sync: SyncFn, threads: int, backoff_initial: float, backoff_max: float,
                 meter: LoopMeter | None = None) -> None:
        self._sync = sync
        self._meter = meter or LoopMeter()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="capsule")
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retries: list[tuple[float, str]] = []
        self._wake = threading.Event()
        self._stopped = False
        self._initial, self._max = backoff_initial, backoff_max
        self._timer = threading.Thread(target=self._retry_loop, name="capsule-retry", daemon=True)
        self._timer.start()

    def enqueue(self, uuid: str) -> None:
        with self._lock:
            if self._stopped:
                return
            if uuid in self._running:
                self._dirty.add(uuid)
                return
            self._running.add(uuid)
        try:
            self._pool.submit(self._run, uuid)
        except BaseException:
            # Not running after all (the pool is shutting down): a later enqueue may try again.
            with self._lock:
                self._running.discard(uuid)
            raise

    def busy(self) -> bool:
        with self._lock:
            return bool(self._running)

    def _run(self, uuid: str) -> None:
        started = time.monotonic()
        failed = False
        try:
            settled = self._sync(uuid)
        except Unavailable as exc:
            # The API or the Docker Engine is down (a restart, a database outage): retried
            # with back-off like any failure, but one line, not a traceback per capsule per
            # retry, which buried the real errors in the logs of the chaos runs.
            LOG.warning("sync deferred capsule=%s: %s", uuid, exc)
            settled, failed = False, True
        except Exception:
            LOG.exception("sync failed capsule=%s", uuid)
            settled, failed = False, True
        self._meter.record(time.monotonic() - started, error=failed, settled=settled or failed)
        with self._lock:
            self._running.discard(uuid)
            again = uuid in self._dirty
            self._dirty.discard(uuid)
            if settled:
                self._failures.pop(uuid, None)
            else:
                n = self._failures.get(uuid, 0)
                self._failures[uuid] = n + 1
                delay = min(self._max, self._initial * (2 ** n))
                heapq.heappush(self._retries, (time.monotonic() + delay, uuid))
                self._wake.set()
        if again:
            self.enqueue(uuid)

    def _retry_loop(self) -> None:
        while not self._stopped:
            try:
                self._retry_due()
            except Exception:  # noqa: BLE001 - a dead timer would strand every failed capsule
                LOG.exception("capsule retry timer failed; going on")
                time.sleep(1.0)

    def _retry_due(self) -> None:
        """Enqueue the retries that are due, then wait for the next one (at most 1 s)."""
        with self._lock:
            now = time.monotonic()
            due = []
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[1])
            wait = (self._retries[0][0] - now) if self._retries else 1.0
        for uuid in due:
            self.enqueue(uuid)
        self._wake.wait(timeout=max(0.01, min(wait, 1.0)))
        self._wake.clear()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
