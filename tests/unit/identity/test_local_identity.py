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
