"""Wake-ups inside one API process: a `Signal` wakes threads or coroutines waiting for
something to happen (a desired set changed, a report landed)."""

from __future__ import annotations

import asyncio
import threading


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
