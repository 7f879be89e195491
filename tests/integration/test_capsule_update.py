"""Capsule updates on the real Docker Engine, through the API: an image change replaces
one container while the other keeps its Docker id and start time; an env change; a new
volume remakes the capsule in place (same uuid and name, a new sandbox); an update whose
readiness probe never passes rolls back by itself; a rollback by hand to revision N; an
update beyond quota is refused up front; two updates at once: one 202, one 409."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import docker
import httpx
import pytest
from conftest import Capsules, Server, exec_in, member, sandbox, sleeper, template, wait_for

pytestmark = pytest.mark.docker

HTTPD = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"


@pytest.fixture()
def v2(docker_api: docker.APIClient, unique: Callable[[str], str]) -> Iterator[str]:
    """A second image (busybox under another name): an image change without a pull."""
    repo = unique("upd-busybox")
    docker_api.tag("busybox:latest", repo, "v2")
    yield f"{repo}:v2"
    try:
        docker_api.remove_image(f"{repo}:v2")
    except docker.errors.APIError:
        pass  # still used by a container being removed: the tag is harmless


def patch(api: httpx.Client, ident: str, **body: Any) -> httpx.Response:
    return api.patch(f"/v1/capsules/{ident}", json=body)


def settled(capsules: Capsules, ident: str, timeout: float = 60) -> dict[str, Any]:
    """The capsule once no rollout is under way."""
    def check() -> dict[str, Any] | None:
        body = capsules.get(ident)
        return body if body["rollout"] is None and body["status"] != "Updating" else None
    return wait_for(check, timeout=timeout, what=f"{ident}'s update to end")  # type: ignore[no-any-return]


def revisions(api: httpx.Client, ident: str) -> list[dict[str, Any]]:
    r = api.get(f"/v1/capsules/{ident}/revisions")
    assert r.status_code == 200, r.text
    return r.json()["revisions"]  # type: ignore[no-any-return]


def test_image_then_env_change_replace_only_what_changed(
        capsules: Capsules, docker_api: docker.APIClient, unique: Callable[[str], str], v2: str) -> None:
    name = unique("upd")
    body = capsules.create(template(name, [sleeper("web", env={"MODE": "a"}), sleeper("side")]))
    uuid = body["uuid"]
    capsules.wait_status(uuid, "Running")
    side, web = member(docker_api, uuid, "side"), member(docker_api, uuid, "web")
    box = sandbox(docker_api, uuid)

    r = patch(capsules.api, name, containers=[{"name": "web", "image": v2}])
    assert r.status_code == 202, r.text
    assert (r.json()["status"], r.json()["revision"]) == ("Updating", 2)
    done = settled(capsules, uuid)
    assert (done["status"], done["revision"]) == ("Running", 2)
    web2 = member(docker_api, uuid, "web")
    assert web2["Id"] != web["Id"] and web2["Config"]["Image"] == v2
    side_now = member(docker_api, uuid, "side")
    assert (side_now["Id"], side_now["State"]["StartedAt"]) == (side["Id"], side["State"]["StartedAt"])
    assert sandbox(docker_api, uuid)["Id"] == box["Id"]  # same sandbox: same network identity
    assert web2["HostConfig"]["NetworkMode"] == f"container:{box['Id']}"

    r = patch(capsules.api, uuid, containers=[{"name": "side", "env": {"K": "v"}}],
              change_cause="add K")
    assert r.status_code == 202, r.text
    settled(capsules, uuid)
    side2 = member(docker_api, uuid, "side")
    assert side2["Id"] != side["Id"] and "K=v" in side2["Config"]["Env"]
    assert member(docker_api, uuid, "web")["Id"] == web2["Id"]
    revs = revisions(capsules.api, uuid)
    assert [(r["revision"], r["outcome"], r["change_cause"]) for r in revs] == [
        (1, None, "created"), (2, "Ready", f"update: image web={v2}"), (3, "Ready", "add K")]
    assert revs[2]["template"]["spec"]["containers"][1]["env"] == {"K": "v"}
    reasons = [e["reason"] for e in capsules.api.get(f"/v1/capsules/{uuid}/events").json()["events"]]
    assert reasons.count("UpdateStarted") == 2 and reasons.count("UpdateDone") == 2


def test_a_new_volume_remakes_the_capsule_in_place(capsules: Capsules, docker_api: docker.APIClient,
                                                   unique: Callable[[str], str]) -> None:
    name = unique("updvol")
    body = capsules.create(template(name, [sleeper("web")]))
    uuid = body["uuid"]
    capsules.wait_status(uuid, "Running")
    old_box = sandbox(docker_api, uuid)
    new = template(name, [sleeper("web", volumeMounts=[{"name": "data", "mountPath": "/data"}])],
                   volumes=[{"name": "data", "emptyDir": {}}])
    r = patch(capsules.api, uuid, template=new)
    assert r.status_code == 202, r.text
    done = settled(capsules, uuid)
    assert (done["uuid"], done["name"], done["status"], done["restart_count"]) == (uuid, name, "Running", 0)
    box = sandbox(docker_api, uuid)
    assert box["Id"] != old_box["Id"] and box["Config"]["Labels"]["capsuled.sandbox-epoch"] == "1"
    web = member(docker_api, uuid, "web")
    assert exec_in(docker_api, web["Id"], "sh", "-c", "echo hi > /data/f && cat /data/f") == (0, "hi\n")
    assert [v["name"] for v in done["volumes"]] == ["data"]


def test_an_update_that_never_gets_ready_rolls_back_by_itself(
        capsules: Capsules, docker_api: docker.APIClient, unique: Callable[[str], str]) -> None:
    name = unique("updrb")
    web = {"name": "web", "image": "busybox", "command": ["sh", "-c", HTTPD],
           "readinessProbe": {"httpGet": {"port": 8080, "path": "/index.html"},
                              "periodSeconds": 1, "failureThreshold": 1}}
    body = capsules.create(template(name, [web, sleeper("side")], progressDeadlineSeconds=4))
    uuid = body["uuid"]
    capsules.wait_status(uuid, "Running")
    wait_for(lambda: capsules.get(uuid)["all_ready"], timeout=20, what="ready")
    before = member(docker_api, uuid, "web")["Id"]
    # The new version serves nothing: its readiness probe gets 404s.
    broken = {**web, "command": ["sh", "-c", "mkdir -p /www && exec httpd -f -p 8080 -h /www"]}
    r = patch(capsules.api, uuid, template=template(name, [broken, sleeper("side")],
                                                    progressDeadlineSeconds=4))
    assert r.status_code == 202, r.text
    wait_for(lambda: capsules.get(uuid)["revision"] == 3, timeout=30, what="the automatic rollback")
    done = settled(capsules, uuid)
    assert done["status"] == "Running"
    revs = revisions(capsules.api, uuid)
    assert [r["outcome"] for r in revs] == [None, "Failed", "Ready"]
    assert "not ready within progressDeadlineSeconds (4s)" in revs[1]["outcome_reason"]
    assert revs[2]["change_cause"].startswith("automatic rollback to revision 1")
    assert revs[2]["template"]["spec"]["containers"][0]["command"] == ["sh", "-c", HTTPD]
    wait_for(lambda: capsules.get(uuid)["all_ready"], timeout=20, what="ready again")
    now = member(docker_api, uuid, "web")
    assert now["Id"] != before and now["Config"]["Entrypoint"] == ["sh", "-c", HTTPD]
    events = capsules.api.get(f"/v1/capsules/{uuid}/events").json()["events"]
    assert {"UpdateFailed", "RollingBack", "RolledBack"} <= {e["reason"] for e in events}
    records = capsules.api.get("/v1/events", params={"capsule": uuid}).json()["events"]
    assert "RolledBack" in {rec["reason"] for rec in records}


def test_rollback_by_hand_to_revision_n(capsules: Capsules, docker_api: docker.APIClient,
                                        unique: Callable[[str], str], v2: str) -> None:
    name = unique("updhand")
    uuid = capsules.create(template(name, [sleeper("web")]))["uuid"]
    capsules.wait_status(uuid, "Running")
    for change in ({"image": v2}, {"env": {"N": "3"}}):
        assert patch(capsules.api, uuid, containers=[{"name": "web", **change}]).status_code == 202
        settled(capsules, uuid)
    r = capsules.api.post(f"/v1/capsules/{uuid}/rollback", json={"revision": 2})
    assert r.status_code == 202, r.text
    done = settled(capsules, uuid)
    assert (done["revision"], done["status"]) == (4, "Running")
    web = member(docker_api, uuid, "web")
    assert web["Config"]["Image"] == v2
    assert not any(e.startswith("N=") for e in web["Config"]["Env"] or [])
    assert revisions(capsules.api, uuid)[-1]["change_cause"] == "rollback to revision 2"
    old = capsules.api.post(f"/v1/capsules/{uuid}/rollback", json={},
                            headers={"OpenStack-API-Version": "container 1.39"})
    assert old.status_code == 406


def test_an_update_beyond_quota_is_refused_up_front(server: Server, unique: Callable[[str], str]) -> None:
    project = unique("updq")
    with server.client() as admin:
        assert admin.put(f"/v1/quotas/{project}", json={"cpu": 1}).status_code == 200
    with server.client(server.issue_token(project, "u1")) as api:
        capsules = Capsules(api)
        try:
            name = unique("q")
            uuid = capsules.create(template(name, [sleeper("web")]))["uuid"]
            capsules.wait_status(uuid, "Running")
            big = template(name, [sleeper("web", resources={"requests": {"cpu": 2}})])
            r = patch(api, uuid, template=big)
            assert r.status_code == 403, r.text
            assert "Quota exceeded for resources: cpu" in r.text
            got = capsules.get(uuid)
            assert (got["revision"], got["status"], got["cpu"]) == (1, "Running", 0.1)
            assert any(e["reason"] == "UpdateRefused" for e in
                       api.get(f"/v1/capsules/{uuid}/events").json()["events"])
        finally:
            capsules.cleanup()


def test_two_updates_at_once_one_wins_the_other_is_a_409(capsules: Capsules,
                                                         unique: Callable[[str], str], v2: str) -> None:
    name = unique("updcc")
    uuid = capsules.create(template(name, [sleeper("web"), sleeper("side")]))["uuid"]
    capsules.wait_status(uuid, "Running")
    answers: list[int] = []
    barrier = threading.Barrier(2)

    def update(container: str) -> None:
        with httpx.Client(base_url=str(capsules.api.base_url), headers=capsules.api.headers) as c:
            barrier.wait()
            answers.append(patch(c, uuid, containers=[{"name": container, "image": v2}]).status_code)

    threads = [threading.Thread(target=update, args=(n,)) for n in ("web", "side")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [202, 409]
    done = settled(capsules, uuid)
    assert done["revision"] == 2 and done["status"] == "Running"
    images = sorted(c["image"] for c in done["containers"])
    assert images == sorted([v2, "busybox"])  # exactly one of the two changes, never both
