"""One webhook subscription as an OutboxRelay sink: filter, sign, POST, and account for
what happened on the subscription's row (domain/webhooks.py decides retry or dead letter).

Each event is its own POST (body: the watch stream's JSON of the record), in seq order:

    X-Capsuled-Event:        capsule.update                (the record's event_type)
    X-Capsuled-Delivery:     1234                          (its seq: receivers dedupe on it)
    X-Capsuled-Timestamp:    1767225600                    (unix seconds, when signed)
    X-Capsuled-Signature:    sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under the secret>
    X-Capsuled-Subscription: <the subscription's uuid>

A 2xx answer is a delivery. Events the subscription does not want are skipped (the
cursor moves past them all the same). Redelivered dead letters keep their seq, so they
arrive out of order: receivers order by seq, not by arrival.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from capsuled.api.relay.egress import Poster, Reply
from capsuled.api.relay.worker import Change, DeliveryFailed
from capsuled.api.views import change_view
from capsuled.domain.egress import Target, parse_url
from capsuled.domain.webhooks import (DEAD_LETTERING, Progress, RetryPolicy, failed, matches, should_attempt,
                                      signature)
from capsuled.store import subscriptions as repo
from capsuled.store.crypto import SecretBox
from capsuled.store.engine import Store
from capsuled.store.tables import Subscription, utcnow

NOT_ATTEMPTED = "not attempted: the endpoint kept failing (dead-lettering until an attempt succeeds)"
REDELIVER_BATCH = 20


class BudgetSpent(DeliveryFailed):
    """Not a failure: the round used up its time (the reader's lease must stay fresh), and
    what it delivered counts; the next round starts at once."""


def encode(c: Change) -> bytes:
    return json.dumps(change_view(c), separators=(",", ":")).encode()


def headers(uuid: str, secret: str, seq: int, event_type: str, body: bytes,
            now: float) -> dict[str, str]:
    stamp = str(int(now))
    return {"X-Capsuled-Event": event_type, "X-Capsuled-Delivery": str(seq),
            "X-Capsuled-Timestamp": stamp, "X-Capsuled-Signature": signature(secret, stamp, body),
            "X-Capsuled-Subscription": uuid}


@dataclass(frozen=True)
class _Endpoint:
    """What the row says about where and how to deliver (read at each round)."""

    uuid: str
    target: Target
    allow_private: bool
    events: list[str]
    secret: str


@dataclass(frozen=True)
class _Dead:
    seq: int
    event_type: str
    body: bytes
    attempts: int
    error: str | None


class WebhookSink:
    def __init__(self, store: Store, box: SecretBox, uuid: str, poster: Poster,
                 policy: RetryPolicy, keep: int, budget: float,
                 stopping: Callable[[], bool] = lambda: False,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._store, self._box, self.uuid = store, box, uuid
        self._poster, self._policy = poster, policy
        self._keep, self._budget = keep, budget
        self._stopping, self._clock = stopping, clock

    def deliver(self, changes: Sequence[Change]) -> None:
        endpoint, progress = self._load()
        tally = repo.Tally(progress)
        before = repo.Tally(progress)
        dead: list[_Dead] = []
        started = time.monotonic()
        try:
            for i, c in enumerate(changes):
                if i and (time.monotonic() - started >= self._budget or self._stopping()):
                    raise BudgetSpent("the round's time is up", delivered=i)
                if not matches(endpoint.events, c.event_type):
                    continue
                body = encode(c)
                now = self._clock()
                if not should_attempt(tally.progress, now):
                    dead.append(_Dead(c.seq, c.event_type, body, 0, NOT_ATTEMPTED))
                    continue
                reply = self._post(endpoint, c.seq, c.event_type, body)
                if reply.ok:
                    tally.progress = Progress()
                    tally.delivered += 1
                    tally.last_delivered_seq, tally.last_delivered_at = c.seq, now
                    continue
                error = reply.error or f"HTTP {reply.status}"
                tally.failed_attempts += 1
                tally.last_error, tally.last_error_at = f"seq {c.seq}: {error}", now
                outcome = failed(self._policy, tally.progress, c.seq, now)
                tally.progress = outcome.progress
                if outcome.dead_letter:
                    dead.append(_Dead(c.seq, c.event_type, body, outcome.attempts, error))
                    continue
                raise DeliveryFailed(f"seq {c.seq}: {error}", delivered=i)
        finally:
            # Before the relay moves the cursor past them: dead letters are never lost.
            if dead or tally != before:
                self._save(tally, dead)

    def redeliver_queued(self) -> bool:
        """Send the dead letters queued for redelivery (a batch of them); True if more
        may wait. Each gets one attempt: delivered, it is gone; else it is dead again."""
        with self._store.transaction() as s:
            row = repo.by_uuid(s, self.uuid)
            if row is None:
                return False
            endpoint = self._endpoint(row)
            letters = [(d.id, d.seq, d.event_type, d.body.encode())
                       for d in repo.queued(s, row, REDELIVER_BATCH)]
        started = time.monotonic()
        results: list[tuple[int, int, Reply]] = []
        for letter_id, seq, event_type, body in letters:
            if results and (time.monotonic() - started >= self._budget or self._stopping()):
                break
            results.append((letter_id, seq, self._post(endpoint, seq, event_type, body)))
        now = self._clock()
        with self._store.transaction() as s:
            row = repo.by_uuid(s, self.uuid)
            if row is None:
                return False
            tally = repo.Tally(repo.progress(row))
            for letter_id, seq, reply in results:
                error = None if reply.ok else (reply.error or f"HTTP {reply.status}")
                repo.redelivered(s, letter_id, error)
                if error is None:
                    tally.delivered += 1
                    if tally.progress.state == DEAD_LETTERING:  # the endpoint is back
                        tally.progress = Progress()
                else:
                    tally.failed_attempts += 1
                    tally.last_error, tally.last_error_at = f"seq {seq} (redelivery): {error}", now
            repo.record(s, row, tally)
        return len(letters) == REDELIVER_BATCH or len(results) < len(letters)

    # -- helpers ---------------------------------------------------------------------------
    def _load(self) -> tuple[_Endpoint, Progress]:
        with self._store.transaction() as s:
            row = repo.by_uuid(s, self.uuid)
            if row is None:
                raise DeliveryFailed("the subscription was deleted")
            return self._endpoint(row), repo.progress(row)

    def _endpoint(self, row: Subscription) -> _Endpoint:
        return _Endpoint(uuid=row.uuid, target=parse_url(row.url),
                         allow_private=bool(row.allow_private), events=list(row.events or []),
                         secret=self._box.open(row.secret_enc) or "")

    def _post(self, endpoint: _Endpoint, seq: int, event_type: str, body: bytes) -> Reply:
        sent = headers(endpoint.uuid, endpoint.secret, seq, event_type, body, time.time())
        return self._poster.post(endpoint.target, endpoint.allow_private, sent, body)

    def _save(self, tally: repo.Tally, dead: list[_Dead]) -> None:
        with self._store.transaction() as s:
            row = repo.by_uuid(s, self.uuid)
            if row is None:
                return
            for d in dead:
                repo.add_dead_letter(s, row, d.seq, d.event_type, d.body.decode(), d.attempts,
                                     d.error, self._keep)
            repo.record(s, row, tally)
