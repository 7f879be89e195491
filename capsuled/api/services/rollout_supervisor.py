"""A background check, in every API process, that ends rollouts by the clock: an update
not ready by its deadline rolls back, one ready for minReadySeconds is done. (A report
from the agent ends one too, at once; this is for the time passing without reports, and
for an agent that is gone.)

Each capsule is judged in a transaction of its own under its row lock
(store/rollouts.tick), so any number of API replicas may run this at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import select

from capsuled.domain.backoff import Backoff
from capsuled.errors import CapsuledError
from capsuled.store import rollouts
from capsuled.store.engine import Store
from capsuled.store.tables import Capsule, utcnow

LOG = logging.getLogger(__name__)
_BACKOFF_MAX = 30.0


class RolloutSupervisor:
    def __init__(self, store: Store, every: float, on_change: Callable[[], None]) -> None:
        self._store = store
        self._every = every
        self._on_change = on_change  # a rollback changed a desired set: wake the agents
        self._stop = threading.Event()

    def check(self) -> int:
        """Judge every rollout under way; how many ended or rolled back."""
        with self._store.transaction() as s:
            ids = list(s.scalars(select(Capsule.id).where(Capsule.rollout_deadline.is_not(None))
                                 .order_by(Capsule.rollout_deadline)).all())
        ended = 0
        for capsule_id in ids:
            with self._store.transaction() as s:
                capsule = s.get(Capsule, capsule_id)
                if capsule is not None and rollouts.tick(s, capsule, utcnow()):
                    ended += 1
        if ended:
            self._on_change()
        return ended

    def start(self) -> None:
        threading.Thread(target=self._run, name="rollout-supervisor", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff = Backoff(self._every, max(self._every, _BACKOFF_MAX))
        wait = self._every
        # Nothing but stop() ends this loop: without it no update would ever time out.
        while not self._stop.wait(wait):
            try:
                self.check()
                backoff.reset()
                wait = self._every
            except CapsuledError as exc:
                LOG.warning("rollout check failed: %s", exc.message)
                wait = backoff.next()
            except Exception:  # noqa: BLE001 - e.g. a database going away
                LOG.exception("rollout check failed unexpectedly; going on")
                wait = backoff.next()
