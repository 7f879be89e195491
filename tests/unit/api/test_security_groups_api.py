"""/v1/security_groups and Zun's add/remove_security_group on the whole API, built in
process by the composition root over SQLite (no Docker, no agent: reports are posted to
the control plane as an agent would): the implicit default group, validation that names
the field, policy and tenancy (another project's group is as unknown as a missing one),
groups in use, the container actions at their microversions, and the firewalls the
assignments carry, woken when a member comes, goes or moves."""

from __future__ import annotations

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
from capsuled.domain.channel import (Assignments, BareReport, CapsuleReport, ContainerReport,
                                     HostInfo)
from capsuled.paths import ADMIN_TOKEN_FILE
from capsuled.store import hosts as host_repo

LATEST = {"OpenStack-API-Version": "container latest"}
V114 = {"OpenStack-API-Version": "container 1.14"}


@dataclass
class Api:
    http: TestClient
    built: compose.Api
    admin: str

    def token(self, project: str, *roles: str) -> str:
        r = self.http.post("/v1/tokens", json={"project_id": project, "user_id": "u",
                                               "roles": list(roles) or ["member"]},
                           headers={"X-Auth-Token": self.admin, **LATEST})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def as_(self, project: str, *roles: str) -> dict[str, str]:
        return {"X-Auth-Token": self.token(project, *roles), **LATEST}

    def add_host(self, name: str) -> None:
        self.built.control.register(HostInfo(name=name, cpus=8, memory_mb=8192, disk_gb=50))

    def assignments(self, host: str) -> Assignments:
        return self.built.control.watch(host, -1, 0)

    def revision(self, host: str) -> int:
        with self.built.control._store.transaction() as s:
            return host_repo.host_revision(s, host)

    def run_capsule(self, host: str, uuid: str, ip: str) -> None:
        """Report the capsule running at `ip` as its host's agent would."""
        a = next(x for x in self.assignments(host).capsules if x.uuid == uuid)
        self.built.control.report(host, [CapsuleReport(
            uuid=uuid, generation=a.generation, sandbox_id="sb", sandbox_state="running",
            containers=[ContainerReport(uuid=c.uuid, name=c.name, role=c.role, state="running",
                                        runtime_id=f"rt-{c.name}") for c in a.spec.all_containers],
            addresses=[_address(a.project_id, ip)])])

    def run_container(self, host: str, uuid: str, ip: str) -> None:
        a = next(x for x in self.assignments(host).containers if x.uuid == uuid)
        self.built.control.report(host, [], [BareReport(
            uuid=uuid, generation=a.generation, container=ContainerReport(
                uuid=uuid, name=a.name, role="bare", state="running", runtime_id="rt",
                addresses=[_address(a.project_id, ip)]))])


    def container_gone(self, host: str, uuid: str) -> None:
        a = next(x for x in self.assignments(host).containers if x.uuid == uuid)
        self.built.control.report(host, [], [BareReport(uuid=uuid, generation=a.generation,
                                                        gone=True)])


def _address(project: str | None, ip: str) -> Address:
    assert project is not None
    return Address(network_id=network_uuid(project), addr=ip, subnet=f"{ip}/22")


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings.model_validate({"state_dir": tmp_path, "limits": {
        "max_security_group_rules": 4, "security_groups_per_project": 3}})
    opened = compose.open_store(settings)

    def no_ops(host: str) -> Any:
        raise AssertionError("no host operations here")
    built = compose.build_api(settings, opened.store, no_ops)
    with TestClient(built.app, raise_server_exceptions=False) as http:
        yield Api(http, built, (tmp_path / ADMIN_TOKEN_FILE).read_text().strip())
    opened.store.engine.dispose()


def tcp(port: int, **source: str) -> dict[str, Any]:
    return {"protocol": "tcp", "port_range_min": port, "port_range_max": port, **source}


def capsule(name: str, *groups: str, host_port: int | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "main", "image": "busybox"}
    if host_port is not None:
        c["ports"] = [{"containerPort": 80, "hostPort": host_port}]
    spec: dict[str, Any] = {"containers": [c]}
    if groups:
        spec["securityGroups"] = list(groups)
    return {"template": {"kind": "capsule", "metadata": {"name": name}, "spec": spec}}


def detail(r: Any) -> str:
    return str(r.json()["errors"][0]["detail"])


