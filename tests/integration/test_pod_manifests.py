"""Kubernetes Pod manifests through the HTTP API on the real Docker Engine: a Pod (sent
as YAML text, as an object, or as a List of one) makes a running capsule whose containers
Docker shows with the Pod's env, command and published port; a refused field is a 400
naming its Pod path; a member's privileged Pod is a 403, decided as for a template; dry
runs of create and update answer what would happen and leave nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import docker
import httpx
import pytest
import yaml
from conftest import Capsules, Server, free_port, member, sandbox

pytestmark = pytest.mark.docker


def pod(name: str, image: str = "busybox", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"suite": "pods"}},
            "spec": {"containers": [{
                "name": "web", "image": image, "workingDir": "/tmp",
                "env": [{"name": "GREETING", "value": "hi"},
                        {"name": "MESSAGE", "value": "$(GREETING) there"}],
                "command": ["sh", "-c"], "args": ["echo $(MESSAGE); exec sleep 3600"],
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                              "limits": {"cpu": "200m", "memory": "64Mi"}},
                **extra}],
                "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}}


def test_a_pod_manifest_makes_a_running_capsule_docker_shows(
        capsules: Capsules, docker_api: docker.APIClient, unique: Callable[[str], str]) -> None:
    name, port = unique("pod"), free_port()
    manifest = pod(name, ports=[{"containerPort": 8080, "hostPort": port, "name": "http"}])
    body = capsules.create(yaml.safe_dump(manifest))  # type: ignore[arg-type]  # text, as zun sends files
    uuid = body["uuid"]
    running = capsules.wait_status(uuid, "Running")
    assert running["name"] == name and running["labels"] == {"suite": "pods"}
    web = member(docker_api, uuid, "web")
    env = web["Config"]["Env"]
    assert "GREETING=hi" in env and "MESSAGE=hi there" in env
    # command is Docker's entrypoint, args its cmd; $(MESSAGE) expanded as Kubernetes does
    assert web["Config"]["Entrypoint"] == ["sh", "-c"]
    assert web["Config"]["Cmd"] == ["echo hi there; exec sleep 3600"]
    assert web["Config"]["WorkingDir"] == "/tmp"
    assert web["HostConfig"]["NanoCpus"] == 200_000_000  # the limit is the claim
    assert web["HostConfig"]["Memory"] == 64 * 2**20
    bindings = sandbox(docker_api, uuid)["HostConfig"]["PortBindings"]
    assert bindings["8080/tcp"][0]["HostPort"] == str(port)


def test_a_list_of_one_pod_is_accepted_and_of_two_refused(
        capsules: Capsules, api: httpx.Client, unique: Callable[[str], str]) -> None:
    name = unique("podlist")
    body = capsules.create({"apiVersion": "v1", "kind": "List", "items": [pod(name)]})
    assert body["name"] == name
    r = api.post("/v1/capsules", json={"template": {"kind": "List", "items": [pod("a1"), pod("b1")]}})
    assert r.status_code == 400
    assert "items: a List sent as one template must hold exactly one Pod, not 2" in r.json()["errors"][0]["title"]


def test_refused_fields_are_a_400_naming_each_pod_path(api: httpx.Client,
                                                        unique: Callable[[str], str]) -> None:
    manifest = pod(unique("podbad"), lifecycle={"preStop": {"exec": {"command": ["x"]}}},
                   envFrom=[{"secretRef": {"name": "s"}}])
    manifest["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "c"}}]
    manifest["spec"]["containers"][0]["volumeMounts"] = [{"name": "cfg", "mountPath": "/cfg"}]
    r = api.post("/v1/capsules", json={"template": manifest})
    assert r.status_code == 400
    error = r.json()["errors"][0]
    assert error["title"].startswith("Invalid Pod manifest: 3 problems")
    assert error["detail"].splitlines() == [
        "spec.volumes[0].configMap: is not supported (only emptyDir volumes)",
        "spec.containers[0].envFrom: is not supported",
        "spec.containers[0].lifecycle: is not supported"]
    assert api.get(f"/v1/capsules/{manifest['metadata']['name']}").status_code == 404


def test_host_access_in_a_pod_is_decided_as_for_a_template(server: Server,
                                                           unique: Callable[[str], str]) -> None:
    member_api = server.client(server.issue_token(unique("podproj"), "mallory", "member"))
    for extra, field in (({"securityContext": {"privileged": True}},
                          "spec.containers[0].securityContext.privileged"),
                         ({"ports": [{"containerPort": 22, "hostPort": 22}]},
                          "spec.containers[0].ports[0].hostPort (22 is below 1024)")):
        r = member_api.post("/v1/capsules", json={"template": pod(unique("podpriv"), **extra)})
        assert r.status_code == 403, r.text
        assert field in r.json()["errors"][0]["title"]
    node = pod(unique("podhost"))
    node["spec"]["hostNetwork"] = True
    r = member_api.post("/v1/capsules", json={"template": node})
    assert r.status_code == 403 and "spec.hostNetwork" in r.json()["errors"][0]["title"]
    # The dry run takes the same decision.
    r = member_api.post("/v1/capsules", params={"dry_run": "true"}, json={"template": node})
    assert r.status_code == 403


def test_dry_runs_answer_what_would_happen_and_keep_nothing(
        capsules: Capsules, api: httpx.Client, docker_api: docker.APIClient,
        unique: Callable[[str], str]) -> None:
    name = unique("poddry")
    r = api.post("/v1/capsules", params={"dry_run": "true"}, json={"template": pod(name)})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["dry_run"], answer["changed"], answer["current"]) == (True, True, None)
    assert answer["status"] == "Creating"
    assert answer["new"]["spec"]["containers"][0]["env"] == {"GREETING": "hi", "MESSAGE": "hi there"}
    assert api.get(f"/v1/capsules/{name}").status_code == 404

    uuid = capsules.create(pod(name))["uuid"]
    capsules.wait_status(uuid, "Running")
    before = member(docker_api, uuid, "web")["Id"]
    same = api.patch(f"/v1/capsules/{uuid}", params={"dry_run": "1"}, json={"template": pod(name)})
    assert same.status_code == 200 and same.json()["changed"] is False
    assert same.json()["current"] == same.json()["new"]
    docker_api.tag("busybox:latest", f"{name}-img", "v2")
    try:
        moved = api.patch(f"/v1/capsules/{uuid}", params={"dry_run": "true"},
                          json={"template": pod(name, image=f"{name}-img:v2")}).json()
    finally:
        docker_api.remove_image(f"{name}-img:v2")
    assert moved["changed"] is True and moved["replaced"] == ["web"] and moved["revision"] == 1
    assert moved["new"]["spec"]["containers"][0]["image"] == f"{name}-img:v2"
    after = capsules.get(uuid)
    assert (after["revision"], after["rollout"], after["status"]) == (1, None, "Running")
    assert member(docker_api, uuid, "web")["Id"] == before
    assert len(api.get(f"/v1/capsules/{uuid}/revisions").json()["revisions"]) == 1
