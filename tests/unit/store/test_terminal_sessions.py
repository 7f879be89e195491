"""One-time websocket tokens in the store: used once, never after expiry, stored as
digests; a resize made before the connect is handed to whoever takes the session."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from capsuled.store import terminal_sessions as terminals
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.tables import TerminalSession, utcnow


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    return Store(engine)


def _add(store: Store, token: str, exec_id: str | None = "e1", ttl: float = 60) -> None:
    with store.transaction() as s:
        terminals.add(s, token, "c-uuid", "host-b", "rid", exec_id, utcnow() + timedelta(seconds=ttl))


def test_a_token_opens_its_session_once(store: Store) -> None:
    _add(store, "tok")
    with store.transaction() as s:
        got = terminals.take(s, "tok", utcnow())
    assert got == terminals.Terminal("c-uuid", "host-b", "rid", "e1", None)
    with store.transaction() as s:
        assert terminals.take(s, "tok", utcnow()) is None


def test_only_the_digest_is_stored(store: Store) -> None:
    _add(store, "tok")
    with store.transaction() as s:
        assert "tok" not in s.scalars(select(TerminalSession.token_hash)).all()
        assert terminals.take(s, "other", utcnow()) is None


def test_an_expired_token_opens_nothing_and_is_swept(store: Store) -> None:
    _add(store, "old", ttl=1)
    _add(store, "new", exec_id="e2")
    with store.transaction() as s:
        assert terminals.take(s, "old", utcnow() + timedelta(seconds=2)) is None
        assert s.scalars(select(TerminalSession.exec_id)).all() == ["e2"]


def test_a_resize_before_the_connect_is_handed_over(store: Store) -> None:
    _add(store, "tok")
    with store.transaction() as s:
        assert terminals.hold_resize(s, "e1", 37, 91, utcnow())
        assert not terminals.hold_resize(s, "e-unknown", 37, 91, utcnow())
    with store.transaction() as s:
        got = terminals.take(s, "tok", utcnow())
    assert got is not None and got.pending_size == (37, 91)
    with store.transaction() as s:  # connected: a resize now goes to the runtime
        assert not terminals.hold_resize(s, "e1", 40, 100, utcnow())