def test_default_is_in_every_project_and_cannot_be_changed(api: Api) -> None:
    me = api.as_("team-a")
    listed = api.http.get("/v1/security_groups", headers=me).json()["security_groups"]
    assert [g["name"] for g in listed] == ["default"] and listed[0]["implicit"] is True
    assert listed[0]["rules"] == [{"direction": "ingress", "ethertype": "IPv4", "protocol": "any",
                                   "port_range_min": None, "port_range_max": None,
                                   "remote_ip_prefix": None, "remote_group": "default",
                                   "description": listed[0]["rules"][0]["description"]}]
    by_uuid = api.http.get(f"/v1/security_groups/{listed[0]['uuid']}", headers=me)
    assert by_uuid.status_code == 200 and by_uuid.json()["name"] == "default"
    other = api.http.get("/v1/security_groups/default", headers=api.as_("team-b")).json()
    assert other["uuid"] != listed[0]["uuid"] and other["project_id"] == "team-b"
    for r in (api.http.post("/v1/security_groups", json={"name": "default"}, headers=me),
              api.http.patch("/v1/security_groups/default", json={"rules": []}, headers=me),
              api.http.delete("/v1/security_groups/default", headers=me)):
        assert r.status_code == 409, r.text


def test_crud_with_every_problem_named(api: Api) -> None:
    me = api.as_("team-a")
    r = api.http.post("/v1/security_groups", headers=me, json={
        "name": "web", "description": "http", "rules": [tcp(8080, remote_group="default"),
                                                        {"protocol": "ICMP"}]})
    assert r.status_code == 201, r.text
    web = r.json()
    assert r.headers["Location"].endswith(f"/v1/security_groups/{web['uuid']}")
    assert [x["protocol"] for x in web["rules"]] == ["tcp", "icmp"]
    assert api.http.get("/v1/security_groups/web", headers=me).json()["uuid"] == web["uuid"]
    assert api.http.post("/v1/security_groups", json={"name": "web"}, headers=me).status_code == 409

    bad = api.http.post("/v1/security_groups", headers=me, json={
        "name": "x y", "colour": "red", "rules": [
            {"protocol": "sctp"}, {"protocol": "tcp", "port_range_min": 0},
            {"protocol": "tcp", "port_range_min": 90, "port_range_max": 80},
            {"protocol": "icmp", "port_range_min": 8}]})
    assert bad.status_code == 400
    for expected in ("name: must be", "colour: unknown field", "rules[0].protocol",
                     "rules[1].port_range_min", "rules[2].port_range_max",
                     "rules[3].port_range_min: ports are for tcp and udp"):
        assert expected in detail(bad), detail(bad)
    bad = api.http.post("/v1/security_groups", headers=me, json={"name": "y", "rules": [
        {"direction": "egress"}, {"ethertype": "IPv6"},
        {"remote_ip_prefix": "10.0.0.0/8", "remote_group": "default"},
        {"remote_ip_prefix": "10.0.0.300/8"}]})
    for expected in ("rules[0].direction", "rules[1].ethertype", "rules[2]: give remote_ip_prefix",
                     "rules[3].remote_ip_prefix"):
        assert expected in detail(bad), detail(bad)
    too_many = api.http.post("/v1/security_groups", headers=me, json={
        "name": "z", "rules": [tcp(p) for p in range(1, 6)]})
    assert too_many.status_code == 400 and "at most 4 rules" in detail(too_many)
    unknown = api.http.post("/v1/security_groups", headers=me, json={
        "name": "z", "rules": [tcp(1, remote_group="nope"), tcp(2, remote_group="z")]})
    assert unknown.status_code == 400
    assert detail(unknown) == "rules[0].remote_group: no security group named 'nope' in this project"

    r = api.http.patch("/v1/security_groups/web", headers=me, json={
        "rules": [tcp(9090, remote_ip_prefix="10.1.2.3")]})
    assert r.status_code == 200, r.text
    assert r.json()["rules"][0]["remote_ip_prefix"] == "10.1.2.3/32" and r.json()["description"] == "http"
    assert api.http.patch("/v1/security_groups/web", json={"name": "www"},
                          headers=me).status_code == 400
    assert api.http.patch("/v1/security_groups/web", json={}, headers=me).status_code == 400
    for name in ("a1", "a2"):
        assert api.http.post("/v1/security_groups", json={"name": name},
                             headers=me).status_code == 201
    full = api.http.post("/v1/security_groups", json={"name": "a3"}, headers=me)
    assert full.status_code == 409 and "security_groups_per_project" in detail(full)
    assert api.http.delete("/v1/security_groups/a2", headers=me).status_code == 204
    assert api.http.get("/v1/security_groups/a2", headers=me).status_code == 404
    names = [g["name"] for g in api.http.get("/v1/security_groups", headers=me).json()["security_groups"]]
    assert names == ["default", "web", "a1"]
    page = api.http.get("/v1/security_groups", params={"limit": 1}, headers=me).json()
    assert [g["name"] for g in page["security_groups"]] == ["default", "web"] and page["next"]
    page = api.http.get(page["next"], headers=me).json()
    assert [g["name"] for g in page["security_groups"]] == ["a1"] and page["next"]
    assert api.http.get(page["next"], headers=me).json() == {"security_groups": [], "next": None}


