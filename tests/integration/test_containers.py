"""The container API on a real Docker Engine: bare containers, their actions and reads,
containers added to capsules, and the actions a capsule's container refuses."""

from __future__ import annotations

import base64
import io
import tarfile
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
from conftest import Capsules, exec_in, member, sandbox, sleeper, template, wait_for

pytestmark = [pytest.mark.docker]


class Containers:
    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        self.created: list[str] = []

    def run(self, expect: int = 202, run: bool = True, **body: Any) -> dict[str, Any]:
        body.setdefault("image", "busybox")
        r = self.api.post("/v1/containers", params={"run": "true"} if run else None, json=body)
        assert r.status_code == expect, r.text
        out: dict[str, Any] = r.json()
        if r.status_code == 202 and not body.get("capsule"):
            self.created.append(out["uuid"])
        return out

    def get(self, ident: str, **params: str) -> dict[str, Any]:
        r = self.api.get(f"/v1/containers/{ident}", params=params)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def wait(self, ident: str, *statuses: str, timeout: float = 30, **params: str) -> dict[str, Any]:
        got: dict[str, Any] = {}

        def check() -> bool:
            got.update(self.get(ident, **params))
            return got["status"] in statuses
        try:
            wait_for(check, timeout=timeout, what=f"{ident} to be {'/'.join(statuses)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; now {got.get('status')}: {got.get('status_reason')}") from None
        return got

    def act(self, ident: str, action: str, expect: int = 202, **params: str) -> httpx.Response:
        r = self.api.post(f"/v1/containers/{ident}/{action}", params=params, json={})
        assert r.status_code == expect, r.text
        return r

    def cleanup(self) -> None:
        for u in self.created:
            self.api.delete(f"/v1/containers/{u}", params={"stop": "true"})
        for u in self.created:
            try:
                wait_for(lambda u=u: self.api.get(f"/v1/containers/{u}").status_code == 404, timeout=30)
            except AssertionError:
                pass


@pytest.fixture()
def containers(api: httpx.Client) -> Iterator[Containers]:
    c = Containers(api)
    yield c
    c.cleanup()


def inspect(docker_api: docker.APIClient, body: dict[str, Any]) -> dict[str, Any]:
    found = docker_api.containers(all=True, filters={"label": [f"capsuled.container={body['uuid']}"]})
    assert len(found) == 1, found
    return docker_api.inspect_container(found[0]["Id"])  # type: ignore[no-any-return]


