"""The warm sandbox pool on the real Docker Engine, through a real capsuled: a capsule takes
a sandbox made before its POST, its members share it, it is named and resolvable as the
capsule, the pool stays out of the API, refills, expires; a capsuled killed with SIGKILL
in the middle of claims leaves, after its restart, no orphan and no sandbox shared."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from conftest import (Server, exec_in, free_port, remove_instance_objects, sleeper, template,
                      wait_for)

from capsuled.domain import labels as L

pytestmark = pytest.mark.docker


def patient_start(srv: Server) -> None:
    """Start (or restart) capsuled, waiting longer than conftest does: on a shared 2-core
    machine under load its imports and migrations alone can take half a minute."""
    try:
        srv.start()
    except AssertionError:
        wait_for(lambda: _answers(srv), timeout=120, what="capsuled to answer")


def _answers(srv: Server) -> bool:
    assert srv.proc is not None and srv.proc.poll() is None, "capsuled exited"
    try:
        return httpx.get(srv.url + "/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture()
def own_server(tmp_path: Path, docker_api: docker.APIClient) -> Iterator[Callable[..., Server]]:
    """conftest's own_server, patient (patient_start); objects removed at the end."""
    started: list[tuple[Server, str]] = []

    def make(**env: str) -> Server:
        state = tmp_path / f"srv{len(started)}"
        state.mkdir()
        port = free_port()
        srv = Server(url=f"http://127.0.0.1:{port}", state_dir=state, port=port,
                     env={"CAPSULED_AGENT__RELIST_INTERVAL": "2", **env})
        patient_start(srv)
        started.append((srv, srv.instance))
        return srv

    yield make
    for srv, instance in started:
        if srv.proc is not None:
            srv.stop(signal.SIGKILL)
        remove_instance_objects(docker_api, instance)


def pooled(docker_api: docker.APIClient, instance: str) -> dict[str, dict[str, Any]]:
    """Every pooled sandbox of the instance (claimed or idle), inspected, by id."""
    rows = docker_api.containers(all=True, filters={"label": [
        f"{L.INSTANCE}={instance}", f"{L.ROLE}={L.ROLE_POOL}"]})
    out = {}
    for r in rows:
        try:
            out[r["Id"]] = docker_api.inspect_container(r["Id"])
        except docker.errors.NotFound:
            continue  # removed (replaced, or its capsule deleted) since the listing
    return out


def idle(docker_api: docker.APIClient, instance: str) -> set[str]:
    """Pooled sandboxes on no network: the idle ones."""
    return {cid for cid, c in pooled(docker_api, instance).items()
            if not c["NetworkSettings"]["Networks"] and c["State"]["Running"]}


def members(docker_api: docker.APIClient, uuid: str) -> list[dict[str, Any]]:
    rows = docker_api.containers(all=True, filters={"label": [f"{L.CAPSULE}={uuid}"]})
    out = []
    for r in rows:
        try:
            out.append(docker_api.inspect_container(r["Id"]))
        except docker.errors.NotFound:
            continue  # replaced since the listing
    return out


