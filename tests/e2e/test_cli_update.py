"""`capsule update / rollback / history` as a user runs them, against a real server and
engine: a quick image change waited for, the history, an update that fails its readiness
and is rolled back by the server (exit 1, saying so), and a rollback by hand."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from conftest import Server, member, sleeper, template, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

HTTPD = "mkdir -p /www && echo {v} > /www/index.html && exec httpd -f -p 8080 -h /www"


@pytest.fixture()
def cleanup(server: Server) -> Iterator[list[str]]:
    """Deleted at the end, and waited for: the shared server's CPU is for later tests."""
    names: list[str] = []
    yield names
    with server.client() as api:
        for n in names:
            api.delete(f"/v1/capsules/{n}")
        for n in names:
            wait_for(lambda: api.get(f"/v1/capsules/{n}").status_code == 404, timeout=60,
                     what=f"{n} gone")


def web(version: str, path: str = "/index.html") -> dict[str, Any]:
    return {"name": "web", "image": "busybox", "command": ["sh", "-c", HTTPD.format(v=version)],
            "readinessProbe": {"httpGet": {"port": 8080, "path": path}, "periodSeconds": 1,
                               "failureThreshold": 1}}


def test_update_history_failed_update_and_rollback(server: Server, docker_api: docker.APIClient,
                                                   unique: Callable[[str], str], tmp_path: Path,
                                                   cleanup: list[str]) -> None:
    name = unique("cliupd")
    cleanup.append(name)
    path = tmp_path / "v1.yaml"
    path.write_text(yaml.safe_dump(template(name, [web("v1"), sleeper("side")],
                                            progressDeadlineSeconds=8)))
    assert server.cli("create", "-f", str(path), "--wait").returncode == 0
    side = member(docker_api, server_uuid(server, name), "side")["Id"]

    done = server.cli("update", name, "--env", "web", "V=2", "--wait", "--cause", "env V=2")
    assert done.returncode == 0, done.stderr
    assert f"capsule/{name} updating to revision 2" in done.stdout
    assert f"capsule/{name} revision 2 is ready" in done.stdout
    assert member(docker_api, server_uuid(server, name), "side")["Id"] == side

    # v2 serves nothing: not ready within progressDeadlineSeconds, so the server rolls back.
    bad = tmp_path / "v2.yaml"
    doc = template(None, [web("v2", "/missing"), sleeper("side")], progressDeadlineSeconds=8)
    bad.write_text(yaml.safe_dump(doc))
    failed = server.cli("update", name, "-f", str(bad), "--wait", "--timeout", "60")
    assert failed.returncode == 1
    assert "revision 3 failed: not ready within progressDeadlineSeconds (8s)" in failed.stderr
    assert "the capsule is at revision 4" in failed.stderr

    history = server.cli("history", name)
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0].split()[:5] == ["REVISION", "CREATED", "USER", "OUTCOME", "CHANGE-CAUSE"]
    assert "env V=2" in lines[2] and "Ready" in lines[2]
    assert "Failed" in lines[3] and lines[4].startswith("4 *")
    assert "automatic rollback to revision 2" in lines[4]
    revisions = json.loads(server.cli("history", name, "-o", "json").stdout)
    assert revisions["revision"] == 4 and revisions["rollout"] is None
    two = yaml.safe_load(server.cli("history", name, "--revision", "2").stdout)
    assert two["spec"]["containers"][0]["env"] == {"V": "2"}

    back = server.cli("rollback", name, "--to-revision", "1", "--wait")
    assert back.returncode == 0, back.stderr
    assert f"capsule/{name} rolling back to revision 1 (as revision 5)" in back.stdout
    assert member(docker_api, server_uuid(server, name), "web")["Config"]["Env"] is None or \
        not any(e.startswith("V=") for e in member(docker_api, server_uuid(server, name), "web")["Config"]["Env"])
    assert member(docker_api, server_uuid(server, name), "side")["Id"] == side  # never changed

    usage = server.cli("update", name)
    assert usage.returncode == 2 and "-f FILE or --image/--env" in usage.stderr


def server_uuid(server: Server, name: str) -> str:
    with server.client() as api:
        return str(api.get(f"/v1/capsules/{name}").json()["uuid"])


def test_zunclient_keeps_working_on_an_updated_capsule(server: Server, unique: Callable[[str], str],
                                                       cleanup: list[str]) -> None:
    from zunclient import client as zun_client

    zun = zun_client.Client("1.latest", auth_token=server.token,
                            endpoint_override=server.url + "/v1")
    name = unique("zunupd")
    cleanup.append(name)
    created = zun.capsules.create(template=template(name, [sleeper("main"), sleeper("side")]))
    wait_for(lambda: zun.capsules.get(created.uuid).status == "Running", timeout=60, what="Running")
    before = {c["name"]: c["uuid"] for c in zun.capsules.describe(name).containers}

    with server.client() as api:
        r = api.patch(f"/v1/capsules/{name}", json={"containers": [{"name": "main", "env": {"X": "1"}}]})
        assert r.status_code == 202, r.text
    shown = zun.capsules.get(created.uuid)  # mid-update: a status zunclient just shows
    assert shown.status in ("Updating", "Running")
    wait_for(lambda: zun.capsules.get(created.uuid).status == "Running", timeout=60, what="updated")
    after = zun.capsules.describe(name)
    assert {c["name"]: c["uuid"] for c in after.containers} == before
    assert next(c for c in after.containers if c["name"] == "main")["environment"] == {"X": "1"}
    assert created.uuid in {c.uuid for c in zun.capsules.list()}
    zun.capsules.delete(name)
    wait_for(lambda: name not in {c.name for c in zun.capsules.list()}, timeout=60, what="gone")
