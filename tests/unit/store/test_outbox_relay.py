"""Durable outbox readers on SQLite: leases, cursors, at-least-once order, and pruning that
waits for the slowest reader."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from capsuled.api.relay.worker import Change, DeliveryFailed, OutboxRelay
from capsuled.domain.backoff import Backoff
from capsuled.store import outbox, outbox_readers
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.outbox import OutboxRetention


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(engine)
    return Store(engine)


@pytest.fixture(autouse=True)
def _retention() -> object:
    yield
    outbox.configure(OutboxRetention())


def _write(store: Store, count: int, project: str = "p1") -> None:
    for i in range(count):
        with store.transaction() as s:
            outbox.record(s, project_id=project, kind="capsule", uuid=f"u{i}", name=f"c{i}",
                          event_type="capsule.update", reason="Test", status="Running")


class Collect:
    def __init__(self, fail_first: int = 0) -> None:
        self.seen: list[int] = []
        self.fail_left = fail_first

    def deliver(self, changes: Sequence[Change]) -> None:
        if self.fail_left:
            self.fail_left -= 1
            self.seen.append(changes[0].seq)  # the first got through, then the broker died
            raise DeliveryFailed("broker down", delivered=1)
        self.seen.extend(c.seq for c in changes)


def test_a_new_reader_starts_after_the_newest_record(store: Store) -> None:
    _write(store, 3)
    sink = Collect()
    relay = OutboxRelay(store, "n", sink, owner="a")
    relay.start(); relay.stop()
    _write(store, 2)
    assert relay.run_once() is False
    assert sink.seen == [4, 5]


def test_a_failed_delivery_is_retried_from_the_first_undelivered_record(store: Store) -> None:
    with store.transaction() as s:
        outbox_readers.ensure(s, "n", start=0)
    _write(store, 4)
    sink = Collect(fail_first=1)
    relay = OutboxRelay(store, "n", sink, owner="a")
    with pytest.raises(DeliveryFailed):
        relay.run_once()
    relay.run_once()
    assert sink.seen == [1, 2, 3, 4]  # in order, each once: the cursor moved past 1
    with store.transaction() as s:
        assert outbox_readers.position(s, "n") == 4


def test_one_lease_holder_delivers_and_another_takes_over_when_it_runs_out(store: Store) -> None:
    with store.transaction() as s:
        outbox_readers.ensure(s, "n", start=0)
    _write(store, 2)
    a, b = Collect(), Collect()
    first = OutboxRelay(store, "n", a, owner="a", lease_ttl=0.3)
    second = OutboxRelay(store, "n", b, owner="b", lease_ttl=0.3)
    first.run_once()
    _write(store, 1)
    second.run_once()
    assert (a.seen, b.seen) == ([1, 2], [])  # a's lease is still good
    time.sleep(0.4)
    second.run_once()
    assert b.seen == [3]
    assert first.run_once() is False and a.seen == [1, 2]  # b holds it now


def test_pruning_keeps_what_a_reader_still_owes(store: Store) -> None:
    outbox.configure(OutboxRetention(records=10, max_age=timedelta(days=1),
                                     reader_records=400))
    with store.transaction() as s:
        outbox_readers.ensure(s, "slow", start=0)
    _write(store, 300)
    with store.transaction() as s:
        assert outbox.cursor(s).pruned_through == 0  # all 300 owed to "slow"
    sink = Collect()
    OutboxRelay(store, "slow", sink, owner="a", batch=1000).run_once()
    assert sink.seen == list(range(1, 301))
    _write(store, 300)  # crosses a prune boundary after the reader moved on
    with store.transaction() as s:
        assert outbox.cursor(s).pruned_through == 300


def test_a_reader_stalled_past_its_bound_loses_the_oldest(store: Store) -> None:
    outbox.configure(OutboxRetention(records=10, max_age=timedelta(days=1),
                                     reader_records=1000))
    with store.transaction() as s:
        outbox_readers.ensure(s, "dead", start=0)
    _write(store, 1300)
    with store.transaction() as s:
        assert outbox.cursor(s).pruned_through >= 1300 - 1000 - 256


def test_the_thread_delivers_soon_after_a_commit(store: Store) -> None:
    got = threading.Event()

    class Signal:
        def deliver(self, changes: Sequence[Change]) -> None:
            got.set()

    relay = OutboxRelay(store, "n", Signal(), owner="a", poll=30, retry=Backoff(0.01, 0.02))
    relay.start()
    try:
        _write(store, 1)
        assert got.wait(5)
    finally:
        relay.stop()
