"""Webhook rules: which events a subscription wants, how a delivery is signed, and what a
failed delivery leads to (retry, dead letter). Pure: no clock of its own, no I/O.

Event patterns are dot-separated like the event types they select (`capsule.update`,
`container.create.start`): each segment is a name or `*`, which stands for one segment;
a trailing `*` stands for one or more, so `capsule.*` is every capsule event and `*` is
every event. No patterns at all means every event too.

Delivery of one subscription goes event by event in seq order. An event that fails is
retried (the caller waits with back-off between attempts) until it has failed for
`window` or `max_attempts` times; then it becomes a dead letter and the subscription is
*dead-lettering*: later events go straight to the dead letters, except one real attempt
every `probe_every` (the longest back-off), so a receiver that stays down costs a
request now and then, not one per event, and the outbox is never held up by it. The
first delivery that succeeds makes the subscription active again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from capsuled.domain.template import short
from capsuled.errors import InvalidInput

MAX_PATTERNS = 32
MAX_PATTERN = 64
SECRET_MIN, SECRET_MAX = 16, 256
_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*)(\.(\*|[a-z][a-z0-9_]*))*$")

ACTIVE, RETRYING, DEAD_LETTERING = "active", "retrying", "dead_lettering"


def parse_events(raw: object, field: str = "events") -> list[str]:
    """A list of event patterns (empty or absent: every event), without repeats."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_PATTERNS:
        raise InvalidInput(f"{field}: must be a list of at most {MAX_PATTERNS} event patterns "
                           "such as \"capsule.*\" or \"container.update\"")
    problems, out = [], []
    for i, item in enumerate(raw):
        if not (isinstance(item, str) and len(item) <= MAX_PATTERN and _PATTERN.match(item)):
            problems.append(f"{field}[{i}]: {short(item)} is not an event pattern: dot-separated "
                            "lower-case names or *, e.g. \"capsule.*\", \"container.update\"")
        elif item not in out:
            out.append(item)
    if problems:
        raise InvalidInput(problems)
    return [] if "*" in out else out


def matches(patterns: Sequence[str], event_type: str) -> bool:
    """Whether a subscription with `patterns` wants `event_type`."""
    return not patterns or any(_match(p.split("."), event_type.split(".")) for p in patterns)


def _match(pattern: list[str], parts: list[str]) -> bool:
    if len(pattern) > len(parts):
        return False
    if len(pattern) < len(parts) and pattern[-1] != "*":
        return False
    return all(p in ("*", s) for p, s in zip(pattern, parts, strict=False))


def secret_problem(raw: object, field: str = "secret") -> str | None:
    """Why `raw` is no usable signing secret (the value itself is never echoed)."""
    if (not isinstance(raw, str) or not SECRET_MIN <= len(raw) <= SECRET_MAX
            or not raw.isascii() or not raw.isprintable()):
        return (f"{field}: must be {SECRET_MIN} to {SECRET_MAX} printable ASCII characters "
                "(or leave it out: one is generated and shown once)")
    return None


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Capsuled-Signature header: HMAC-SHA256 of "<timestamp>.<body>" under the
    subscription's secret, as `sha256=<hex>`. The timestamp is signed too, so a receiver
    that refuses old timestamps cannot be sent a replayed request."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does (in constant time): is `header` the signature of this body?"""
    return hmac.compare_digest(signature(secret, timestamp, body), header)


@dataclass(frozen=True)
class RetryPolicy:
    initial: float  # seconds before the first retry (the caller doubles it up to `maximum`)
    maximum: float
    window: float  # seconds an event is retried at most
    max_attempts: int

    def gives_up(self, attempts: int, failing_for: timedelta) -> bool:
        return attempts >= self.max_attempts or failing_for.total_seconds() >= self.window

    @property
    def probe_every(self) -> timedelta:
        return timedelta(seconds=self.maximum)


@dataclass(frozen=True)
class Progress:
    """Where a subscription's delivery stands (kept on its row, so another replica that
    takes the subscription over goes on counting)."""

    state: str = ACTIVE
    retry_seq: int | None = None  # retrying: the event being retried
    attempts: int = 0  # retrying: its failed attempts so far
    failing_since: datetime | None = None
    probe_after: datetime | None = None  # dead-lettering: the next real attempt


@dataclass(frozen=True)
class Outcome:
    """What to do after an attempt at event `seq` failed."""

    progress: Progress
    dead_letter: bool  # it goes to the dead letters (else: retry it after a back-off)
    attempts: int  # its failed attempts, this one included


def should_attempt(progress: Progress, now: datetime) -> bool:
    """Whether the next event gets a real attempt (else it is dead-lettered at once)."""
    return (progress.state != DEAD_LETTERING or progress.probe_after is None
            or now >= progress.probe_after)


def failed(policy: RetryPolicy, progress: Progress, seq: int, now: datetime) -> Outcome:
    if progress.state == DEAD_LETTERING:  # a probe failed: the endpoint is still down
        return Outcome(replace(progress, probe_after=now + policy.probe_every), True, 1)
    again = progress.state == RETRYING and progress.retry_seq == seq
    attempts = progress.attempts + 1 if again else 1
    since = progress.failing_since if again and progress.failing_since else now
    if policy.gives_up(attempts, now - since):
        return Outcome(Progress(DEAD_LETTERING, failing_since=since,
                                probe_after=now + policy.probe_every), True, attempts)
    return Outcome(Progress(RETRYING, seq, attempts, since), False, attempts)