def test_readers_read_and_other_projects_see_nothing(api: Api) -> None:
    me = api.as_("team-a")
    assert api.http.post("/v1/security_groups", json={"name": "secret", "rules": [tcp(22)]},
                         headers=me).status_code == 201
    reader = api.as_("team-a", "reader")
    assert api.http.get("/v1/security_groups/secret", headers=reader).status_code == 200
    r = api.http.post("/v1/security_groups", json={"name": "r"}, headers=reader)
    assert r.status_code == 403 and "security_group:create" in detail(r)
    assert api.http.delete("/v1/security_groups/secret", headers=reader).status_code == 403

    them = api.as_("team-b")
    secret = api.http.get("/v1/security_groups/secret", headers=me).json()
    for ident in ("secret", secret["uuid"]):
        assert api.http.get(f"/v1/security_groups/{ident}", headers=them).status_code == 404
        assert api.http.delete(f"/v1/security_groups/{ident}", headers=them).status_code == 404
    assert [g["name"] for g in api.http.get("/v1/security_groups", headers=them).json()[
        "security_groups"]] == ["default"]
    # Naming it anywhere reads exactly as naming a group that does not exist.
    for name in ("secret", "missing"):
        c = api.http.post("/v1/containers", json={"image": "busybox", "security_groups": [name]},
                          headers=them)
        assert c.status_code == 400
        assert detail(c) == f"security_groups: no security group named '{name}' in this project"
        k = api.http.post("/v1/capsules", json=capsule("kk", name), headers=them)
        assert detail(k) == f"spec.securityGroups: no security group named '{name}' in this project"
        g = api.http.post("/v1/security_groups", headers=them, json={
            "name": "mine", "rules": [tcp(1, remote_group=name)]})
        assert detail(g) == f"rules[0].remote_group: no security group named '{name}' in this project"
    admin = {"X-Auth-Token": api.admin, **LATEST}
    everyone = api.http.get("/v1/security_groups", params={"all_projects": "true"}, headers=admin)
    assert "secret" in [g["name"] for g in everyone.json()["security_groups"]]
    assert api.http.get("/v1/security_groups", params={"all_projects": "true"},
                        headers=them).status_code == 403


def test_groups_in_use_stay_and_containers_show_theirs(api: Api) -> None:
    api.add_host("h1")
    me = api.as_("team-a")
    assert api.http.post("/v1/security_groups", json={"name": "ops"}, headers=me).status_code == 201
    assert api.http.post("/v1/security_groups", json={"name": "web", "rules": [
        tcp(80, remote_group="ops")]}, headers=me).status_code == 201
    k = api.http.post("/v1/capsules", json=capsule("kk", "web", "default"), headers=me)
    assert k.status_code == 202 and k.json()["security_groups"] == ["web", "default"]
    assert k.json()["containers"][0]["security_groups"] == ["web", "default"]
    plain = api.http.post("/v1/capsules", json=capsule("plain"), headers=me).json()
    assert plain["security_groups"] == ["default"]
    c = api.http.post("/v1/containers", json={"image": "busybox", "name": "c1",
                                              "security_groups": ["ops"]}, headers=me)
    assert c.status_code == 202 and c.json()["security_groups"] == ["ops"]
    # In use by a capsule; the remote group of web's rule; then free.
    r = api.http.delete("/v1/security_groups/web", headers=me)
    assert r.status_code == 409 and "in use by 1" in detail(r)
    r = api.http.delete("/v1/security_groups/ops", headers=me)
    assert r.status_code == 409 and "in use by 1" in detail(r)
    admin = {"X-Auth-Token": api.admin, **LATEST}
    assert api.http.delete(f"/v1/containers/{c.json()['uuid']}", params={"force": "true"},
                           headers=admin).status_code == 204
    r = api.http.delete("/v1/security_groups/ops", headers=me)
    assert r.status_code == 409 and "in use by 1" in detail(r)  # until its agent removed it
    api.container_gone("h1", c.json()["uuid"])
    r = api.http.delete("/v1/security_groups/ops", headers=me)
    assert r.status_code == 409 and "remote group of rules in web" in detail(r)


