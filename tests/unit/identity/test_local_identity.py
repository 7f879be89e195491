"""LocalIdentity on a real SQLite store: the cache of valid tokens never outlives a revoke
(here at once, elsewhere within the TTL) or the token's own expiry."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from capsuled.api.services.tokens import TokenService
from capsuled.identity.local import LocalIdentity
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.tables import Token
from capsuled.store.tokens import issue


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    return Store(engine)


def _issue(store: Store, expires_in: timedelta | None = None) -> tuple[str, str]:
    from capsuled.store.tables import utcnow

    with store.transaction() as s:
        plain, row = issue(s, "p", "alice", ["member"],
                           expires_at=utcnow() + expires_in if expires_in else None)
        return plain, row.uuid


def _reads(store: Store) -> list[str]:
    """Counts the token lookups that reach the database."""
    from sqlalchemy import event

    seen: list[str] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def _count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if f"FROM {Token.__tablename__}" in statement:
            seen.append(statement)
    return seen


def test_a_valid_token_is_read_once_within_the_ttl(store: Store) -> None:
    plain, _ = _issue(store)
    ident = LocalIdentity(store, ttl=60)
    reads = _reads(store)
    who = [ident.authenticate(plain) for _ in range(5)]
    assert all(w is not None and w.user_id == "alice" for w in who)
    assert len(reads) == 1


def test_unknown_tokens_are_not_remembered(store: Store) -> None:
    ident = LocalIdentity(store, ttl=60)
    reads = _reads(store)
    assert ident.authenticate("cap_nope") is None
    assert ident.authenticate("cap_nope") is None
    assert len(reads) == 2


def test_a_revoke_through_this_replica_takes_effect_at_once(store: Store) -> None:
    plain, uuid = _issue(store)
    ident = LocalIdentity(store, ttl=60)
    tokens = TokenService(store, on_revoke=ident.forget)
    assert ident.authenticate(plain) is not None
    tokens.revoke(uuid)
    assert ident.authenticate(plain) is None


def test_a_revoke_through_another_replica_takes_effect_within_the_ttl(store: Store) -> None:
    plain, uuid = _issue(store)
    here = LocalIdentity(store, ttl=0.3)
    elsewhere = TokenService(store, on_revoke=LocalIdentity(store, ttl=0.3).forget)
    assert here.authenticate(plain) is not None
    elsewhere.revoke(uuid)
    time.sleep(0.35)
    assert here.authenticate(plain) is None


def test_a_cached_token_still_expires_on_time(store: Store) -> None:
    plain, _ = _issue(store, expires_in=timedelta(seconds=0.3))
    ident = LocalIdentity(store, ttl=60)
    assert ident.authenticate(plain) is not None
    time.sleep(0.35)
    assert ident.authenticate(plain) is None


def test_ttl_zero_reads_every_time(store: Store) -> None:
    plain, _ = _issue(store)
    ident = LocalIdentity(store, ttl=0)
    reads = _reads(store)
    for _ in range(3):
        assert ident.authenticate(plain) is not None
    assert len(reads) == 3


class _Clock:
    """A monotonic clock the test steps by hand (the cache's TTLs, without sleeping them)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _issue_agent(store: Store) -> tuple[str, str]:
    with store.transaction() as s:
        plain, row = issue(s, "service", "agent-h1", ["agent"], host="h1")
        return plain, row.uuid


def test_an_agent_token_revoked_elsewhere_is_served_from_cache_until_its_ttl(store: Store) -> None:
    plain, uuid = _issue_agent(store)
    clock = _Clock()
    here = LocalIdentity(store, ttl=2, agent_ttl=30, clock=clock)
    elsewhere = TokenService(store)  # another replica: this one is not told of the revoke
    reads = _reads(store)
    first = here.authenticate(plain)
    assert first is not None and first.host == "h1"
    elsewhere.revoke(uuid)
    clock.now += 29  # past the ordinary tokens' TTL, within the agent tokens'
    assert here.authenticate(plain) == first
    assert _lookups(reads) == 1  # from the cache: the revoke is not seen yet
    clock.now += 1.5
    assert here.authenticate(plain) is None  # past the agent TTL: read again, refused
    assert _lookups(reads) == 2


def test_ordinary_tokens_keep_the_short_ttl_beside_the_agent_one(store: Store) -> None:
    plain, uuid = _issue(store)
    clock = _Clock()
    here = LocalIdentity(store, ttl=2, agent_ttl=30, clock=clock)
    assert here.authenticate(plain) is not None
    TokenService(store).revoke(uuid)
    clock.now += 1
    assert here.authenticate(plain) is not None
    clock.now += 1.5
    assert here.authenticate(plain) is None


def test_agent_ttl_zero_reads_every_time(store: Store) -> None:
    plain, uuid = _issue_agent(store)
    here = LocalIdentity(store, ttl=60, agent_ttl=0, clock=_Clock())
    reads = _reads(store)
    for _ in range(3):
        assert here.authenticate(plain) is not None
    TokenService(store).revoke(uuid)
    assert here.authenticate(plain) is None
    assert _lookups(reads) == 4


def test_the_cache_is_bounded(store: Store) -> None:
    agents = [_issue_agent(store)[0] for _ in range(5)]
    here = LocalIdentity(store, ttl=0, agent_ttl=30, size=3, clock=_Clock())
    reads = _reads(store)
    for plain in agents:
        assert here.authenticate(plain) is not None
    for plain in agents[-3:]:  # the three most recent are still remembered
        assert here.authenticate(plain) is not None
    assert _lookups(reads) == 5
    assert here.authenticate(agents[0]) is not None  # the oldest was dropped: read again
    assert _lookups(reads) == 6


def _lookups(reads: list[str]) -> int:
    """Authentications that reached the database (not the revoke's own read)."""
    return len([r for r in reads if "token_hash =" in r])


def test_agent_tokens_near_their_ttl_are_checked_together_and_a_revoked_one_drops(
        store: Store) -> None:
    """A thousand agents' tokens used to be read once each per TTL, one transaction
    apiece. The lookup that has to read the store checks every agent token within half
    its TTL in the same query; the valid ones are kept for another TTL, a revoked one is
    forgotten as it would have been at its own lookup."""
    agents = [_issue_agent(store) for _ in range(40)]
    clock = _Clock()
    here = LocalIdentity(store, ttl=2, agent_ttl=30, clock=clock)
    for plain, _ in agents:  # learnt over 10 s, as beats arrive
        clock.now += 0.25
        assert here.authenticate(plain) is not None
    revoked_plain, revoked_uuid = agents[7]
    TokenService(store).revoke(revoked_uuid)  # through another replica: not told
    reads = _reads(store)
    clock.now = 1000.25 + 30.1  # the first one learnt is just past its TTL
    assert here.authenticate(agents[0][0]) is not None
    assert len(reads) == 2  # its own lookup, and one for all others near their TTL
    clock.now += 14  # every other one past the TTL it had at its first lookup
    assert all(here.remembered(p) is not None for p, _ in agents if p != revoked_plain)
    assert here.remembered(revoked_plain) is None
    assert here.authenticate(revoked_plain) is None
    assert len(reads) == 3


def test_unknown_tokens_do_not_each_scan_the_cache(store: Store) -> None:
    agents = [_issue_agent(store)[0] for _ in range(3)]
    clock = _Clock()
    here = LocalIdentity(store, ttl=2, agent_ttl=30, clock=clock)
    for plain in agents:
        assert here.authenticate(plain) is not None
    clock.now += 20  # all three within half their TTL
    reads = _reads(store)
    assert here.authenticate("cap_guess-1") is None  # one check of the three, with it
    assert here.authenticate("cap_guess-2") is None
    assert here.authenticate("cap_guess-3") is None
    assert len(reads) == 4
