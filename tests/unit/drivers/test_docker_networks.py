"""BridgeNetworks against a stub of the SDK's APIClient: the cache, adopting an existing
network after a 409, refusing a foreign one, and removing only unused labelled networks."""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from capsuled.drivers.network.base import network_name
from capsuled.drivers.network.docker import ICC, BridgeNetworks
from capsuled.errors import DriverError
from capsuled.domain.addresses import network_uuid


def api_error(status: int, message: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls(message, response=response, explanation=message)


class StubAPI:
    def __init__(self) -> None:
        self.nets: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.slow_create = 0.0
        self.serial = 0
        self.hidden: list[str] = []  # subnets Docker knows but does not list (e.g. a race)

    def create_network(self, name: str, driver: str, options: dict[str, str],
                       check_duplicate: bool, labels: dict[str, str],
                       ipam: dict[str, Any]) -> dict[str, str]:
        self.calls.append(f"create {name}")
        time.sleep(self.slow_create)
        assert driver == "bridge" and options == {ICC: "true"} and check_duplicate
        if any(n["Name"] == name for n in self.nets.values()):
            raise api_error(409, f"network with name {name} already exists")
        (pool,) = ipam["Config"]
        subnet = ipaddress.ip_network(pool["Subnet"])
        if any(subnet.overlaps(ipaddress.ip_network(s)) for s in self.hidden + self.subnets()):
            raise api_error(403, "Pool overlaps with other one on this address space")
        self.serial += 1
        nid = f"id{self.serial}"
        self.nets[nid] = {"Id": nid, "Name": name, "Labels": labels, "Containers": {},
                          "Created": f"2026-01-01T00:00:{self.serial:02d}Z",
                          "IPAM": {"Driver": "default", "Config": [{"Subnet": str(subnet)}]}}
        return {"Id": nid, "Warning": ""}

    def subnets(self) -> list[str]:
        return [c["Subnet"] for n in self.nets.values() for c in n.get("IPAM", {}).get("Config", [])]

    def networks(self, names: list[str] | None = None,
                 filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        self.calls.append("list")
        rows = [dict(n, Containers={}) for n in self.nets.values()]  # list shows no containers
        if names:
            rows = [r for r in rows if any(x in r["Name"] for x in names)]  # substring, as Docker
        for f in (filters or {}).get("label", []):
            k, _, v = f.partition("=")
            rows = [r for r in rows if r["Labels"].get(k) == v]
        return rows

    def inspect_network(self, nid: str) -> dict[str, Any]:
        self.calls.append(f"inspect {nid}")
        if nid not in self.nets:
            raise api_error(404, f"network {nid} not found")
        return self.nets[nid]

    def remove_network(self, nid: str) -> None:
        self.calls.append(f"remove {nid}")
        if nid not in self.nets:
            raise api_error(404, f"network {nid} not found")
        if self.nets[nid]["Containers"]:
            raise api_error(403, f"error while removing network: network {nid} has active endpoints")
        del self.nets[nid]


@pytest.fixture()
def api() -> StubAPI:
    return StubAPI()


@pytest.fixture()
def nets(api: StubAPI, tmp_path: Path) -> BridgeNetworks:
    return make(api, tmp_path)


POOL = ipaddress.IPv4Network("10.208.0.0/12")
NO_ROUTES = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"


def make(api: StubAPI, tmp_path: Path, pool: ipaddress.IPv4Network = POOL, prefix: int = 22,
         routes: str = NO_ROUTES) -> BridgeNetworks:
    (tmp_path / "route").write_text(routes)
    return BridgeNetworks(api, pool, prefix, tmp_path / "route")  # type: ignore[arg-type]


def test_ensure_creates_once_then_answers_from_its_cache(nets: BridgeNetworks, api: StubAPI) -> None:
    first = nets.ensure_network("inst", "proj")
    assert nets.ensure_network("inst", "proj") == first
    assert api.calls == ["list", f"create {network_name('inst', 'proj')}"]
    assert api.nets[first.id]["Labels"] == {"capsuled.instance": "inst", "capsuled.project": "proj",
                                            "capsuled.network-id": network_uuid("proj")}


def test_an_existing_network_is_adopted_after_the_409(nets: BridgeNetworks, api: StubAPI,
                                                      tmp_path: Path) -> None:
    made = make(api, tmp_path).ensure_network("inst", "proj")  # an earlier run
    api.calls.clear()
    assert nets.ensure_network("inst", "proj") == made
    assert api.calls == ["list", f"create {made.name}", "list"]


def test_a_foreign_network_with_our_name_is_refused(nets: BridgeNetworks, api: StubAPI) -> None:
    name = network_name("inst", "proj")
    api.nets["x"] = {"Id": "x", "Name": name, "Labels": {}, "Containers": {}}
    with pytest.raises(DriverError, match="not this deployment"):
        nets.ensure_network("inst", "proj")


def test_concurrent_ensures_create_one_network(nets: BridgeNetworks, api: StubAPI) -> None:
    api.slow_create = 0.05
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(nets.ensure_network("inst", "p").id))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(got) == {"id1"} and len(got) == 8
    assert api.calls.count(f"create {network_name('inst', 'p')}") == 1


def test_forget_makes_the_next_ensure_ask_docker(nets: BridgeNetworks, api: StubAPI) -> None:
    net = nets.ensure_network("inst", "proj")
    del api.nets[net.id]
    nets.forget_network("inst", "proj")
    again = nets.ensure_network("inst", "proj")
    assert again.id != net.id and again.id in api.nets


def test_remove_unused_removes_only_the_named_projects_empty_networks(
        nets: BridgeNetworks, api: StubAPI, tmp_path: Path) -> None:
    a = nets.ensure_network("inst", "a")
    b = nets.ensure_network("inst", "b")
    c = nets.ensure_network("inst", "c")
    other = make(api, tmp_path).ensure_network("other-instance", "a")
    api.nets[b.id]["Containers"] = {"cid": {}}
    removed = nets.remove_unused_networks("inst", {"a", "b"})
    assert removed == [a]
    assert set(api.nets) == {b.id, c.id, other.id}
    # The removed one is forgotten: the next ensure makes it again.
    api.calls.clear()
    assert nets.ensure_network("inst", "a").id != a.id
    assert api.calls == ["list", f"create {a.name}"]


def test_remove_tolerates_a_network_that_went_or_got_a_container(
        nets: BridgeNetworks, api: StubAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    a = nets.ensure_network("inst", "a")
    b = nets.ensure_network("inst", "b")
    real_remove = api.remove_network

    def racing_remove(nid: str) -> None:
        if nid == a.id:
            del api.nets[nid]  # removed meanwhile by hand
        if nid == b.id:
            api.nets[nid]["Containers"] = {"cid": {}}  # joined after the inspect
        real_remove(nid)
    monkeypatch.setattr(api, "remove_network", racing_remove)
    assert nets.remove_unused_networks("inst", {"a", "b"}) == [a]
    assert b.id in api.nets


# -- subnets from capsuled's pool ---------------------------------------------------------------

def _subnet(api: StubAPI, nid: str) -> str:
    return str(api.nets[nid]["IPAM"]["Config"][0]["Subnet"])


def test_each_project_gets_the_next_free_block_of_the_pool(nets: BridgeNetworks, api: StubAPI) -> None:
    api.nets["bridge"] = {"Id": "bridge", "Name": "bridge", "Labels": {}, "Containers": {},
                          "IPAM": {"Config": [{"Subnet": "10.208.4.0/24"}, {"Subnet": "fd00::/64"}]}}
    got = [_subnet(api, nets.ensure_network("inst", p).id) for p in ("a", "b", "c")]
    assert got == ["10.208.0.0/22", "10.208.8.0/22", "10.208.12.0/22"]  # not over the bridge


def test_blocks_that_overlap_a_host_route_are_skipped(api: StubAPI, tmp_path: Path) -> None:
    # 10.208.0.0/23 via eth1 and a default route: only the first is in the way.
    routes = (NO_ROUTES + "eth1\t0000D00A\t00000000\t0001\t0\t0\t0\t00FEFFFF\n"
              "eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\n")
    nets = make(api, tmp_path, routes=routes)
    assert _subnet(api, nets.ensure_network("inst", "a").id) == "10.208.4.0/22"


def test_a_block_docker_refuses_as_overlapping_is_passed_over(nets: BridgeNetworks,
                                                             api: StubAPI) -> None:
    api.hidden = ["10.208.0.0/16"]  # e.g. taken by another engine's client between list and create
    with pytest.raises(DriverError, match="overlaps"):
        nets.ensure_network("inst", "a")  # gives up after a few blocks, with Docker's reason
    api.hidden = ["10.208.0.0/23"]
    assert _subnet(api, nets.ensure_network("inst", "a").id) == "10.208.4.0/22"


def test_a_full_pool_is_a_clear_error(api: StubAPI, tmp_path: Path) -> None:
    nets = make(api, tmp_path, pool=ipaddress.IPv4Network("10.208.0.0/23"), prefix=24)
    nets.ensure_network("inst", "a")
    nets.ensure_network("inst", "b")
    with pytest.raises(DriverError, match=r"no free /24 block left in 10.208.0.0/23 .*network_pool"):
        nets.ensure_network("inst", "c")
    assert len(api.nets) == 2
