"""Heartbeats are noted in memory and stored in batches: a beat never waits for the store
(creates lock every host row), a batch of many hosts is one transaction of two
statements, and while the store cannot be written the beats fail, as before, so agents
notice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.heartbeats import Heartbeats
from capsuled.domain.channel import HostInfo
from capsuled.errors import Unavailable
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.tables import Host
from tests.conftest import wait_for

HOSTS = [f"h{i:02d}" for i in range(40)]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    store = Store(engine)
    control = ControlPlane(store)
    for h in HOSTS:
        control.register(HostInfo(name=h, cpus=8, memory_mb=8192, disk_gb=50))
    yield store
    engine.dispose()


def _seen(store: Store) -> dict[str, tuple[Any, int]]:
    with store.transaction() as s:
        return {h.name: (h.last_seen, h.report_count) for h in s.scalars(select(Host))}


def test_many_hosts_beats_are_one_upsert_into_host_beats(store: Store) -> None:
    beats = Heartbeats(store, period=3600)  # flushed by hand
    before = _seen(store)
    for h in HOSTS:
        beats.beat(h)
    beats.beat("h00")
    beats.beat("not-registered")  # skipped, as a beat of an unknown host always was
    statements: list[str] = []
    listener = lambda *a: statements.append(a[2])  # noqa: E731
    event.listen(store.engine, "before_cursor_execute", listener)
    try:
        assert beats.flush() == len(HOSTS) + 1
    finally:
        event.remove(store.engine, "before_cursor_execute", listener)
    after = _seen(store)
    assert all(after[h][0] > before[h][0] for h in HOSTS)
    assert after["h00"][1] == before["h00"][1] + 2 and after["h01"][1] == before["h01"][1] + 1
    # Which hosts are known, one upsert into host_beats, and the two reads of which hosts
    # have anything Unknown (their next beat asks for a full report); SQLite may add its
    # BEGIN/COMMIT only. Nothing writes or locks the host rows, which creates lock.
    work = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "UPDATE", "INSERT"))]
    assert len(work) == 4
    assert [s for s in work if s.lstrip().upper().startswith("INSERT")][0].startswith(
        "INSERT INTO host_beats")
    assert not any("FOR UPDATE" in s.upper() or s.lstrip().upper().startswith("UPDATE")
                   for s in work)
    assert beats.flush() == 0  # nothing noted since


def test_beats_fail_while_the_store_cannot_be_written_and_are_kept(store: Store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    beats = Heartbeats(store, period=3600)
    beats.beat("h01")
    real = store.transaction

    def down() -> Any:
        raise Unavailable("database down")

    monkeypatch.setattr(store, "transaction", down)
    with pytest.raises(Unavailable):
        beats.flush()
    with pytest.raises(Unavailable, match="database down"):
        beats.beat("h01")  # the agent learns of the outage, as from a failed write
    monkeypatch.setattr(store, "transaction", real)
    before = _seen(store)["h01"]
    assert beats.flush() == 1  # the beat noted before the outage is written now
    assert _seen(store)["h01"][1] == before[1] + 1
    beats.beat("h01")  # and beats are accepted again


def test_the_control_planes_beats_reach_the_store_within_a_period(store: Store) -> None:
    control = ControlPlane(store)
    before = _seen(store)["h05"][0]
    control.heartbeat("h05")
    wait_for(lambda: _seen(store)["h05"][0] > before, timeout=5)
    control.heartbeats.stop()
