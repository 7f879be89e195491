"""Project networks on the real Docker Engine, proven with real traffic: capsules (and bare
containers) of one project reach each other by name; another project's capsule can
neither resolve those names nor reach their addresses. Networks are labelled, go when a
project has nothing left on the host, come back when it has again, and survive a kill -9
of capsuled without duplicates."""

from __future__ import annotations

import ipaddress
import signal
import time
from collections.abc import Callable
from typing import Any

import docker
import httpx
import pytest
from capsuled.domain.addresses import network_uuid
from conftest import Capsules, Server, exec_in, sandbox, sleeper, template, wait_for

pytestmark = pytest.mark.docker

PAGE = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 8080 -h /www"


def web(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "command": ["sh", "-c", PAGE.format(text=text)]}


def project_networks(docker_api: docker.APIClient, instance: str,
                     project: str | None = None) -> list[dict[str, Any]]:
    labels = [f"capsuled.instance={instance}"]
    if project is not None:
        labels.append(f"capsuled.project={project}")
    return docker_api.networks(filters={"label": labels})  # type: ignore[no-any-return]


def the_network(docker_api: docker.APIClient, instance: str, project: str) -> dict[str, Any]:
    found = project_networks(docker_api, instance, project)
    assert len(found) == 1, found
    return docker_api.inspect_network(found[0]["Id"])  # type: ignore[no-any-return]


def sandbox_ip(docker_api: docker.APIClient, capsule_uuid: str, network: str) -> str:
    return str(sandbox(docker_api, capsule_uuid)["NetworkSettings"]["Networks"][network]["IPAddress"])


def run(docker_api: docker.APIClient, container_id: str, script: str) -> tuple[int, str]:
    return exec_in(docker_api, container_id, "sh", "-c", script)


def fetch(docker_api: docker.APIClient, container_id: str, host: str) -> tuple[int, str]:
    # `timeout`, not wget's -T: this busybox build's wget crashes with -T.
    return run(docker_api, container_id, f"timeout 3 wget -qO- http://{host}:8080/ 2>&1")


