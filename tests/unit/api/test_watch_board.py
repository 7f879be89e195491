"""The agents' long polls on one API replica are woken per host: a change to one host's
desired set costs one revision read and that host's re-read, not one read per waiting
agent; a report of a capsule no service selects wakes no service view; and a waiting
agent whose wake-up is lost still gets its change (the board's poll)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.signals import Signal
from capsuled.api.services.watch_board import WatchBoard
from capsuled.domain.channel import Assignments, CapsuleReport, HostInfo
from capsuled.domain.services import ServiceEntry, ServicesView
from capsuled.store.capsules import bump_host_revision
from capsuled.store.engine import Store, make_engine, upgrade
from tests.conftest import wait_for

HOSTS = [f"h{i:02d}" for i in range(30)]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    yield Store(engine)
    engine.dispose()


@pytest.fixture()
def control(store: Store) -> Iterator[ControlPlane]:
    control = ControlPlane(store)
    for h in HOSTS:
        control.register(HostInfo(name=h, cpus=8, memory_mb=8192, disk_gb=50))
    yield control
    control.board.stop()


class Statements:
    """Counts the SQL statements the engine runs."""

    def __init__(self, store: Store) -> None:
        self.n = 0
        event.listen(store.engine, "before_cursor_execute", self._count)
        self._engine = store.engine

    def _count(self, *_: Any) -> None:
        self.n += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._count)


def _watchers(control: ControlPlane, timeout: float) -> dict[str, list[Assignments]]:
    got: dict[str, list[Assignments]] = {h: [] for h in HOSTS}
    revision = {h: control.watch(h, -1, 0).revision for h in HOSTS}
    for h in HOSTS:
        threading.Thread(target=lambda h=h: got[h].append(control.watch(h, revision[h], timeout)),
                         daemon=True).start()
    wait_for(lambda: control.board.waiters == len(HOSTS), timeout=10)
    return got


def test_a_change_to_one_host_wakes_that_hosts_watch_alone(control: ControlPlane,
                                                          store: Store) -> None:
    got = _watchers(control, timeout=20)
    time.sleep(0.3)  # the board's first read: every waiter was just woken once, re-reads
    counted = Statements(store)
    try:
        with store.transaction() as s:
            bump_host_revision(s, "h07")
        control.notify()
        wait_for(lambda: bool(got["h07"]), timeout=5)
        time.sleep(0.3)  # a poll period: any other wake-up would show by now
    finally:
        counted.close()
    assert got["h07"][0].revision > 0
    assert [h for h, answers in got.items() if answers] == ["h07"]
    # The bump, the board's reads (revisions and whether services exist) and h07's
    # desired set: a dozen statements. Waking every waiter to re-read costs ≥ 30.
    assert counted.n < 20, counted.n


def test_a_lost_wakeup_is_found_by_the_boards_poll(control: ControlPlane,
                                                  store: Store) -> None:
    got = _watchers(control, timeout=20)
    with store.transaction() as s:
        bump_host_revision(s, "h03")  # as another replica would: no notify() here
    wait_for(lambda: bool(got["h03"]), timeout=2)  # the board polls every 0.25 s
    assert [h for h, answers in got.items() if answers] == ["h03"]


def test_a_report_without_services_wakes_no_service_view(control: ControlPlane) -> None:
    views = 0
    real = control._services_view

    def counted(host: str) -> Any:
        nonlocal views
        views += 1
        return real(host)

    control._services_view = counted  # type: ignore[method-assign]
    after = {h: control.services(h, None, 0).version for h in HOSTS}
    answers: list[str] = []
    for h in HOSTS:
        threading.Thread(target=lambda h=h: answers.append(
            control.services(h, after[h], 20).host), daemon=True).start()
    wait_for(lambda: control.board.waiters == len(HOSTS), timeout=10)
    time.sleep(0.3)  # the board's first read woke each once
    views = 0
    control.report("h05", [CapsuleReport(uuid="no-such-capsule", generation=1)])
    time.sleep(0.5)
    assert views == 0 and answers == []


def test_the_board_fires_only_moved_hosts_and_reads_only_while_waited_on() -> None:
    revisions = {"a": 1, "b": 1}
    kick = Signal()
    board = WatchBoard(lambda: dict(revisions), kick, poll=0.05)
    a, b = board.assigned("a"), board.assigned("b")
    try:
        time.sleep(0.2)
        assert board.reads == 0  # nobody waits: nothing is read
        with board.waiting():
            wait_for(lambda: board.reads >= 1, timeout=2)
            seen_a, seen_b = a.seq, b.seq
            revisions["a"] = 2
            kick.fire()
            wait_for(lambda: a.seq > seen_a, timeout=2)
            assert b.seq == seen_b
        reads = board.reads
        time.sleep(0.3)
        assert board.reads <= reads + 1  # the round under way at most
    finally:
        board.stop()


def _capsule_reads(store: Store) -> tuple[list[str], Any]:
    """The statements that read a desired set (assignments_for selects from capsules)."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM capsules" in statement:
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    return seen, lambda: event.remove(store.engine, "before_cursor_execute", note)


