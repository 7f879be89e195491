"""Long-lived work, kept off the thread pool that serves ordinary requests.

FastAPI runs sync handlers on anyio's default thread limiter (40 threads). A follow-log
stream or a terminal holds a thread for as long as it is open, and a stop with a timeout
for as long as the container takes to stop: left on that limiter, one tenant's 40 streams
would freeze every other tenant's requests and /healthz. So

- follow-log relays and terminal pumps run on `streams_limiter`, and how many are open
  is counted per project and in total (`open_stream` refuses with 429 beyond the limits);
- requests that wait on a container (lifecycle actions, execute) run on `waits_limiter`.

The counts are per API replica (each replica has its own threads to protect).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
from anyio import CapacityLimiter

from capsuled.config import ApiSettings
from capsuled.errors import TooManyRequests

T = TypeVar("T")


class StreamLease:
    """One open stream's place in the counts; release() is idempotent and thread-safe."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._release()


class Streams:
    """The per-project and total stream counts, and the thread limiters of long work."""

    def __init__(self, per_project: int, total: int, wait_threads: int) -> None:
        self.per_project = per_project
        self.total = total
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()
        # Each stream holds at most one thread blocked reading and, briefly, one writing
        # (a terminal's input): twice the total never makes a counted stream wait.
        self.streams_limiter = CapacityLimiter(2 * total)
        self.waits_limiter = CapacityLimiter(wait_threads)

    @classmethod
    def from_settings(cls, api: ApiSettings) -> Streams:
        return cls(api.streams_per_project, api.streams_total, api.wait_threads)

    def open_count(self, project: str) -> int:
        with self._lock:
            return self._open.get(project, 0)

    def check(self, project: str) -> None:
        """Refuse early (before a terminal URL is handed out) if `project` is at its limit."""
        with self._lock:
            self._refuse_if_full(project)

    def open_stream(self, project: str) -> StreamLease:
        """Count one more open stream of `project`, or TooManyRequests; release the lease
        when the stream ends, however it ends."""
        with self._lock:
            self._refuse_if_full(project)
            self._open[project] = self._open.get(project, 0) + 1
        return StreamLease(lambda: self._close(project))

    def _refuse_if_full(self, project: str) -> None:
        mine = self._open.get(project, 0)
        if mine >= self.per_project:
            raise TooManyRequests(f"project {project} has {mine} open streams (follow-logs and "
                                  f"terminals), the limit is {self.per_project}; close one")
        everyone = sum(self._open.values())
        if everyone >= self.total:
            raise TooManyRequests(f"the server has {everyone} open streams (follow-logs and "
                                  f"terminals), the limit is {self.total}; retry later")

    def _close(self, project: str) -> None:
        with self._lock:
            left = self._open.get(project, 0) - 1
            if left > 0:
                self._open[project] = left
            else:
                self._open.pop(project, None)

    async def run_stream(self, fn: Callable[..., T], *args: object,
                         abandon_on_cancel: bool = False) -> T:
        """`fn(*args)` in a thread of the streams' own pool."""
        return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel,
                                              limiter=self.streams_limiter)

    async def run_wait(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a thread of the waits' own pool."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.waits_limiter)
