"""Published host ports on the real Docker Engine: a template's hostPort is reachable from
this (the host's) process through the capsule's sandbox; a second capsule asking for the
same port on this one-host deployment fails with a reason that says which port and
whose, until the first is deleted; a port some other program holds fails the capsule with
a reason naming it; and the privileged ports are the operator's."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import docker
import httpx
import pytest
from conftest import Capsules, Server, free_port, sandbox, template, wait_for

pytestmark = [pytest.mark.docker]

PAGE = "hello from a published port"


def httpd(port: int) -> dict[str, Any]:
    """busybox httpd on container port 8080, published on host `port`."""
    return {"name": "httpd", "image": "busybox",
            "command": ["sh", "-c", f"mkdir -p /www && echo '{PAGE}' > /www/index.html && "
                                    "exec httpd -f -p 8080 -h /www"],
            "ports": [{"containerPort": 8080, "hostPort": port, "name": "http"}]}


def fetch(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return str(r.read().decode().strip())
    except OSError:
        return None


def test_a_host_port_reaches_the_capsule_and_is_the_capsules_alone(
        capsules: Capsules, docker_api: docker.APIClient, unique: Any) -> None:
    port = free_port()
    first = capsules.create(template(unique("pub"), [httpd(port)]))
    body = capsules.wait_status(first["uuid"], "Running")
    (web,) = body["containers"]
    assert web["ports"] == [8080]  # Zun's shape, unchanged
    assert web["published_ports"] == [{"container_port": 8080, "protocol": "TCP", "host_port": port}]
    # The sandbox holds the binding (members share its network namespace).
    sb = sandbox(docker_api, first["uuid"])
    assert sb["HostConfig"]["PortBindings"] == {"8080/tcp": [{"HostIp": "0.0.0.0",
                                                               "HostPort": str(port)}]}
    assert sb["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"] == str(port)
    assert wait_for(lambda: fetch(port), timeout=15, what="the page through the host port") == PAGE

    # One host: a second capsule asking for that port has nowhere to go, and says why.
    second = capsules.create(template(unique("pub2"), [httpd(port)]))
    assert second["status"] == "Error"
    assert second["status_reason"] == ("There are not enough hosts available. (no host has TCP "
                                       f"port {port} free: used by your capsule {body['name']})")
    # The claim goes with the capsule.
    capsules.api.delete(f"/v1/capsules/{first['uuid']}")
    capsules.wait_gone(first["uuid"])
    third = capsules.create(template(unique("pub3"), [httpd(port)]))
    capsules.wait_status(third["uuid"], "Running")
    assert wait_for(lambda: fetch(port), timeout=15, what="the page again") == PAGE


def test_a_port_another_program_holds_fails_the_capsule_with_a_reason(
        capsules: Capsules, unique: Any) -> None:
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        made = capsules.create(template(unique("taken"), [httpd(port)]))
        body = capsules.wait_status(made["uuid"], "Error", timeout=30)
    assert f"cannot publish TCP port {port} on the host: something else there already uses it" \
        in body["status_reason"]


def test_privileged_host_ports_are_for_administrators(server: Server, unique: Any) -> None:
    token = server.issue_token(unique("proj"), "alice", "member")
    with server.client(token) as api:
        r = api.post("/v1/capsules", json={"template": template(unique("low"), [httpd(80)])})
    assert r.status_code == 403, r.text
    assert "spec.containers[0].ports[0].hostPort (80 is below 1024)" in r.json()["errors"][0]["detail"]
    with server.client(token) as api:
        clash = api.post("/v1/capsules", json={"template": template(unique("dup"), [
            httpd(20000), {**httpd(20000), "name": "second"}])})
    assert clash.status_code == 400
    assert ("spec.containers[1].ports[0].hostPort: TCP host port 20000 is already published by "
            "spec.containers[0].ports[0]") in clash.json()["errors"][0]["detail"]


def test_exposed_ports_below_their_microversion_are_refused(api: httpx.Client) -> None:
    r = api.post("/v1/containers", headers={"OpenStack-API-Version": "container 1.23"},
                 json={"image": "busybox", "exposed_ports": {"80/tcp": {}}})
    assert r.status_code == 400
    assert "exposed_ports: needs microversion 1.24 or later" in r.json()["errors"][0]["detail"]
