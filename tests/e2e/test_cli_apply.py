"""`capsule apply` and `capsule diff` as a user runs them, with Kubernetes Pod manifests,
against a real server and engine: apply creates, a second apply leaves everything
unchanged, an edited image shows in the diff (exit 1) and apply rolls it out health
gated, --prune deletes what the files no longer name, and a refused field is reported
by its path. zunclient creates a capsule from a Pod too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from conftest import Server, member, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

HTTPD = "mkdir -p /www && echo $(PAGE) > /www/index.html && exec httpd -f -p 8080 -h /www"


@pytest.fixture()
def cleanup(server: Server) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    with server.client() as api:
        for n in names:
            api.delete(f"/v1/capsules/{n}")
        for n in names:
            wait_for(lambda: api.get(f"/v1/capsules/{n}").status_code == 404, timeout=60,
                     what=f"{n} gone")


@pytest.fixture()
def retagged(docker_api: docker.APIClient, unique: Callable[[str], str]) -> Iterator[str]:
    """busybox under another name: an image change without a pull."""
    repo = unique("apply-busybox")
    docker_api.tag("busybox:latest", repo, "v2")
    yield f"{repo}:v2"
    try:
        docker_api.remove_image(f"{repo}:v2")
    except docker.errors.APIError:
        pass


def pod(name: str, app: str, image: str = "busybox") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{
                "name": "web", "image": image, "command": ["sh", "-c", HTTPD],
                "env": [{"name": "PAGE", "value": name}],
                "ports": [{"containerPort": 8080, "name": "http"}],
                "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
                "readinessProbe": {"httpGet": {"port": "http", "path": "/index.html"},
                                   "periodSeconds": 1}}]}}


def uuid_of(server: Server, name: str) -> str:
    with server.client() as api:
        return str(api.get(f"/v1/capsules/{name}").json()["uuid"])


def test_apply_diff_and_prune_with_pod_manifests(server: Server, docker_api: docker.APIClient,
                                                 unique: Callable[[str], str], tmp_path: Path,
                                                 retagged: str, cleanup: list[str]) -> None:
    app = unique("shop")
    web, extra = f"{app}-web", f"{app}-extra"
    cleanup += [web, extra]
    files = tmp_path / "manifests"
    files.mkdir()
    (files / "a-web.yaml").write_text(yaml.safe_dump(pod(web, app)))
    (files / "b-extra.yml").write_text(yaml.safe_dump(pod(extra, app)))
    (files / "notes.txt").write_text("not a manifest: not read")

    first = server.cli("apply", "-f", str(files), "--wait", "--timeout", "90")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[:2] == [f"capsule/{web} created", f"capsule/{extra} created"]
    container = member(docker_api, uuid_of(server, web), "web")
    assert f"PAGE={web}" in container["Config"]["Env"]
    assert container["Config"]["Entrypoint"] == ["sh", "-c", HTTPD.replace("$(PAGE)", web)]

    again = server.cli("apply", "-f", str(files))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"capsule/{web} unchanged", f"capsule/{extra} unchanged"]
    same = server.cli("diff", "-f", str(files))
    assert (same.returncode, same.stdout) == (0, ""), same.stderr

    # The web Pod gets a new image, and the extra one leaves the files.
    (files / "a-web.yaml").write_text(yaml.safe_dump(pod(web, app, image=retagged)))
    (files / "b-extra.yml").unlink()
    changed = server.cli("diff", "-f", str(files), "--prune", "-l", f"app={app}")
    assert changed.returncode == 1, changed.stderr
    lines = changed.stdout.splitlines()
    assert f"--- capsule/{web} (live, revision 1)" in lines
    assert "-    image: busybox" in lines and f"+    image: {retagged}" in lines
    assert f"+++ capsule/{extra} (pruned)" in lines
    assert uuid_of(server, extra)  # a diff changes nothing

    before = member(docker_api, uuid_of(server, web), "web")["Id"]
    done = server.cli("apply", "-f", str(files), "--prune", "-l", f"app={app}", "--wait",
                      "--timeout", "90")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"capsule/{web} configured", f"capsule/{extra} pruned",
                                        f"capsule/{web} revision 2 is ready"]
    after = member(docker_api, uuid_of(server, web), "web")
    assert after["Id"] != before and after["Config"]["Image"] == retagged
    with server.client() as api:
        wait_for(lambda: api.get(f"/v1/capsules/{extra}").status_code == 404, timeout=60,
                 what=f"{extra} pruned")
        history = api.get(f"/v1/capsules/{web}/revisions").json()["revisions"]
    assert history[-1]["change_cause"] == f"apply from {files / 'a-web.yaml'}"
    assert history[-1]["outcome"] == "Ready"
    assert server.cli("diff", "-f", str(files)).returncode == 0


def test_a_refused_field_is_reported_by_its_path(server: Server, unique: Callable[[str], str],
                                                 tmp_path: Path) -> None:
    name = unique("podbad")
    manifest = pod(name, "bad")
    manifest["spec"]["containers"][0]["lifecycle"] = {"postStart": {"exec": {"command": ["x"]}}}
    manifest["spec"]["containers"][0]["env"] = [{"name": "T", "valueFrom": {"secretKeyRef": {}}}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    for command, code in (("apply", 1), ("diff", 2), ("create", 1)):
        result = server.cli(command, "-f", str(path))
        assert result.returncode == code, (command, result.stdout, result.stderr)
        assert "spec.containers[0].lifecycle: is not supported" in result.stderr
        assert "spec.containers[0].env[0].valueFrom: is not supported" in result.stderr
    usage = server.cli("apply", "-f", str(path), "--prune")
    assert usage.returncode == 2 and "--prune needs -l KEY=VALUE" in usage.stderr
    with server.client() as api:
        assert api.get(f"/v1/capsules/{name}").status_code == 404


def test_zunclient_creates_a_capsule_from_a_pod(server: Server, unique: Callable[[str], str],
                                                cleanup: list[str]) -> None:
    from zunclient import client as zun_client

    zun = zun_client.Client("1.latest", auth_token=server.token,
                            endpoint_override=server.url + "/v1")
    name = unique("zunpod")
    cleanup.append(name)
    created = zun.capsules.create(template=pod(name, "zun"))
    wait_for(lambda: zun.capsules.get(created.uuid).status == "Running", timeout=60, what="Running")
    shown = zun.capsules.describe(name)
    assert [c["name"] for c in shown.containers] == ["web"]
    assert shown.containers[0]["environment"] == {"PAGE": name}