def test_run_applies_the_request_to_docker(containers: Containers, docker_api: docker.APIClient,
                                           unique) -> None:
    name = unique("bare")
    body = containers.run(name=name, command=["sleep", "3600"], cpu=0.5, memory="64",
                          environment={"GREETING": "hi"}, workdir="/tmp", labels={"app": "x"},
                          restart_policy={"Name": "on-failure", "MaximumRetryCount": "2"})
    assert body["status"] == "Creating" and body["name"] == name
    assert (body["cpu"], body["memory"], body["command"]) == (0.5, "64", ["sleep", "3600"])
    shown = containers.wait(name, "Running")
    assert shown["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": "2"}
    assert shown["capsule_id"] is None
    d = inspect(docker_api, body)
    assert d["State"]["Running"]
    assert d["HostConfig"]["NanoCpus"] == 500_000_000
    assert d["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert d["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert d["HostConfig"]["NetworkMode"] != "none" and not d["HostConfig"]["NetworkMode"].startswith("container:")
    assert "GREETING=hi" in d["Config"]["Env"]
    assert d["Config"]["WorkingDir"] == "/tmp"
    assert d["Config"]["Labels"]["app"] == "x"
    assert d["Config"]["Hostname"] == name
    listed = containers.api.get("/v1/containers").json()["containers"]
    assert name in [c["name"] for c in listed]


def test_lifecycle_actions_change_the_real_container(containers: Containers,
                                                     docker_api: docker.APIClient, unique) -> None:
    body = containers.run(name=unique("life"), run=False,
                          command=["sh", "-c", "trap 'exit 42' USR1; touch /tmp/trapped; "
                                   "while true; do sleep 0.2; done"])
    containers.wait(body["uuid"], "Created")
    assert inspect(docker_api, body)["State"]["Status"] == "created"

    containers.act(body["uuid"], "start")
    containers.wait(body["uuid"], "Running")
    first = inspect(docker_api, body)

    containers.act(body["uuid"], "pause")
    containers.wait(body["uuid"], "Paused")
    assert inspect(docker_api, body)["State"]["Paused"] is True
    containers.act(body["uuid"], "pause", expect=409)  # already paused: wrong state
    containers.act(body["uuid"], "unpause")
    containers.wait(body["uuid"], "Running")

    containers.act(body["uuid"], "stop", timeout="1")
    stopped = containers.wait(body["uuid"], "Stopped")
    assert inspect(docker_api, body)["State"]["Status"] == "exited"
    assert stopped["status_detail"].startswith("Exited")

    containers.act(body["uuid"], "start")
    containers.wait(body["uuid"], "Running")
    # PID 1 drops a signal it has no handler for: wait until the shell has set its trap.
    wait_for(lambda: containers.api.post(f"/v1/containers/{body['uuid']}/execute",
                                         json={"command": "test -f /tmp/trapped"}
                                         ).json().get("exit_code") == 0,
             timeout=10, what="the trap to be set")
    containers.act(body["uuid"], "kill", signal="usr1")
    killed = containers.wait(body["uuid"], "Stopped")
    assert killed["exit_code"] == 42  # the trap ran: the signal we asked for was sent

    containers.act(body["uuid"], "reboot", timeout="1")
    containers.wait(body["uuid"], "Running")
    after = inspect(docker_api, body)
    assert after["Id"] == first["Id"] and after["State"]["StartedAt"] != first["State"]["StartedAt"]

    actions = containers.api.get(f"/v1/containers/{body['uuid']}/container_actions").json()
    names = [a["action"] for a in actions["containerActions"]]
    assert names[:1] == ["create"] and {"start", "pause", "unpause", "stop", "kill", "reboot"} <= set(names)
    req = actions["containerActions"][1]["request_id"]
    one = containers.api.get(f"/v1/containers/{body['uuid']}/container_actions/{req}").json()
    assert one["events"][0]["result"] == "Success"


def test_delete_needs_stop_or_force_for_a_running_container(containers: Containers,
                                                            docker_api: docker.APIClient, unique) -> None:
    body = containers.run(name=unique("del"), command=["sleep", "3600"])
    containers.wait(body["uuid"], "Running")
    r = containers.api.delete(f"/v1/containers/{body['uuid']}")
    assert r.status_code == 409 and "Running" in r.json()["errors"][0]["detail"]
    assert containers.api.delete(f"/v1/containers/{body['uuid']}", params={"stop": "true"}).status_code == 204
    wait_for(lambda: containers.api.get(f"/v1/containers/{body['uuid']}").status_code == 404, timeout=30)
    assert docker_api.containers(all=True, filters={"label": [f"capsuled.container={body['uuid']}"]}) == []


def test_update_applies_cpu_and_memory_live_and_rename_keeps_the_container(
        containers: Containers, docker_api: docker.APIClient, unique) -> None:
    body = containers.run(name=unique("upd"), command=["sleep", "3600"], cpu=0.5, memory="64")
    containers.wait(body["uuid"], "Running")
    before = inspect(docker_api, body)
    r = containers.api.patch(f"/v1/containers/{body['uuid']}", json={"cpu": 1.0, "memory": "128"})
    assert r.status_code == 200, r.text
    assert (r.json()["cpu"], r.json()["memory"]) == (1.0, "128")
    wait_for(lambda: inspect(docker_api, body)["HostConfig"]["Memory"] == 128 * 1024 * 1024, timeout=15)
    after = inspect(docker_api, body)
    assert after["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert after["Id"] == before["Id"] and after["State"]["StartedAt"] == before["State"]["StartedAt"]

    new = unique("renamed")
    r = containers.api.patch(f"/v1/containers/{body['uuid']}", json={"name": new})
    assert r.status_code == 200 and r.json()["name"] == new
    assert containers.get(new)["uuid"] == body["uuid"]
    assert inspect(docker_api, body)["Id"] == before["Id"]

    bad = containers.api.patch(f"/v1/containers/{body['uuid']}", json={"memory": "1"})
    assert bad.status_code == 400 and "memory" in bad.json()["errors"][0]["detail"]


def test_logs_and_exec_are_byte_exact(containers: Containers, unique) -> None:
    # busybox printf stops at a NUL in its format, so the zero bytes come from /dev/zero.
    script = (r"printf 'line one\nline two\n'; head -c 2 /dev/zero; printf '\001\377\376bin\n';"
              r" printf 'to stderr\n' >&2; sleep 3600")
    body = containers.run(name=unique("logs"), command=["sh", "-c", script])
    containers.wait(body["uuid"], "Running")
    url = f"/v1/containers/{body['uuid']}/logs"

    def raw(**params: str) -> bytes:
        r = containers.api.get(url, params=params, headers={"Accept": "application/octet-stream"})
        assert r.status_code == 200, r.text
        return r.content
    wait_for(lambda: b"to stderr" in raw(), timeout=10)
    assert raw(stderr="false") == b"line one\nline two\n\x00\x00\x01\xff\xfebin\n"
    assert raw(stdout="false") == b"to stderr\n"
    as_json = containers.api.get(url, params={"stderr": "false"}).json()
    assert isinstance(as_json, str) and as_json.startswith("line one\nline two\n")
    assert raw(stderr="false", timestamps="true").split(b" ", 1)[0].decode().startswith("20")

    r = containers.api.post(f"/v1/containers/{body['uuid']}/execute",
                            json={"command": "sh -c \"printf 'a\\nb'; head -c 1 /dev/zero; printf '\\377'; exit 3\""})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["exit_code"] == 3
    assert base64.b64decode(out["output_base64"]) == b"a\nb\x00\xff"
    assert out["output"].startswith("a\nb")

    top = containers.api.get(f"/v1/containers/{body['uuid']}/top").json()
    assert "PID" in top["Titles"] and any("sleep" in " ".join(p) for p in top["Processes"])
    stats = containers.api.get(f"/v1/containers/{body['uuid']}/stats").json()
    assert set(stats) == {"CONTAINER", "CPU %", "MEM USAGE(MiB)", "MEM LIMIT(MiB)", "MEM %",
                          "BLOCK I/O(B)", "NET I/O(B)"}


def _tar(files: dict[str, bytes], extra: tarfile.TarInfo | None = None) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra)
    return base64.b64encode(buf.getvalue()).decode()


def test_copy_in_and_out_round_trips_a_tree_and_refuses_escapes(containers: Containers, unique) -> None:
    body = containers.run(name=unique("cp"), command=["sleep", "3600"])
    containers.wait(body["uuid"], "Running")
    files = {"tree/a.txt": b"alpha\n", "tree/sub/b.bin": bytes(range(256)), "tree/sub/deeper/c": b""}
    r = containers.api.post(f"/v1/containers/{body['uuid']}/put_archive", params={"path": "/tmp"},
                            json={"data": _tar(files)})
    assert r.status_code == 200, r.text
    got = containers.api.get(f"/v1/containers/{body['uuid']}/get_archive", params={"path": "/tmp/tree"})
    assert got.status_code == 200, got.text
    assert got.json()["stat"]["name"] == "tree"
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(got.json()["data"]))) as tar:
        back = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert back == files

    escape = containers.api.post(f"/v1/containers/{body['uuid']}/put_archive", params={"path": "/tmp"},
                                 json={"data": _tar({"../../etc/evil": b"x"})})
    assert escape.status_code == 400 and "../../etc/evil" in escape.json()["errors"][0]["detail"]
    link = tarfile.TarInfo("tree/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
    escape = containers.api.post(f"/v1/containers/{body['uuid']}/put_archive", params={"path": "/tmp"},
                                 json={"data": _tar({}, link)})
    assert escape.status_code == 400
    out = containers.api.get(f"/v1/containers/{body['uuid']}/get_archive", params={"path": "/tmp/../etc"})
    assert out.status_code == 400 and "path" in out.json()["errors"][0]["detail"]
    onto_file = containers.api.post(f"/v1/containers/{body['uuid']}/put_archive",
                                    params={"path": "/etc/hostname"}, json={"data": _tar(files)})
    assert onto_file.status_code == 400, onto_file.text
    assert "not a directory" in onto_file.json()["errors"][0]["detail"]


def test_auto_remove_container_disappears_after_exit(containers: Containers, docker_api: docker.APIClient,
                                                     unique) -> None:
    body = containers.run(name=unique("rm"), command=["sh", "-c", "sleep 1"], auto_remove=True)
    wait_for(lambda: containers.api.get(f"/v1/containers/{body['uuid']}").status_code == 404, timeout=30,
             what="auto_remove container to go")
    assert docker_api.containers(all=True, filters={"label": [f"capsuled.container={body['uuid']}"]}) == []


@pytest.mark.parametrize(("body", "needle"), [
    ({"command": ["true"]}, "image: is required"),
    ({"image": "busybox", "memory": "lots"}, "memory"),
    ({"image": "busybox", "cpu": 100}, "cpu"),
    ({"image": "busybox", "bogus": 1}, "bogus: unknown field"),
    ({"image": "busybox", "restart_policy": {"Name": "always", "MaximumRetryCount": "3"}},
     "MaximumRetryCount"),
    ({"image": "busybox", "name": "bad name!"}, "name"),
    ({"image": "busybox", "nets": [{"network": "private"}]}, "nets"),
])
def test_bad_create_is_400_naming_the_field_and_creates_nothing(api: httpx.Client, body: dict[str, Any],
                                                                needle: str) -> None:
    before = len(api.get("/v1/containers").json()["containers"])
    r = api.post("/v1/containers", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["errors"][0]["detail"]
    assert len(api.get("/v1/containers").json()["containers"]) == before


def test_run_in_capsule_joins_it_and_capsule_rules_apply(capsules: Capsules, containers: Containers,
                                                        docker_api: docker.APIClient, unique) -> None:
    name = unique("host")
    cap = capsules.create(template(name, [
        {**sleeper("main"), "volumeMounts": [{"name": "data", "mountPath": "/data"}],
         "command": ["sh", "-c", "echo shared > /data/f; sleep 3600"]}],
        volumes=[{"name": "data", "emptyDir": {}}]))
    capsules.wait_status(cap["uuid"], "Running")
    added = containers.run(capsule=name, name="extra", command=["sleep", "3600"],
                           mounts=[{"source": "data", "destination": "/shared"}])
    assert added["capsule_id"] == cap["uuid"]
    containers.wait(added["uuid"], "Running")
    shown = capsules.wait_status(cap["uuid"], "Running")
    assert "extra" in [c["name"] for c in shown["containers"]]
    d = member(docker_api, cap["uuid"], "extra")
    assert d["HostConfig"]["NetworkMode"] == f"container:{sandbox(docker_api, cap['uuid'])['Id']}"
    r = containers.api.post(f"/v1/containers/{added['uuid']}/execute", json={"command": "cat /shared/f"})
    assert r.json()["output"] == "shared\n"

    # Reads work; lifecycle actions are the capsule's.
    assert containers.api.get(f"/v1/containers/{added['uuid']}/logs").status_code == 200
    assert containers.api.get(f"/v1/containers/{added['uuid']}/top").status_code == 200
    assert containers.get("extra", capsule=name)["uuid"] == added["uuid"]
    for action in ("stop", "start", "kill", "pause", "reboot"):
        r = containers.act(added["uuid"], action, expect=409)
        assert name in r.json()["errors"][0]["detail"], action
    r = containers.api.delete(f"/v1/containers/{added['uuid']}")
    assert r.status_code == 409 and name in r.json()["errors"][0]["detail"]
    r = containers.api.delete(f"/v1/containers/{added['uuid']}", params={"stop": "true"})
    assert r.status_code == 409 and name in r.json()["errors"][0]["detail"]
    assert containers.api.patch(f"/v1/containers/{added['uuid']}", json={"memory": "32"}).status_code == 409
    ok = containers.api.patch("/v1/containers/extra", params={"capsule": name},
                              json={"memory": "32"})
    assert ok.status_code == 200, ok.text
    wait_for(lambda: member(docker_api, cap["uuid"], "extra")["HostConfig"]["Memory"] == 32 * 1024 * 1024,
             timeout=30)
    # Capsule containers stay out of the default list, and show with capsule=.
    assert added["uuid"] not in [c["uuid"] for c in containers.api.get("/v1/containers").json()["containers"]]
    inside = containers.api.get("/v1/containers", params={"capsule": name}).json()["containers"]
    assert {c["name"] for c in inside} == {"main", "extra"}
    dup = containers.run(capsule=name, name="extra", expect=409, command=["true"])
    assert "extra" in dup["errors"][0]["detail"]

    assert capsules.api.delete(f"/v1/capsules/{cap['uuid']}").status_code == 204
    capsules.wait_gone(cap["uuid"])
    assert containers.api.get(f"/v1/containers/{added['uuid']}").status_code == 404
    assert docker_api.containers(all=True, filters={"label": [f"capsuled.capsule={cap['uuid']}"]}) == []


# -- mounts of bare containers (Zun's {size, destination} and {type: bind}) --------------------

def _bare(docker_api: docker.APIClient, uuid: str) -> dict[str, Any]:
    (found,) = docker_api.containers(all=True, filters={"label": [f"capsuled.container={uuid}"]})
    return docker_api.inspect_container(found["Id"])  # type: ignore[no-any-return]


def _own_volumes(docker_api: docker.APIClient, uuid: str) -> list[str]:
    got = docker_api.volumes(filters={"label": [f"capsuled.capsule={uuid}"]})
    return sorted(v["Name"] for v in (got or {}).get("Volumes") or [])


def test_mounts_give_a_bare_container_its_own_volumes_and_files(
        containers: Containers, docker_api: docker.APIClient, unique) -> None:
    conf = b"listen 8080\n\xff binary too\n"
    body = containers.run(name=unique("mnt"), command=["sleep", "3600"], mounts=[
        {"size": 1, "destination": "/data"},
        {"size": "2", "destination": "/cache"},  # zunclient sends the CLI's size=N as text
        {"type": "bind", "source": base64.b64encode(conf).decode(), "destination": "/etc/app/app.conf"}])
    containers.wait(body["uuid"], "Running")
    info = _bare(docker_api, body["uuid"])
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert set(mounts) == {"/data", "/cache"} and all(m["Type"] == "volume" for m in mounts.values())
    assert sorted(m["Name"] for m in mounts.values()) == _own_volumes(docker_api, body["uuid"])
    code, out = exec_in(docker_api, info["Id"], "sh", "-c", "echo kept > /data/f && cat /data/f")
    assert (code, out) == (0, "kept\n")
    ex = docker_api.exec_create(info["Id"], ["cat", "/etc/app/app.conf"])
    assert docker_api.exec_start(ex["Id"]) == conf  # byte for byte, in place before the start

    # The volumes outlive a restart of the container, and go with it.
    containers.act(body["uuid"], "reboot")
    containers.wait(body["uuid"], "Running")
    code, out = exec_in(docker_api, _bare(docker_api, body["uuid"])["Id"], "cat", "/data/f")
    assert (code, out) == (0, "kept\n")
    assert containers.api.delete(f"/v1/containers/{body['uuid']}", params={"stop": "true"}).status_code == 204
    wait_for(lambda: containers.api.get(f"/v1/containers/{body['uuid']}").status_code == 404,
             timeout=30, what="container deleted")
    assert _own_volumes(docker_api, body["uuid"]) == []


def test_an_auto_removed_container_takes_its_volumes_along(containers: Containers,
                                                         docker_api: docker.APIClient, unique) -> None:
    body = containers.run(name=unique("mnt"), command=["sh", "-c", "echo x > /data/x"],
                          auto_remove=True, mounts=[{"size": 1, "destination": "/data"}])
    wait_for(lambda: containers.api.get(f"/v1/containers/{body['uuid']}").status_code == 404,
             timeout=30, what="auto_remove container to go")
    assert _own_volumes(docker_api, body["uuid"]) == []


@pytest.mark.parametrize(("mounts", "problem"), [
    ([{"source": "myvol", "destination": "/d"}], "mounts[0].source: named (Cinder) volumes"),
    ([{"size": 0, "destination": "/d"}], "mounts[0].size: must be a positive whole number"),
    ([{"size": 1, "destination": "d"}], "mounts[0].destination: must be an absolute path"),
    ([{"type": "bind", "source": "not base64!", "destination": "/f"}], "mounts[0].source: is not valid base64"),
    ([{"size": 1, "destination": "/d"}, {"size": 1, "destination": "/d"}], "mounts[1].destination: /d is mounted twice"),
    ([{"size": 1, "destination": "/d", "bogus": 1}], "mounts[0].bogus: unknown field"),
])
def test_bad_mounts_are_400_naming_the_field_and_make_nothing(
        containers: Containers, docker_api: docker.APIClient, mounts: list[Any], problem: str) -> None:
    def volumes() -> set[str]:
        found = docker_api.volumes(filters={"label": ["capsuled.volume"]}) or {}
        return {v["Name"] for v in found.get("Volumes") or []}
    before = volumes()
    r = containers.api.post("/v1/containers", params={"run": "true"},
                            json={"image": "busybox", "mounts": mounts})
    assert r.status_code == 400 and problem in r.text, r.text
    # None made (earlier tests' volumes may still be going away meanwhile).
    assert volumes() - before == set()