def test_zuns_add_and_remove_security_group(api: Api) -> None:
    api.add_host("h1")
    me = api.as_("team-a")
    assert api.http.post("/v1/security_groups", json={"name": "web"}, headers=me).status_code == 201
    c = api.http.post("/v1/containers", json={"image": "busybox", "name": "c1"}, headers=me).json()
    old = {**me, **V114}
    early = api.http.post("/v1/containers/c1/add_security_group", params={"name": "web"}, headers=old)
    assert early.status_code == 409 and "Creating state" in detail(early)  # Zun's valid states
    api.run_container("h1", c["uuid"], "10.208.0.5")
    revision = api.revision("h1")
    r = api.http.post("/v1/containers/c1/add_security_group", params={"name": "web"}, headers=old)
    assert r.status_code == 202, r.text
    assert api.http.get("/v1/containers/c1", headers=me).json()["security_groups"] == ["default", "web"]
    assert api.revision("h1") > revision  # its agent is told
    fw = next(a for a in api.assignments("h1").containers if a.uuid == c["uuid"]).firewall
    assert fw is not None and {a.protocol for a in fw.allow} == {"any"}
    again = api.http.post("/v1/containers/c1/add_security_group", params={"name": "web"}, headers=old)
    assert again.status_code == 400 and "already in security group web" in detail(again)
    missing = api.http.post("/v1/containers/c1/remove_security_group", params={"name": "ops"},
                            headers=old)
    assert missing.status_code == 400 and "no security group named 'ops'" in detail(missing)
    r = api.http.post("/v1/containers/c1/remove_security_group", json={"name": "default"},
                      headers=old)
    assert r.status_code == 202, r.text
    assert api.http.get("/v1/containers/c1", headers=me).json()["security_groups"] == ["web"]
    fw = next(a for a in api.assignments("h1").containers if a.uuid == c["uuid"]).firewall
    assert fw is not None and fw.allow == []  # web has no rules: nothing may reach it
    actions = api.http.get("/v1/containers/c1/container_actions", headers=me).json()["containerActions"]
    assert [a["action"] for a in actions][-2:] == ["add_security_group", "remove_security_group"]
    # Zun removed both at 1.15.
    gone = api.http.post("/v1/containers/c1/add_security_group", params={"name": "default"}, headers=me)
    assert gone.status_code == 406
    # Another project's container is not found; a capsule's member takes its capsule's groups.
    them = {**api.as_("team-b"), **V114}
    assert api.http.post("/v1/containers/c1/add_security_group", params={"name": "default"},
                         headers=them).status_code == 404
    k = api.http.post("/v1/capsules", json=capsule("kk"), headers=me).json()
    member = k["containers"][0]["uuid"]
    r = api.http.post(f"/v1/containers/{member}/add_security_group", params={"name": "web"}, headers=old)
    assert r.status_code == 409 and "belongs to capsule kk" in detail(r)


