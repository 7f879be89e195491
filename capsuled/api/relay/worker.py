"""OutboxRelay: one durable outbox reader served by a thread of an API process.

Each API replica runs the same relays; a lease on the reader's row decides which replica
delivers (the others wait and take over when the holder's lease runs out). A relay

- reads a batch after its cursor (one project's, or every project's),
- hands it to its `Sink`, which delivers it (or raises `DeliveryFailed`),
- advances the cursor past what was delivered, in its own transaction.

A sink that fails is retried with bounded back-off from the same record, so records are
delivered in seq order, at least once (consumers dedupe on `seq`). Neither the API nor
the agent ever waits for a relay: records are already committed when it reads them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from capsuled.domain.backoff import Backoff
from capsuled.store import outbox, outbox_readers
from capsuled.store.engine import Store
from capsuled.store.outbox_readers import Lease

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """An outbox record as a sink sees it (detached from the session that read it)."""

    seq: int
    project_id: str
    kind: str  # capsule | container
    uuid: str
    name: str | None
    labels: dict[str, Any]
    event_type: str
    reason: str
    message: str
    status: str | None
    created_at: datetime


class DeliveryFailed(Exception):
    """The sink could not deliver; `delivered` records at the head of the batch were."""

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class Sink(Protocol):
    def deliver(self, changes: Sequence[Change]) -> None:
        """Deliver every change in order, or raise DeliveryFailed."""


def owner_id() -> str:
    """Who holds a lease: this process, unique across hosts and restarts."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuidlib.uuid4().hex[:8]}"


class OutboxRelay:
    """Runs `sink` as durable reader `name` (made on first start, see `ensure`)."""

    def __init__(self, store: Store, name: str, sink: Sink, *, project_id: str | None = None,
                 owner: str | None = None, lease_ttl: float = 30.0, poll: float = 1.0,
                 batch: int = 100, retry: Backoff | None = None,
                 start: int | None = None) -> None:
        self._store, self.name, self._sink = store, name, sink
        self._project = project_id
        self._owner = owner or owner_id()
        self._ttl = timedelta(seconds=lease_ttl)
        self._poll, self._batch = poll, batch
        self._retry = retry or Backoff(0.5, 30.0)
        self._start = start
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lease: Lease | None = None
        self.last_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        with self._store.transaction() as s:
            outbox_readers.ensure(s, self.name, self._start)
        self._store.outbox_listeners.append(self.wake)
        self._thread = threading.Thread(target=self._run, name=f"relay-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        try:
            self._store.outbox_listeners.remove(self.wake)
        except ValueError:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        if self._lease is not None:
            try:
                with self._store.transaction() as s:
                    outbox_readers.release(s, self._lease)
            except Exception:  # noqa: BLE001 - the lease then simply runs out
                LOG.warning("relay %s: releasing its lease failed", self.name)
            self._lease = None

    @property
    def holds_lease(self) -> bool:
        """Whether this relay held its reader's lease at its last `run_once`."""
        return self._lease is not None

    def wake(self, _newest: int = 0) -> None:
        """A commit wrote records (called in the committing thread: only sets a flag)."""
        self._wake.set()

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                more = self.run_once()
            except DeliveryFailed as exc:
                self._wait(self._retry.next(), f"delivery failed: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any failure
                LOG.exception("relay %s failed", self.name)
                self._wait(self._retry.next(), str(exc))
                continue
            self._retry.reset()
            self.last_error = None
            if not more:
                self._wake.wait(self._poll)
                self._wake.clear()

    def _wait(self, delay: float, error: str) -> None:
        self.last_error = error
        LOG.warning("relay %s: %s (retrying in %.1fs)", self.name, error, delay)
        self._stop.wait(delay)

    def run_once(self) -> bool:
        """Deliver one batch if this process holds (or can take) the lease; True if there
        may be more to read at once."""
        with self._store.transaction() as s:
            self._lease = outbox_readers.take(s, self.name, self._owner, self._ttl)
            if self._lease is None:
                return False  # another replica delivers
            cur = outbox.cursor(s)
            since = self._lease.seq
            if since < cur.pruned_through:
                LOG.error("relay %s lost records %d..%d (pruned before it read them; "
                          "limits.outbox_reader_records)", self.name, since + 1,
                          cur.pruned_through)
                since = cur.pruned_through
            rows = [r for r in outbox.read(s, since, self._project, self._batch)
                    if r.seq <= cur.newest]
            changes = [change_of(r) for r in rows]
            through = changes[-1].seq if len(rows) == self._batch else max(since, cur.newest)
        if changes:
            try:
                self._sink.deliver(changes)
            except DeliveryFailed as exc:
                if exc.delivered:
                    self._advance(changes[exc.delivered - 1].seq)
                raise
        self._advance(through)
        return len(rows) == self._batch

    def _advance(self, seq: int) -> None:
        assert self._lease is not None
        with self._store.transaction() as s:
            if not outbox_readers.advance(s, self._lease, seq):
                LOG.warning("relay %s: lease lost to another replica", self.name)
                self._lease = None


def change_of(r: Any) -> Change:
    """An outbox record (store.tables.OutboxRecord) as a Change."""
    return Change(seq=r.seq, project_id=r.project_id, kind=r.kind, uuid=r.object_uuid,
                  name=r.object_name, labels=dict(r.labels or {}), event_type=r.event_type,
                  reason=r.reason, message=r.message, status=r.status, created_at=r.created_at)
