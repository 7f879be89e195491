"""What a member must not learn or leave behind (issue 9, "no leaks"): host names and other
hosts' free capacity, whether another project's uuid exists, the server's secrets on disk,
and Docker's anonymous volumes after a delete."""

from __future__ import annotations

import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator

import docker
import httpx
import pytest
from conftest import Server, sleeper, template, wait_for

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def alice(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.issue_token("leak-a", "alice", "member")) as c:
        yield c


@pytest.fixture(scope="module")
def bob(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.issue_token("leak-b", "bob", "member")) as c:
        yield c


@pytest.fixture(scope="module")
def host_name(server: Server) -> str:
    with server.client() as admin:
        return str(admin.get("/v1/services").json()["services"][0]["host"])


def _gone(client: httpx.Client, path: str) -> bool:
    return client.get(path).status_code == 404


# -- host names and free capacity ----------------------------------------------------------

def test_no_valid_host_names_no_host_and_no_free_capacity(server: Server, alice: httpx.Client,
                                                          host_name: str) -> None:
    # 8 CPUs (twice, 16 in all): within the limits and the quota, more than the 2-core host has.
    big = sleeper("big", resources={"requests": {"cpu": 8, "memory": 64}})
    r = alice.post("/v1/capsules", json={"template": template("too-big", [big])})
    assert r.status_code == 202, r.text
    capsule = r.json()
    assert capsule["status"] == "Error"
    assert capsule["status_reason"] == ("There are not enough hosts available. "
                                        "(no host has enough free CPU for 8 cores)")
    assert "host" not in capsule
    try:
        r = alice.post("/v1/containers", json={"image": "busybox", "cpu": 8, "name": "too-big"})
        assert r.status_code == 202, r.text
        bare = r.json()
        assert bare["status"] == "Error"
        assert bare["status_reason"] == capsule["status_reason"]
        [action] = alice.get(f"/v1/containers/{bare['uuid']}/container_actions").json()["containerActions"]
        detail = alice.get(f"/v1/containers/{bare['uuid']}/container_actions/{action['request_id']}")
        assert host_name not in detail.text and "free" not in detail.json()["events"][0].get(
            "traceback", "")
        # The administrator still reads which host refused and why.
        with server.client() as admin:
            seen = admin.get(f"/v1/containers/{bare['uuid']}/container_actions/{action['request_id']}",
                             params={"all_projects": "1"})
            assert seen.status_code == 200, seen.text
            assert f"{host_name}: needs 8.0 CPU" in seen.json()["events"][0]["traceback"]
        alice.delete(f"/v1/containers/{bare['uuid']}")
    finally:
        alice.delete(f"/v1/capsules/{capsule['uuid']}")


def test_events_do_not_name_the_host(server: Server, alice: httpx.Client, host_name: str) -> None:
    r = alice.post("/v1/capsules", json={"template": template("placed", [sleeper("app")])})
    assert r.status_code == 202, r.text
    uuid_ = r.json()["uuid"]
    try:
        events = alice.get(f"/v1/capsules/{uuid_}/events").json()["events"]
        accepted = [e for e in events if e["reason"] == "Accepted"]
        assert accepted and accepted[0]["message"] == "capsule accepted and scheduled"
        assert not any(re.search(rf"\b{re.escape(host_name)}\b", e["message"]) for e in events)
        with server.client() as admin:
            assert admin.get(f"/v1/capsules/{uuid_}").json()["host"] == host_name
    finally:
        alice.delete(f"/v1/capsules/{uuid_}")


def test_members_cannot_filter_or_sort_containers_by_host(server: Server, alice: httpx.Client,
                                                          host_name: str) -> None:
    r = alice.get("/v1/containers", params={"host": host_name})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith("host:")
    for path in ("/v1/containers", "/v1/capsules"):
        r = alice.get(path, params={"sort_key": "host"})
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["detail"].startswith("sort_key:")
    with server.client() as admin:
        assert admin.get("/v1/containers", params={"host": host_name}).status_code == 200
        assert admin.get("/v1/capsules", params={"sort_key": "host"}).status_code == 200


# -- pagination markers ---------------------------------------------------------------------

def test_another_projects_uuid_is_an_unknown_marker(alice: httpx.Client, bob: httpx.Client) -> None:
    r = bob.post("/v1/capsules", json={"template": template("bobs", [sleeper("app")])})
    assert r.status_code == 202, r.text
    bobs_capsule = r.json()["uuid"]
    r = bob.post("/v1/containers", json={"image": "busybox", "name": "bobs",
                                         "command": ["sleep", "3600"]})
    assert r.status_code == 202, r.text
    bobs_container = r.json()["uuid"]
    r = alice.post("/v1/containers", json={"image": "busybox", "name": "alices",
                                           "command": ["sleep", "3600"]})
    assert r.status_code == 202, r.text
    alices_container = r.json()["uuid"]
    made_up = str(uuid.uuid4())
    try:
        for path, theirs in (("/v1/capsules", bobs_capsule), ("/v1/containers", bobs_container)):
            unknown = alice.get(path, params={"marker": made_up})
            foreign = alice.get(path, params={"marker": theirs})
            assert (unknown.status_code, foreign.status_code) == (404, 404), foreign.text
            assert foreign.json()["errors"][0]["detail"] == unknown.json()["errors"][0][
                "detail"].replace(made_up, theirs)
        # A capsule's container is not a marker for the bare ones either.
        assert alice.get("/v1/containers", params={"marker": alices_container}).status_code == 200
    finally:
        bob.delete(f"/v1/capsules/{bobs_capsule}")
        bob.delete(f"/v1/containers/{bobs_container}", params={"stop": "true"})
        alice.delete(f"/v1/containers/{alices_container}", params={"stop": "true"})


