"""rebuild, commit and resize_container on a real Docker Engine, through the HTTP API, as
two members of two projects; and the hostile member's attacks on commit (issue 11)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
from conftest import Server, exec_in, wait_for

pytestmark = [pytest.mark.docker]

# Stops at once on SIGTERM (busybox sleep as PID 1 would wait out the stop timeout).
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


@pytest.fixture(scope="module")
def alice(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.issue_token("acts-a", "alice", "member")) as c:
        yield c


@pytest.fixture(scope="module")
def bob(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.issue_token("acts-b", "bob", "member")) as c:
        yield c


@pytest.fixture()
def made(alice: httpx.Client, bob: httpx.Client,
         docker_api: docker.APIClient) -> Iterator[list[str]]:
    """Containers (uuids) and images (refs) a test made: removed after it."""
    things: list[str] = []
    yield things
    for t in things:
        if ":" not in t:
            for c in (alice, bob):
                c.delete(f"/v1/containers/{t}", params={"stop": "true"})
    for t in things:
        if ":" not in t:
            for c in (alice, bob):
                try:
                    wait_for(lambda c=c: c.get(f"/v1/containers/{t}").status_code == 404, timeout=30)
                except AssertionError:
                    pass
    for t in things:
        if ":" in t:
            try:
                docker_api.remove_image(t, force=True)
            except docker.errors.APIError:
                pass


def run(api: httpx.Client, made: list[str], expect: int = 202, start: bool = True,
        **body: Any) -> dict[str, Any]:
    body.setdefault("image", "busybox")
    body.setdefault("command", LOOP)
    r = api.post("/v1/containers", params={"run": "true"} if start else None, json=body)
    assert r.status_code == expect, r.text
    out: dict[str, Any] = r.json()
    if r.status_code == 202:
        made.append(out["uuid"])
    return out


def wait(api: httpx.Client, uuid: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def check() -> bool:
        got.update(api.get(f"/v1/containers/{uuid}").json())
        return got.get("status") in statuses
    try:
        wait_for(check, timeout=timeout, what=f"{uuid} to be {'/'.join(statuses)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; now {got.get('status')}: {got.get('status_reason')}") from None
    return got


def bare(docker_api: docker.APIClient, uuid: str) -> dict[str, Any]:
    found = docker_api.containers(all=True, filters={"label": [f"capsuled.container={uuid}"]})
    assert len(found) == 1, found
    return docker_api.inspect_container(found[0]["Id"])  # type: ignore[no-any-return]


def commit(api: httpx.Client, uuid: str, made: list[str], expect: int = 202,
           **params: str) -> httpx.Response:
    r = api.post(f"/v1/containers/{uuid}/commit", params=params, json={})
    assert r.status_code == expect, r.text
    if r.status_code == 202:
        repo = params["repository"]
        made.append(repo if ":" in repo.rsplit("/", 1)[-1] else f"{repo}:{params.get('tag', 'latest')}")
    return r


def error(r: httpx.Response) -> str:
    return str(r.json()["errors"][0]["detail"])


# -- rebuild -------------------------------------------------------------------------------

def test_rebuild_replaces_the_docker_container_with_the_new_image_keeping_identity_and_data(
        alice: httpx.Client, docker_api: docker.APIClient, made: list[str], unique) -> None:
    name = unique("rb")
    body = run(alice, made, name=name, labels={"tier": "web"},
               mounts=[{"size": 1, "destination": "/data"}])
    uuid = body["uuid"]
    wait(alice, uuid, "Running")
    old = bare(docker_api, uuid)
    assert exec_in(docker_api, old["Id"], "sh", "-c", "echo kept > /data/f && echo baked > /baked") \
        == (0, "")
    # A new image: this container committed (it has /baked), so its id differs from busybox's.
    repo = unique("rbimg")
    commit(alice, uuid, made, repository=repo, tag="v2")

    r = alice.post(f"/v1/containers/{uuid}/rebuild", params={"image": f"{repo}:v2"}, json={})
    assert r.status_code == 202, r.text
    request_id = r.headers["x-openstack-request-id"]
    assert alice.get(f"/v1/containers/{uuid}").json()["status"] == "Rebuilding"
    shown = wait(alice, uuid, "Running")
    assert (shown["uuid"], shown["name"], shown["image"]) == (uuid, name, f"{repo}:v2")

    new = bare(docker_api, uuid)
    assert new["Id"] != old["Id"]
    assert new["Config"]["Image"] == f"{repo}:v2"
    assert new["Image"] == docker_api.inspect_image(f"{repo}:v2")["Id"] != old["Image"]
    assert new["Name"] == old["Name"] and new["Config"]["Hostname"] == old["Config"]["Hostname"]
    assert new["Config"]["Labels"]["tier"] == "web"
    assert new["Config"]["Labels"]["capsuled.project"] == "acts-a"
    assert [m["Name"] for m in new["Mounts"]] == [m["Name"] for m in old["Mounts"]]
    assert exec_in(docker_api, new["Id"], "cat", "/data/f", "/baked") == (0, "kept\nbaked\n")
    nets = lambda c: {n: sorted(set(e["Aliases"] or []) - {c["Id"][:12]})  # noqa: E731
                      for n, e in c["NetworkSettings"]["Networks"].items()}
    assert nets(new) == nets(old) and name in next(iter(nets(new).values()))

    def finished() -> bool:
        acts = alice.get(f"/v1/containers/{uuid}/container_actions").json()["containerActions"]
        mine = [a for a in acts if a["request_id"] == request_id]
        return len(mine) == 1 and mine[0]["action"] == "rebuild" and mine[0]["finish_time"] is not None
    wait_for(finished, timeout=30, what="the rebuild action to finish")


def test_rebuild_of_a_container_never_started_leaves_it_created(
        alice: httpx.Client, docker_api: docker.APIClient, made: list[str], unique) -> None:
    body = run(alice, made, start=False, name=unique("rbc"))
    wait(alice, body["uuid"], "Created")
    old = bare(docker_api, body["uuid"])["Id"]
    r = alice.post(f"/v1/containers/{body['uuid']}/rebuild", json={})  # the same image
    assert r.status_code == 202, r.text
    wait(alice, body["uuid"], "Created")
    wait_for(lambda: bare(docker_api, body["uuid"])["Id"] != old, timeout=30, what="a new container")
    info = bare(docker_api, body["uuid"])
    assert info["State"]["Status"] == "created" and info["Config"]["Image"] == "busybox"


def test_rebuild_refusals_name_the_problem_and_change_nothing(
        alice: httpx.Client, bob: httpx.Client, docker_api: docker.APIClient, made: list[str],
        unique) -> None:
    body = run(alice, made, name=unique("rbx"))
    uuid = body["uuid"]
    wait(alice, uuid, "Running")
    before = bare(docker_api, uuid)["Id"]
    cases = [
        ({"image": "Not An Image!"}, 400, "image"),
        ({"image_driver": "glance"}, 400, "image_driver"),
    ]
    for params, status, field in cases:
        r = alice.post(f"/v1/containers/{uuid}/rebuild", params=params, json={})
        assert r.status_code == status and field in error(r), r.text
    # Another project's member cannot even see it.
    assert bob.post(f"/v1/containers/{uuid}/rebuild", json={}).status_code == 404
    # Paused is not a state to rebuild from (Zun: Created, Running, Stopped, Error).
    assert alice.post(f"/v1/containers/{uuid}/pause").status_code == 202
    wait(alice, uuid, "Paused")
    r = alice.post(f"/v1/containers/{uuid}/rebuild", json={})
    assert r.status_code == 409 and "Paused" in error(r), r.text
    assert bare(docker_api, uuid)["Id"] == before
    assert alice.get(f"/v1/containers/{uuid}").json()["image"] == "busybox"


def test_a_capsule_member_is_rebuilt_with_its_capsule_not_alone(
        alice: httpx.Client, unique) -> None:
    name = unique("rbcap")
    tmpl = {"kind": "capsule", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "busybox", "command": LOOP}]}}
    r = alice.post("/v1/capsules", json={"template": tmpl})
    assert r.status_code == 202, r.text
    try:
        wait_for(lambda: alice.get(f"/v1/capsules/{name}").json()["status"] == "Running",
                 timeout=60, what="capsule running")
        member = alice.get("/v1/containers", params={"capsule": name}).json()["containers"][0]
        r = alice.post(f"/v1/containers/{member['uuid']}/rebuild", json={})
        assert r.status_code == 409 and name in error(r), r.text
    finally:
        alice.delete(f"/v1/capsules/{name}")


# -- commit: the hostile tenant first --------------------------------------------------------

@pytest.mark.parametrize("target", [
    {"repository": "busybox"},  # busybox:latest, the image every tenant runs
    {"repository": "busybox", "tag": "latest"},
    {"repository": "docker.io/library/busybox:latest"},
    {"repository": "capsuled/infra"},  # the sandbox image of every capsule
])
def test_commit_over_an_image_that_is_not_the_projects_own_is_refused(
        alice: httpx.Client, docker_api: docker.APIClient, made: list[str], unique,
        target: dict[str, str]) -> None:
    before = {t: docker_api.inspect_image(t)["Id"] for t in ("busybox:latest", "capsuled/infra:latest")}
    body = run(alice, made, name=unique("cmx"))
    wait(alice, body["uuid"], "Running")
    r = commit(alice, body["uuid"], made, expect=409, **target)
    assert "repository" in error(r), r.text
    assert {t: docker_api.inspect_image(t)["Id"] for t in before} == before
    acts = alice.get(f"/v1/containers/{body['uuid']}/container_actions").json()["containerActions"]
    assert [a["message"] for a in acts if a["action"] == "commit"] == ["Error"]


def test_committed_images_are_the_projects_alone(
        alice: httpx.Client, bob: httpx.Client, server: Server, docker_api: docker.APIClient,
        made: list[str], unique) -> None:
    src = run(alice, made, name=unique("cm"))
    wait(alice, src["uuid"], "Running")
    assert exec_in(docker_api, bare(docker_api, src["uuid"])["Id"], "sh", "-c",
                   "echo from-alice > /mark") == (0, "")
    repo = unique("team/cm")
    r = commit(alice, src["uuid"], made, repository=f"{repo}:v1")
    image_uuid = r.json()["uuid"]
    made_image = docker_api.inspect_image(f"{repo}:v1")
    assert made_image["Config"]["Labels"]["capsuled.project"] == "acts-a"
    assert r.json()["image_id"] == made_image["Id"]
    acts = alice.get(f"/v1/containers/{src['uuid']}/container_actions").json()["containerActions"]
    assert [(a["action"], a["message"]) for a in acts if a["action"] == "commit"] == [("commit", None)]

    # Listed for its project (under the uuid commit answered), not for another.
    listed = {i["uuid"]: i for i in alice.get("/v1/images").json()["images"]}
    assert listed[image_uuid]["repo"] == repo and listed[image_uuid]["host"] is None
    assert image_uuid not in {i["uuid"] for i in bob.get("/v1/images").json()["images"]}
    assert bob.get(f"/v1/images/{image_uuid}").status_code == 404
    assert any(i["repo"] == "busybox" for i in bob.get("/v1/images").json()["images"])
    with server.client(server.token) as admin:
        assert image_uuid in {i["uuid"] for i in admin.get("/v1/images").json()["images"]}

    # It runs as a new container of its project …
    again = run(alice, made, name=unique("cmrun"), image=f"{repo}:v1")
    wait(alice, again["uuid"], "Running")
    info = bare(docker_api, again["uuid"])
    assert info["Image"] == made_image["Id"]
    assert exec_in(docker_api, info["Id"], "cat", "/mark") == (0, "from-alice\n")
    # … and the project may commit over its own image.
    commit(alice, src["uuid"], made, repository=repo, tag="v1")

    # Another project can neither run it, however it is spelled, nor commit over it.
    theirs = run(bob, made, name=unique("cmb"))
    wait(bob, theirs["uuid"], "Running")
    for spelling in (f"{repo}:v1", f"docker.io/{repo}:v1"):
        r = bob.post("/v1/containers", params={"run": "true"},
                     json={"image": spelling, "command": LOOP, "name": unique("steal")})
        assert r.status_code == 400 and "image" in error(r), r.text
        r = bob.post(f"/v1/containers/{theirs['uuid']}/rebuild", params={"image": spelling}, json={})
        assert r.status_code == 400 and "image" in error(r), r.text
    tmpl = {"kind": "capsule", "metadata": {"name": unique("stealcap")},
            "spec": {"containers": [{"name": "app", "image": f"{repo}:v1", "command": LOOP}]}}
    r = bob.post("/v1/capsules", json={"template": tmpl})
    assert r.status_code == 400 and "image" in error(r), r.text
    r = commit(bob, theirs["uuid"], made, expect=409, repository=repo, tag="v1")
    assert "repository" in error(r)
    assert docker_api.inspect_image(f"{repo}:v1")["Config"]["Labels"]["capsuled.project"] == "acts-a"
    # By image id the API cannot tell, but the host refuses to make the container.
    stolen = run(bob, made, name=unique("byid"), image=made_image["Id"])  # sha256:…
    got = wait(bob, stolen["uuid"], "Error")
    assert "not available to this project" in got["status_reason"]
    assert not docker_api.containers(all=True, filters={
        "label": [f"capsuled.container={stolen['uuid']}"]})


@pytest.mark.parametrize(("params", "field"), [
    ({}, "repository"),
    ({"repository": "UPPER"}, "repository"),
    ({"repository": "a//b"}, "repository"),
    ({"repository": "x" * 300}, "repository"),
    ({"repository": "ok", "tag": "-bad"}, "tag"),
    ({"repository": "ok", "tag": "t" * 129}, "tag"),
    ({"repository": "a" * 64}, "repository"),
])
def test_bad_commit_targets_are_400_naming_the_field(
        alice: httpx.Client, made: list[str], unique, params: dict[str, str], field: str) -> None:
    body = run(alice, made, name=unique("cmbad"))
    wait(alice, body["uuid"], "Running")
    r = alice.post(f"/v1/containers/{body['uuid']}/commit", params=params, json={})
    assert r.status_code == 400 and error(r).startswith(f"{field}:"), r.text


def test_commit_needs_a_running_stopped_or_paused_container(
        alice: httpx.Client, made: list[str], unique) -> None:
    body = run(alice, made, start=False, name=unique("cmc"))
    wait(alice, body["uuid"], "Created")
    r = alice.post(f"/v1/containers/{body['uuid']}/commit", params={"repository": unique("x")},
                   json={})
    assert r.status_code == 409 and "Created" in error(r), r.text


# -- resize_container ----------------------------------------------------------------------

def test_resize_container_changes_cpu_and_memory_live_from_1_19(
        alice: httpx.Client, docker_api: docker.APIClient, made: list[str], unique) -> None:
    body = run(alice, made, name=unique("rs"), memory=64)
    uuid = body["uuid"]
    wait(alice, uuid, "Running")
    old = bare(docker_api, uuid)["Id"]
    r = alice.post(f"/v1/containers/{uuid}/resize_container", json={"memory": 96},
                   headers={"OpenStack-API-Version": "container 1.18"})
    assert r.status_code == 406, r.text
    r = alice.post(f"/v1/containers/{uuid}/resize_container", json={"memory": 96, "cpu": 0.5},
                   headers={"OpenStack-API-Version": "container 1.19"})
    assert r.status_code == 202, r.text
    assert (r.json()["memory"], r.json()["cpu"]) == ("96", 0.5)  # Zun shows memory as text
    wait_for(lambda: bare(docker_api, uuid)["HostConfig"]["Memory"] == 96 * 1024 * 1024,
             timeout=30, what="docker update")
    info = bare(docker_api, uuid)
    assert info["Id"] == old and info["HostConfig"]["NanoCpus"] == 500_000_000
    for bad, field in (({"memory": "lots"}, "memory"), ({"cpu": -1}, "cpu"),
                       ({"name": "x"}, "name"), ({}, "body")):
        r = alice.post(f"/v1/containers/{uuid}/resize_container", json=bad,
                       headers={"OpenStack-API-Version": "container 1.19"})
        assert r.status_code == 400 and field in error(r), (bad, r.text)
    # Beyond any host (and the quota): refused, nothing changed.
    r = alice.post(f"/v1/containers/{uuid}/resize_container", json={"memory": 10_000_000},
                   headers={"OpenStack-API-Version": "container 1.19"})
    assert r.status_code in (400, 403, 409) and "memory" in error(r).lower(), r.text
    assert bare(docker_api, uuid)["HostConfig"]["Memory"] == 96 * 1024 * 1024
