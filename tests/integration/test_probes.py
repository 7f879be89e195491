"""Probes on the real Docker Engine: httpGet against busybox httpd, tcpSocket against a
looped `nc -l`, exec; readiness flips the ready condition without a restart, liveness
failures kill the container and Docker's restart policy counts the restart; a probe cannot
reach another project's capsule (HTTP/TCP probes run in the capsule's own network
namespace, against 127.0.0.1, and a `host` is refused)."""

from __future__ import annotations

from typing import Any

import docker
import httpx
import pytest
from conftest import Capsules, Server, exec_in, member, sandbox, template, wait_for

pytestmark = pytest.mark.docker

HTTPD = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"
# A TCP listener that stops (and so fails its probes) once /tmp/stop exists; a restart
# clears the marker, so the container is healthy again after the prober kills it.
NC = ("rm -f /tmp/stop; while [ ! -e /tmp/stop ]; do nc -l -p {port} </dev/null; done; "
      "exec sleep 3600")


def _app(capsule: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in capsule["containers"] if c["name"] == name)


def test_http_readiness_flips_ready_without_a_restart(capsules: Capsules,
                                                      docker_api: docker.APIClient, unique) -> None:
    web = {"name": "web", "image": "busybox", "command": ["sh", "-c", HTTPD],
           "ports": [{"containerPort": 8080, "name": "http"}],
           "readinessProbe": {"httpGet": {"port": "http", "path": "/index.html",
                                          "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                              "periodSeconds": 1, "failureThreshold": 1}}
    body = capsules.create(template(unique("ready"), [web, {"name": "idle", "image": "busybox",
                                                            "command": ["sleep", "3600"]}]))
    uuid = body["uuid"]
    capsules.wait_status(uuid, "Running")
    wait_for(lambda: capsules.get(uuid)["ready"] == "2/2", timeout=20, what="2/2 ready")
    got = capsules.get(uuid)
    assert got["all_ready"] is True and got["health"] == "healthy"
    assert _app(got, "web")["ready"] is True
    assert _app(got, "web")["probe"]["readiness"]["result"] == "success"
    c = member(docker_api, uuid, "web")
    assert exec_in(docker_api, c["Id"], "rm", "/www/index.html")[0] == 0
    wait_for(lambda: capsules.get(uuid)["ready"] == "1/2", timeout=15, what="web not ready")
    got = capsules.get(uuid)
    web_now = _app(got, "web")
    assert got["all_ready"] is False and web_now["ready"] is False
    assert "404" in web_now["probe"]["readiness"]["last_failure"]
    assert got["status"] == "Running" and got["health"] == "healthy"  # readiness is not health
    assert exec_in(docker_api, c["Id"], "sh", "-c", "echo ok > /www/index.html")[0] == 0
    wait_for(lambda: capsules.get(uuid)["ready"] == "2/2", timeout=15, what="ready again")
    after = docker_api.inspect_container(c["Id"])  # never restarted for readiness
    assert after["State"]["StartedAt"] == c["State"]["StartedAt"] and after["RestartCount"] == 0


def test_tcp_liveness_failure_kills_and_docker_restarts_it(capsules: Capsules,
                                                           docker_api: docker.APIClient,
                                                           unique) -> None:
    app = {"name": "nc", "image": "busybox", "command": ["sh", "-c", NC.format(port=7001)],
           "livenessProbe": {"tcpSocket": {"port": 7001}, "periodSeconds": 1,
                             "failureThreshold": 2}}
    body = capsules.create(template(unique("live"), [app]))
    uuid = body["uuid"]
    capsules.wait_status(uuid, "Running")
    wait_for(lambda: _app(capsules.get(uuid), "nc")["probe"].get("liveness", {}).get("result")
             == "success", timeout=20, what="the liveness probe to pass")
    c = member(docker_api, uuid, "nc")
    exec_in(docker_api, c["Id"], "touch", "/tmp/stop")
    wait_for(lambda: docker_api.inspect_container(c["Id"])["RestartCount"] >= 1, timeout=30,
             what="Docker to restart the killed container")
    wait_for(lambda: _app(capsules.get(uuid), "nc")["restart_count"] >= 1, timeout=15,
             what="the restart count in the API")
    wait_for(lambda: any(e["reason"] == "Unhealthy" and e["container"] == "nc"
                         and "liveness probe 2 times" in e["message"] for e in
                         capsules.api.get(f"/v1/capsules/{uuid}/events").json()["events"]),
             timeout=10, what="an Unhealthy event naming the container")
    wait_for(lambda: _app(capsules.get(uuid), "nc")["probe"].get("liveness", {}).get("result")
             == "success", timeout=20, what="alive again after the restart")
    assert capsules.get(uuid)["health"] == "healthy"


def test_exec_startup_probe_gates_readiness(capsules: Capsules, unique) -> None:
    app = {"name": "slow", "image": "busybox",
           "command": ["sh", "-c", "sleep 3; touch /tmp/started; exec sleep 3600"],
           "startupProbe": {"exec": {"command": ["cat", "/tmp/started"]}, "periodSeconds": 1,
                            "failureThreshold": 30},
           "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}
    body = capsules.create(template(unique("start"), [app]))
    uuid = body["uuid"]
    capsules.wait_status(uuid, "Running")
    early = _app(capsules.get(uuid), "slow")
    assert early["ready"] is False
    assert "readiness" not in early["probe"] or early["probe"]["readiness"]["result"] == "unknown"
    wait_for(lambda: capsules.get(uuid)["ready"] == "1/1", timeout=20, what="started and ready")
    probes = _app(capsules.get(uuid), "slow")["probe"]
    assert probes["startup"]["result"] == "success" and probes["readiness"]["result"] == "success"


def test_a_probe_cannot_reach_another_projects_capsule(server: Server, unique) -> None:
    pa, pb = unique("proj-a"), unique("proj-b")
    a = Capsules(server.client(server.issue_token(pa, "alice", "member")))
    b = Capsules(server.client(server.issue_token(pb, "bob", "member")))
    try:
        # Naming an address is refused outright.
        for kind in ("httpGet", "tcpSocket"):
            r = b.api.post("/v1/capsules", json={"template": template(unique("aim"), [{
                "name": "x", "image": "busybox", "command": ["sleep", "3600"],
                "readinessProbe": {kind: {"port": 7002, "host": "10.208.0.2"}}}])})
            assert r.status_code == 400, r.text
            assert f"readinessProbe.{kind}.host" in r.json()["errors"][0]["detail"]
        # A's capsule listens on 7002; B's probe of port 7002 sees only B's own namespace.
        target = a.create(template(unique("target"), [{
            "name": "nc", "image": "busybox", "command": ["sh", "-c", NC.format(port=7002)],
            "readinessProbe": {"tcpSocket": {"port": 7002}, "periodSeconds": 1}}]))
        prober = b.create(template(unique("prober"), [{
            "name": "p", "image": "busybox", "command": ["sleep", "3600"],
            "readinessProbe": {"tcpSocket": {"port": 7002}, "periodSeconds": 1,
                               "failureThreshold": 1}}]))
        wait_for(lambda: a.get(target["uuid"])["ready"] == "1/1", timeout=30,
                 what="the target capsule to be ready (its own probe reaches it)")
        wait_for(lambda: _app(b.get(prober["uuid"]), "p")["probe"].get("readiness", {})
                 .get("result") == "failure", timeout=20, what="the other project's probe to fail")
        got = b.get(prober["uuid"])
        assert got["ready"] == "0/1"
        assert "refused" in _app(got, "p")["probe"]["readiness"]["last_failure"].lower()
    finally:
        a.cleanup()
        b.cleanup()
        a.api.close()
        b.api.close()




@pytest.mark.parametrize("kind", ["exec", "tcp"])
def test_failure_policy_restart_capsule_recreates_the_sandbox(capsules: Capsules,
                                                              docker_api: docker.APIClient,
                                                              unique, kind: str) -> None:
    """exec liveness is Docker's health check (the plan remakes the capsule); tcp is the
    prober's (it ends the sandbox, and the plan remakes the capsule)."""
    probe: dict[str, Any] = ({"exec": {"command": ["cat", "/tmp/alive"]}} if kind == "exec"
                             else {"tcpSocket": {"port": 7003}})
    command = ("touch /tmp/alive; exec sleep 3600" if kind == "exec" else NC.format(port=7003))
    app = {"name": "app", "image": "busybox", "command": ["sh", "-c", command],
           "livenessProbe": {**probe, "periodSeconds": 1, "failureThreshold": 1}}
    body = capsules.create(template(unique("whole"), [app], failurePolicy="RestartCapsule"))
    uuid = body["uuid"]
    capsules.wait_status(uuid, "Running")
    wait_for(lambda: capsules.get(uuid)["health"] == "healthy", timeout=20, what="healthy")
    seen: dict[str, Any] = {}

    def break_it() -> bool:
        # On a loaded machine the probe may catch nc between two connections and the
        # capsule be remade already: break whichever app container is running now.
        try:
            seen["sandbox"] = sandbox(docker_api, uuid)["Id"]
            seen["app"] = member(docker_api, uuid, "app")
            cmd = ["rm", "/tmp/alive"] if kind == "exec" else ["touch", "/tmp/stop"]
            return exec_in(docker_api, seen["app"]["Id"], *cmd)[0] == 0
        except (docker.errors.APIError, AssertionError):
            return False
    wait_for(break_it, timeout=30, what="the app container to be broken on purpose")
    old_sandbox, c = seen["sandbox"], seen["app"]
    wait_for(lambda: capsules.get(uuid)["restart_count"] >= 1, timeout=30,
             what="the capsule to be recreated")
    def new_sandbox() -> bool:
        found = docker_api.containers(all=True, filters={"label": [
            f"capsuled.capsule={uuid}", "capsuled.role=sandbox"]})
        # Mid-recreation there may be none for a moment.
        return len(found) == 1 and found[0]["Id"] != old_sandbox
    wait_for(new_sandbox, timeout=15, what="a new sandbox")
    wait_for(lambda: any(e["reason"] == "SandboxRecreated" for e in
                         capsules.api.get(f"/v1/capsules/{uuid}/events").json()["events"]),
             timeout=10, what="a SandboxRecreated event")
    capsules.wait_status(uuid, "Running")
    wait_for(lambda: capsules.get(uuid)["health"] == "healthy", timeout=20, what="healthy again")
    assert member(docker_api, uuid, "app")["Id"] != c["Id"]


def test_bare_containers_show_the_same_conditions(api: httpx.Client, unique) -> None:
    r = api.post("/v1/containers", params={"run": "true"}, json={
        "image": "busybox", "name": unique("bare"), "command": ["sh", "-c", "touch /tmp/alive; exec sleep 3600"],
        "healthcheck": {"cmd": "cat /tmp/alive", "interval": 1, "retries": 1, "timeout": 1}})
    assert r.status_code == 202, r.text
    uuid = r.json()["uuid"]
    try:
        wait_for(lambda: api.get(f"/v1/containers/{uuid}").json()["health"] == "healthy",
                 timeout=30, what="healthy")
        assert api.get(f"/v1/containers/{uuid}").json()["ready"] is True
        assert api.post(f"/v1/containers/{uuid}/execute", params={"run": "true"},
                        json={"command": "rm /tmp/alive"}).status_code == 200
        wait_for(lambda: api.get(f"/v1/containers/{uuid}").json()["health"] == "unhealthy",
                 timeout=30, what="unhealthy")
        assert api.get(f"/v1/containers/{uuid}").json()["ready"] is False
    finally:
        api.delete(f"/v1/containers/{uuid}", params={"force": "true"})
