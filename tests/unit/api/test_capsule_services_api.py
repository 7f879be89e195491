"""/v1/capsule_services on the whole API, built in process by the composition root over
SQLite (no Docker): create/list/show/delete with Zun's error bodies, every bad field
named, a project's own only (hostile tenants get 404s and 403s), published ports held on
every host against capsules' hostPorts (both ways), and which capsules serve as agents'
reports say (the view the agents long-poll, through their own HTTP route)."""

from __future__ import annotations

import ipaddress
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # Starlette would like httpx2; httpx is what we ship
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from capsuled.cli import compose
from capsuled.config import Settings
from capsuled.domain.addresses import Address, network_uuid
from capsuled.domain.channel import CapsuleReport, ContainerReport, HostInfo
from capsuled.paths import ADMIN_TOKEN_FILE

LATEST = {"OpenStack-API-Version": "container latest"}
PATH = "/v1/capsule_services"


@dataclass
class Api:
    http: TestClient
    built: compose.Api
    admin: str

    def token(self, project: str, *roles: str, host: str | None = None) -> str:
        body: dict[str, Any] = {"project_id": project, "user_id": "u", "roles": list(roles)}
        if host is not None:
            body["host"] = host
        r = self.http.post("/v1/tokens", json=body, headers=self.h(self.admin))
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    @staticmethod
    def h(token: str) -> dict[str, str]:
        return {"X-Auth-Token": token, **LATEST}

    def create(self, token: str, body: dict[str, Any], expect: int = 201) -> dict[str, Any]:
        r = self.http.post(PATH, json=body, headers=self.h(token))
        assert r.status_code == expect, r.text
        return r.json()  # type: ignore[no-any-return]

    def capsule(self, token: str, name: str, labels: dict[str, str],
                host_port: int | None = None) -> dict[str, Any]:
        port: dict[str, Any] = {"containerPort": 8080}
        if host_port is not None:
            port["hostPort"] = host_port
        r = self.http.post("/v1/capsules", headers=self.h(token), json={"template": {
            "kind": "capsule", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "web", "image": "busybox", "ports": [port]}]}}})
        assert r.status_code == 202, r.text
        return r.json()  # type: ignore[no-any-return]

    def report(self, capsule: dict[str, Any], project: str, addr: str, ready: bool = True,
               draining: bool | None = None) -> None:
        (c,) = capsule["containers"]
        self.built.control.report("h1", [CapsuleReport(
            uuid=capsule["uuid"], generation=1, sandbox_state="running", draining=draining,
            addresses=[Address(network_id=network_uuid(project), addr=addr,
                               subnet="10.208.0.0/22")],
            containers=[ContainerReport(uuid=c["uuid"], name="web", role="app",
                                        state="running", ready=ready)])])


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings.model_validate({"state_dir": tmp_path,
                                        "services": {"per_project": 3, "max_ports": 4}})
    opened = compose.open_store(settings)

    def no_ops(host: str) -> Any:
        raise AssertionError("no host operations here")
    built = compose.build_api(settings, opened.store, no_ops)
    built.control.register(HostInfo(name="h1", cpus=8, memory_mb=8192, disk_gb=50))
    with TestClient(built.app, raise_server_exceptions=False) as http:
        yield Api(http, built, (tmp_path / ADMIN_TOKEN_FILE).read_text().strip())
    opened.store.engine.dispose()


WEB = {"name": "web", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}


def test_create_list_show_delete(api: Api) -> None:
    alice = api.token("tenant-a", "member")
    made = api.create(alice, WEB)
    assert ipaddress.IPv4Address(made["vip"]) in ipaddress.IPv4Network("10.96.0.0/16")
    assert made["dns_name"] == "web" and made["backends"] == [] and made["project_id"] == "tenant-a"
    assert made["ports"] == [{"port": 80, "targetPort": 8080, "protocol": "TCP", "publish": None}]
    other = api.create(alice, {**WEB, "name": "api"})
    assert other["vip"] != made["vip"]
    listed = api.http.get(PATH, headers=api.h(alice)).json()["capsule_services"]
    assert [s["name"] for s in listed] == ["web", "api"]
    assert api.http.get(f"{PATH}/web", headers=api.h(alice)).json()["uuid"] == made["uuid"]
    assert api.http.get(f"{PATH}/{made['uuid']}", headers=api.h(alice)).status_code == 200
    assert api.http.delete(f"{PATH}/web", headers=api.h(alice)).status_code == 204
    r = api.http.get(f"{PATH}/web", headers=api.h(alice))
    assert r.status_code == 404 and "could not be found" in r.json()["errors"][0]["detail"]


