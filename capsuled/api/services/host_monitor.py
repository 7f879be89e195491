"""A background check, in every API process, that turns what runs on silent hosts Unknown.

Idempotent, so any number of API replicas may run it at once."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from capsuled.domain.backoff import Backoff
from capsuled.errors import CapsuledError
from capsuled.store.engine import Store
from capsuled.store.liveness import mark_unknown
from capsuled.store.tables import utcnow

LOG = logging.getLogger(__name__)
_BACKOFF_MAX = 60.0  # longest pause after failures in a row (a database outage)


class HostMonitor:
    def __init__(self, store: Store, down_after: timedelta) -> None:
        self._store = store
        self._down_after = down_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> int:
        with self._store.transaction() as s:
            changed = mark_unknown(s, utcnow(), self._down_after)
        if changed:
            LOG.warning("%d capsule(s)/container(s) on silent hosts are now Unknown", changed)
        return changed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="host-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        every = max(0.5, min(5.0, self._down_after.total_seconds() / 4))
        backoff = Backoff(every, max(every, _BACKOFF_MAX))
        wait = every
        # Nothing but stop() ends this loop: without it no silent host is ever noticed.
        while not self._stop.wait(wait):
            try:
                self.check()
                backoff.reset()
                wait = every
            except CapsuledError as exc:
                LOG.warning("host check failed: %s", exc.message)
                wait = backoff.next()
            except Exception:  # noqa: BLE001 - e.g. a driver error from a database going away
                LOG.exception("host check failed unexpectedly; going on")
                wait = backoff.next()