def running(api: httpx.Client, uuid: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/v1/capsules/{uuid}").json()
        assert body.get("status") != "Error", body
        return body if body.get("status") == "Running" else None
    return wait_for(check, timeout=timeout, what=f"{uuid} Running")  # type: ignore[no-any-return]


def post(api: httpx.Client, tmpl: dict[str, Any]) -> str:
    r = api.post("/v1/capsules", json={"template": tmpl})
    assert r.status_code == 202, r.text
    return str(r.json()["uuid"])


def created(c: dict[str, Any]) -> float:
    return datetime.fromisoformat(c["Created"][:26].rstrip("Z")).timestamp()


def test_a_capsule_starts_in_a_sandbox_made_before_its_post(
        own_server: Callable[..., Server], docker_api: docker.APIClient,
        unique: Callable[[str], str]) -> None:
    srv = own_server(CAPSULED_AGENT__SANDBOX_POOL_SIZE="2")
    instance = srv.instance
    with srv.client() as api:
        first = post(api, template(unique("first"), [sleeper("a")]))
        running(api, first)  # the project now has a capsule here: the pool fills for it
        ready = wait_for(lambda: len(idle(docker_api, instance)) == 2 and idle(docker_api, instance),
                         timeout=60, what="two idle pooled sandboxes")
        for cid in ready:
            c = docker_api.inspect_container(cid)
            assert c["Config"]["Labels"][L.PROJECT] == "admin" and L.CAPSULE not in c["Config"]["Labels"]
        name = unique("warm")
        asked = time.time()
        uuid = post(api, template(name, [sleeper("a"), sleeper("b")]))
        body = running(api, uuid)

        got = members(docker_api, uuid)
        assert sorted(m["Config"]["Labels"][L.NAME] for m in got) == ["a", "b"]
        assert all(m["Config"]["Labels"][L.ROLE] == "app" for m in got)
        modes = {m["HostConfig"][k] for m in got for k in ("NetworkMode", "IpcMode", "PidMode")}
        assert len(modes) == 1
        sid = modes.pop().removeprefix("container:")
        assert sid in ready  # one of the idle sandboxes, made before the POST
        sb = docker_api.inspect_container(sid)
        assert created(sb) < asked
        assert sb["Name"] == f"/{name}_sandbox_{uuid}"
        assert sb["Config"]["Labels"][L.ROLE] == L.ROLE_POOL
        claims = json.loads((srv.state_dir / "sandbox-claims.json").read_text())["claims"]
        assert claims[uuid]["sandbox"] == sid  # the agent's record names the capsule

        # Its members share its namespaces; the hostname is the sandbox's (documented).
        a = next(m for m in got if m["Config"]["Labels"][L.NAME] == "a")
        code, ps = exec_in(docker_api, a["Id"], "ps")
        assert code == 0 and "catatonit" in ps and ps.count("sleep 3600") == 2
        assert exec_in(docker_api, a["Id"], "hostname")[1].strip() == sid[:12]
        (addr,) = [x["addr"] for v in body["addresses"].values() for x in v]
        code, hosts = exec_in(docker_api, a["Id"], "cat", "/etc/hosts")
        assert f"{addr}\t{sid[:12]}" in hosts
        net = next(iter(sb["NetworkSettings"]["Networks"].values()))
        assert net["IPAddress"] == addr and {name, uuid} <= set(net["Aliases"])
        # Another capsule of the project finds it by its name and uuid.
        fa = next(m for m in members(docker_api, first) if m["Config"]["Labels"][L.NAME] == "a")
        for who in (name, uuid):
            code, out = exec_in(docker_api, fa["Id"], "nslookup", who)
            assert code == 0 and addr in out, out

        # No pooled sandbox anywhere in the API: capsules, containers, quota usage.
        listed = api.get("/v1/capsules").json()["capsules"]
        assert sorted(c["uuid"] for c in listed) == sorted([first, uuid])
        boxes = api.get("/v1/containers").json()["containers"]
        assert not any(sid in str(c) for c in boxes)
        usage = api.get("/v1/quotas/admin", params={"usages": "true"}).json()
        assert usage["containers"]["in_use"] == 3 and usage["capsules"]["in_use"] == 2, usage

        # The pool refills off the create path; deleting the capsule removes its sandbox.
        wait_for(lambda: len(idle(docker_api, instance) - {sid}) == 2, timeout=60,
                 what="the pool to refill")
        assert api.delete(f"/v1/capsules/{uuid}").status_code == 204
        wait_for(lambda: sid not in pooled(docker_api, instance), timeout=60,
                 what="the claimed sandbox removed with its capsule")
        claims = json.loads((srv.state_dir / "sandbox-claims.json").read_text())["claims"]
        assert uuid not in claims


def test_a_capsule_with_host_ports_makes_its_own_sandbox(
        own_server: Callable[..., Server], docker_api: docker.APIClient,
        unique: Callable[[str], str]) -> None:
    srv = own_server(CAPSULED_AGENT__SANDBOX_POOL_SIZE="1")
    with srv.client() as api:
        running(api, post(api, template(unique("first"), [sleeper("a")])))
        ready = wait_for(lambda: idle(docker_api, srv.instance), timeout=60, what="an idle one")
        uuid = post(api, template(unique("ports"), [sleeper(
            "a", ports=[{"containerPort": 80, "hostPort": 18000 + int(time.time()) % 1000}])]))
        running(api, uuid)
        (sb,) = [m for m in members(docker_api, uuid) if m["Config"]["Labels"][L.ROLE] == "sandbox"]
        assert sb["Id"] not in ready and idle(docker_api, srv.instance) == ready


def test_idle_sandboxes_expire_and_go_with_their_project(
        own_server: Callable[..., Server], docker_api: docker.APIClient,
        unique: Callable[[str], str]) -> None:
    srv = own_server(CAPSULED_AGENT__SANDBOX_POOL_SIZE="1",
                     CAPSULED_AGENT__SANDBOX_POOL_IDLE_SECONDS="4")
    with srv.client() as api:
        uuid = post(api, template(unique("ttl"), [sleeper("a")]))
        running(api, uuid)
        (first,) = wait_for(lambda: idle(docker_api, srv.instance), timeout=60, what="an idle one")
        # Past the idle time it is replaced (it carries the /etc/hosts of when it was made).
        wait_for(lambda: first not in pooled(docker_api, srv.instance)
                 and len(idle(docker_api, srv.instance)) == 1, timeout=60,
                 what="the expired one replaced")
        assert api.delete(f"/v1/capsules/{uuid}").status_code == 204
        # The project's last capsule here went: its pool goes after the idle time.
        wait_for(lambda: not pooled(docker_api, srv.instance), timeout=60,
                 what="the project's pool removed")
        left = docker_api.containers(all=True, filters={"label": [f"{L.INSTANCE}={srv.instance}"]})
        assert left == []


def test_capsuled_killed_mid_claims_leaves_no_orphan_and_no_shared_sandbox(
        own_server: Callable[..., Server], docker_api: docker.APIClient,
        unique: Callable[[str], str]) -> None:
    srv = own_server(CAPSULED_AGENT__SANDBOX_POOL_SIZE="4")
    with srv.client() as api:
        running(api, post(api, template(unique("first"), [sleeper("a")])))
        wait_for(lambda: len(idle(docker_api, srv.instance)) == 4, timeout=90,
                 what="four idle pooled sandboxes")
        new = [post(api, template(unique("kill"), [sleeper("a"), sleeper("b")]))
               for _ in range(3)]
        # Killed as the claims are made: some recorded, some joined, some with members.
        wait_for(lambda: (srv.state_dir / "sandbox-claims.json").exists()
                 and json.loads((srv.state_dir / "sandbox-claims.json").read_text())["claims"],
                 timeout=30, interval=0.01, what="a claim recorded")
    srv.stop(signal.SIGKILL)
    gone = new.pop()  # deleted as soon as capsuled is back, its claim perhaps half made
    patient_start(srv)
    with srv.client() as api:
        assert api.delete(f"/v1/capsules/{gone}").status_code == 204
        for uuid in new:
            running(api, uuid)
        wait_for(lambda: api.get(f"/v1/capsules/{gone}").status_code == 404, timeout=60,
                 what="the deleted capsule gone")

        def settled() -> bool:
            owners: dict[str, set[str]] = {}
            for c in docker_api.containers(all=True, filters={"label": [
                    f"{L.INSTANCE}={srv.instance}"]}):
                mode = (c.get("HostConfig") or {}).get("NetworkMode", "")
                if mode.startswith("container:"):
                    owners.setdefault(mode.removeprefix("container:"), set()).add(
                        c["Labels"][L.CAPSULE])
            return all(len(o) == 1 for o in owners.values()) and not any(
                gone in o for o in owners.values()) and len(owners) == 3
        wait_for(settled, timeout=60, what="each sandbox one capsule's, the deleted one's gone")
        claims = json.loads((srv.state_dir / "sandbox-claims.json").read_text())["claims"]
        assert gone not in claims and len({c["sandbox"] for c in claims.values()}) == len(claims)
        for uuid in new:
            # A capsule whose claim was lost gets a sandbox of its own (also labelled with
            # it), and a member being replaced may still be listed: wait for one sandbox.
            def one_sandbox(uuid: str = uuid) -> str | None:
                modes = {m["HostConfig"]["NetworkMode"] for m in members(docker_api, uuid)
                         if m["Config"]["Labels"].get(L.ROLE) == "app"}
                return modes.pop() if len(modes) == 1 else None
            sid = wait_for(one_sandbox, timeout=60, what=f"{uuid}'s members in one sandbox")
            assert docker_api.inspect_container(sid.removeprefix("container:"))["State"]["Running"]
        # Every pooled sandbox is claimed by a live capsule or idle; nothing else is left.
        live = {c["sandbox"] for u, c in claims.items() if u in new}
        wait_for(lambda: set(pooled(docker_api, srv.instance)) <= live | idle(
            docker_api, srv.instance), timeout=60, what="no pooled sandbox left over")
