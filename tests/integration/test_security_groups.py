"""Security groups on the real Docker Engine and the host's kernel, proven with real
traffic: a capsule serving HTTP on two ports, a client capsule of its project. By default
both ports answer; in a group that allows one port from the project, that port answers and
the other times out; a rule change reaches the running capsule; another project reaches
nothing. Rules stay enforced while capsuled is killed -9, and a restarted capsuled finds
them as it left them and removes those of units that went meanwhile."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import httpx
import pytest
from capsuled.drivers.firewall.iptables import Commands, Names, Table
from conftest import Capsules, Server, exec_in, member, sleeper, template, wait_for

pytestmark = pytest.mark.docker

SERVE = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www"


def httpd(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "image": "busybox",
            "command": ["sh", "-c", SERVE.format(text=f"{name}-{port}", port=port)]}


def address(body: dict[str, Any]) -> str:
    (ports,) = body["addresses"].values()
    return str(ports[0]["addr"])


def reach(docker_api: docker.APIClient, client_id: str, ip: str, port: int) -> tuple[bool, float]:
    """(answered, seconds): an HTTP request with nc's 2-second timeout."""
    started = time.monotonic()
    code, out = exec_in(docker_api, client_id, "sh", "-c",
                        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port}")
    return code == 0 and "200 OK" in out, time.monotonic() - started


def answers(docker_api: docker.APIClient, client_id: str, ip: str, port: int) -> bool:
    return reach(docker_api, client_id, ip, port)[0]


def times_out(docker_api: docker.APIClient, client_id: str, ip: str, port: int) -> bool:
    ok, took = reach(docker_api, client_id, ip, port)
    return not ok and took >= 1.5  # dropped, not refused: the client waits it out


def our_chains(instance: str) -> dict[str, list[str]]:
    names = Names.of(instance)
    chains = Table.parse(Commands().save()).chains
    return {c: r for c, r in chains.items()
            if c == names.dispatch or c.startswith(names.unit_prefix)}


@pytest.fixture()
def tenant(server: Server, unique: Callable[[str], str]) -> Iterator[httpx.Client]:
    with server.client(server.issue_token(unique("sg"), "alice", "member")) as c:
        yield c


def test_a_group_lets_one_port_through_and_drops_the_other(
        server: Server, tenant: httpx.Client, docker_api: docker.APIClient,
        unique: Callable[[str], str]) -> None:
    capsules = Capsules(tenant)
    try:
        r = tenant.post("/v1/security_groups", json={"name": "web-a", "rules": [
            {"protocol": "tcp", "port_range_min": 8080, "port_range_max": 8080,
             "remote_group": "default"}]})
        assert r.status_code == 201, r.text
        open_srv = capsules.create(template(unique("open"), [httpd("a", 8080), httpd("b", 9090)]))
        srv = capsules.create(template(unique("srv"), [httpd("a", 8080), httpd("b", 9090)],
                                       securityGroups=["web-a"]))
        cli = capsules.create(template(unique("cli"), [sleeper("c")]))
        for c in (open_srv, srv, cli):
            capsules.wait_status(c["uuid"], "Running")
        assert capsules.get(srv["uuid"])["security_groups"] == ["web-a"]
        client = member(docker_api, cli["uuid"], "c")["Id"]
        open_ip, ip = address(capsules.get(open_srv["uuid"])), address(capsules.get(srv["uuid"]))

        # The default group: the project reaches both ports.
        assert answers(docker_api, client, open_ip, 8080) and answers(docker_api, client, open_ip, 9090)
        # web-a: 8080 from the project, nothing else.
        assert answers(docker_api, client, ip, 8080)
        assert times_out(docker_api, client, ip, 9090)
        dispatch = our_chains(server.instance)[Names.of(server.instance).dispatch]
        assert any(rule.startswith(f"-d {ip}/32 ") for rule in dispatch)

        # Rules change under the running capsule: any protocol from the project restores.
        r = tenant.patch("/v1/security_groups/web-a", json={"rules": [
            {"protocol": "any", "remote_group": "default"}]})
        assert r.status_code == 200, r.text
        wait_for(lambda: answers(docker_api, client, ip, 9090), timeout=15, what="9090 open")
        # No rules at all: nothing reaches it any more.
        assert tenant.patch("/v1/security_groups/web-a", json={"rules": []}).status_code == 200
        wait_for(lambda: not answers(docker_api, client, ip, 8080), timeout=15, what="8080 closed")
        assert times_out(docker_api, client, ip, 8080)

        # Another project's capsule reaches neither server (its network is not theirs).
        with server.client(server.issue_token(unique("sg-other"), "mallory", "member")) as other:
            theirs = Capsules(other)
            try:
                mal = theirs.create(template(unique("mal"), [sleeper("m")]))
                theirs.wait_status(mal["uuid"], "Running")
                intruder = member(docker_api, mal["uuid"], "m")["Id"]
                assert not answers(docker_api, intruder, open_ip, 8080)
                assert not answers(docker_api, intruder, ip, 8080)
            finally:
                theirs.cleanup()
    finally:
        capsules.cleanup()
        tenant.delete("/v1/security_groups/web-a")
    # Their rules went with them.
    wait_for(lambda: not any(rule.startswith((f"-d {ip}/32 ", f"-d {open_ip}/32 "))
                             for rule in our_chains(server.instance).get(
                                 Names.of(server.instance).dispatch, [])),
             timeout=30, what="the deleted capsules' rules removed")


