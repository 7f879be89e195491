"""A capsule on the real Docker Engine: namespaces, volumes, limits, labels, delete."""

from __future__ import annotations

import docker
import pytest
from conftest import Capsules, containers_of, exec_in, member, sandbox, sleeper, template

pytestmark = pytest.mark.docker


def test_members_share_network_pid_ipc_and_hostname(capsules: Capsules, docker_api: docker.APIClient,
                                                    unique) -> None:
    name = unique("ns")
    body = capsules.create(template(name, [
        {"name": "web", "image": "busybox", "command": ["httpd", "-f", "-p", "8080", "-h", "/etc"]},
        sleeper("client"),
    ]))
    capsules.wait_status(body["uuid"], "Running")
    client = member(docker_api, body["uuid"], "client")
    code, out = exec_in(docker_api, client["Id"], "wget", "-q", "-O-", "http://127.0.0.1:8080/hosts")
    assert code == 0 and "localhost" in out
    code, out = exec_in(docker_api, client["Id"], "ps")
    assert "httpd -f -p 8080" in out and "catatonit" in out
    code, out = exec_in(docker_api, client["Id"], "hostname")
    assert out.strip() == name
    sb = sandbox(docker_api, body["uuid"])
    assert sb["HostConfig"]["IpcMode"] == "shareable"
    for role in ("web", "client"):
        hc = member(docker_api, body["uuid"], role)["HostConfig"]
        for mode in ("NetworkMode", "IpcMode", "PidMode"):
            assert hc[mode] == f"container:{sb['Id']}"


def test_volume_is_shared_and_read_only_mounts_apply(capsules: Capsules, docker_api: docker.APIClient,
                                                     unique) -> None:
    body = capsules.create(template(unique("vol"), [
        sleeper("writer", volumeMounts=[{"name": "data", "mountPath": "/data"}]),
        sleeper("reader", volumeMounts=[{"name": "data", "mountPath": "/in", "readOnly": True}]),
    ], volumes=[{"name": "data", "emptyDir": {}}]))
    capsules.wait_status(body["uuid"], "Running")
    writer = member(docker_api, body["uuid"], "writer")
    reader = member(docker_api, body["uuid"], "reader")
    assert exec_in(docker_api, writer["Id"], "sh", "-c", "echo shared > /data/f")[0] == 0
    code, out = exec_in(docker_api, reader["Id"], "cat", "/in/f")
    assert (code, out.strip()) == (0, "shared")
    code, _ = exec_in(docker_api, reader["Id"], "sh", "-c", "echo x > /in/g")
    assert code != 0


def test_limits_labels_command_env_workdir_in_docker(capsules: Capsules, docker_api: docker.APIClient,
                                                     unique) -> None:
    body = capsules.create(template(unique("lim"), [{
        "name": "app", "image": "busybox", "command": ["sleep"], "args": ["3600"],
        "workDir": "/tmp", "env": {"GREETING": "hi"},
        "resources": {"requests": {"cpu": 0.5, "memory": 64}}}]))
    capsules.wait_status(body["uuid"], "Running")
    app = member(docker_api, body["uuid"], "app")
    assert app["HostConfig"]["NanoCpus"] == 500_000_000
    assert app["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert app["Config"]["Entrypoint"] == ["sleep"] and app["Config"]["Cmd"] == ["3600"]
    assert app["Config"]["WorkingDir"] == "/tmp"
    assert "GREETING=hi" in app["Config"]["Env"]
    labels = app["Config"]["Labels"]
    assert labels["capsuled.capsule"] == body["uuid"]
    assert labels["capsuled.role"] == "app"
    assert labels["capsuled.container"] == body["containers"][0]["uuid"]
    shown = capsules.get(body["uuid"])
    assert shown["cpu"] == 0.5 and shown["memory"] == "64"


def test_delete_leaves_nothing_behind(capsules: Capsules, docker_api: docker.APIClient, unique) -> None:
    body = capsules.create(template(unique("del"), [
        sleeper("a", volumeMounts=[{"name": "v", "mountPath": "/v"}]), sleeper("b")],
        volumes=[{"name": "v", "cinder": {"size": 1, "autoRemove": True}}]))
    capsules.wait_status(body["uuid"], "Running")
    assert len(containers_of(docker_api, body["uuid"])) == 3
    r = capsules.api.delete(f"/v1/capsules/{body['uuid']}")
    assert r.status_code == 204 and r.content == b""
    capsules.wait_gone(body["uuid"])
    assert containers_of(docker_api, body["uuid"]) == []
    vols = docker_api.volumes(filters={"label": [f"capsuled.capsule={body['uuid']}"]})
    assert not (vols or {}).get("Volumes")
