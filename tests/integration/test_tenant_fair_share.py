"""Fair share between tenants (issue 9): default limits for containers that ask for none and
a pids limit on everything, host capacity on run --capsule and resize, bounded events and
actions, force delete on a host that is gone. Through HTTP as a member, checked in Docker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
from conftest import Server, member, sandbox, sleeper, template, wait_for

pytestmark = [pytest.mark.docker]

MiB = 1024 * 1024


@pytest.fixture()
def tenant(server: Server, unique) -> Iterator[tuple[str, httpx.Client]]:  # type: ignore[no-untyped-def]
    project = unique("fair")
    client = server.client(server.issue_token(project, "fs", "member"))
    yield project, client
    for c in client.get("/v1/containers").json()["containers"]:
        client.delete(f"/v1/containers/{c['uuid']}", params={"stop": "true"})
    caps = client.get("/v1/capsules").json()["capsules"]
    for c in caps:
        client.delete(f"/v1/capsules/{c['uuid']}")
    for c in caps:
        wait_for(lambda u=c["uuid"]: client.get(f"/v1/capsules/{u}").status_code == 404,
                 timeout=60, what="capsule deleted")
    client.close()


def running_capsule(client: httpx.Client, tmpl: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/capsules", json={"template": tmpl})
    assert r.status_code == 202, r.text
    uuid = r.json()["uuid"]
    return wait_for(lambda: (b := client.get(f"/v1/capsules/{uuid}").json())["status"] == "Running"
                    and b, timeout=60, what="capsule running")  # type: ignore[no-any-return]


def bare(docker_api: docker.APIClient, uuid: str) -> dict[str, Any]:
    found = docker_api.containers(all=True, filters={"label": [f"capsuled.container={uuid}",
                                                               "capsuled.role=bare"]})
    assert len(found) == 1, found
    return docker_api.inspect_container(found[0]["Id"])  # type: ignore[no-any-return]


def usage(client: httpx.Client, project: str) -> dict[str, Any]:
    r = client.get(f"/v1/quotas/{project}", params={"usages": "true"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# -- default limits and the pids limit ------------------------------------------------------

def test_capsule_containers_without_limits_get_the_defaults_and_a_pids_limit(
        tenant: tuple[str, httpx.Client], docker_api: docker.APIClient) -> None:
    project, client = tenant
    tmpl = template(None, [sleeper("plain"),
                           sleeper("sized", resources={"requests": {"cpu": 1, "memory": 64}})])
    body = running_capsule(client, tmpl)
    shown = {c["name"]: c for c in body["containers"]}
    assert (shown["plain"]["cpu"], shown["plain"]["memory"]) == (0.1, "256")
    assert (shown["sized"]["cpu"], shown["sized"]["memory"]) == (1.0, "64")
    plain = member(docker_api, body["uuid"], "plain")["HostConfig"]
    assert plain["NanoCpus"] == 100_000_000 and plain["Memory"] == 256 * MiB
    assert plain["PidsLimit"] == 1024
    sized = member(docker_api, body["uuid"], "sized")["HostConfig"]
    assert sized["NanoCpus"] == 1_000_000_000 and sized["Memory"] == 64 * MiB
    assert sized["PidsLimit"] == 1024
    assert sandbox(docker_api, body["uuid"])["HostConfig"]["PidsLimit"] == 1024
    # Charged to the quota like explicit requests.
    used = usage(client, project)
    assert used["cpu"]["in_use"] == pytest.approx(1.1) and used["memory"]["in_use"] == 256 + 64


def test_bare_and_added_containers_get_the_defaults_and_a_pids_limit(
        tenant: tuple[str, httpx.Client], docker_api: docker.APIClient) -> None:
    project, client = tenant
    r = client.post("/v1/containers", params={"run": "true"},
                    json={"image": "busybox", "command": ["sleep", "3600"]})
    assert r.status_code == 202, r.text
    created = r.json()
    assert (created["cpu"], created["memory"]) == (0.1, "256")
    uuid = created["uuid"]
    wait_for(lambda: client.get(f"/v1/containers/{uuid}").json()["status"] == "Running",
             timeout=60, what="bare container running")
    host = bare(docker_api, uuid)["HostConfig"]
    assert (host["NanoCpus"], host["Memory"], host["PidsLimit"]) == (100_000_000, 256 * MiB, 1024)

    capsule = running_capsule(client, template(None, [sleeper("main", resources={
        "requests": {"cpu": 0.25, "memory": 32}})]))
    r = client.post("/v1/containers", json={"image": "busybox", "command": ["sleep", "3600"],
                                            "name": "extra", "capsule": capsule["uuid"]})
    assert r.status_code == 202, r.text
    assert (r.json()["cpu"], r.json()["memory"]) == (0.1, "256")
    wait_for(lambda: any(c["name"] == "extra" and c["status"] == "Running" for c in
                         client.get(f"/v1/capsules/{capsule['uuid']}").json()["containers"]),
             timeout=60, what="added container running")
    extra = member(docker_api, capsule["uuid"], "extra")["HostConfig"]
    assert (extra["NanoCpus"], extra["Memory"], extra["PidsLimit"]) == (100_000_000, 256 * MiB, 1024)
    used = usage(client, project)
    assert used["cpu"]["in_use"] == pytest.approx(0.45)
    assert used["memory"]["in_use"] == 256 + 32 + 256


def test_default_limits_are_configurable(own_server, unique, docker_api: docker.APIClient) -> None:  # type: ignore[no-untyped-def]
    srv = own_server(CAPSULED_LIMITS__DEFAULT_CPU="0.25", CAPSULED_LIMITS__DEFAULT_MEMORY="128",
                     CAPSULED_LIMITS__PIDS_LIMIT="77")
    with srv.client(srv.issue_token(unique("fair"), "fs", "member")) as client:
        body = running_capsule(client, template(None, [sleeper("plain")]))
        host = member(docker_api, body["uuid"], "plain")["HostConfig"]
        assert (host["NanoCpus"], host["Memory"], host["PidsLimit"]) == (250_000_000, 128 * MiB, 77)
        assert sandbox(docker_api, body["uuid"])["HostConfig"]["PidsLimit"] == 77


# -- host capacity on run --capsule and resize -----------------------------------------------

def test_adding_or_resizing_beyond_the_hosts_capacity_is_refused_without_naming_it(
        tenant: tuple[str, httpx.Client], docker_api: docker.APIClient) -> None:
    """The test host has far fewer than 16 CPUs; the quota (20) would allow it."""
    project, client = tenant
    capsule = running_capsule(client, template(None, [sleeper("main", resources={
        "requests": {"cpu": 0.25, "memory": 32}})]))
    r = client.post("/v1/containers", json={"image": "busybox", "command": ["sleep", "3600"],
                                            "name": "huge", "cpu": 16, "capsule": capsule["uuid"]})
    assert r.status_code == 409, r.text
    detail = r.json()["errors"][0]["detail"]
    assert detail == "cpu: the capsule's host has not enough free CPU for 16 more cores."
    after = client.get(f"/v1/capsules/{capsule['uuid']}").json()
    assert [c["name"] for c in after["containers"]] == ["main"] and after["cpu"] == 0.25
    assert usage(client, project)["cpu"]["in_use"] == 0.25

    r = client.patch(f"/v1/containers/{capsule['containers'][0]['uuid']}",
                     params={"capsule": capsule["uuid"]}, json={"cpu": 16})
    assert r.status_code == 409, r.text
    assert "capsule's host has not enough free CPU for 15.75 more cores" in r.text
    assert member(docker_api, capsule["uuid"], "main")["HostConfig"]["NanoCpus"] == 250_000_000
    # Within the host's room a resize still works, live.
    r = client.patch(f"/v1/containers/{capsule['containers'][0]['uuid']}",
                     params={"capsule": capsule["uuid"]}, json={"cpu": 0.5})
    assert r.status_code == 200, r.text
    wait_for(lambda: member(docker_api, capsule["uuid"], "main")["HostConfig"]["NanoCpus"]
             == 500_000_000, timeout=30, what="resize applied")

    r = client.post("/v1/containers", params={"run": "true"},
                    json={"image": "busybox", "command": ["sleep", "3600"], "cpu": 0.25})
    assert r.status_code == 202, r.text
    uuid = r.json()["uuid"]
    wait_for(lambda: client.get(f"/v1/containers/{uuid}").json()["status"] == "Running",
             timeout=60, what="bare container running")
    r = client.patch(f"/v1/containers/{uuid}", json={"cpu": 16})
    assert r.status_code == 409 and "container's host has not enough free CPU" in r.text
    assert "host-" not in r.text and "free)" not in r.text


# -- events and actions: aggregated, pruned, paginated ---------------------------------------

def test_a_failing_sync_counts_up_one_event_and_events_are_pruned_and_paginated(
        own_server, unique) -> None:  # type: ignore[no-untyped-def]
    srv = own_server(CAPSULED_LIMITS__EVENTS_PER_CAPSULE="4", CAPSULED_AGENT__BACKOFF_MAX="0.3",
                     CAPSULED_AGENT__BACKOFF_INITIAL="0.1")
    with srv.client(srv.issue_token(unique("fair"), "fs", "member")) as client:
        r = client.post("/v1/capsules", json={"template": template(None, [sleeper(
            "app", image="capsuled-test/absent:1", imagePullPolicy="Never")])})
        assert r.status_code == 202, r.text
        uuid = r.json()["uuid"]

        def failed() -> dict[str, Any] | None:
            events = client.get(f"/v1/capsules/{uuid}/events").json()["events"]
            return next((e for e in events if e["reason"] == "Failed" and e["count"] >= 5), None)

        event = wait_for(failed, timeout=60, what="a Failed event counted 5 times")
        assert "imagePullPolicy is Never" in event["message"] and event["last_seen"] > event["created_at"]
        events = client.get(f"/v1/capsules/{uuid}/events").json()["events"]
        assert [e["reason"] for e in events].count("Failed") == 1, events

        # More distinct events than the cap: only the newest 4 stay, oldest first.
        capsule = running_capsule(client, template(None, [sleeper("main")]))
        for i in range(3):
            r = client.post("/v1/containers", json={"image": "busybox", "name": f"x{i}",
                                                    "command": ["sleep", "3600"],
                                                    "capsule": capsule["uuid"]})
            assert r.status_code == 202, r.text
        wait_for(lambda: sum(c["status"] == "Running" for c in client.get(
            f"/v1/capsules/{capsule['uuid']}").json()["containers"]) == 4, timeout=60,
            what="added containers running")
        events = client.get(f"/v1/capsules/{capsule['uuid']}/events").json()["events"]
        assert len(events) == 4, events
        assert "Accepted" not in [e["reason"] for e in events]
        assert [e["id"] for e in events] == sorted(e["id"] for e in events)
        first = client.get(f"/v1/capsules/{capsule['uuid']}/events", params={"limit": 3}).json()
        assert first["events"] == events[:3]
        rest = client.get(f"/v1/capsules/{capsule['uuid']}/events",
                          params={"limit": 3, "marker": first["events"][-1]["id"]}).json()
        assert rest["events"] == events[3:]
        r = client.get(f"/v1/capsules/{capsule['uuid']}/events", params={"marker": "x"})
        assert r.status_code == 400 and "marker" in r.text


def test_container_actions_are_pruned_and_paginated(own_server, unique) -> None:  # type: ignore[no-untyped-def]
    srv = own_server(CAPSULED_LIMITS__ACTIONS_PER_CONTAINER="3")
    with srv.client(srv.issue_token(unique("fair"), "fs", "member")) as client:
        r = client.post("/v1/containers", params={"run": "true"},
                        json={"image": "busybox", "command": ["sleep", "3600"]})
        assert r.status_code == 202, r.text
        uuid = r.json()["uuid"]

        def status(want: str) -> None:
            wait_for(lambda: client.get(f"/v1/containers/{uuid}").json()["status"] == want,
                     timeout=60, what=f"container {want}")

        status("Running")
        for action, then in (("pause", "Paused"), ("unpause", "Running"),
                             ("pause", "Paused"), ("unpause", "Running")):
            assert client.post(f"/v1/containers/{uuid}/{action}").status_code == 202
            status(then)
        actions = client.get(f"/v1/containers/{uuid}/container_actions").json()["containerActions"]
        assert [a["action"] for a in actions] == ["unpause", "pause", "unpause"]
        page = client.get(f"/v1/containers/{uuid}/container_actions",
                          params={"limit": 2}).json()["containerActions"]
        assert page == actions[:2]
        rest = client.get(f"/v1/containers/{uuid}/container_actions",
                          params={"marker": page[-1]["request_id"]}).json()["containerActions"]
        assert rest == actions[2:]


# -- force delete on a host that is gone ------------------------------------------------------

def test_force_delete_on_a_host_that_is_down_frees_the_quota_and_the_agent_cleans_up(
        own_server, unique, docker_api: docker.APIClient) -> None:  # type: ignore[no-untyped-def]
    srv = own_server()
    project = unique("fair")
    with srv.client() as admin, srv.client(srv.issue_token(project, "fs", "member")) as client:
        capsule = running_capsule(client, template(None, [sleeper("main")]))
        r = client.post("/v1/containers", params={"run": "true"},
                        json={"image": "busybox", "command": ["sleep", "3600"], "name": "solo"})
        assert r.status_code == 202, r.text
        solo = r.json()["uuid"]
        wait_for(lambda: client.get(f"/v1/containers/{solo}").json()["status"] == "Running",
                 timeout=60, what="bare container running")
        # While the host is up, force is an admin's power.
        r = client.delete(f"/v1/capsules/{capsule['uuid']}", params={"force": "true"})
        assert r.status_code == 403 and "host is up" in r.text
        r = client.delete(f"/v1/containers/{solo}", params={"force": "true", "stop": "true"})
        assert r.status_code == 403 and "host is up" in r.text

        host = admin.get("/v1/hosts").json()["hosts"][0]["hostname"]
        r = admin.put("/v1/services/force_down", json={"host": host, "binary": "capsuled-agent",
                                                       "forced_down": True})
        assert r.status_code == 200, r.text
        assert client.delete(f"/v1/capsules/{capsule['uuid']}",
                             params={"force": "true"}).status_code == 204
        assert client.get(f"/v1/capsules/{capsule['uuid']}").status_code == 404
        assert client.delete(f"/v1/containers/{solo}", params={"force": "true"}).status_code == 204
        assert client.get(f"/v1/containers/{solo}").status_code == 404
        used = usage(client, project)
        assert (used["capsules"]["in_use"], used["containers"]["in_use"], used["cpu"]["in_use"]) \
            == (0, 0, 0)
        # The agent (still there after all) removes what the rows no longer ask for.
        wait_for(lambda: not docker_api.containers(all=True, filters={"label": [
            f"capsuled.capsule={capsule['uuid']}"]}), timeout=60, what="capsule's containers removed")
        wait_for(lambda: not docker_api.containers(all=True, filters={"label": [
            f"capsuled.container={solo}"]}), timeout=60, what="bare container removed")


# -- volume sizes: charged, not enforced, and said so ------------------------------------------

def test_the_api_says_volume_sizes_are_not_enforced(tenant: tuple[str, httpx.Client]) -> None:
    project, client = tenant
    r = client.post("/v1/capsules", json={"template": template(
        None, [sleeper("main", volumeMounts=[{"name": "data", "mountPath": "/data"}])],
        volumes=[{"name": "data", "cinder": {"size": 1}}])})
    assert r.status_code == 202, r.text
    assert r.json()["volumes"][0]["size"] == 1 and r.json()["volumes"][0]["size_enforced"] is False
    r = client.post("/v1/containers", json={"image": "busybox", "command": ["sleep", "3600"],
                                            "mounts": [{"size": 1, "destination": "/data"}]})
    assert r.status_code == 202, r.text
    assert r.json()["disk"] == 1 and r.json()["disk_enforced"] is False
    assert usage(client, project)["disk"]["in_use"] == 2


def test_containers_made_before_the_pids_limit_get_it_in_place_on_upgrade(
        own_server, unique, docker_api: docker.APIClient) -> None:  # type: ignore[no-untyped-def]
    srv = own_server()
    with srv.client(srv.issue_token(unique("fair"), "fs", "member")) as client:
        capsule = running_capsule(client, template(None, [sleeper("main")]))
        r = client.post("/v1/containers", params={"run": "true"},
                        json={"image": "busybox", "command": ["sleep", "3600"]})
        assert r.status_code == 202, r.text
        solo = r.json()["uuid"]
        wait_for(lambda: client.get(f"/v1/containers/{solo}").json()["status"] == "Running",
                 timeout=60, what="bare container running")
    before = {"main": member(docker_api, capsule["uuid"], "main")["Id"],
              "sandbox": sandbox(docker_api, capsule["uuid"])["Id"], "solo": bare(docker_api, solo)["Id"]}
    srv.stop()
    for cid in before.values():  # as an older capsuled made them: no pids limit
        docker_api._raise_for_status(docker_api._post_json(
            docker_api._url("/containers/{0}/update", cid), data={"PidsLimit": -1}))
        assert docker_api.inspect_container(cid)["HostConfig"]["PidsLimit"] in (None, 0, -1)
    srv.env["CAPSULED_LIMITS__PIDS_LIMIT"] = "500"
    srv.start()

    def limits() -> dict[str, int | None]:
        return {"main": member(docker_api, capsule["uuid"], "main")["HostConfig"]["PidsLimit"],
                "sandbox": sandbox(docker_api, capsule["uuid"])["HostConfig"]["PidsLimit"],
                "solo": bare(docker_api, solo)["HostConfig"]["PidsLimit"]}

    wait_for(lambda: limits() == {"main": 500, "sandbox": 500, "solo": 500}, timeout=60,
             what="pids limits applied")
    # In place: the same containers, not new ones.
    assert {"main": member(docker_api, capsule["uuid"], "main")["Id"],
            "sandbox": sandbox(docker_api, capsule["uuid"])["Id"],
            "solo": bare(docker_api, solo)["Id"]} == before
