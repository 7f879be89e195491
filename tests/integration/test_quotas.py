"""Quotas on a real server: limits, usage derived from what exists, refusals that name the
resource and create nothing, and exactness under concurrent creates and deletes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import Server, sleeper, template, wait_for

pytestmark = [pytest.mark.docker]


@pytest.fixture()
def project(server: Server, unique) -> Iterator[tuple[str, httpx.Client, httpx.Client]]:  # type: ignore[no-untyped-def]
    name = unique("quota")
    admin = server.client()
    member = server.client(server.issue_token(name, "qa", "member"))
    yield name, admin, member
    for c in member.get("/v1/containers").json()["containers"]:
        member.delete(f"/v1/containers/{c['uuid']}", params={"stop": "true"})
    caps = member.get("/v1/capsules").json()["capsules"]
    for c in caps:
        member.delete(f"/v1/capsules/{c['uuid']}")
    for c in caps:
        wait_for(lambda u=c["uuid"]: member.get(f"/v1/capsules/{u}").status_code == 404,
                 timeout=60, what="capsule deleted")
    admin.close()
    member.close()


def usage(member: httpx.Client, project: str) -> dict[str, dict[str, float]]:
    r = member.get(f"/v1/quotas/{project}", params={"usages": "true"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_defaults_and_overrides(project: tuple[str, httpx.Client, httpx.Client]) -> None:
    name, admin, member = project
    defaults = member.get(f"/v1/quotas/{name}/defaults").json()
    assert defaults == {"capsules": 20, "containers": 40, "cpu": 20, "memory": 51200, "disk": 100}
    assert member.get(f"/v1/quotas/{name}").json() == defaults
    r = member.put(f"/v1/quotas/{name}", json={"capsules": 1})
    assert r.status_code == 403 and "quota:update" in r.text
    r = admin.put(f"/v1/quotas/{name}", json={"capsules": 3, "cpu": 1.5, "memory": -1})
    assert r.status_code == 200, r.text
    assert r.json() == {**defaults, "capsules": 3, "cpu": 1.5, "memory": -1}
    assert member.get("/v1/quotas/someone-else").status_code == 403
    assert admin.delete(f"/v1/quotas/{name}").status_code == 204
    assert member.get(f"/v1/quotas/{name}").json() == defaults


def test_bad_quota_updates_name_the_field(project: tuple[str, httpx.Client, httpx.Client]) -> None:
    name, admin, _ = project
    r = admin.put(f"/v1/quotas/{name}", json={"cpu": "lots", "gpus": 1, "containers": 2.5})
    assert r.status_code == 400
    detail = r.json()["errors"][0]["detail"]
    assert "cpu: must be a number" in detail and "gpus: unknown quota resource" in detail
    assert "containers: must be a whole number" in detail


def test_capsules_count_with_their_containers_cpu_memory_and_disk(
        project: tuple[str, httpx.Client, httpx.Client]) -> None:
    name, admin, member = project
    tmpl = template("charged", [sleeper("a", resources={"requests": {"cpu": 0.5, "memory": 32}}),
                                sleeper("b", resources={"requests": {"cpu": 0.25, "memory": 16}})],
                    volumes=[{"name": "data", "cinder": {"size": 2, "autoRemove": True}}])
    tmpl["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    r = member.post("/v1/capsules", json={"template": tmpl})
    assert r.status_code == 202, r.text
    u = usage(member, name)
    assert u["capsules"]["in_use"] == 1 and u["containers"]["in_use"] == 2
    assert u["cpu"]["in_use"] == 0.75 and u["memory"]["in_use"] == 48 and u["disk"]["in_use"] == 2
    bare = member.post("/v1/containers", params={"run": "true"},
                       json={"image": "busybox", "command": ["sleep", "300"], "cpu": 0.25, "memory": 8})
    assert bare.status_code == 202, bare.text
    u = usage(member, name)
    assert u["containers"]["in_use"] == 3 and u["cpu"]["in_use"] == 1.0 and u["memory"]["in_use"] == 56


def test_exceeding_a_quota_is_403_naming_limit_and_usage_and_creates_nothing(
        project: tuple[str, httpx.Client, httpx.Client]) -> None:
    name, admin, member = project
    admin.put(f"/v1/quotas/{name}", json={"cpu": 1, "containers": 2, "capsules": 5})
    ok = member.post("/v1/capsules", json={"template": template(
        "fits", [sleeper("a", resources={"requests": {"cpu": 0.75}})])})
    assert ok.status_code == 202, ok.text
    r = member.post("/v1/capsules", json={"template": template(
        "toobig", [sleeper("a", resources={"requests": {"cpu": 0.5}})])})
    assert r.status_code == 403
    err = r.json()["errors"][0]
    assert err["code"] == "container.over-quota"
    assert "cpu (limit 1, in use 0.75, requested 0.5)" in err["detail"]
    assert [c["name"] for c in member.get("/v1/capsules").json()["capsules"]] == ["fits"]
    # A bare container: one more container fits (asking for less CPU than the default
    # it would otherwise be charged), then the count is full.
    assert member.post("/v1/containers", params={"run": "true"},
                       json={"image": "busybox", "command": ["sleep", "300"], "name": "one",
                             "cpu": 0.1}).status_code == 202
    r = member.post("/v1/containers", params={"run": "true"},
                    json={"image": "busybox", "command": ["sleep", "300"], "name": "two"})
    assert r.status_code == 403 and "containers (limit 2, in use 2, requested 1)" in r.text
    assert [c["name"] for c in member.get("/v1/containers").json()["containers"]] == ["one"]
    # Growing a container past the CPU quota is refused too, and leaves it as it was.
    wait_for(lambda: member.get("/v1/containers/one").json()["status"] == "Running",
             what="one running")
    r = member.patch("/v1/containers/one", json={"cpu": 0.5})
    assert r.status_code == 403 and "cpu" in r.text
    assert member.get("/v1/containers/one").json()["cpu"] == 0.1


def test_usage_is_exact_under_50_concurrent_creates_and_deletes(
        project: tuple[str, httpx.Client, httpx.Client], server: Server) -> None:
    name, admin, member = project
    admin.put(f"/v1/quotas/{name}", json={"capsules": 5})
    token = member.headers["X-Auth-Token"]

    def create(i: int) -> int:
        with server.client(token) as c:
            return c.post("/v1/capsules", json={"template": template(
                f"race-{i}", [sleeper("a")])}).status_code

    with ThreadPoolExecutor(max_workers=25) as pool:
        codes = list(pool.map(create, range(50)))
    assert sorted(codes).count(202) == 5, codes
    assert sorted(codes).count(403) == 45, codes
    made = [c["uuid"] for c in member.get("/v1/capsules").json()["capsules"]]
    assert len(made) == 5
    assert usage(member, name)["capsules"]["in_use"] == 5

    # Deletes and creates at once: a create succeeds only once a delete has finished.
    def delete(u: str) -> int:
        with server.client(token) as c:
            return c.delete(f"/v1/capsules/{u}").status_code

    with ThreadPoolExecutor(max_workers=25) as pool:
        deletes = pool.map(delete, made)
        creates = pool.map(create, range(100, 120))
        assert list(deletes) == [204] * 5
        codes = list(creates)
    for u in made:
        wait_for(lambda u=u: member.get(f"/v1/capsules/{u}").status_code == 404, timeout=60,
                 what="capsule deleted")
    rows = member.get("/v1/capsules").json()["capsules"]
    assert len(rows) == codes.count(202) <= 5
    assert usage(member, name)["capsules"]["in_use"] == len(rows)


def test_a_bare_containers_own_volumes_count_as_disk(
        project: tuple[str, httpx.Client, httpx.Client]) -> None:
    name, admin, member = project
    assert admin.put(f"/v1/quotas/{name}", json={"disk": 3}).status_code == 200
    ok = member.post("/v1/containers", params={"run": "true"}, json={
        "image": "busybox", "command": ["sleep", "300"], "mounts": [{"size": 2, "destination": "/d"}]})
    assert ok.status_code == 202, ok.text
    u = admin.get(f"/v1/quotas/{name}", params={"usages": "true"}).json()
    assert u["disk"]["in_use"] == 2, u
    r = member.post("/v1/containers", params={"run": "true"}, json={
        "image": "busybox", "mounts": [{"size": 2, "destination": "/d"}]})
    assert r.status_code == 403, r.text
    assert "disk (limit 3 GiB, in use 2 GiB, requested 2 GiB)" in r.json()["errors"][0]["detail"]
    assert len(member.get("/v1/containers").json()["containers"]) == 1