def test_bad_input_is_a_400_naming_each_field(api: Api) -> None:
    alice = api.token("tenant-a", "member")
    r = api.http.post(PATH, headers=api.h(alice), json={
        "name": "Web!", "selector": {}, "ports": [{"port": 0, "protocol": "SCTP"},
                                                   {"port": 80, "publish": 22}], "extra": 1})
    assert r.status_code == 400
    detail = r.json()["errors"][0]["detail"]
    for field in ("extra: unknown field", "name: must be", "selector: must name",
                  "ports[0].port", "ports[0].protocol", "ports[1].publish: must be between 30000"):
        assert field in detail, detail
    r = api.http.post(PATH, headers={**api.h(alice), "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 415
    too_many = {**WEB, "ports": [{"port": p} for p in range(1, 6)]}
    assert "at most 4" in api.create(alice, too_many, 400)["errors"][0]["detail"]


def test_names_are_per_project_and_a_project_has_a_limit(api: Api) -> None:
    alice, bob = api.token("tenant-a", "member"), api.token("tenant-b", "member")
    api.create(alice, WEB)
    dup = api.create(alice, WEB, 409)
    assert "a service named web already exists" in dup["errors"][0]["detail"]
    api.create(bob, WEB)  # the same name in another project is another service
    api.create(alice, {**WEB, "name": "b"})
    api.create(alice, {**WEB, "name": "c"})
    over = api.create(alice, {**WEB, "name": "d"}, 403)
    assert "at most 3 (services.per_project)" in over["errors"][0]["detail"]


def test_another_project_s_service_is_not_there_for_a_member(api: Api) -> None:
    alice, bob = api.token("tenant-a", "member"), api.token("tenant-b", "member")
    reader = api.token("tenant-a", "reader")
    made = api.create(alice, WEB)
    for ident in ("web", made["uuid"]):
        assert api.http.get(f"{PATH}/{ident}", headers=api.h(bob)).status_code == 404
        assert api.http.delete(f"{PATH}/{ident}", headers=api.h(bob)).status_code == 404
    assert api.http.get(PATH, headers=api.h(bob)).json()["capsule_services"] == []
    r = api.http.get(PATH, params={"all_projects": "true"}, headers=api.h(bob))
    assert r.status_code == 403 and "capsule_service:get_all_all_projects" in r.text
    assert api.http.get(f"{PATH}/web", headers=api.h(reader)).status_code == 200
    r = api.http.post(PATH, json={**WEB, "name": "x"}, headers=api.h(reader))
    assert r.status_code == 403 and "capsule_service:create" in r.text
    assert api.http.delete(f"{PATH}/web", headers=api.h(reader)).status_code == 403
    everyone = api.http.get(PATH, params={"all_projects": "true"}, headers=api.h(api.admin))
    assert [s["project_id"] for s in everyone.json()["capsule_services"]] == ["tenant-a"]
    assert api.http.get(PATH).status_code == 401


def test_published_ports_are_held_on_every_host_against_host_ports(api: Api) -> None:
    alice, bob = api.token("tenant-a", "member"), api.token("tenant-b", "member")
    api.capsule(alice, "fixed", {"app": "x"}, host_port=30100)
    taken = api.create(alice, {**WEB, "ports": [{"port": 80, "publish": 30100}]}, 409)
    assert taken["errors"][0]["detail"] == ("ports[0].publish: TCP port 30100 is in use (by "
                                            "your capsule fixed).")
    taken = api.create(bob, {**WEB, "ports": [{"port": 80, "publish": 30100}]}, 409)
    assert "(by another project)" in taken["errors"][0]["detail"]
    api.create(bob, {**WEB, "ports": [{"port": 80, "publish": 30101},
                                      {"port": 80, "protocol": "UDP", "publish": 30100}]})
    assert "(by another project)" in api.create(
        alice, {**WEB, "name": "w2", "ports": [{"port": 1, "publish": 30101}]}, 409
    )["errors"][0]["detail"]
    # A capsule asking for a port a service publishes finds no host, told whose it is.
    late = api.capsule(bob, "late", {"app": "y"}, host_port=30101)
    assert late["status"] == "Error"
    assert "TCP port 30101 free: used by your service web" in late["status_reason"]
    assert api.http.delete(f"{PATH}/web", headers=api.h(bob)).status_code == 204
    assert api.capsule(bob, "later", {"app": "y"}, host_port=30101)["status"] == "Creating"


def show(api: Api, token: str) -> dict[str, Any]:
    r = api.http.get(f"{PATH}/web", headers=api.h(token))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_backends_are_the_ready_capsules_of_the_project_that_match(api: Api) -> None:
    alice, bob = api.token("tenant-a", "member"), api.token("tenant-b", "member")
    svc = api.create(alice, WEB)
    a = api.capsule(alice, "aa", {"app": "web"})
    b = api.capsule(alice, "bb", {"app": "web", "tier": "x"})
    api.capsule(alice, "db", {"app": "db"})
    intruder = api.capsule(bob, "intruder", {"app": "web"})
    assert [(x["name"], x["serving"]) for x in show(api, alice)["backends"]] == [
        ("aa", False), ("bb", False)]  # not running yet
    api.report(a, "tenant-a", "10.208.0.2")
    api.report(b, "tenant-a", "10.208.0.3", ready=False)
    api.report(intruder, "tenant-b", "10.208.4.2")
    got = show(api, alice)["backends"]
    assert [(x["name"], x["addr"], x["serving"]) for x in got] == [
        ("aa", "10.208.0.2", True), ("bb", "10.208.0.3", False)]
    agent = api.token("service", "agent", host="h1")
    r = api.http.get("/v1/agents/h1/services", params={"timeout": 0}, headers=api.h(agent))
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["projects"] == ["tenant-a", "tenant-b"] and view["vip_range"] == "10.96.0.0/16"
    (entry,) = view["services"]
    assert (entry["uuid"], entry["vip"]) == (svc["uuid"], svc["vip"])
    assert entry["backends"] == [{"capsule": a["uuid"], "addr": "10.208.0.2"}]
    # Draining (its agent replaces its containers) or deleting: no longer a backend.
    api.report(a, "tenant-a", "10.208.0.2", draining=True)
    assert [x["serving"] for x in show(api, alice)["backends"]] == [False, False]
    api.report(a, "tenant-a", "10.208.0.2", draining=False)
    api.report(b, "tenant-a", "10.208.0.3", ready=True)
    assert api.http.delete("/v1/capsules/aa", headers=api.h(alice)).status_code == 204
    assert [(x["name"], x["serving"]) for x in show(api, alice)["backends"]] == [("bb", True)]
    # Agents only see their own host's view.
    assert api.http.get("/v1/agents/h2/services", headers=api.h(agent)).status_code == 403
    assert api.http.get("/v1/agents/h1/services", headers=api.h(alice)).status_code == 403


def test_the_agent_s_long_poll_answers_as_soon_as_its_view_changes(api: Api) -> None:
    alice = api.token("tenant-a", "member")
    agent = api.token("service", "agent", host="h1")
    a = api.capsule(alice, "aa", {"app": "web"})
    api.create(alice, WEB)
    first = api.http.get("/v1/agents/h1/services", params={"timeout": 0},
                         headers=api.h(agent)).json()
    started = time.monotonic()
    waited = api.http.get("/v1/agents/h1/services", headers=api.h(agent),
                          params={"after": first["version"], "timeout": 0.6}).json()
    assert waited["version"] == first["version"] and time.monotonic() - started >= 0.5
    threading.Timer(0.3, api.report, [a, "tenant-a", "10.208.0.2"]).start()
    started = time.monotonic()
    changed = api.http.get("/v1/agents/h1/services", headers=api.h(agent),
                           params={"after": first["version"], "timeout": 20}).json()
    assert changed["version"] != first["version"] and time.monotonic() - started < 2
    assert changed["services"][0]["backends"] == [{"capsule": a["uuid"], "addr": "10.208.0.2"}]
