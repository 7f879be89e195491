"""HostService on a real SQLite store: policy, liveness and what scheduling sees."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from capsuled.api.policy import Policy
from capsuled.api.services.hosts import HostService
from capsuled.domain.channel import HostInfo
from capsuled.errors import Conflict, Forbidden, InvalidInput, NotFound
from capsuled.identity.base import Principal
from capsuled.scheduler.select import NoValidHost, Request, select_host
from capsuled.store import hosts as host_repo
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.tables import HostBeat, utcnow

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


def test_only_admins_see_or_change_hosts_and_services() -> None:
    policy = Policy()
    for rule in ("host:get_all", "host:get", "zun-service:get_all", "zun-service:update",
                 "zun-service:delete"):
        assert policy.allows(rule, ADMIN)
        with pytest.raises(Forbidden, match=rule):
            policy.enforce(rule, USER)
    assert policy.allows("availability_zones:get_all", USER)


def test_forced_down_host_is_down_and_never_scheduled(store: Store) -> None:
    svc = HostService(store, timedelta(seconds=60))
    assert svc.get("h1").up
    svc.set_forced_down("h1", "capsuled-agent", True)
    assert not svc.get("h1").up
    with store.transaction() as s:
        caps = host_repo.capacities(s)
    with pytest.raises(NoValidHost) as exc:
        select_host(caps, Request(cpu=0, memory=0), utcnow())
    assert "forced down" in exc.value.detail


def test_a_silent_host_is_down_and_can_then_be_deleted(store: Store) -> None:
    svc = HostService(store, timedelta(seconds=60))
    with pytest.raises(Conflict, match="is up"):
        svc.delete("h1", "capsuled-agent")
    with store.transaction() as s:
        host_repo.heartbeats(s, {"h1": (utcnow() - timedelta(minutes=5), 0)})
    assert not svc.get("h1").up
    svc.delete("h1", "zun-compute")
    with pytest.raises(NotFound):
        svc.get("h1")
    with store.transaction() as s:  # its beats went with it
        assert s.scalars(select(HostBeat)).all() == []


def test_bad_service_requests_name_the_field(store: Store) -> None:
    svc = HostService(store, timedelta(seconds=60))
    with pytest.raises(InvalidInput, match="host"):
        svc.set_disabled(None, "capsuled-agent", True)
    with pytest.raises(InvalidInput, match="binary"):
        svc.set_disabled("h1", "", True)
    with pytest.raises(InvalidInput, match="disabled_reason"):
        svc.set_disabled("h1", "capsuled-agent", True, "x" * 300)
    with pytest.raises(NotFound, match="h9"):
        svc.set_disabled("h9", "capsuled-agent", True)