def test_an_idle_watch_that_allows_it_answers_unchanged_and_reads_no_set(
        control: ControlPlane, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rechecks every 0.1 s instead of 5: an idle poll would re-read its set many times.
    monkeypatch.setattr("capsuled.api.services.agents._WATCH_RECHECK_SECONDS", 0.1)
    with store.transaction() as s:
        bump_host_revision(s, "h01")
    whole = control.watch("h01", -1, 0)
    assert whole.revision > 0 and not whole.unchanged
    reads, stop = _capsule_reads(store)
    try:
        idle = control.watch("h01", whole.revision, 1.0, full=False)
    finally:
        stop()
    assert idle.unchanged and idle.revision == whole.revision
    assert idle.capsules == [] and idle.containers == []
    assert reads == []  # neither the rechecks nor the answer read the desired set
    # Nor the host's revision: the watch board's reading answers (no transaction at all).
    transactions: list[str] = []
    real = control._assignments
    monkeypatch.setattr(control, "_assignments",
                        lambda *a, **k: transactions.append("read") or real(*a, **k))
    again_idle = control.watch("h01", whole.revision, 0.5, full=False)
    assert again_idle.unchanged and transactions == []
    # Without full=False (every agent from before it) the timed-out poll is the whole set.
    again = control.watch("h01", whole.revision, 0.3)
    assert not again.unchanged and again.revision == whole.revision


def test_a_watch_that_allows_unchanged_still_gets_a_moved_set(control: ControlPlane,
                                                             store: Store) -> None:
    start = control.watch("h02", -1, 0).revision
    got: list[Assignments] = []
    threading.Thread(target=lambda: got.append(control.watch("h02", start, 20, full=False)),
                     daemon=True).start()
    wait_for(lambda: control.board.waiters >= 1, timeout=5)
    with store.transaction() as s:
        bump_host_revision(s, "h02")  # as another replica would: no notify()
    wait_for(lambda: bool(got), timeout=3)
    assert got[0].revision > start and not got[0].unchanged



def test_a_burst_of_commits_costs_one_read_per_gap_and_the_last_change_is_seen() -> None:
    # Every create kicks the board. Under a burst (hundreds of creates a second) one read
    # per commit made the board a tenth of the server's CPU; it now reads at most once
    # per `gap`, and a kick after the last read still gets a read of its own.
    revisions = {"a": 0}
    kick = Signal()
    board = WatchBoard(lambda: dict(revisions), kick, poll=5.0, gap=0.05)
    a = board.assigned("a")
    try:
        with board.waiting():
            wait_for(lambda: board.reads >= 1, timeout=2)
            first = board.reads
            started = time.monotonic()
            for i in range(1, 201):
                revisions["a"] = i
                kick.fire()
                time.sleep(0.001)
            took = time.monotonic() - started
            wait_for(lambda: board.revision("a") == 200, timeout=2)
            reads = board.reads - first
            assert reads <= took / 0.05 + 2, (reads, took)
            assert a.seq >= 2
            # A lone change on a quiet board is read at once, not after a poll period.
            time.sleep(0.1)
            revisions["a"] = 201
            at = time.monotonic()
            kick.fire()
            wait_for(lambda: board.revision("a") == 201, timeout=2)
            assert time.monotonic() - at < 1.0
    finally:
        board.stop()


def _counting_views(control: ControlPlane) -> list[str]:
    views: list[str] = []
    real = control._services_view

    def counted(host: str) -> Any:
        views.append(host)
        return real(host)

    control._services_view = counted  # type: ignore[method-assign]
    return views


def test_an_idle_service_poll_without_services_reads_its_view_once(
        control: ControlPlane, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rechecks every 0.1 s instead of 5: each would have read the view (four queries).
    monkeypatch.setattr("capsuled.api.services.agents._WATCH_RECHECK_SECONDS", 0.1)
    after = control.services("h04", None, 0).version
    control.services("h04", after, 0.4)  # the board's first read wakes every host once
    views = _counting_views(control)
    idle = control.services("h04", after, 1.0)
    assert idle.version == after
    # The view read by the last poll still holds (no service, the host's set unmoved):
    # not read again, neither as the poll began nor at its rechecks.
    assert views == []
    # The host's desired set moving (another replica's commit: no wake-up here) is read.
    threading.Timer(0.4, lambda: _bump(store, "h04")).start()
    control.services("h04", after, 1.0)
    assert views == ["h04"], views  # once, after the move
    views.clear()
    assert control.services("h04", after, 0.3).version == after
    assert views == []  # and kept again


def test_a_view_with_services_is_read_again_by_every_poll(
        control: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """A view that lists a service is never answered from memory: read while the service
    existed, it would still list it after its deletion, the host's set unmoved."""
    views = _counting_views(control)
    real = control._services_view

    def with_a_service(host: str) -> ServicesView:
        view = real(host)
        entry = ServiceEntry(uuid="s1", name="web", project_id="p", vip="10.96.0.10",
                             ports=[], backends=[])
        return view.model_copy(update={"services": [entry]}).with_version()
    control._services_view = with_a_service  # type: ignore[method-assign]
    monkeypatch.setattr(control, "_services_exist", False)
    first = control.services("h05", None, 0)
    control.services("h05", first.version, 0.4)  # the board reads the revisions meanwhile
    assert control.board.revision("h05") is not None
    views.clear()
    control.services("h05", first.version, 0)
    assert views == ["h05"]


def _bump(store: Store, host: str) -> None:
    with store.transaction() as s:
        bump_host_revision(s, host)
