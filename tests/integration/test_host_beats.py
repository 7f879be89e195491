"""Heartbeats land in host_beats through each dialect's upsert, and a batch never waits
for a create: a create locks every host row (store/hosts.lock_hosts) until it commits,
and the batch writes neither those rows nor anything that references them.

SQLite has no row locks (a create holds the whole database's write lock), so the second
test runs on PostgreSQL and MariaDB only."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select
from test_databases import Database, add_host, db  # noqa: F401 - db fixture

from capsuled.api.services.heartbeats import Heartbeats
from capsuled.store import hosts as host_repo
from capsuled.store.tables import Host, HostBeat, utcnow

# Only a guard against hanging the run if the batch does wait (it would wait as long as
# the lock is held, i.e. for ever here); not a measure of anything.
GUARD = 60.0


def _beats(db_store: object) -> dict[str, tuple[object, int]]:
    from capsuled.store.engine import Store

    assert isinstance(db_store, Store)
    with db_store.transaction() as s:
        return {b.host: (b.last_seen, b.beats) for b in s.scalars(select(HostBeat))}


def test_beats_are_upserted_into_host_beats_and_read_back_as_liveness(db: Database) -> None:
    store = db.ready()
    for name in ("h1", "h2"):
        add_host(store, name)
    registered = _beats(store)
    assert set(registered) == {"h1", "h2"} and registered["h1"][1] == 1
    with store.transaction() as s:
        updated_before = {h.name: h.updated_at for h in host_repo.list_hosts(s)}
    beats = Heartbeats(store, period=3600)  # flushed by hand
    for _ in range(3):
        beats.beat("h1")
    beats.beat("h2")
    beats.beat("ghost")  # not registered: skipped, no row
    assert beats.flush() == 3
    after = _beats(store)
    assert set(after) == {"h1", "h2"}
    assert after["h1"][1] == 4 and after["h2"][1] == 2
    assert after["h1"][0] > registered["h1"][0]  # type: ignore[operator]
    with store.transaction() as s:
        rows = {h.name: h for h in host_repo.list_hosts(s)}
        # What every reader of liveness sees, and the host rows themselves untouched.
        assert rows["h1"].last_seen == after["h1"][0] and rows["h1"].report_count == 4
        assert {n: h.updated_at for n, h in rows.items()} == updated_before
        silent = select(Host.name).where(Host.last_seen < utcnow() - timedelta(minutes=1))
        assert list(s.scalars(silent)) == []
        host_repo.heartbeats(s, {"h2": (utcnow() - timedelta(hours=1), 0)})
        assert list(s.scalars(silent)) == ["h2"]


def test_a_batch_completes_while_a_create_holds_every_host_lock(db: Database) -> None:
    if db.kind == "sqlite":
        pytest.skip("SQLite locks the whole database for a writer, not rows")
    store = db.ready()
    for name in ("h1", "h2", "h3"):
        add_host(store, name)
    before = _beats(store)
    beats = Heartbeats(store, period=3600)
    for name in ("h1", "h2", "h3"):
        beats.beat(name)
    flushed: list[int] = []
    errors: list[BaseException] = []

    def flush() -> None:
        try:
            flushed.append(beats.flush())
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    with store.transaction() as s:  # a create's claim, held open
        host_repo.lock_hosts(s)
        writer = threading.Thread(target=flush, name="beats")
        writer.start()
        writer.join(GUARD)
        done_under_lock = not writer.is_alive()
    writer.join()
    assert errors == []
    assert done_under_lock, "the heartbeat batch waited for the create's host locks"
    assert flushed == [3]
    after = _beats(store)
    assert all(after[h][1] == before[h][1] + 1 for h in ("h1", "h2", "h3"))
