"""The unmodified python-zunclient library: rebuild, commit and resize_container on a real
server and Docker (issue 11)."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest
from conftest import Server, exec_in, wait_for
from test_zunclient_containers import docker_of, status_of
from zunclient import client as zun_client
from zunclient.common.apiclient import exceptions as zun_exc

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

LOOP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


@pytest.fixture()
def zun(server: Server):  # type: ignore[no-untyped-def]
    token = server.issue_token("zc-acts", "zed", "member")
    return zun_client.Client("1.latest", auth_token=token, endpoint_override=server.url + "/v1")


@pytest.fixture()
def made(zun, docker_api: docker.APIClient) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    things: list[str] = []
    yield things
    for t in things:
        try:
            if ":" in t:
                docker_api.remove_image(t, force=True)
            else:
                zun.containers.delete(t, stop=True)
        except (zun_exc.NotFound, docker.errors.APIError):
            pass


def test_commit_then_rebuild_onto_the_committed_image(zun, made, docker_api: docker.APIClient,  # type: ignore[no-untyped-def]
                                                      unique) -> None:
    c = zun.containers.run(name=unique("zca"), image="busybox", command=LOOP,
                           mounts=[{"size": 1, "destination": "/data"}])
    made.append(c.uuid)
    status_of(zun, c.uuid, "Running")
    old = docker_of(docker_api, c.uuid)
    assert exec_in(docker_api, old["Id"], "sh", "-c", "echo v > /data/v; echo img > /img") == (0, "")

    repo = unique("zcimg")
    image = zun.containers.commit(c.uuid, repo, tag="v1")
    made.append(f"{repo}:v1")
    assert image["uuid"]
    assert docker_api.inspect_image(f"{repo}:v1")["Config"]["Labels"]["capsuled.project"] == "zc-acts"
    with pytest.raises(zun_exc.Conflict):  # the base image every tenant runs
        zun.containers.commit(c.uuid, "busybox", tag="latest")

    zun.containers.rebuild(c.uuid, image=f"{repo}:v1")
    assert zun.containers.get(c.uuid).status == "Rebuilding"
    done = status_of(zun, c.uuid, "Running")
    assert done.image == f"{repo}:v1" and done.uuid == c.uuid
    new = docker_of(docker_api, c.uuid)
    assert new["Id"] != old["Id"] and new["Config"]["Image"] == f"{repo}:v1"
    assert exec_in(docker_api, new["Id"], "cat", "/data/v", "/img") == (0, "v\nimg\n")
    actions = [a.action for a in zun.actions.list(c.uuid)]
    assert "commit" in actions and "rebuild" in actions

    with pytest.raises(zun_exc.BadRequest):
        zun.containers.rebuild(c.uuid, image="Bad Image!")


def test_resize_container_as_zunclient_sends_it(zun, made, docker_api: docker.APIClient,  # type: ignore[no-untyped-def]
                                                unique) -> None:
    c = zun.containers.run(name=unique("zcr"), image="busybox", command=LOOP, memory="64")
    made.append(c.uuid)
    status_of(zun, c.uuid, "Running")
    # zunclient has no method for it: its HTTP client posts the body, as tempest does.
    resp, body = zun.containers.api.json_request(
        "POST", f"/v1/containers/{c.uuid}/resize_container", body={"memory": 80})
    assert resp.status_code == 202 and str(body["memory"]) == "80"
    wait_for(lambda: docker_of(docker_api, c.uuid)["HostConfig"]["Memory"] == 80 * 1024 * 1024,
             timeout=30, what="docker update")
    # `zun update` (PATCH) is the same change.
    zun.containers.update(c.uuid, memory="72")
    wait_for(lambda: docker_of(docker_api, c.uuid)["HostConfig"]["Memory"] == 72 * 1024 * 1024,
             timeout=30, what="docker update")
