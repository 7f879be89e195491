"""Hosts, services and availability zones through the API, against the all-in-one
server's real agent: what it reports, and that disabling or forcing the host down really
takes it out of scheduling."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from conftest import Capsules, sleeper, template

pytestmark = [pytest.mark.docker]

V = {"OpenStack-API-Version": "container 1.40"}


@pytest.fixture()
def host(api: httpx.Client) -> Iterator[str]:
    r = api.get("/v1/services")
    assert r.status_code == 200, r.text
    name: str = r.json()["services"][0]["host"]
    yield name
    # Whatever a test did, leave the shared server's only host schedulable.
    api.put("/v1/services/enable", params={"host": name, "binary": "capsuled-agent"})
    api.put("/v1/services/force_down", params={"host": name, "binary": "capsuled-agent",
                                               "forced_down": "False"})


def test_hosts_list_and_show_report_the_real_engine(api: httpx.Client, host: str) -> None:
    r = api.get("/v1/hosts", headers=V)
    assert r.status_code == 200, r.text
    [h] = [x for x in r.json()["hosts"] if x["hostname"] == host]
    assert h["cpus"] > 0 and h["mem_total"] > 0
    assert h["os_type"] == "linux" and h["kernel_version"]
    assert h["links"][0]["href"].endswith(f"/v1/hosts/{h['uuid']}")
    one = api.get(f"/v1/hosts/{h['uuid']}", headers=V)
    assert one.status_code == 200 and one.json()["hostname"] == host
    assert api.get(f"/v1/hosts/{host}", headers=V).json()["uuid"] == h["uuid"]
    missing = api.get("/v1/hosts/nope", headers=V)
    assert missing.status_code == 404 and "nope" in missing.json()["errors"][0]["detail"]


def test_hosts_api_needs_microversion_1_4(api: httpx.Client) -> None:
    r = api.get("/v1/hosts", headers={"OpenStack-API-Version": "container 1.3"})
    assert r.status_code == 404
    assert "1.4" in r.json()["errors"][0]["detail"]


def test_host_usage_counts_bare_containers_and_capsules(
        api: httpx.Client, host: str, capsules: Capsules, unique: Callable[[str], str]) -> None:
    def used() -> tuple[float, int, int]:
        h = api.get(f"/v1/hosts/{host}", headers=V).json()
        return h["cpu_used"], h["mem_used"], h["total_containers"]

    cpu0, mem0, n0 = used()
    r = api.post("/v1/containers", params={"run": "true"},
                 json={"image": "busybox", "command": ["sleep", "300"], "cpu": 0.25,
                       "memory": 32, "name": unique("claim")})
    assert r.status_code == 202, r.text
    bare = r.json()["uuid"]
    try:
        capsules.create(template(unique("claim"), [sleeper("a", resources={
            "requests": {"cpu": 0.5, "memory": 64}})]))
        cpu1, mem1, n1 = used()
        assert cpu1 == pytest.approx(cpu0 + 0.75)
        assert mem1 == mem0 + 96
        assert n1 == n0 + 2
    finally:
        api.delete(f"/v1/containers/{bare}", params={"force": "true"})


def test_services_list_shows_the_agent_up(api: httpx.Client, host: str) -> None:
    [svc] = [s for s in api.get("/v1/services").json()["services"] if s["host"] == host]
    assert svc["binary"] == "capsuled-agent"
    assert svc["state"] == "up" and svc["disabled"] is False and svc["forced_down"] is False
    assert svc["report_count"] >= 1
    assert svc["availability_zone"]


def test_disable_takes_the_host_out_of_scheduling_and_enable_brings_it_back(
        api: httpx.Client, host: str, capsules: Capsules, unique: Callable[[str], str]) -> None:
    r = api.put("/v1/services/disable", params={"host": host, "binary": "zun-compute",
                                                "disabled_reason": "maintenance"})
    assert r.status_code == 200, r.text
    assert r.json()["service"] == {"host": host, "binary": "zun-compute", "disabled": True,
                                   "disabled_reason": "maintenance"}
    [svc] = [s for s in api.get("/v1/services").json()["services"] if s["host"] == host]
    assert svc["disabled"] is True and svc["disabled_reason"] == "maintenance"

    refused = capsules.create(template(unique("nohost"), [sleeper("a")]))
    assert refused["status"] == "Error"
    # What is wrong with which host is the operator's (logged); the tenant reads that none is up.
    assert refused["status_reason"] == "There are not enough hosts available. (no host is up)"

    r = api.put("/v1/services/enable", json={"host": host, "binary": "capsuled-agent"})
    assert r.status_code == 200 and r.json()["service"]["disabled"] is False
    ok = capsules.create(template(unique("back"), [sleeper("a")]))
    capsules.wait_status(ok["uuid"], "Running")


def test_force_down_marks_the_service_down(api: httpx.Client, host: str) -> None:
    r = api.put("/v1/services/force_down", params={"host": host, "binary": "capsuled-agent",
                                                   "forced_down": "True"})
    assert r.status_code == 200 and r.json()["service"]["forced_down"] is True
    [svc] = [s for s in api.get("/v1/services").json()["services"] if s["host"] == host]
    assert svc["state"] == "down"
    # Even a down host is not forgotten while capsules may be placed on it.
    r = api.put("/v1/services/force_down", params={"host": host, "binary": "capsuled-agent",
                                                   "forced_down": "False"})
    assert r.json()["service"]["forced_down"] is False


def test_service_errors_name_the_problem(api: httpx.Client, host: str) -> None:
    r = api.put("/v1/services/disable", params={"binary": "capsuled-agent"})
    assert r.status_code == 400 and "host" in r.json()["errors"][0]["detail"]
    r = api.put("/v1/services/disable", params={"host": host, "binary": "zun-api"})
    assert r.status_code == 404 and "zun-api" in r.json()["errors"][0]["detail"]
    r = api.put("/v1/services/reboot", params={"host": host, "binary": "capsuled-agent"})
    assert r.status_code == 404 and "reboot" in r.json()["errors"][0]["detail"]
    r = api.put("/v1/services/force_down", params={"host": host, "binary": "capsuled-agent",
                                                   "forced_down": "maybe"})
    assert r.status_code == 400 and "forced_down" in r.json()["errors"][0]["detail"]
    r = api.delete("/v1/services", params={"host": host, "binary": "capsuled-agent"})
    assert r.status_code == 409 and "up" in r.json()["errors"][0]["detail"]


def test_availability_zones_come_from_the_hosts(api: httpx.Client) -> None:
    r = api.get("/v1/availability_zones")
    assert r.status_code == 200
    zones = [z["availability_zone"] for z in r.json()["availability_zones"]]
    services = api.get("/v1/services").json()["services"]
    assert zones == sorted({s["availability_zone"] for s in services})
