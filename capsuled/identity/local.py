"""Standalone identity: tokens this server issued, looked up by digest.

A valid token is remembered for `ttl` seconds (never past its expiry), which saves a
database read on every request. An agent token (one bound to a host) is remembered for
`agent_ttl` instead: agents authenticate every heartbeat and every long poll, a thousand
agents several times a second, and a short `ttl` would make nearly each of those a
database read. A lookup that has to read the store also checks, in the same transaction
and one query, every remembered agent token within half its TTL of being forgotten, and
keeps the valid ones for another TTL: with a thousand agents, their tokens are read a
few times per TTL instead of once each (it was a thirteenth of a replica's CPU). A
revoke through this replica forgets the token at once; one through another replica takes
effect here within the token's TTL, as each is trusted at most that long after its last
check. Unknown tokens are not remembered, so guessing cannot fill the cache; it holds at
most `size` tokens (the least recently used go first: cachetools' TTLCache).
"""

from __future__ import annotations

import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cachetools import TTLCache

from capsuled.errors import Conflict
from capsuled.identity.base import Principal
from capsuled.store.engine import Store
from capsuled.store.meta import claim_meta, get_meta
from capsuled.store.tables import utcnow
from capsuled.store.tokens import digest, find_token, issue_token, still_valid

# A remembered token: who it is, until when (on the clock) it is trusted, its expiry.
_Entry = tuple[Principal, float, "datetime | None"]

ADMIN_PROJECT = "admin"
ADMIN_USER = "admin"


class LocalIdentity:
    def __init__(self, store: Store, ttl: float = 0.0, size: int = 10_000,
                 agent_ttl: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._ttl = ttl
        self._agent_ttl = ttl if agent_ttl is None else agent_ttl
        self._clock = clock  # injectable: tests step through a TTL without sleeping it
        # digest → (principal, deadline on `clock`, the token's expiry); the cache's own
        # TTL is the longer one, each entry's deadline the one of its kind.
        longest = max(ttl, self._agent_ttl)
        self._cache: TTLCache[str, _Entry] | None = (
            TTLCache(maxsize=size, ttl=longest, timer=clock) if longest > 0 else None)
        self._lock = threading.Lock()
        self._batch_after = float("-inf")  # on `clock`: when `_due` may scan again

    def remembered(self, token: str) -> Principal | None:
        if self._cache is None:
            return None
        with self._lock:
            hit = self._cache.get(digest(token))
        return hit[0] if hit is not None and hit[1] > self._clock() else None

    def authenticate(self, token: str) -> Principal | None:
        known = self.remembered(token)
        if known is not None:
            return known
        key = digest(token)
        due = self._due(key)
        with self._store.transaction() as s:
            row = find_token(s, token)
            valid = still_valid(s, list(due)) if due else set()
            if row is not None:
                principal = Principal(project_id=row.project_id, user_id=row.user_id,
                                      roles=frozenset(row.roles), host=row.host)
                expires_at = row.expires_at
        for other, entry in due.items():
            if other in valid:
                self._remember(other, entry[0], entry[2])
            else:
                self.forget(other)
        if row is None:
            return None
        self._remember(key, principal, expires_at)
        return principal

    def _due(self, key: str) -> dict[str, _Entry]:
        """The remembered agent tokens (other than `key`) within half their TTL of being
        forgotten, or past it but still held: checked along with this lookup. At most
        once per quarter of that TTL, so that lookups of unknown tokens (guesses) do not
        each pay for a scan of the cache."""
        if self._cache is None or self._agent_ttl <= 0:
            return {}
        now = self._clock()
        with self._lock:  # get(): an entry may expire between the listing and the read
            if now < self._batch_after:
                return {}
            self._batch_after = now + self._agent_ttl / 4
            held = [(k, self._cache.get(k)) for k in list(self._cache) if k != key]
        return {k: e for k, e in held if e is not None and e[0].host is not None
                and e[1] - now < self._agent_ttl / 2}

    def _remember(self, key: str, principal: Principal, expires_at: datetime | None) -> None:
        ttl = self._agent_ttl if principal.host is not None else self._ttl
        if self._cache is None or ttl <= 0:
            return
        now = self._clock()
        deadline = now + ttl
        if expires_at is not None:
            deadline = min(deadline, now + (expires_at - utcnow()).total_seconds())
        with self._lock:
            self._cache[key] = (principal, deadline, expires_at)

    def forget(self, token_hash: str) -> None:
        """A token was revoked: stop accepting it now (on this replica)."""
        if self._cache is not None:
            with self._lock:
                self._cache.pop(token_hash, None)


def bootstrap(store: Store, state_dir: Path, token_file: str) -> str:
    """First start on an empty database: make the instance id and the admin token, and
    write the token (mode 0600) for the local CLI. Returns the instance id.

    Race-safe: of several servers starting at once on one empty database, the one whose
    instance id row is inserted first writes the token; the others use its instance id."""
    with store.transaction() as s:
        instance = get_meta(s, "instance_id")
    if instance is not None:
        return instance
    instance = uuidlib.uuid4().hex[:12]
    path = state_dir / token_file
    written = False
    try:
        with store.transaction() as s:
            claim_meta(s, "instance_id", instance)
            token = issue_token(s, ADMIN_PROJECT, ADMIN_USER, ["admin"], description="bootstrap admin")
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            os.chmod(path, 0o600)
            written = True
    except Conflict:
        with store.transaction() as s:
            winner = get_meta(s, "instance_id")
        assert winner is not None
        return winner
    except BaseException:
        if written:  # the commit failed: the token in the file was never valid
            path.unlink(missing_ok=True)
        raise
    return instance
