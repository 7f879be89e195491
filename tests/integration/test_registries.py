"""Private registries on a real server, a real Docker Engine and a real registry (Debian's
docker-registry behind htpasswd): the registries API, containers and capsule members
pulling through a registry, the host-cache attack, and image search."""

from __future__ import annotations

import socket
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from conftest import Server, free_port, template, wait_for
from private_registry import PASSWORD, REPO, USER, PrivateRegistry, start_registry

pytestmark = [pytest.mark.docker]
V30 = {"OpenStack-API-Version": "container 1.30"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory,
             docker_api: docker.APIClient) -> Iterator[PrivateRegistry]:
    yield from start_registry(tmp_path_factory.mktemp("registry"), docker_api)


class Tenant:
    """One project's member: its client, and what it made (removed at the end)."""

    def __init__(self, server: Server, project: str) -> None:
        self.project = project
        self.api = server.client(server.issue_token(project, f"{project}-user", "member"))
        self._server = server
        self._admin: httpx.Client | None = None
        self.containers: list[str] = []
        self.capsules: list[str] = []
        self.registries: list[str] = []

    @property
    def admin(self) -> httpx.Client:
        """An admin of this project (whose registries image search may reach on loopback)."""
        if self._admin is None:
            self._admin = self._server.client(self._server.issue_token(
                self.project, f"{self.project}-admin", "admin"))
        return self._admin

    def registry(self, expect: int = 201, by_admin: bool = False,
                 **fields: Any) -> dict[str, Any]:
        r = (self.admin if by_admin else self.api).post("/v1/registries",
                                                        json={"registry": fields})
        assert r.status_code == expect, r.text
        body: dict[str, Any] = r.json()
        if r.status_code == 201:
            self.registries.append(body["registry"]["uuid"])
            return body["registry"]  # type: ignore[no-any-return]
        return body

    def run(self, expect: int = 202, **body: Any) -> dict[str, Any]:
        body.setdefault("command", ["sleep", "3600"])
        r = self.api.post("/v1/containers", params={"run": "true"}, json=body)
        assert r.status_code == expect, r.text
        out: dict[str, Any] = r.json()
        if r.status_code == 202:
            self.containers.append(out["uuid"])
        return out

    def wait(self, ident: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
        got: dict[str, Any] = {}

        def check() -> bool:
            got.update(self.api.get(f"/v1/containers/{ident}").json())
            return got.get("status") in statuses
        try:
            wait_for(check, timeout=timeout, what=f"{ident} {statuses}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {got.get('status')} {got.get('status_reason')}") from None
        return got

    def cleanup(self) -> None:
        for u in self.containers:
            self.api.delete(f"/v1/containers/{u}", params={"stop": "true"})
        for u in self.capsules:
            self.api.delete(f"/v1/capsules/{u}")
        for u in [*self.containers, *self.capsules]:
            kind = "containers" if u in self.containers else "capsules"
            try:
                wait_for(lambda: self.api.get(f"/v1/{kind}/{u}").status_code == 404, timeout=30)
            except AssertionError:
                pass
        for u in self.registries:
            self.api.delete(f"/v1/registries/{u}")
        self.api.close()
        if self._admin is not None:
            self._admin.close()


@pytest.fixture()
def tenants(server: Server, unique) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    made: list[Tenant] = []

    def make() -> Tenant:
        t = Tenant(server, unique("proj"))
        made.append(t)
        return t
    yield make
    for t in made:
        t.cleanup()


def docker_of(docker_api: docker.APIClient, uuid: str) -> dict[str, Any]:
    found = docker_api.containers(all=True, filters={"label": [f"capsuled.container={uuid}"]})
    assert len(found) == 1, found
    return docker_api.inspect_container(found[0]["Id"])  # type: ignore[no-any-return]


def test_registry_crud_hides_the_password_and_encrypts_it(server: Server, tenants,  # type: ignore[no-untyped-def]
                                                          unique) -> None:
    a = tenants()
    name = unique("reg")
    created = a.registry(name=name, domain="Registry.Example.com:5000", username="bob",
                         password="p@ss-Word-123")
    assert created["password"] == "***" and created["username"] == "bob"
    assert created["domain"] == "registry.example.com:5000" and created["name"] == name
    assert created["project_id"] == a.project
    shown = a.api.get(f"/v1/registries/{name}").json()["registry"]
    assert shown["uuid"] == created["uuid"] and shown["password"] == "***"
    listed = a.api.get("/v1/registries").json()
    assert [r["uuid"] for r in listed["registries"]] == [created["uuid"]]
    r = a.api.patch(f"/v1/registries/{created['uuid']}",
                    json={"registry": {"password": "n3w-Secret-456", "username": "alice"}})
    assert r.status_code == 200, r.text
    assert r.json()["registry"]["username"] == "alice"
    assert r.json()["registry"]["password"] == "***"
    # Gated by microversion as Zun: 1.30 on, 406 below.
    assert a.api.get("/v1/registries", headers=V30).status_code == 200
    old = a.api.get("/v1/registries", headers={"OpenStack-API-Version": "container 1.29"})
    assert old.status_code == 406, old.text
    # Bad input: 400 naming the field, never echoing a secret.
    bad = a.api.post("/v1/registries", json={"registry": {"domain": "http://x/y",
                                                          "password": "leaky-secret"}})
    assert bad.status_code == 400 and "registry.domain" in bad.text
    assert "leaky-secret" not in bad.text
    assert a.api.post("/v1/registries", json={"domain": "x.io"}).status_code == 400
    uuid_name = a.api.post("/v1/registries", json={"registry": {
        "name": "00000000-0000-4000-8000-000000000000", "domain": "x.io"}})
    assert uuid_name.status_code == 400 and "registry.name" in uuid_name.text
    dup = a.api.post("/v1/registries", json={"registry": {"name": name, "domain": "x.io"}})
    assert dup.status_code == 409
    # At rest: neither password nor username is in the database file in clear.
    raw = (server.state_dir / "capsuled.db").read_bytes()
    assert b"p@ss-Word-123" not in raw and b"n3w-Secret-456" not in raw
    with sqlite3.connect(server.state_dir / "capsuled.db") as db:
        sealed = db.execute("select username_enc, password_enc from registries where uuid=?",
                            (created["uuid"],)).fetchone()
    assert sealed[0] and "alice" not in sealed[0] and sealed[1]
    key = server.state_dir / "registry.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert a.api.delete(f"/v1/registries/{name}").status_code == 204
    assert a.api.get(f"/v1/registries/{name}").status_code == 404
    a.registries.clear()
    log = Path(server.log or "").read_text()
    assert "p@ss-Word-123" not in log and "n3w-Secret-456" not in log


def test_another_project_can_neither_see_nor_use_nor_probe(server: Server, tenants,  # type: ignore[no-untyped-def]
                                                           registry: PrivateRegistry,
                                                           unique) -> None:
    a, b = tenants(), tenants()
    reg = a.registry(name=unique("areg"), domain=registry.domain, username=USER, password=PASSWORD)
    missing = "00000000-0000-4000-8000-000000000000"
    for ident in (reg["uuid"], reg["name"]):
        theirs = b.api.get(f"/v1/registries/{ident}")
        assert theirs.status_code == 404
        assert b.api.patch(f"/v1/registries/{ident}",
                           json={"registry": {"password": "x1"}}).status_code == 404
        assert b.api.delete(f"/v1/registries/{ident}").status_code == 404
        used = b.run(expect=404, image=REPO, registry=ident)
        assert "could not be found" in str(used)
    gone = b.api.get(f"/v1/registries/{missing}")
    assert gone.status_code == 404
    assert gone.json()["errors"][0]["detail"].replace(missing, "X") == \
        b.api.get(f"/v1/registries/{reg['uuid']}").json()["errors"][0]["detail"].replace(reg["uuid"], "X")
    assert b.api.get("/v1/registries").json()["registries"] == []
    assert b.api.get("/v1/registries", params={"all_projects": "true"}).status_code == 403
    # The admin sees every project's.
    with server.client() as admin:
        every = admin.get("/v1/registries", params={"all_projects": "true"}).json()["registries"]
        assert reg["uuid"] in [r["uuid"] for r in every]
    # Still A's, unchanged.
    assert a.api.get(f"/v1/registries/{reg['uuid']}").status_code == 200


def test_container_pulls_through_its_registry(server: Server, tenants, docker_api,  # type: ignore[no-untyped-def]
                                              registry: PrivateRegistry, unique) -> None:
    a = tenants()
    reg = a.registry(name=unique("reg"), domain=registry.domain, username=USER, password=PASSWORD)
    too_old = a.api.post("/v1/containers", headers=V30, json={"image": REPO, "registry": reg["name"]})
    assert too_old.status_code == 400 and "registry" in too_old.text
    c = a.run(name=unique("priv"), image=REPO, registry=reg["name"])
    assert c["registry_id"] == reg["uuid"]
    running = a.wait(c["uuid"], "Running")
    assert running["registry_id"] == reg["uuid"] and running["image"] == REPO
    inspected = docker_of(docker_api, c["uuid"])
    assert inspected["Config"]["Image"] == registry.image
    assert inspected["State"]["Running"]
    # In use: Zun refuses the delete (its foreign key); so do we.
    busy = a.api.delete(f"/v1/registries/{reg['uuid']}")
    assert busy.status_code == 409 and "in use" in busy.text
    log = Path(server.log or "").read_text()
    assert PASSWORD not in log


def test_wrong_or_missing_credentials_fail_clearly(server: Server, tenants,  # type: ignore[no-untyped-def]
                                                   registry: PrivateRegistry, unique) -> None:
    a = tenants()
    wrong = a.registry(name=unique("wrong"), domain=registry.domain, username=USER,
                       password="not-the-Password-9")
    anon = a.registry(name=unique("anon"), domain=registry.domain)
    assert anon["username"] is None and anon["password"] is None
    for reg in (wrong, anon):
        c = a.run(name=unique("nope"), image=REPO, registry=reg["uuid"])
        failed = a.wait(c["uuid"], "Error")
        reason = failed["status_reason"] or ""
        assert "could not be pulled" in reason and registry.domain in reason, reason
        assert "not-the-Password-9" not in reason
    assert "not-the-Password-9" not in Path(server.log or "").read_text()


def test_host_cache_attack_fails(server: Server, tenants, docker_api,  # type: ignore[no-untyped-def]
                                 registry: PrivateRegistry, unique) -> None:
    """A pulls its private image onto the host; B names the same reference without
    credentials (or with wrong ones): the registry is asked every time and says no."""
    a, b = tenants(), tenants()
    reg = a.registry(name=unique("reg"), domain=registry.domain, username=USER, password=PASSWORD)
    ok = a.run(name=unique("a"), image=REPO, registry=reg["uuid"])
    a.wait(ok["uuid"], "Running")
    assert docker_api.inspect_image(f"{registry.image}:latest")  # in the host's cache now
    for body in ({"image": registry.image},
                 {"image": registry.image, "image_pull_policy": "ifnotpresent"},
                 {"image": f"{registry.image}:latest", "image_pull_policy": "never"}):
        stolen = b.run(name=unique("b"), **body)
        failed = b.wait(stolen["uuid"], "Error")
        assert failed["status_reason"], failed
        found = docker_api.containers(all=True, filters={"label": [
            f"capsuled.container={stolen['uuid']}"]})
        assert found == [], "B's container was made from A's cached image"
    # B's own registry entry for the same domain with wrong credentials does not help.
    mine = b.registry(name=unique("guess"), domain=registry.domain, username=USER, password="guess-1")
    guessed = b.run(name=unique("b"), image=REPO, registry=mine["uuid"])
    assert "could not be pulled" in (b.wait(guessed["uuid"], "Error")["status_reason"] or "")
    # As a capsule member too.
    r = b.api.post("/v1/capsules", json={"template": template(unique("cap"), [
        {"name": "app", "image": registry.image, "command": ["sleep", "3600"]}])})
    assert r.status_code == 202, r.text
    b.capsules.append(r.json()["uuid"])
    wait_for(lambda: "could not be pulled" in str(
        b.api.get(f"/v1/capsules/{r.json()['uuid']}").json().get("status_reason")),
        timeout=60, what="B's capsule to fail its pull")


def test_capsule_template_container_with_registry(server: Server, tenants, docker_api,  # type: ignore[no-untyped-def]
                                                  registry: PrivateRegistry, unique) -> None:
    a = tenants()
    reg = a.registry(name=unique("reg"), domain=registry.domain, username=USER, password=PASSWORD)
    r = a.api.post("/v1/capsules", json={"template": template(unique("cap"), [
        {"name": "app", "image": REPO, "registry": reg["name"], "command": ["sleep", "3600"]}])})
    assert r.status_code == 202, r.text
    cap = r.json()
    a.capsules.append(cap["uuid"])
    wait_for(lambda: a.api.get(f"/v1/capsules/{cap['uuid']}").json()["status"] == "Running",
             timeout=60, what="capsule Running")
    found = docker_api.containers(filters={"label": [f"capsuled.capsule={cap['uuid']}",
                                                     "capsuled.name=app"]})
    assert len(found) == 1
    assert docker_api.inspect_container(found[0]["Id"])["Config"]["Image"] == registry.image
    listed = a.api.get("/v1/containers", params={"capsule": cap["uuid"]}).json()["containers"]
    assert [c["registry_id"] for c in listed] == [reg["uuid"]]
    # A template naming another project's (or no) registry: refused, nothing made.
    b = tenants()
    bad = b.api.post("/v1/capsules", json={"template": template(unique("cap"), [
        {"name": "app", "image": REPO, "registry": reg["uuid"]}])})
    assert bad.status_code == 404, bad.text
    assert b.api.get("/v1/capsules").json()["capsules"] == []
    typo = a.api.post("/v1/capsules", json={"template": template(unique("cap"), [
        {"name": "app", "image": REPO, "registry": "../x"}])})
    assert typo.status_code == 400 and "containers[0].registry" in typo.text


def test_image_search_in_the_projects_registry(server: Server, tenants,  # type: ignore[no-untyped-def]
                                               registry: PrivateRegistry, unique) -> None:
    # The test registry listens on loopback, which only a registry an admin made may be
    # searched at (test_member_search_never_reaches_loopback below); a member searches it.
    a = tenants()
    a.registry(name=unique("reg"), domain=registry.domain, username=USER, password=PASSWORD,
               by_admin=True)
    found = a.api.get("/v1/images/busybox/search")
    assert found.status_code == 200, found.text
    assert [i["name"] for i in found.json()] == [registry.image]
    exact = a.api.get(f"/v1/images/{registry.domain}/{REPO}/search", params={"exact_match": "true"})
    assert [i["name"] for i in exact.json()] == [registry.image]
    assert a.api.get("/v1/images/busy/search", params={"exact_match": "true"}).json() == []
    assert a.api.get("/v1/images/busybox/search",
                     params={"image_driver": "glance"}).status_code == 400
    # No registry of its own and Docker Hub unreachable from here (an offline machine):
    # a clear 400 naming Docker Hub, not a 500 or a hang; another project's registry unused.
    b = tenants()
    none = b.api.get("/v1/images/busybox/search", timeout=70)
    if none.status_code == 200:  # a machine that reaches Docker Hub
        assert all(i["metadata"]["registry"] == "docker.io" for i in none.json())
    else:
        assert none.status_code == 400 and "docker.io" in none.text, none.text
    elsewhere = b.api.get(f"/v1/images/{registry.domain}/{REPO}/search")
    assert elsewhere.status_code == 400 and "none of this project's registries" in elsewhere.text
    # An unreachable registry: a clear 400 naming it, quickly.
    dead = f"127.0.0.1:{free_port()}"
    b.registry(name=unique("dead"), domain=dead, by_admin=True)
    r = b.api.get(f"/v1/images/{dead}/busybox/search", timeout=20)
    assert r.status_code == 400 and dead in r.text and "cannot be reached" in r.text, r.text
    wrong = tenants()
    wrong.registry(name=unique("w"), domain=registry.domain, username=USER, password="nope-1",
                   by_admin=True)
    refused = wrong.api.get(f"/v1/images/{registry.domain}/busybox/search")
    assert refused.status_code == 400 and "username and password" in refused.text


def test_member_search_never_reaches_loopback(server: Server, tenants,  # type: ignore[no-untyped-def]
                                              registry: PrivateRegistry, unique) -> None:
    """A member's registry at the API's own port, or at a socket of ours on loopback: the
    search answers that the address is not allowed, and nothing connected there."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    trap = f"127.0.0.1:{listener.getsockname()[1]}"
    own = f"127.0.0.1:{server.port}"
    a = tenants()
    assert server.log is not None
    log_before = server.log.read_text(errors="replace").count("/v2/_catalog")
    try:
        for domain in (trap, own, registry.domain):
            a.registry(name=unique("ssrf"), domain=domain, username=USER, password=PASSWORD)
            r = a.api.get(f"/v1/images/{domain}/busybox/search", timeout=20)
            assert r.status_code == 400, r.text
            assert domain in r.text and "is not allowed" in r.text, r.text
        with pytest.raises(TimeoutError):
            listener.accept()[0].close()  # nothing connected to our socket
    finally:
        listener.close()
    # Nor to the API itself, nor to the registry: the server logs each request it makes
    # (httpx), and logged none, though the same search of a registry an admin made does.
    assert server.log.read_text(errors="replace").count("/v2/_catalog") == log_before
    a.registry(name=unique("ok"), domain=registry.domain, username=USER, password=PASSWORD,
               by_admin=True)
    assert a.api.get(f"/v1/images/{registry.domain}/busybox/search").status_code == 200
    assert server.log.read_text(errors="replace").count("/v2/_catalog") > log_before


def test_registry_delete_after_its_container_goes(server: Server, tenants,  # type: ignore[no-untyped-def]
                                                  registry: PrivateRegistry, unique) -> None:
    a = tenants()
    reg = a.registry(name=unique("reg"), domain=registry.domain, username=USER, password=PASSWORD)
    c = a.run(name=unique("c"), image=REPO, registry=reg["uuid"], command=["true"])
    assert a.api.delete(f"/v1/registries/{reg['uuid']}").status_code == 409
    a.wait(c["uuid"], "Stopped")
    assert a.api.delete(f"/v1/containers/{c['uuid']}").status_code == 204
    wait_for(lambda: a.api.get(f"/v1/containers/{c['uuid']}").status_code == 404, timeout=30)
    assert a.api.delete(f"/v1/registries/{reg['uuid']}").status_code == 204
    a.registries.clear()


def test_registry_key_file_keeps_credentials_across_restarts(own_server, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              registry: PrivateRegistry,
                                                              docker_api) -> None:
    srv = own_server()
    with srv.client() as admin:
        r = admin.post("/v1/registries", json={"registry": {"name": "r1", "domain": registry.domain,
                                                            "username": USER, "password": PASSWORD}})
        assert r.status_code == 201
    srv.stop()
    srv.start()
    with srv.client() as admin:
        c = admin.post("/v1/containers", params={"run": "true"},
                       json={"image": REPO, "registry": "r1", "command": ["sleep", "3600"]})
        assert c.status_code == 202, c.text
        wait_for(lambda: admin.get(f"/v1/containers/{c.json()['uuid']}").json()["status"]
                 == "Running", timeout=60, what="Running after a restart")
        admin.delete(f"/v1/containers/{c.json()['uuid']}", params={"stop": "true"})


def test_registering_a_public_host_changes_nothing_for_another_project(  # type: ignore[no-untyped-def]
        server: Server, tenants, docker_api, registry: PrivateRegistry, unique) -> None:
    """C registers docker.io with a username, and the private registry's host with bogus
    credentials; D (and C too) still run the host's offline busybox, which no pull could
    fetch here (this machine has no internet): no pull was forced on anyone."""
    c, d = tenants(), tenants()
    c.registry(name=unique("hub"), domain="docker.io", username="c-user", password="c-Pass-1")
    c.registry(name=unique("priv"), domain=registry.domain, username="c-user", password="bogus-1")
    busybox_id = docker_api.inspect_image("busybox:latest")["Id"]
    for who, body in ((d, {"image": "busybox:latest"}),
                      (d, {"image": "busybox", "image_pull_policy": "ifnotpresent"}),
                      (c, {"image": "busybox:latest"})):
        made = who.run(name=unique("bb"), **body)
        who.wait(made["uuid"], "Running")
        inspected = docker_of(docker_api, made["uuid"])
        assert inspected["State"]["Running"] and inspected["Image"] == busybox_id


def test_the_private_record_survives_an_agent_restart(  # type: ignore[no-untyped-def]
        own_server, tmp_path: Path, docker_api) -> None:
    """A pulls its private image with credentials; the server (and its agent) restarts;
    B still cannot run the cached copy, and the record is a 0600 file in the state dir."""
    # A registry of its own: its image ID has never been on this host.
    fresh = start_registry(tmp_path / "reg", docker_api)
    reg = next(fresh)
    srv = own_server()
    try:
        a = Tenant(srv, "proj-a")
        mine = a.registry(name="reg-a", domain=reg.domain, username=USER, password=PASSWORD)
        ok = a.run(name="a1", image=REPO, registry=mine["uuid"])
        a.wait(ok["uuid"], "Running")
        assert docker_api.inspect_image(f"{reg.image}:latest")["Id"] == reg.image_id
        record = srv.state_dir / "private-images.json"
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        assert reg.image_id in record.read_text() and PASSWORD not in record.read_text()
        a.api.close()
        srv.stop()
        srv.start()
        b = Tenant(srv, "proj-b")
        for body in ({"image": reg.image, "image_pull_policy": "ifnotpresent"},
                     {"image": f"{reg.image}:latest", "image_pull_policy": "never"}):
            stolen = b.run(name=f"b-{body['image_pull_policy']}", **body)
            failed = b.wait(stolen["uuid"], "Error")
            assert "could not be pulled" in (failed["status_reason"] or ""), failed
            assert docker_api.containers(all=True, filters={"label": [
                f"capsuled.container={stolen['uuid']}"]}) == []
        # A is still known to have access: its next container runs from the cache.
        a = Tenant(srv, "proj-a")
        again = a.run(name="a2", image=REPO, registry=mine["uuid"])
        a.wait(again["uuid"], "Running")
        a.api.close()
        b.api.close()
    finally:
        srv.stop()
        fresh.close()
        try:
            docker_api.remove_image(f"{reg.image}:latest", force=True)
        except docker.errors.APIError:
            pass
