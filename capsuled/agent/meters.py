"""The agent's own counters: how many syncs, relists, watches and heartbeats it ran, how
long they took and how many failed. Sent with each heartbeat (`domain.channel.AgentStats`);
the API exposes them per host on /metrics. Plain counters under a lock: a sync costs a
few hundred nanoseconds more, and the agent needs no metrics library."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from capsuled.domain.channel import AgentStats, LoopStats, PoolStats

# Seconds: a sync that finds nothing to do takes milliseconds, one that pulls an image or
# waits for a container to stop takes up to minutes.
SYNC_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class LoopMeter:
    """Counts the rounds of one loop; a histogram of their durations when given bounds."""

    def __init__(self, bounds: tuple[float, ...] = ()) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self._count = self._errors = self._unsettled = 0
        self._seconds = 0.0
        self._per_bucket = [0] * len(bounds)  # not cumulative; beyond the last: only count

    def record(self, seconds: float, error: bool = False, settled: bool = True) -> None:
        seconds = max(0.0, seconds)
        at = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            self._count += 1
            self._errors += error
            self._unsettled += not settled
            self._seconds += seconds
            if at < len(self._per_bucket):
                self._per_bucket[at] += 1

    @contextmanager
    def round(self) -> Iterator[None]:
        """Time the block as one round; an exception counts as an error (and goes on)."""
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.record(time.monotonic() - started, error=True)
            raise
        self.record(time.monotonic() - started)

    def snapshot(self) -> LoopStats:
        with self._lock:
            cumulative, total = [], 0
            for n in self._per_bucket:
                total += n
                cumulative.append(total)
            return LoopStats(count=self._count, errors=self._errors, unsettled=self._unsettled,
                             seconds=self._seconds, bounds=list(self._bounds),
                             buckets=cumulative)


class PoolMeter:
    """The warm sandbox pool's counters; `size` and `idle` are set by the pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"claims": 0, "misses": 0, "made": 0, "removed": 0, "errors": 0}
        self.size = 0
        self.idle = 0

    def count(self, **by: int) -> None:
        with self._lock:
            for key, n in by.items():
                self._counts[key] += n

    def snapshot(self) -> PoolStats:
        with self._lock:
            return PoolStats(size=self.size, idle=self.idle, **self._counts)


class AgentMeters:
    def __init__(self) -> None:
        self.sync = LoopMeter(SYNC_BOUNDS)
        self.relist = LoopMeter(SYNC_BOUNDS)
        self.watch = LoopMeter()  # long polls: their duration is a wait, not work
        self.heartbeat = LoopMeter()
        self.pool = PoolMeter()

    def snapshot(self) -> AgentStats:
        return AgentStats(sync=self.sync.snapshot(), relist=self.relist.snapshot(),
                          watch=self.watch.snapshot(), heartbeat=self.heartbeat.snapshot(),
                          pool=self.pool.snapshot())