class Bare:
    """Bare containers through the API, removed at the end."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        self.created: list[str] = []

    def run(self, **body: Any) -> dict[str, Any]:
        r = self.api.post("/v1/containers", params={"run": "true"},
                          json={"image": "busybox", **body})
        assert r.status_code == 202, r.text
        self.created.append(r.json()["uuid"])
        return r.json()  # type: ignore[no-any-return]

    def wait_running(self, ident: str) -> dict[str, Any]:
        return wait_for(lambda: (b := self.api.get(f"/v1/containers/{ident}").json())["status"]  # type: ignore[no-any-return]
                        == "Running" and b, timeout=60, what=f"container {ident} running")

    def cleanup(self) -> None:
        for u in self.created:
            self.api.delete(f"/v1/containers/{u}", params={"stop": "true"})
        for u in self.created:
            wait_for(lambda u=u: self.api.get(f"/v1/containers/{u}").status_code == 404,
                     timeout=60, what=f"container {u} deleted")


def bare_id(docker_api: docker.APIClient, uuid: str) -> str:
    found = docker_api.containers(all=True, filters={"label": [f"capsuled.container={uuid}"]})
    assert len(found) == 1, found
    return str(found[0]["Id"])


def test_projects_are_isolated_and_reach_their_own_capsules_by_name(
        server: Server, docker_api: docker.APIClient, unique) -> None:
    pa, pb = unique("net-a"), unique("net-b")
    instance = server.instance
    a = server.client(server.issue_token(pa, "alice", "member"))
    b = server.client(server.issue_token(pb, "bob", "member"))
    caps_a, caps_b, bare_a = Capsules(a), Capsules(b), Bare(a)
    try:
        a1_name, a2_name, b1_name, web_name = unique("a1"), unique("a2"), unique("b1"), unique("aweb")
        a1 = caps_a.create(template(a1_name, [web("web", "hello-from-a1")]))
        a2 = caps_a.create(template(a2_name, [sleeper("probe")]))
        b1 = caps_b.create(template(b1_name, [sleeper("probe")]))
        bare = bare_a.run(name=web_name, command=["sh", "-c", PAGE.format(text="hello-from-bare")])
        for caps, body in ((caps_a, a1), (caps_a, a2), (caps_b, b1)):
            caps.wait_status(body["uuid"], "Running")
        bare_a.wait_running(bare["uuid"])

        # Docker's view: one labelled bridge network per project, holding its sandboxes and
        # bare containers; the capsule's name and uuid are DNS aliases of its sandbox.
        net_a, net_b = the_network(docker_api, instance, pa), the_network(docker_api, instance, pb)
        assert net_a["Id"] != net_b["Id"]
        for net, project in ((net_a, pa), (net_b, pb)):
            assert net["Labels"] == {"capsuled.instance": instance, "capsuled.project": project,
                                     "capsuled.network-id": network_uuid(project)}
            assert net["Driver"] == "bridge" and net["Scope"] == "local"
            assert net["Options"]["com.docker.network.bridge.enable_icc"] == "true"
        a1_sb, a2_sb, b1_sb = (sandbox(docker_api, c["uuid"]) for c in (a1, a2, b1))
        assert set(net_a["Containers"]) == {a1_sb["Id"], a2_sb["Id"], bare_id(docker_api, bare["uuid"])}
        assert set(net_b["Containers"]) == {b1_sb["Id"]}
        a1_endpoint = a1_sb["NetworkSettings"]["Networks"][net_a["Name"]]
        assert {a1_name, a1["uuid"]} <= set(a1_endpoint["Aliases"])
        assert list(a1_sb["NetworkSettings"]["Networks"]) == [net_a["Name"]]  # not the shared bridge
        assert a1_sb["Config"]["Labels"]["capsuled.project"] == pa

        # Same project: by capsule name, by uuid, and the bare container by its name.
        probe_a2 = next(c["Id"] for c in docker_api.containers(filters={"label": [
            f"capsuled.capsule={a2['uuid']}", "capsuled.name=probe"]}))
        assert wait_for(lambda: fetch(docker_api, probe_a2, a1_name)[0] == 0, timeout=15,
                        what="a2 to fetch a1's page")
        assert fetch(docker_api, probe_a2, a1_name) == (0, "hello-from-a1\n")
        assert fetch(docker_api, probe_a2, a1["uuid"]) == (0, "hello-from-a1\n")
        assert fetch(docker_api, probe_a2, web_name) == (0, "hello-from-bare\n")

        # Another project: the names do not resolve and the address is unreachable. The
        # same nc from a2 is the control that the probe itself works.
        probe_b1 = next(c["Id"] for c in docker_api.containers(filters={"label": [
            f"capsuled.capsule={b1['uuid']}", "capsuled.name=probe"]}))
        ip = sandbox_ip(docker_api, a1["uuid"], net_a["Name"])
        code, out = fetch(docker_api, probe_b1, a1_name)
        assert code != 0 and "bad address" in out, (code, out)
        code, out = run(docker_api, probe_b1, f"nslookup {a1_name}")
        assert code != 0, out
        code, out = fetch(docker_api, probe_b1, web_name)
        assert code != 0 and "bad address" in out, (code, out)
        code, out = fetch(docker_api, probe_b1, ip)
        assert code != 0 and "hello" not in out, (code, out)
        nc = f"timeout 3 nc -w 2 {ip} 8080 </dev/null"
        assert run(docker_api, probe_a2, nc)[0] == 0
        code, out = run(docker_api, probe_b1, nc)
        assert code != 0, (code, out)
    finally:
        bare_a.cleanup()
        caps_a.cleanup()
        caps_b.cleanup()
        a.close()
        b.close()
    # Nothing of either project is left on the host: both networks go (relist every 2s).
    wait_for(lambda: not project_networks(docker_api, instance, pa)
             and not project_networks(docker_api, instance, pb),
             timeout=20, what="the projects' networks to be removed")


def test_unused_network_is_removed_and_made_again(server: Server, docker_api: docker.APIClient,
                                                  unique) -> None:
    pc = unique("net-c")
    instance = server.instance
    with server.client(server.issue_token(pc, "carol", "member")) as c:
        caps = Capsules(c)
        try:
            first = caps.create(template(unique("c1"), [sleeper("app")]))
            second = caps.create(template(unique("c2"), [sleeper("app")]))
            caps.wait_status(first["uuid"], "Running")
            caps.wait_status(second["uuid"], "Running")
            net = the_network(docker_api, instance, pc)

            # One capsule left: the network stays.
            assert c.delete(f"/v1/capsules/{first['uuid']}").status_code == 204
            caps.wait_gone(first["uuid"])
            wait_for(lambda: set(docker_api.inspect_network(net["Id"])["Containers"])
                     == {sandbox(docker_api, second["uuid"])["Id"]}, what="c1 to leave the network")
            time.sleep(5)  # more than two GC passes (relist every 2s) with it still in use
            assert the_network(docker_api, instance, pc)["Id"] == net["Id"]

            # None left: it goes within the GC period.
            assert c.delete(f"/v1/capsules/{second['uuid']}").status_code == 204
            caps.wait_gone(second["uuid"])
            wait_for(lambda: not project_networks(docker_api, instance, pc), timeout=20,
                     what="the unused network to be removed")

            # A new capsule of the project gets a new network (the agent forgot the old one).
            third = caps.create(template(unique("c3"), [sleeper("app")]))
            caps.wait_status(third["uuid"], "Running")
            again = the_network(docker_api, instance, pc)
            assert again["Id"] != net["Id"]
            assert list(again["Containers"]) == [sandbox(docker_api, third["uuid"])["Id"]]
        finally:
            caps.cleanup()
    wait_for(lambda: not project_networks(docker_api, instance, pc), timeout=20,
             what="the network to be removed at the end")


def test_network_removed_behind_the_agents_back_is_made_again(
        own_server: Callable[..., Server], docker_api: docker.APIClient, unique) -> None:
    # No GC during the test (relist every 600s): only the 404 on create can notice.
    srv = own_server(CAPSULED_AGENT__RELIST_INTERVAL="600")
    with srv.client() as api:
        caps = Capsules(api)
        first = caps.create(template(unique("d1"), [sleeper("app")]))
        caps.wait_status(first["uuid"], "Running")
        net = the_network(docker_api, srv.instance, "admin")
        assert api.delete(f"/v1/capsules/{first['uuid']}").status_code == 204
        caps.wait_gone(first["uuid"])
        docker_api.remove_network(net["Id"])  # the agent still has it cached

        second = caps.create(template(unique("d2"), [sleeper("app")]))
        caps.wait_status(second["uuid"], "Running", timeout=30)
        again = the_network(docker_api, srv.instance, "admin")
        assert again["Id"] != net["Id"]
        assert sandbox(docker_api, second["uuid"])["HostConfig"]["NetworkMode"] == again["Name"]
        assert caps.get(second["uuid"])["restart_count"] == 0


def test_kill_9_and_restart_converge_without_duplicate_networks(
        own_server: Callable[..., Server], docker_api: docker.APIClient, unique) -> None:
    srv = own_server()
    instance = srv.instance
    pa, pb = unique("net-a"), unique("net-b")
    tokens = {pa: srv.issue_token(pa, "alice", "member"), pb: srv.issue_token(pb, "bob", "member")}
    made: dict[str, list[str]] = {pa: [], pb: []}
    for project, token in tokens.items():
        with srv.client(token) as api:
            for i in range(3):
                r = api.post("/v1/capsules", json={"template": template(
                    unique(f"k{i}"), [sleeper("app")])})
                assert r.status_code == 202, r.text
                made[project].append(r.json()["uuid"])
    with srv.client(tokens[pa]) as api:
        bare_name = unique("kbare")
        r = api.post("/v1/containers", params={"run": "true"},
                     json={"image": "busybox", "name": bare_name, "command": ["sleep", "3600"]})
        assert r.status_code == 202, r.text
        bare = r.json()["uuid"]
    srv.stop(signal.SIGKILL)  # mid-creation: some networks and sandboxes exist, some not
    srv.start()

    def all_running() -> bool:
        for project, token in tokens.items():
            with srv.client(token) as api:
                if any(api.get(f"/v1/capsules/{u}").json()["status"] != "Running"
                       for u in made[project]):
                    return False
        return True
    wait_for(all_running, timeout=60, what="every capsule running after the restart")
    with srv.client(tokens[pa]) as api:
        Bare(api).wait_running(bare)
    bare_cid = bare_id(docker_api, bare)
    for project in (pa, pb):
        net = the_network(docker_api, instance, project)  # exactly one each
        assert set(net["Containers"]) == {sandbox(docker_api, u)["Id"] for u in made[project]} | (
            {bare_cid} if project == pa else set())
    assert len(project_networks(docker_api, instance)) == 2

    # A sandbox and a bare container made before project networks (on the default bridge)
    # join their project's network in place when a restarted agent adopts them.
    old = made[pa][0]
    net_a = the_network(docker_api, instance, pa)
    sb = sandbox(docker_api, old)
    for cid in (sb["Id"], bare_cid):
        docker_api.disconnect_container_from_network(cid, net_a["Id"])
        docker_api.connect_container_to_network(cid, "bridge")
    assert srv.stop(signal.SIGTERM) == 0
    srv.start()
    for cid in (sb["Id"], bare_cid):
        wait_for(lambda cid=cid: list(docker_api.inspect_container(cid)["NetworkSettings"]["Networks"])
                 == [net_a["Name"]], timeout=30, what="an old container to join its project network")
    assert len(project_networks(docker_api, instance)) == 2
    probe = next(c["Id"] for c in docker_api.containers(filters={"label": [
        f"capsuled.capsule={made[pa][1]}", "capsuled.name=app"]}))
    with srv.client(tokens[pa]) as api:
        name = api.get(f"/v1/capsules/{old}").json()["name"]
    assert run(docker_api, probe, f"nslookup {name}")[0] == 0
    assert run(docker_api, probe, f"nslookup {bare_name}")[0] == 0


def test_more_projects_than_dockers_default_pools_hold(server: Server, docker_api: docker.APIClient,
                                                       unique) -> None:
    """Docker's default address pools hold ~30 networks; project networks take their subnets
    from capsuled's own pool, so a host with those pools used up still runs new projects."""
    fill = f"capsuled.test={unique('pool-fill')}"
    made: list[str] = []
    try:
        for i in range(40):
            try:
                made.append(docker_api.create_network(unique(f"fill{i}"), driver="bridge",
                                                      labels=dict([fill.split("=")]))["Id"])
            except docker.errors.APIError as exc:
                assert "available" in str(exc), exc  # "could not find an available … pool"
                break
        else:
            pytest.fail("Docker's default pools did not run out after 40 networks")
        project = unique("pool")
        with server.client(server.issue_token(project, "dave", "member")) as api:
            r = api.post("/v1/capsules", json={"template": template(unique("p"), [sleeper("app")])})
            assert r.status_code == 202, r.text
            caps = Capsules(api)
            caps.created.append(r.json()["uuid"])
            try:
                caps.wait_status(r.json()["uuid"], "Running", timeout=60)
                net = the_network(docker_api, server.instance, project)
                (cfg,) = net["IPAM"]["Config"]
                assert ipaddress.ip_network(cfg["Subnet"]).subnet_of(
                    ipaddress.ip_network("10.208.0.0/12")), cfg
                assert ipaddress.ip_network(cfg["Subnet"]).prefixlen == 22
                ip = sandbox_ip(docker_api, r.json()["uuid"], net["Name"])
                assert ipaddress.ip_address(ip) in ipaddress.ip_network(cfg["Subnet"]), ip
            finally:
                caps.cleanup()
    finally:
        for nid in made:
            docker_api.remove_network(nid)
