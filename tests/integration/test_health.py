"""Health checks on the real Docker Engine: a capsule container's livenessProbe and a bare
container's Zun healthcheck become Docker HEALTHCHECKs; a failing one is restarted by the
agent (livenessProbe; healthcheck with auto_heal) or shown (healthcheck alone)."""

from __future__ import annotations

from typing import Any

import docker
import httpx
import pytest
from conftest import Capsules, exec_in, member, template, wait_for

pytestmark = pytest.mark.docker

ALIVE = "touch /tmp/alive; exec sleep 3600"


def _started(docker_api: docker.APIClient, container_id: str) -> str:
    return str(docker_api.inspect_container(container_id)["State"]["StartedAt"])


def test_a_failing_liveness_probe_restarts_the_container(capsules: Capsules,
                                                         docker_api: docker.APIClient, unique) -> None:
    app = {"name": "app", "image": "busybox", "command": ["sh", "-c", ALIVE],
           "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 1,
                             "failureThreshold": 2}}
    body = capsules.create(template(unique("live"), [app]))
    capsules.wait_status(body["uuid"], "Running")
    c = member(docker_api, body["uuid"], "app")
    hc = c["Config"]["Healthcheck"]
    assert hc["Test"] == ["CMD", "cat", "/tmp/alive"] and hc["Retries"] == 2
    assert hc["Interval"] == 1_000_000_000
    wait_for(lambda: docker_api.inspect_container(c["Id"])["State"]["Health"]["Status"] == "healthy",
             timeout=20, what="the probe to pass")
    before = _started(docker_api, c["Id"])
    assert exec_in(docker_api, c["Id"], "rm", "/tmp/alive")[0] == 0
    wait_for(lambda: _started(docker_api, c["Id"]) != before, timeout=30,
             what="the agent to restart the unhealthy container")
    wait_for(lambda: any(e["reason"] == "Unhealthy" and e["container"] == "app" for e in
                         capsules.api.get(f"/v1/capsules/{body['uuid']}/events").json()["events"]),
             timeout=10, what="an Unhealthy event naming the container")
    wait_for(lambda: docker_api.inspect_container(c["Id"])["State"]["Health"]["Status"] == "healthy",
             timeout=20, what="healthy again after the restart")
    assert capsules.get(body["uuid"])["status"] == "Running"


def _bare(api: httpx.Client, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/containers", params={"run": "true"},
                 json={"image": "busybox", "command": ["sh", "-c", ALIVE], **body})
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def _docker_id(docker_api: docker.APIClient, uuid: str) -> str:
    (found,) = docker_api.containers(all=True, filters={"label": [f"capsuled.container={uuid}"]})
    return str(found["Id"])


def test_zun_healthcheck_shows_health_and_auto_heal_restarts(api: httpx.Client,
                                                             docker_api: docker.APIClient,
                                                             unique) -> None:
    check = {"cmd": "cat /tmp/alive", "interval": 1, "retries": 2, "timeout": 1}
    watched = _bare(api, name=unique("hc"), healthcheck=check)
    healed = _bare(api, name=unique("heal"), healthcheck=check, auto_heal=True)
    try:
        for c in (watched, healed):
            wait_for(lambda c=c: api.get(f"/v1/containers/{c['uuid']}").json()["status"] == "Running",
                     timeout=30, what="running")
        shown = api.get(f"/v1/containers/{healed['uuid']}").json()
        assert shown["healthcheck"] == check and shown["auto_heal"] is True
        ids = {c["uuid"]: _docker_id(docker_api, c["uuid"]) for c in (watched, healed)}
        for cid in ids.values():
            wait_for(lambda cid=cid: docker_api.inspect_container(cid)["State"]["Health"]["Status"]
                     == "healthy", timeout=20, what="healthy")
        before = {u: _started(docker_api, cid) for u, cid in ids.items()}
        for cid in ids.values():
            exec_in(docker_api, cid, "rm", "/tmp/alive")
        # Without auto_heal: left alone, and the API says why it is not well.
        wait_for(lambda: api.get(f"/v1/containers/{watched['uuid']}").json()["status_reason"]
                 == "unhealthy: its health check fails", timeout=30, what="unhealthy shown")
        assert _started(docker_api, ids[watched["uuid"]]) == before[watched["uuid"]]
        # With auto_heal: restarted.
        wait_for(lambda: _started(docker_api, ids[healed["uuid"]]) != before[healed["uuid"]],
                 timeout=30, what="auto_heal restart")
    finally:
        for c in (watched, healed):
            api.delete(f"/v1/containers/{c['uuid']}", params={"force": "true"})


@pytest.mark.parametrize(("check", "problem"), [
    ({"interval": 1}, "healthcheck.cmd: is required"),
    ({"cmd": "true", "retries": 0}, "healthcheck.retries: must be a whole number from 1 to 1000"),
    ({"cmd": "true", "every": 5}, "healthcheck.every: unknown field"),
])
def test_bad_healthcheck_is_400_naming_the_field(api: httpx.Client, check: dict[str, Any],
                                                 problem: str) -> None:
    r = api.post("/v1/containers", json={"image": "busybox", "healthcheck": check})
    assert r.status_code == 400 and problem in r.text, r.text