def test_rules_outlive_a_kill_and_a_restart_finds_them_as_it_left_them(
        own_server: Callable[..., Server], docker_api: docker.APIClient,
        unique: Callable[[str], str]) -> None:
    srv_proc = own_server()
    with srv_proc.client(srv_proc.issue_token(unique("sg"), "alice", "member")) as api:
        capsules = Capsules(api)
        assert api.post("/v1/security_groups", json={"name": "web-a", "rules": [
            {"protocol": "tcp", "port_range_min": 8080, "remote_group": "default"}]}).status_code == 201
        srv = capsules.create(template(unique("srv"), [httpd("a", 8080), httpd("b", 9090)],
                                       securityGroups=["web-a"]))
        cli = capsules.create(template(unique("cli"), [sleeper("c")]))
        for c in (srv, cli):
            capsules.wait_status(c["uuid"], "Running")
        ip = address(capsules.get(srv["uuid"]))
    client = member(docker_api, cli["uuid"], "c")["Id"]
    assert answers(docker_api, client, ip, 8080) and times_out(docker_api, client, ip, 9090)
    instance = srv_proc.instance
    names = Names.of(instance)
    before = our_chains(instance)

    srv_proc.stop(signal.SIGKILL)
    assert times_out(docker_api, client, ip, 9090)  # still enforced with nobody watching
    # While it is down: a unit's leftovers (a capsule that went meanwhile).
    stale = f"{names.unit_prefix}deadbeef00"
    Commands().restore(f"*filter\n:{stale} - [0:0]\n-A {stale} -j DROP\n"
                       f"-A {names.dispatch} -d 10.255.255.9/32 -m comment --comment sg:00 "
                       f"-g {stale}\nCOMMIT\n")
    srv_proc.start()
    wait_for(lambda: stale not in our_chains(instance), timeout=30, what="the leftover removed")
    after = our_chains(instance)
    assert after == before  # the running capsules' rules, untouched
    jumps = Table.parse(Commands().save()).chains["DOCKER-USER"]
    assert jumps.count(f"-j {names.dispatch}") == 1
    assert answers(docker_api, client, ip, 8080) and times_out(docker_api, client, ip, 9090)
    with srv_proc.client(srv_proc.issue_token("cleanup", "admin", "admin")) as admin:
        for c in (srv, cli):
            admin.delete(f"/v1/capsules/{c['uuid']}")
