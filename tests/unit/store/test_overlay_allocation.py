"""Project networks across hosts on a SQLite store, through the control plane as agents
see it: blocks are allocated where work is placed (never overlapping), each host is told
its peers and the project's names elsewhere (and only its own projects'), a report that
moves a name wakes the project's other hosts, and a full pool says which setting to raise."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import QuotaService
from capsuled.domain.addresses import Address, network_uuid
from capsuled.domain.channel import CapsuleReport, HostInfo, OverlayNetwork
from capsuled.domain.container_request import parse_container_request
from capsuled.domain.overlay import OverlayPool
from capsuled.domain.template import parse_template
from capsuled.errors import Conflict
from capsuled.scheduler.select import Request
from capsuled.store import capsules as capsule_repo
from capsuled.store import containers as container_repo
from capsuled.store import overlay
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.hosts import host_revision

QUOTA = {"capsules": -1, "containers": -1, "cpu": -1, "memory": -1, "disk": -1}
UNDERLAY = {"h1": "192.0.2.1", "h2": "192.0.2.2", "h3": "192.0.2.3"}


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    overlay.configure(OverlayPool(ipaddress.IPv4Network("10.224.0.0/16"), 20, 24))
    yield Store(engine)
    overlay.configure(overlay.DEFAULT_POOL)


@pytest.fixture()
def control(store: Store) -> ControlPlane:
    control = ControlPlane(store)
    for host, addr in UNDERLAY.items():
        control.register(HostInfo(name=host, cpus=8, memory_mb=8192, disk_gb=50,
                                  underlay_address=addr))  # type: ignore[arg-type]
    control.register(HostInfo(name="local", cpus=8, memory_mb=8192, disk_gb=50))
    return control


def _place(store: Store, project: str, host: str, name: str) -> str:
    placement = Placement(QuotaService(store, QUOTA), timedelta(seconds=180))
    with store.transaction() as s:
        placed = placement.choose(s, Request(cpu=0.1, memory=16), f"capsule {name}", project,
                                  only_host=host)
        row = capsule_repo.create_capsule(s, parse_template(_template(name)), project, "u",
                                          placed.host)
        return row.uuid


def _template(name: str) -> dict[str, Any]:
    return {"kind": "capsule", "metadata": {"name": name},
            "spec": {"containers": [{"image": "busybox"}]}}


def _overlays(control: ControlPlane, host: str) -> dict[str, OverlayNetwork]:
    return {o.project_id: o for o in control.watch(host, -1, 0).overlays}


def test_a_project_gets_one_subnet_and_a_block_of_it_per_host(
        store: Store, control: ControlPlane) -> None:
    _place(store, "p", "h1", "web-a")
    _place(store, "p", "h2", "web-b")
    _place(store, "q", "h2", "web-c")
    on1, on2 = _overlays(control, "h1"), _overlays(control, "h2")
    assert set(on1) == {"p"} and set(on2) == {"p", "q"}
    p1, p2, q2 = on1["p"], on2["p"], on2["q"]
    assert p1.subnet == p2.subnet and p1.vni == p2.vni
    assert not p1.ip_range.overlaps(p2.ip_range)
    assert p1.ip_range.subnet_of(p1.subnet) and p2.ip_range.subnet_of(p2.subnet)
    assert (p1.gateway, p2.gateway) == (p1.ip_range[1], p2.ip_range[1])
    assert not q2.subnet.overlaps(p2.subnet) and q2.vni != p2.vni
    assert all(o.subnet.subnet_of(ipaddress.IPv4Network("10.224.0.0/16"))
               for o in (p1, p2, q2))
    # Each host floods to the project's other hosts, and only those.
    assert [str(a) for a in p1.peers] == ["192.0.2.2"]
    assert [str(a) for a in p2.peers] == ["192.0.2.1"] and q2.peers == []


def test_a_host_without_an_underlay_address_keeps_its_networks_to_itself(
        store: Store, control: ControlPlane) -> None:
    _place(store, "p", "local", "web-a")
    _place(store, "p", "h1", "web-b")
    assert control.watch("local", -1, 0).overlays == []
    assert _overlays(control, "h1")["p"].peers == []


def test_names_on_other_hosts_are_told_to_the_project_only_and_wake_its_hosts(
        store: Store, control: ControlPlane) -> None:
    _place(store, "p", "h1", "web-a")
    b = _place(store, "p", "h2", "web-b")
    _place(store, "q", "h1", "web-spy")
    with store.transaction() as s:
        before = host_revision(s, "h1"), host_revision(s, "h3")
    addr = str(_overlays(control, "h2")["p"].ip_range[5])
    control.report("h2", [CapsuleReport(uuid=b, generation=1, addresses=[
        Address(network_id=network_uuid("p"), addr=addr, subnet="10.224.0.0/20")])])
    with store.transaction() as s:
        after = host_revision(s, "h1"), host_revision(s, "h3")
    assert after[0] > before[0]  # h1 has project p: its agent re-reads the directory
    assert after[1] == before[1]  # h3 has nothing of p
    # A bare container of p on h2, with its address reported: a name too.
    bare_addr = str(_overlays(control, "h2")["p"].ip_range[6])
    with store.transaction() as s:
        row = container_repo.create_bare(s, parse_container_request({"image": "busybox"}),
                                         "db", "p", "u", "h2", "running")
        row.addresses = [Address(network_id=network_uuid("p"), addr=bare_addr,
                                 subnet="10.224.0.0/20").model_dump()]
        bare = row.uuid
    on1 = _overlays(control, "h1")
    assert {(n.name, str(n.addr)) for n in on1["p"].names} == {
        ("web-b", addr), (b, addr), ("db", bare_addr), (bare, bare_addr)}
    assert on1["q"].names == []  # another project on the same host learns nothing of p
    assert _overlays(control, "h2")["p"].names == []  # a's address is not known yet


def test_a_full_project_subnet_names_the_settings_and_idle_blocks_are_taken_back(
        store: Store, control: ControlPlane) -> None:
    # Two blocks per project subnet: a third host for the project is refused.
    overlay.configure(OverlayPool(ipaddress.IPv4Network("10.224.0.0/26"), 27, 28))
    _place(store, "p", "h1", "web-a")
    b = _place(store, "p", "h2", "web-b")
    with pytest.raises(Conflict, match="project_prefix and overlay.host_prefix"):
        _place(store, "p", "h3", "web-c")
    # Once p has nothing left on h2, its block there goes to h3.
    with store.transaction() as s:
        s.delete(capsule_repo.get_capsule(s, b, None))
    _place(store, "p", "h3", "web-c")
    assert set(_overlays(control, "h3")) == {"p"} and _overlays(control, "h2") == {}
    # A pool with room for two projects: a third one is refused, naming the pool.
    _place(store, "q", "h1", "web-d")
    with pytest.raises(Conflict, match="no subnet left in the overlay pool"):
        _place(store, "r", "h1", "web-e")
