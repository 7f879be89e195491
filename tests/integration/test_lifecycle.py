"""Capsule lifecycle on the real Docker Engine: init ordering, restart policies, status
after exits, sandbox loss, and what survives a crash or a restart of capsuled itself."""

from __future__ import annotations

import signal
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from conftest import (Capsules, Server, containers_of, exec_in, member, sandbox, sleeper,
                      template, wait_for)

pytestmark = pytest.mark.docker

SHARED = [{"name": "work", "emptyDir": {}}]
MOUNT = [{"name": "work", "mountPath": "/work"}]


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "command": ["sh", "-c", script], **extra}


def web(name: str = "web") -> dict[str, Any]:
    return {"name": name, "image": "busybox", "command": ["httpd", "-f", "-p", "8080", "-h", "/etc"]}


def docker_time(value: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds; datetime takes microseconds."""
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def child(body: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in body["containers"] + body["init_containers"] if c["name"] == name]
    assert len(found) == 1, body
    return found[0]


def wait_child(capsules: Capsules, ident: str, name: str,
               check: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = capsules.get(ident)
        return body if check(child(body, name)) else None
    try:
        return wait_for(probe, timeout=timeout, what=f"container {name} of {ident}")  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}; now: {capsules.get(ident)}") from None


def roles(docker_api: docker.APIClient, capsule_uuid: str) -> dict[str, list[str]]:
    """Docker's view of one capsule: names (sandbox as 'sandbox') by state."""
    out: dict[str, list[str]] = {}
    for c in containers_of(docker_api, capsule_uuid):
        labels = c["Labels"]
        name = "sandbox" if labels.get("capsuled.role") == "sandbox" else labels["capsuled.name"]
        out.setdefault(c["State"], []).append(name)
    return {k: sorted(v) for k, v in out.items()}


# -- init containers ------------------------------------------------------------------------

def test_init_containers_run_in_order_before_apps(capsules: Capsules, docker_api: docker.APIClient,
                                                  unique) -> None:
    # The first init sleeps before writing: run in parallel, "2" would come first.
    body = capsules.create(template(unique("init"), [
        sh("app", "cat /work/order > /work/seen; exec sleep 3600", volumeMounts=MOUNT)],
        initContainers=[sh("first", "sleep 1; echo 1 >> /work/order", volumeMounts=MOUNT),
                        sh("second", "echo 2 >> /work/order", volumeMounts=MOUNT)],
        volumes=SHARED))
    shown = capsules.wait_status(body["uuid"], "Running")
    app = member(docker_api, body["uuid"], "app")
    code, out = exec_in(docker_api, app["Id"], "cat", "/work/seen")
    assert (code, out) == (0, "1\n2\n")

    first = member(docker_api, body["uuid"], "first")["State"]
    second = member(docker_api, body["uuid"], "second")["State"]
    assert docker_time(first["FinishedAt"]) <= docker_time(second["StartedAt"])
    assert docker_time(second["FinishedAt"]) <= docker_time(app["State"]["StartedAt"])
    assert [c["name"] for c in shown["init_containers"]] == ["first", "second"]
    for c in shown["init_containers"]:
        assert (c["status"], c["exit_code"], c["restart_policy"]["Name"]) == ("Stopped", 0, "no"), c
    assert [(c["name"], c["status"]) for c in shown["containers"]] == [("app", "Running")]


def test_failing_init_container_blocks_the_capsule(capsules: Capsules, docker_api: docker.APIClient,
                                                   unique) -> None:
    body = capsules.create(template(unique("initfail"), [sleeper("app")],
                                    initContainers=[sh("setup", "exit 4"), sh("never", "true")]))
    shown = capsules.wait_status(body["uuid"], "Error")
    assert "setup" in shown["status_reason"] and "4" in shown["status_reason"], shown
    setup = child(shown, "setup")
    assert (setup["status"], setup["exit_code"]) == ("Stopped", 4)
    time.sleep(2.5)  # past a relist: the block holds, nothing more is started
    assert capsules.get(body["uuid"])["status"] == "Error"
    assert roles(docker_api, body["uuid"]) == {"running": ["sandbox"], "exited": ["setup"]}
    events = capsules.api.get(f"/v1/capsules/{body['uuid']}/events").json()["events"]
    failed = [e for e in events if e["reason"] == "InitFailed"]
    assert [(e["container"], e["type"]) for e in failed] == [("setup", "Warning")], events


def test_running_init_container_is_shown_and_delete_does_not_wait_for_it(
        capsules: Capsules, docker_api: docker.APIClient, unique) -> None:
    body = capsules.create(template(unique("initslow"), [sleeper("app")],
                                    initContainers=[sleeper("forever")]))
    shown = wait_child(capsules, body["uuid"], "forever", lambda c: c["status"] == "Running",
                       timeout=15)
    assert shown["status"] == "Creating" and child(shown, "app")["status"] == "Creating", shown
    assert roles(docker_api, body["uuid"]) == {"running": ["forever", "sandbox"]}
    t0 = time.monotonic()
    assert capsules.api.delete(f"/v1/capsules/{body['uuid']}").status_code == 204
    capsules.wait_gone(body["uuid"], timeout=15)
    print(f"\ndelete while an init runs → gone: {(time.monotonic() - t0) * 1000:.0f} ms")
    assert containers_of(docker_api, body["uuid"]) == []


# -- restart policies ------------------------------------------------------------------------

def test_always_restarts_an_exited_app(capsules: Capsules, docker_api: docker.APIClient,
                                       unique) -> None:
    body = capsules.create(template(unique("always"), [sh("flaky", "sleep 1; exit 3")],
                                    restartPolicy="Always"))
    seen: set[str] = set()

    def restarted() -> dict[str, Any] | None:
        now = capsules.get(body["uuid"])
        seen.add(now["status"])
        return now if child(now, "flaky")["restart_count"] > 0 else None
    shown = wait_for(restarted, timeout=20, interval=0.2, what="a restart to show")
    assert seen <= {"Creating", "Running", "Restarting"}, seen
    assert shown["status"] in ("Running", "Restarting"), shown
    inspected = member(docker_api, body["uuid"], "flaky")  # restarted in place, not recreated
    assert inspected["RestartCount"] >= child(shown, "flaky")["restart_count"] > 0
    assert inspected["HostConfig"]["RestartPolicy"]["Name"] == "always"
    time.sleep(2)
    assert capsules.get(body["uuid"])["status"] in ("Running", "Restarting")


def test_on_failure_restarts_only_failures(capsules: Capsules, docker_api: docker.APIClient,
                                           unique) -> None:
    ok = capsules.create(template(unique("onf-ok"), [sh("job", "sleep 1; exit 0")],
                                  restartPolicy="OnFailure"))
    bad = capsules.create(template(unique("onf-bad"), [sh("job", "sleep 1; exit 2")],
                                   restartPolicy="OnFailure"))
    done = capsules.wait_status(ok["uuid"], "Stopped", timeout=30)
    assert child(done, "job")["status"] == "Stopped" and child(done, "job")["exit_code"] == 0
    wait_child(capsules, bad["uuid"], "job", lambda c: c["restart_count"] > 0, timeout=20)
    time.sleep(3)
    done = capsules.get(ok["uuid"])
    job = child(done, "job")
    assert (done["status"], job["status"], job["exit_code"], job["restart_count"]) == (
        "Stopped", "Stopped", 0, 0), done
    inspected = member(docker_api, ok["uuid"], "job")
    assert (inspected["State"]["Status"], inspected["RestartCount"]) == ("exited", 0)
    assert member(docker_api, bad["uuid"], "job")["RestartCount"] > 0


def test_never_status_follows_the_apps(capsules: Capsules, docker_api: docker.APIClient,
                                       unique) -> None:
    mixed = capsules.create(template(unique("nv-mixed"), [
        sh("quick", "sleep 0.5; exit 0"), sleeper("long")], restartPolicy="Never"))
    done = capsules.create(template(unique("nv-done"), [
        sh("a", "sleep 0.5; exit 0"), sh("b", "sleep 1; exit 0")], restartPolicy="Never"))
    failed = capsules.create(template(unique("nv-fail"), [
        sh("good", "sleep 0.5; exit 0"), sh("bad", "sleep 1; exit 1")], restartPolicy="Never"))

    shown = wait_child(capsules, mixed["uuid"], "quick", lambda c: c["status"] == "Stopped")
    assert shown["status"] == "Running" and "quick" in (shown["status_reason"] or ""), shown
    assert "long" not in shown["status_reason"]
    shown = capsules.wait_status(done["uuid"], "Stopped", "Error")
    assert shown["status"] == "Stopped", shown
    shown = capsules.wait_status(failed["uuid"], "Error", "Stopped")
    assert shown["status"] == "Error" and "bad" in shown["status_reason"], shown
    assert child(shown, "bad")["exit_code"] == 1

    time.sleep(1)  # nobody restarts anything under Never
    assert roles(docker_api, mixed["uuid"]) == {"running": ["long", "sandbox"], "exited": ["quick"]}
    for c in (done, failed):
        assert roles(docker_api, c["uuid"]) == {"running": ["sandbox"],
                                                "exited": sorted(x["name"] for x in c["containers"])}
    for c in containers_of(docker_api, failed["uuid"]):
        assert docker_api.inspect_container(c["Id"])["RestartCount"] == 0


# -- status after an exit comes from events ----------------------------------------------------

def test_exit_is_visible_through_events(own_server: Callable[..., Server],
                                        docker_api: docker.APIClient, unique) -> None:
    # No relist to fall back on: only the event stream can report the exit in time.
    srv = own_server(CAPSULED_AGENT__RELIST_INTERVAL="600")
    with srv.client() as api:
        capsules = Capsules(api)
        body = capsules.create(template(unique("evt"), [sleeper("victim"), sleeper("bystander")],
                                        restartPolicy="Never"))
        capsules.wait_status(body["uuid"], "Running")
        docker_api.kill(member(docker_api, body["uuid"], "victim")["Id"])
        t0 = time.monotonic()
        shown = wait_child(capsules, body["uuid"], "victim",
                           lambda c: c["status"] == "Stopped", timeout=10)
        elapsed = time.monotonic() - t0
        print(f"\nkill → API shows Stopped: {elapsed * 1000:.0f} ms")
        assert elapsed < 3, elapsed
        assert child(shown, "victim")["exit_code"] == 137
        shown = capsules.wait_status(body["uuid"], "Running")
        assert "victim" in (shown["status_reason"] or ""), shown


# -- the sandbox owns the namespaces ------------------------------------------------------------

@pytest.mark.parametrize("how", ["kill", "restart"])
def test_lost_sandbox_is_recreated_with_its_members(capsules: Capsules, docker_api: docker.APIClient,
                                                    unique, how: str) -> None:
    body = capsules.create(template(unique(f"sb-{how}"), [web(), sleeper("client")]))
    capsules.wait_status(body["uuid"], "Running")
    old = sandbox(docker_api, body["uuid"])["Id"]
    t0 = time.monotonic()
    try:
        if how == "kill":
            docker_api.kill(old)
        else:
            docker_api.restart(old, timeout=1)
    except docker.errors.APIError:
        pass  # the agent removed it mid-restart: fine, replacing it is what is tested

    def recovered() -> dict[str, Any] | None:
        now = capsules.get(body["uuid"])
        if now["status"] != "Running" or now["restart_count"] < 1:
            return None
        sbs = [c for c in containers_of(docker_api, body["uuid"])
               if c["Labels"].get("capsuled.role") == "sandbox"]
        return now if [c["Id"] for c in sbs] != [old] else None
    shown = wait_for(recovered, timeout=30, interval=0.2, what="the capsule to recover")
    print(f"\n{how} sandbox → Running again: {(time.monotonic() - t0) * 1000:.0f} ms")
    assert shown["restart_count"] >= 1
    new = sandbox(docker_api, body["uuid"])
    assert new["Id"] != old and new["State"]["Running"]
    for name in ("web", "client"):
        hc = member(docker_api, body["uuid"], name)["HostConfig"]
        for mode in ("NetworkMode", "IpcMode", "PidMode"):
            assert hc[mode] == f"container:{new['Id']}", (name, mode, hc[mode])
    assert roles(docker_api, body["uuid"]) == {"running": ["client", "sandbox", "web"]}
    client = member(docker_api, body["uuid"], "client")["Id"]
    code, out = wait_for(lambda: (lambda r: r if r[0] == 0 else None)(exec_in(
        docker_api, client, "wget", "-q", "-O-", "http://127.0.0.1:8080/hosts")),
        timeout=5, what="httpd to answer on 127.0.0.1")
    assert code == 0 and "localhost" in out
    events = capsules.api.get(f"/v1/capsules/{body['uuid']}/events")
    assert events.status_code == 200, events.text
    assert any(e["reason"] == "SandboxRecreated" for e in events.json()["events"]), events.text


# -- restart safety of capsuled itself ------------------------------------------------------------

def _post_all(api: httpx.Client, tmpls: list[dict[str, Any]]) -> list[str]:
    out: list[str] = [""] * len(tmpls)

    def post(i: int) -> None:
        r = api.post("/v1/capsules", json={"template": tmpls[i]})
        assert r.status_code == 202, r.text
        out[i] = r.json()["uuid"]
    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(tmpls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(out), out
    return out


def test_kill_9_right_after_create_converges_without_duplicates(
        own_server: Callable[..., Server], docker_api: docker.APIClient, unique) -> None:
    srv = own_server()
    instance = srv.instance
    names = [unique(f"crash{i}") for i in range(5)]
    tmpls = [template(n, [sleeper("a", volumeMounts=MOUNT), sleeper("b")], volumes=SHARED,
                      initContainers=[sh("init", "true", volumeMounts=MOUNT)]) for n in names]
    with srv.client() as api:
        uuids = _post_all(api, tmpls)
        srv.stop(signal.SIGKILL)  # within a few ms of the last 202: mid-creation
    srv.start()
    with srv.client() as api:
        capsules = Capsules(api)
        for u in uuids:
            shown = capsules.wait_status(u, "Running", timeout=60)
            assert shown["restart_count"] == 0, shown
        for u in uuids:
            assert roles(docker_api, u) == {"running": ["a", "b", "sandbox"], "exited": ["init"]}, u
            sb = sandbox(docker_api, u)["Id"]
            for name in ("a", "b", "init"):
                assert member(docker_api, u, name)["HostConfig"]["NetworkMode"] == f"container:{sb}"
            vols = docker_api.volumes(filters={"label": [f"capsuled.capsule={u}"]})["Volumes"]
            assert [v["Name"] for v in vols] == [f"capsuled_{u}_work"]
        everything = docker_api.containers(all=True, filters={"label": [f"capsuled.instance={instance}"]})
        assert len(everything) == 4 * len(uuids), [c["Names"] for c in everything]


def test_kill_9_right_after_delete_still_deletes(own_server: Callable[..., Server],
                                                 docker_api: docker.APIClient, unique) -> None:
    srv = own_server()
    with srv.client() as api:
        capsules = Capsules(api)
        uuids = _post_all(api, [template(unique(f"gone{i}"), [sleeper("a", volumeMounts=MOUNT),
                                                                 sleeper("b")], volumes=SHARED)
                                for i in range(4)])
        for u in uuids:
            capsules.wait_status(u, "Running")
        for u in uuids:
            assert api.delete(f"/v1/capsules/{u}").status_code == 204
        srv.stop(signal.SIGKILL)
    srv.start()
    with srv.client() as api:
        capsules = Capsules(api)
        for u in uuids:
            capsules.wait_gone(u, timeout=60)
        assert api.get("/v1/capsules").json()["capsules"] == []
    for u in uuids:
        assert containers_of(docker_api, u) == []
        assert not (docker_api.volumes(filters={"label": [f"capsuled.capsule={u}"]}) or {}).get("Volumes")


def test_orphans_of_this_instance_are_removed_and_nothing_else(
        own_server: Callable[..., Server], docker_api: docker.APIClient) -> None:
    srv = own_server()
    instance = srv.instance
    made: list[str] = []

    def run(labels: dict[str, str]) -> str:
        cid = docker_api.create_container("busybox", ["sleep", "3600"], labels=labels,
                                          host_config=docker_api.create_host_config(init=True))["Id"]
        made.append(cid)
        docker_api.start(cid)
        return str(cid)

    def orphan() -> str:
        return run({"capsuled.instance": instance, "capsuled.capsule": str(uuidlib.uuid4()),
                    "capsuled.role": "app"})

    def removed(cid: str, t0: float, what: str) -> None:
        def gone() -> bool:
            try:
                docker_api.inspect_container(cid)
                return False
            except docker.errors.NotFound:
                return True
        wait_for(gone, timeout=2 + 3, interval=0.05, what=f"the {what} orphan to be removed")
        print(f"\n{what} orphan removed after {(time.monotonic() - t0) * 1000:.0f} ms")
    try:
        foreign = run({"capsuled.instance": str(uuidlib.uuid4()),
                       "capsuled.capsule": str(uuidlib.uuid4()), "capsuled.role": "app"})
        unlabelled = run({})
        t0 = time.monotonic()
        removed(orphan(), t0, "live")
        # Made while capsuled is down: no event will tell; the relist after the start must.
        srv.stop(signal.SIGKILL)
        left = orphan()
        srv.start()
        removed(left, time.monotonic(), "offline")
        time.sleep(2.5)  # one more relist: the others are not ours
        for cid in (foreign, unlabelled):
            assert docker_api.inspect_container(cid)["State"]["Running"]
    finally:
        for cid in made:
            try:
                docker_api.remove_container(cid, force=True)
            except docker.errors.NotFound:
                pass


def test_sigterm_leaves_containers_running_and_restart_adopts_them(
        own_server: Callable[..., Server], docker_api: docker.APIClient, unique) -> None:
    srv = own_server()
    with srv.client() as api:
        capsules = Capsules(api)
        up = capsules.create(template(unique("adopt"), [web(), sleeper("client")]))
        # An init container still running: shown as such, and no reason to hang on exit.
        waiting = capsules.create(template(unique("adopt-init"), [sleeper("app")],
                                           initContainers=[sleeper("slow-init")]))
        capsules.wait_status(up["uuid"], "Running")
        wait_child(capsules, waiting["uuid"], "slow-init", lambda c: c["status"] == "Running")
    before = {u: {c["Id"]: c["State"] for c in containers_of(docker_api, u)}
              for u in (up["uuid"], waiting["uuid"])}
    t0 = time.monotonic()
    assert srv.stop(signal.SIGTERM) == 0
    print(f"\nSIGTERM → exit: {(time.monotonic() - t0) * 1000:.0f} ms")
    time.sleep(1)
    for u, states in before.items():
        assert {c["Id"]: c["State"] for c in containers_of(docker_api, u)} == states
        assert set(states.values()) == {"running"}
    srv.start()
    with srv.client() as api:
        capsules = Capsules(api)
        shown = capsules.wait_status(up["uuid"], "Running")
        assert shown["restart_count"] == 0
        time.sleep(3)  # a relist after the restart, and any sync it caused
        for u, states in before.items():
            assert {c["Id"]: c["State"] for c in containers_of(docker_api, u)} == states
        assert capsules.get(up["uuid"])["status"] == "Running"
        assert capsules.get(waiting["uuid"])["status"] == "Creating"
        for c in containers_of(docker_api, up["uuid"]):
            assert docker_api.inspect_container(c["Id"])["RestartCount"] == 0
        client = member(docker_api, up["uuid"], "client")["Id"]
        assert exec_in(docker_api, client, "wget", "-q", "-O-", "http://127.0.0.1:8080/hosts")[0] == 0


# -- images -------------------------------------------------------------------------------------

def test_missing_image_with_pull_never_is_an_error(capsules: Capsules, docker_api: docker.APIClient,
                                                   unique) -> None:
    image = f"capsuled/no-such-image-{uuidlib.uuid4().hex[:8]}:v1"
    body = capsules.create(template(unique("noimg"), [
        {"name": "app", "image": image, "imagePullPolicy": "Never"}, sleeper("side")]))
    shown = capsules.wait_status(body["uuid"], "Error")
    assert image in shown["status_reason"] and "Never" in shown["status_reason"], shown
    assert not any(c["Image"] == image for c in containers_of(docker_api, body["uuid"]))
    assert capsules.api.delete(f"/v1/capsules/{body['uuid']}").status_code == 204
    capsules.wait_gone(body["uuid"])
    assert containers_of(docker_api, body["uuid"]) == []