# -- secrets on disk --------------------------------------------------------------------------

def _mode(path: os.PathLike[str] | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_dir_and_database_are_private(own_server: Callable[..., Server]) -> None:
    srv = own_server()
    state = srv.state_dir
    with srv.client() as admin:  # some writes, so that SQLite has its -wal and -shm
        assert admin.get("/v1/capsules").status_code == 200
    assert _mode(state) == 0o700
    db_files = [p for p in state.iterdir() if p.name.startswith("capsuled.db")]
    assert {p.name for p in db_files} >= {"capsuled.db"}
    for p in [*db_files, state / "admin-token"]:
        assert _mode(p) == 0o600, (p, oct(_mode(p)))

    # An install from before the rule is tightened on its next start.
    srv.stop()
    os.chmod(state, 0o755)
    for p in [*db_files, state / "admin-token"]:
        os.chmod(p, 0o644)
    srv.start()
    assert _mode(state) == 0o700
    for p in [*db_files, state / "admin-token"]:
        if p.exists():
            assert _mode(p) == 0o600, (p, oct(_mode(p)))


# -- anonymous volumes ------------------------------------------------------------------------

VOLUME_IMAGE = "capsuled-test/with-volume:latest"


@pytest.fixture(scope="module")
def volume_image(docker_api: docker.APIClient) -> Iterator[str]:
    """busybox with a VOLUME, built offline: Docker makes an anonymous volume per container."""
    cid = docker_api.create_container("busybox", command=["true"])["Id"]
    try:
        docker_api.commit(cid, repository="capsuled-test/with-volume", tag="latest",
                          changes=["VOLUME /data"])
    finally:
        docker_api.remove_container(cid, force=True)
    yield VOLUME_IMAGE
    try:
        docker_api.remove_image(VOLUME_IMAGE, force=True)
    except docker.errors.APIError:
        pass  # still used by a container another test left: harmless


def _anonymous_volumes(docker_api: docker.APIClient, container_id: str) -> list[str]:
    mounts = docker_api.inspect_container(container_id)["Mounts"]
    names = [m["Name"] for m in mounts if m["Type"] == "volume" and m["Destination"] == "/data"]
    assert names, mounts
    return names


def _volume_exists(docker_api: docker.APIClient, name: str) -> bool:
    return any(v["Name"] == name for v in docker_api.volumes().get("Volumes") or [])


def test_a_bare_containers_anonymous_volume_goes_with_it(
        alice: httpx.Client, docker_api: docker.APIClient, volume_image: str) -> None:
    r = alice.post("/v1/containers", params={"run": "true"},
                   json={"image": volume_image, "name": "with-volume",
                         "command": ["sleep", "3600"]})
    assert r.status_code == 202, r.text
    uuid_ = r.json()["uuid"]
    wait_for(lambda: alice.get(f"/v1/containers/{uuid_}").json()["status"] == "Running",
             what="the container running")
    [found] = docker_api.containers(all=True, filters={"label": f"capsuled.container={uuid_}"}) or [None]
    assert found is not None
    volumes = _anonymous_volumes(docker_api, found["Id"])
    assert alice.delete(f"/v1/containers/{uuid_}", params={"stop": "true"}).status_code == 204
    wait_for(lambda: _gone(alice, f"/v1/containers/{uuid_}"), what="the container deleted")
    wait_for(lambda: not any(_volume_exists(docker_api, v) for v in volumes),
             what="its anonymous volume removed")


def test_a_capsule_containers_anonymous_volume_goes_with_it(
        alice: httpx.Client, docker_api: docker.APIClient, volume_image: str) -> None:
    c = sleeper("app", image=volume_image)
    r = alice.post("/v1/capsules", json={"template": template("with-volume", [c])})
    assert r.status_code == 202, r.text
    uuid_ = r.json()["uuid"]
    wait_for(lambda: alice.get(f"/v1/capsules/{uuid_}").json()["status"] == "Running",
             timeout=60, what="the capsule running")
    members = [x for x in docker_api.containers(all=True, filters={"label": f"capsuled.capsule={uuid_}"})
               if x["Labels"].get("capsuled.role") == "app"]
    assert len(members) == 1, members
    volumes = _anonymous_volumes(docker_api, members[0]["Id"])
    assert alice.delete(f"/v1/capsules/{uuid_}").status_code == 204
    wait_for(lambda: _gone(alice, f"/v1/capsules/{uuid_}"), timeout=60, what="the capsule deleted")
    wait_for(lambda: not any(_volume_exists(docker_api, v) for v in volumes),
             what="its anonymous volume removed")


def test_an_auto_remove_containers_anonymous_volume_goes_with_it(
        alice: httpx.Client, docker_api: docker.APIClient, volume_image: str) -> None:
    # Docker's AutoRemove takes the anonymous volumes itself; this keeps it that way should
    # capsuled ever remove such containers on its own.
    r = alice.post("/v1/containers", params={"run": "true"},
                   json={"image": volume_image, "name": "one-shot", "auto_remove": True,
                         "command": ["sleep", "5"]})
    assert r.status_code == 202, r.text
    uuid_ = r.json()["uuid"]

    def running() -> list[dict[str, str]]:
        return docker_api.containers(filters={"label": f"capsuled.container={uuid_}"})
    try:
        [found] = wait_for(running, timeout=60, interval=0.05, what="the one-shot container running")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the API says {alice.get(f'/v1/containers/{uuid_}').text}") from None
    volumes = _anonymous_volumes(docker_api, found["Id"])
    wait_for(lambda: _gone(alice, f"/v1/containers/{uuid_}"), what="the container removed")
    wait_for(lambda: not any(_volume_exists(docker_api, v) for v in volumes),
             what="its anonymous volume removed")
