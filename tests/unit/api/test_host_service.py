"""HostService on a real SQLite store: policy, liveness and what scheduling sees."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from capsuled.api.services.hosts import HostService
from capsuled.domain.channel import HostInfo
from capsuled.errors import Conflict, Forbidden, InvalidInput, NotFound
from capsuled.identity.base import Principal
from capsuled.scheduler.select import NoValidHost, Request, select_host
from capsuled.store import hosts as host_repo
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.tables import Host, utcnow

ADMIN = Principal("p", "u", frozenset({"admin"}))
USER = Principal("p", "u", frozenset({"member"}))


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    s = Store(engine)
    with s.transaction() as t:
        host_repo.register_host(t, HostInfo(name="h1", cpus=4, memory_mb=4096, disk_gb=10))
    return s


def test_only_admins_see_or_change_hosts_and_services(store: Store) -> None:
    svc = HostService(store, timedelta(seconds=60))
    for call in (lambda: svc.list(USER), lambda: svc.get(USER, "h1"), lambda: svc.services(USER),
                 lambda: svc.set_disabled(USER, "h1", "capsuled-agent", True),
                 lambda: svc.set_forced_down(USER, "h1", "capsuled-agent", True),
                 lambda: svc.delete(USER, "h1", "capsuled-agent")):
        with pytest.raises(Forbidden):
            call()
    assert svc.availability_zones(USER) == ["nova"]


def test_forced_down_host_is_down_and_never_scheduled(store: Store) -> None:
    svc = HostService(store, timedelta(seconds=60))
    assert svc.get(ADMIN, "h1").up
    svc.set_forced_down(ADMIN, "h1", "capsuled-agent", True)
    assert not svc.get(ADMIN, "h1").up
    with store.transaction() as s:
        caps = host_repo.capacities(s)
    with pytest.raises(NoValidHost, match="forced down"):
        select_host(caps, Request(cpu=0, memory=0), utcnow())


def test_a_silent_host_is_down_and_can_then_be_deleted(store: Store) -> None:
    svc = HostService(store, timedelta(seconds=60))
    with pytest.raises(Conflict, match="is up"):
        svc.delete(ADMIN, "h1", "capsuled-agent")
    with store.transaction() as s:
        row = s.query(Host).one()
        row.last_seen = utcnow() - timedelta(minutes=5)
    assert not svc.get(ADMIN, "h1").up
    svc.delete(ADMIN, "h1", "zun-compute")
    with pytest.raises(NotFound):
        svc.get(ADMIN, "h1")


def test_bad_service_requests_name_the_field(store: Store) -> None:
    svc = HostService(store, timedelta(seconds=60))
    with pytest.raises(InvalidInput, match="host"):
        svc.set_disabled(ADMIN, None, "capsuled-agent", True)
    with pytest.raises(InvalidInput, match="binary"):
        svc.set_disabled(ADMIN, "h1", "", True)
    with pytest.raises(InvalidInput, match="disabled_reason"):
        svc.set_disabled(ADMIN, "h1", "capsuled-agent", True, "x" * 300)
    with pytest.raises(NotFound, match="h9"):
        svc.set_disabled(ADMIN, "h9", "capsuled-agent", True)