def test_assignments_carry_the_resolved_firewalls(api: Api) -> None:
    for h in ("h1", "h2"):
        api.add_host(h)
    me = api.as_("team-a")
    assert api.http.post("/v1/security_groups", json={"name": "ops"}, headers=me).status_code == 201
    assert api.http.post("/v1/security_groups", headers=me, json={"name": "web", "rules": [
        tcp(8080, remote_group="ops"), tcp(9090, remote_ip_prefix="192.0.2.0/24")]}).status_code == 201
    web = api.http.post("/v1/capsules", json=capsule("web", "web", host_port=18080), headers=me).json()
    placed = {a.uuid: h for h in ("h1", "h2") for a in api.assignments(h).capsules}
    web_host = placed[web["uuid"]]
    api.run_capsule(web_host, web["uuid"], "10.208.0.2")

    def web_firewall() -> Any:
        fw = next(a for a in api.assignments(web_host).capsules if a.uuid == web["uuid"]).firewall
        assert fw is not None
        return {(a.protocol, a.port_min, tuple(fw.peers[a.peers].cidrs)) for a in fw.allow}
    # ops has no member yet; the published port is open to everyone.
    assert web_firewall() == {("tcp", 8080, ()), ("tcp", 9090, ("192.0.2.0/24",)),
                              ("tcp", 80, ("0.0.0.0/0",))}
    before = api.revision(web_host)
    ops = api.http.post("/v1/containers", json={"image": "busybox", "name": "o1",
                                                "security_groups": ["ops", "default"]},
                        headers=me).json()
    ops_host = next(h for h in ("h1", "h2") for a in api.assignments(h).containers
                    if a.uuid == ops["uuid"])
    api.run_container(ops_host, ops["uuid"], "10.208.4.7")
    assert api.revision(web_host) > before  # a member of ops got an address: web's host woken
    assert ("tcp", 8080, ("10.208.4.7/32",)) in web_firewall()
    # The default group: the project's own network on each host (the agent knows its own),
    # and the subnets of its members on other hosts.
    fw = next(a for a in api.assignments(ops_host).containers if a.uuid == ops["uuid"]).firewall
    assert fw is not None and fw.peers["group:default"].own_network
    assert fw.peers["group:default"].cidrs == ([] if ops_host == web_host else ["10.208.0.0/22"])
    # Deleting ops's member takes its address out of web's rules at once.
    before = api.revision(web_host)
    assert api.http.delete("/v1/containers/o1", params={"stop": "true"}, headers=me).status_code == 204
    assert api.revision(web_host) > before
    assert ("tcp", 8080, ()) in web_firewall()
    # Another project's capsules do not count as members of anything here.
    them = api.as_("team-b")
    assert api.http.post("/v1/security_groups", json={"name": "ops"}, headers=them).status_code == 201
    theirs = api.http.post("/v1/containers", json={"image": "busybox", "security_groups": ["ops"]},
                           headers=them).json()
    their_host = next(h for h in ("h1", "h2") for a in api.assignments(h).containers
                      if a.uuid == theirs["uuid"])
    api.run_container(their_host, theirs["uuid"], "10.208.8.9")
    assert ("tcp", 8080, ()) in web_firewall()


def test_an_update_moves_a_capsule_between_groups_that_exist(api: Api) -> None:
    api.add_host("h1")
    me = api.as_("team-a")
    assert api.http.post("/v1/security_groups", headers=me, json={
        "name": "web", "rules": [tcp(8080, remote_group="default")]}).status_code == 201
    k = api.http.post("/v1/capsules", json=capsule("kk"), headers=me).json()
    api.run_capsule("h1", k["uuid"], "10.208.0.2")

    def allowed() -> set[tuple[str, int | None]]:
        fw = next(a for a in api.assignments("h1").capsules if a.uuid == k["uuid"]).firewall
        assert fw is not None
        return {(a.protocol, a.port_min) for a in fw.allow}
    assert allowed() == {("any", None)}
    gone = api.http.patch(f"/v1/capsules/{k['uuid']}", headers=me,
                          json={"template": capsule("kk", "nope")["template"]})
    assert gone.status_code == 400
    assert detail(gone) == "spec.securityGroups: no security group named 'nope' in this project"
    r = api.http.patch(f"/v1/capsules/{k['uuid']}", headers=me,
                       json={"template": capsule("kk", "web")["template"]})
    assert r.status_code == 202, r.text
    assert r.json()["security_groups"] == ["web"] and allowed() == {("tcp", 8080)}
    # The revision's template says so (what `capsule history -o yaml` gives to edit).
    revisions = api.http.get(f"/v1/capsules/{k['uuid']}/revisions", headers=me).json()
    assert revisions["revisions"][-1]["template"]["spec"]["securityGroups"] == ["web"]


def test_a_first_address_wakes_only_the_hosts_whose_firewalls_name_it(api: Api) -> None:
    # `default` stands for the project's own network on a unit's own host, whatever the
    # addresses there: a capsule's first report wakes its own host only when one of its
    # other groups is named there, and other hosts for the project's subnets.
    for h in ("h1", "h2"):
        api.add_host(h)
    me = api.as_("team-d")
    one = api.http.post("/v1/capsules", json=capsule("one"), headers=me).json()
    two = api.http.post("/v1/capsules", json=capsule("two"), headers=me).json()
    placed = {a.uuid: h for h in ("h1", "h2") for a in api.assignments(h).capsules}
    assert placed[one["uuid"]] != placed[two["uuid"]]  # spread: one on each host
    here, there = placed[one["uuid"]], placed[two["uuid"]]
    api.run_capsule(there, two["uuid"], "10.208.20.2")
    before = {h: api.revision(h) for h in ("h1", "h2")}
    api.run_capsule(here, one["uuid"], "10.208.24.2")
    assert api.revision(here) == before[here]  # nothing here names its address
    assert api.revision(there) > before[there]  # there: the project's subnet on `here`
    fw = next(a for a in api.assignments(there).capsules if a.uuid == two["uuid"]).firewall
    assert fw is not None and "10.208.24.0/22" in fw.peers["group:default"].cidrs
