"""The one placement path on a SQLite store: admit under the project's quota, choose a
host (or record why none fits without naming one), refuse growth a host has no room for."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy.orm import Session

from capsuled.api.services import placement as placement_module
from capsuled.api.services.placement import Placed, Placement
from capsuled.api.services.quotas import Delta, QuotaService
from capsuled.domain.status import Status
from capsuled.errors import Conflict, InvalidInput, OverQuota
from capsuled.scheduler.select import Request, select_host
from capsuled.store.engine import Store
from capsuled.store.hosts import HostCapacity
from tests.unit.scheduler.test_select import NOW, host
from tests.unit.store.sqlite_rig import sqlite_store

DEFAULTS = {"capsules": 10, "containers": 40, "cpu": 8, "memory": 8192, "disk": 100}


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return sqlite_store(tmp_path, "secret-host", cpus=4, memory_mb=4096)


@pytest.fixture()
def placement(store: Store) -> Placement:
    return Placement(QuotaService(store, DEFAULTS), timedelta(seconds=180))


def test_a_request_that_fits_goes_to_a_host_as_creating(store: Store,
                                                        placement: Placement) -> None:
    with store.transaction() as s:
        placement.admit(s, "p1", Delta(containers=1, cpu=1.0, memory=256))
        placed = placement.choose(s, Request(cpu=1.0, memory=256), "container web", "p1")
    assert placed == Placed("secret-host", Status.CREATING)


def test_no_host_is_an_error_whose_reason_names_no_host(store: Store,
                                                        placement: Placement) -> None:
    with store.transaction() as s:
        placed = placement.choose(s, Request(cpu=6.0, memory=256), "capsule big", "p1")
    assert (placed.host, placed.status) == (None, Status.ERROR)
    assert placed.reason is not None and "secret-host" not in placed.reason
    assert placed.detail is not None and "secret-host" in placed.detail


def test_a_host_asked_for_by_name_must_exist(store: Store, placement: Placement) -> None:
    with store.transaction() as s, pytest.raises(InvalidInput, match="no host named nope"):
        placement.choose(s, Request(cpu=1.0, memory=256), "container web", "p1", only_host="nope")
    with store.transaction() as s:
        placed = placement.choose(s, Request(cpu=1.0, memory=256), "container web", "p1",
                                  only_host="secret-host")
    assert placed.host == "secret-host"


def test_admit_refuses_what_the_quota_has_no_room_for(store: Store,
                                                      placement: Placement) -> None:
    with store.transaction() as s, pytest.raises(OverQuota, match="cpu"):
        placement.admit(s, "p1", Delta(containers=1, cpu=9.0))


def test_growth_beyond_the_hosts_room_is_refused_without_naming_it(
        store: Store, placement: Placement) -> None:
    with store.transaction() as s:
        placement.lock(s, "p1")
        placement.grow(s, "p1", Delta(cpu=2.0), "secret-host", "capsule's", 2.0, 0)
        with pytest.raises(Conflict) as exc:
            placement.grow(s, "p1", Delta(cpu=5.0), "secret-host", "capsule's", 5.0, 0)
    assert exc.value.message == (
        "cpu: the capsule's host has not enough free CPU for 5 more cores.")
    with store.transaction() as s, pytest.raises(Conflict, match="memory: the container's host"):
        placement.ensure_room(s, "secret-host", "container's", 0.0, 5000)


def test_growth_on_no_host_or_by_nothing_is_not_checked(store: Store,
                                                        placement: Placement) -> None:
    with store.transaction() as s:
        placement.ensure_room(s, None, "capsule's", 100.0, 100000)
        placement.ensure_room(s, "secret-host", "capsule's", -1.0, 0)
        placement.ensure_room(s, "gone-host", "capsule's", 100.0, 0)



def test_the_snapshot_counts_a_choice_at_once_and_is_read_again_when_old_or_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Optimistic creates choose from a snapshot (placement._Snapshot): one taken by a
    thread is counted before the next thread chooses (concurrent creates spread instead
    of all locking one host row), and the snapshot is read again once it is a second
    old, or after a choice from it did not hold."""
    reads: list[int] = []

    def read(_s: Any, lock: bool = True, only: str | None = None) -> list[HostCapacity]:
        assert not lock and only is None
        reads.append(1)
        return [host("h1"), host("h2"), host("h3", memory_used=4000)]

    monkeypatch.setattr(placement_module, "capacities", read)
    clock = [0.0]
    snap = placement_module._Snapshot(clock=lambda: clock[0])
    want = Request(cpu=0.5, memory=512)

    def take() -> str:
        return snap.take(cast(Session, None), want,
                         lambda hosts: select_host(hosts, want, NOW)).name

    assert [take() for _ in range(4)] == ["h1", "h2", "h1", "h2"] and len(reads) == 1
    clock[0] += placement_module.SNAPSHOT_SECONDS
    assert take() == "h1" and len(reads) == 2
    snap.forget()
    assert take() == "h1" and len(reads) == 3


def test_one_thread_reads_an_old_snapshot_again_while_the_others_choose_from_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1,000 hosts a full read is ~30 ms of CPU: every create in flight reading an old
    snapshot at once made them all wait. One reads; the others choose from the old one."""
    reading, release = threading.Event(), threading.Event()
    reads: list[int] = []

    def read(_s: Any, lock: bool = True, only: str | None = None) -> list[HostCapacity]:
        reads.append(1)
        if len(reads) == 2:  # the read of the old snapshot: held until the others chose
            reading.set()
            assert release.wait(10)
        return [host("h1"), host("h2")]

    monkeypatch.setattr(placement_module, "capacities", read)
    clock = [0.0]
    snap = placement_module._Snapshot(clock=lambda: clock[0])
    want = Request(cpu=0.5, memory=512)

    def take(reread: bool = False) -> str:
        return snap.take(cast(Session, None), want,
                         lambda hosts: select_host(hosts, want, NOW), reread=reread).name

    take()
    clock[0] += placement_module.SNAPSHOT_SECONDS
    reader = threading.Thread(target=take)
    reader.start()
    assert reading.wait(10)
    assert {take() for _ in range(3)} <= {"h1", "h2"} and len(reads) == 2
    assert take(reread=True) and len(reads) == 3  # a refusal's read is always made
    release.set()
    reader.join(10)
    assert not reader.is_alive()
    take()
    assert len(reads) == 3  # read again by the reader: fresh for a second
