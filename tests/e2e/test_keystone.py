"""OpenStack identity end to end: a real Keystone (scripts/keystone.sh: keystone under uWSGI,
SQLite, fernet tokens) with Capsuled in its catalog as `container`, a capsuled configured
with CAPSULED_KEYSTONE__*, and the unmodified `zun` and `openstack` (zunclient's OSC plugin)
CLIs logged in with a password."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import docker
import httpx
import pytest
import yaml
from conftest import (LATEST, ROOT, VENV_BIN, Server, containers_of, free_port,
                      remove_instance_objects, wait_for)
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client as ks_client

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

PASSWORDS = {"admin": "admin-secret", "capsuled": "capsuled-secret", "demo": "demo-secret"}
PROJECTS = {"admin": "admin", "capsuled": "service", "demo": "demo"}
CACHE_TTL = 1.0


@dataclass
class Keystone:
    auth_url: str
    state_dir: Path
    project_ids: dict[str, str]

    def session(self, user: str) -> ks_session.Session:
        auth = v3.Password(auth_url=self.auth_url, username=user, password=PASSWORDS[user],
                           project_name=PROJECTS[user], user_domain_name="Default",
                           project_domain_name="Default")
        return ks_session.Session(auth=auth, timeout=30)

    def token(self, user: str) -> str:
        token = self.session(user).get_token()
        assert token
        return str(token)

    def os_env(self, user: str) -> dict[str, str]:
        return {"OS_AUTH_URL": self.auth_url, "OS_IDENTITY_API_VERSION": "3",
                "OS_USERNAME": user, "OS_PASSWORD": PASSWORDS[user],
                "OS_PROJECT_NAME": PROJECTS[user], "OS_USER_DOMAIN_NAME": "Default",
                "OS_PROJECT_DOMAIN_NAME": "Default", "ZUN_API_VERSION": "1.latest"}


@pytest.fixture(scope="module")
def capsuled_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def keystone(tmp_path_factory: pytest.TempPathFactory, capsuled_port: int) -> Iterator[Keystone]:
    """No skip: if Keystone cannot be installed or started, the tests fail."""
    state = tmp_path_factory.mktemp("keystone")
    port = free_port()
    script = str(ROOT / "scripts" / "keystone.sh")
    started = subprocess.run(
        ["bash", script, "--state-dir", str(state), "--port", str(port),
         "--container-url", f"http://127.0.0.1:{capsuled_port}/v1"],
        capture_output=True, text=True, timeout=900)
    try:
        assert started.returncode == 0, f"keystone.sh failed:\n{started.stdout}\n{started.stderr}"
        ks = Keystone(f"http://127.0.0.1:{port}/v3", state, {})
        admin = ks_client.Client(session=ks.session("admin"), interface="public")
        ks.project_ids = {p.name: p.id for p in admin.projects.list()}
        yield ks
    finally:
        subprocess.run(["bash", script, "stop", "--state-dir", str(state)], timeout=60)


@pytest.fixture(scope="module")
def ks_server(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone, capsuled_port: int,
              docker_api: docker.APIClient) -> Iterator[Server]:
    srv = Server(url=f"http://127.0.0.1:{capsuled_port}", port=capsuled_port,
                 state_dir=tmp_path_factory.mktemp("ks-capsuled"), env={
                     "CAPSULED_AGENT__RELIST_INTERVAL": "2",
                     "CAPSULED_KEYSTONE__AUTH_URL": keystone.auth_url,
                     "CAPSULED_KEYSTONE__USERNAME": "capsuled",
                     "CAPSULED_KEYSTONE__PASSWORD": PASSWORDS["capsuled"],
                     "CAPSULED_KEYSTONE__PROJECT_NAME": "service",
                     "CAPSULED_KEYSTONE__CACHE_TTL": str(CACHE_TTL)})
    srv.start()
    instance = srv.instance
    yield srv
    srv.stop()
    remove_instance_objects(docker_api, instance)


@pytest.fixture(scope="module")
def zun(keystone: Keystone, ks_server: Server) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The unmodified `zun` CLI as a Keystone user: only OS_* variables, no endpoint."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ZUN_"))}

    def run(*args: str, user: str = "demo", check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(VENV_BIN / "zun"), *args], capture_output=True, text=True,
                              timeout=120, env={**base, **keystone.os_env(user), "COLUMNS": "250"})
        if check:
            assert proc.returncode == 0, f"zun {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc
    return run


@pytest.fixture(scope="module")
def openstack(keystone: Keystone,
              ks_server: Server) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The unmodified `openstack` command (python-openstackclient with zunclient's plugin) as
    a Keystone user: only OS_* variables, the container API version left to negotiate."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ZUN_"))}

    def run(*args: str, user: str = "demo", check: bool = True,
            typed: str | None = None) -> subprocess.CompletedProcess[str]:
        """`typed` goes to stdin, which stays open until the command ends: the plugin's
        terminal client quits half a second after its stdin closes, output or not."""
        cmd, env = [str(VENV_BIN / "openstack"), *args], {**base, **keystone.os_env(user),
                                                          "COLUMNS": "250"}
        if typed is None:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                                  stdin=subprocess.DEVNULL)
        else:
            with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) as p:
                assert p.stdin is not None
                p.stdin.write(typed)
                p.stdin.flush()
                try:
                    p.wait(timeout=60)  # a session's output is far below a pipe's buffer
                finally:
                    p.kill()
                    out, err = p.communicate()
            proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
        if check:
            assert proc.returncode == 0, \
                f"openstack {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc
    return run


def api(server: Server, token: str | None) -> httpx.Client:
    headers = {**LATEST, **({"X-Auth-Token": token} if token is not None else {})}
    return httpx.Client(base_url=server.url, timeout=30, headers=headers)


def test_version_documents_stay_public_and_the_rest_needs_a_keystone_token(
        ks_server: Server, keystone: Keystone) -> None:
    with api(ks_server, None) as anon:
        assert anon.get("/").status_code == 200
        assert anon.get("/v1").status_code == 200
        assert anon.get("/v1/capsules").status_code == 401
    for garbage in ("garbage", "gAAAAABnot-a-fernet-token", "x" * 300):
        with api(ks_server, garbage) as c:
            r = c.get("/v1/capsules")
            assert r.status_code == 401, r.text
            assert r.json()["errors"][0]["status"] == 401
    # The server's own tokens (the bootstrap admin's, agents') still work beside Keystone's,
    # and a revoked one does not.
    with api(ks_server, ks_server.token) as c:
        assert c.get("/v1/capsules").status_code == 200
    with api(ks_server, "cap_not-a-token-this-server-issued") as c:
        assert c.get("/v1/capsules").status_code == 401


def test_a_member_token_is_its_keystone_project_and_a_revoked_one_is_refused(
        ks_server: Server, keystone: Keystone, docker_api: docker.APIClient) -> None:
    token = keystone.token("demo")
    demo_project = keystone.project_ids["demo"]
    with api(ks_server, token) as c:
        r = c.post("/v1/containers", params={"run": "true"},
                   json={"name": "ks-owner", "image": "busybox", "command": ["sleep", "300"]})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["project_id"] == demo_project
        assert body["user_id"] != "admin" and len(body["user_id"]) == 32
        wait_for(lambda: containers_of(docker_api, body["uuid"], all_=True), timeout=60,
                 what="the container in Docker")
        [found] = containers_of(docker_api, body["uuid"])
        assert found["Labels"]["capsuled.project"] == demo_project
        # A member is not admin: all_projects is refused by policy.
        assert c.get("/v1/containers", params={"all_projects": "1"}).status_code == 403
        assert c.delete(f"/v1/containers/{body['uuid']}",
                        params={"force": "true"}).status_code == 403

    with api(ks_server, keystone.token("admin")) as admin:
        listed = admin.get("/v1/containers", params={"all_projects": "1"})
        assert listed.status_code == 200, listed.text
        assert body["uuid"] in {c["uuid"] for c in listed.json()["containers"]}
        assert admin.delete(f"/v1/containers/{body['uuid']}",
                            params={"force": "true", "all_projects": "1"}).status_code == 204

    admin_client = ks_client.Client(session=keystone.session("admin"), interface="public")
    admin_client.tokens.revoke_token(token)
    time.sleep(CACHE_TTL + 0.2)
    with api(ks_server, token) as c:
        r = c.get("/v1/capsules")
        assert r.status_code == 401, r.text


def test_zun_cli_capsule_lifecycle(zun: Callable[..., subprocess.CompletedProcess[str]],
                                   ks_server: Server, keystone: Keystone,
                                   docker_api: docker.APIClient, tmp_path: Path) -> None:
    name = "ks-capsule"
    tmpl = {"kind": "capsule", "metadata": {"name": name, "labels": {"via": "zun"}},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                                     "command": ["sleep", "3600"],
                                     "resources": {"requests": {"cpu": 0.25, "memory": 32}}}]}}
    path = tmp_path / "capsule.yaml"
    path.write_text(yaml.safe_dump(tmpl))

    created = zun("capsule-create", "-f", str(path))
    assert "Request to create capsule has been accepted." in created.stdout

    token = keystone.token("demo")
    with api(ks_server, token) as c:
        def running() -> dict[str, object] | None:
            got = c.get(f"/v1/capsules/{name}").json()
            return got if got.get("status") == "Running" else None
        capsule = wait_for(running, timeout=90, what=f"{name} Running")
    uuid = str(capsule["uuid"])
    assert capsule["project_id"] == keystone.project_ids["demo"]
    assert {c["Labels"]["capsuled.project"] for c in containers_of(docker_api, uuid)} == {
        keystone.project_ids["demo"]}

    listed = zun("capsule-list")
    row = next(line for line in listed.stdout.splitlines() if name in line)
    assert uuid in row and "Running" in row

    described = zun("capsule-describe", name)
    for word in (uuid, "Running", keystone.project_ids["demo"], "main"):
        assert word in described.stdout, word

    # Updated (an extension the zun CLI knows nothing of), it is the same capsule to zun.
    with api(ks_server, token) as c:
        assert c.patch(f"/v1/capsules/{name}", json={
            "containers": [{"name": "main", "env": {"V": "2"}}]}).status_code == 202
        wait_for(lambda: (lambda b: b["revision"] == 2 and b["status"] == "Running")(
            c.get(f"/v1/capsules/{name}").json()), timeout=60, what=f"{name} updated")
    described = zun("capsule-describe", name)
    for word in (uuid, "Running", "'V': '2'"):
        assert word in described.stdout, word

    # Another project does not see it.
    admin_list = zun("capsule-list", user="admin")
    assert name not in admin_list.stdout

    deleted = zun("capsule-delete", name)
    assert f"Request to delete capsule {name} has been accepted." in deleted.stdout
    wait_for(lambda: not containers_of(docker_api, uuid), timeout=60,
             what="capsule containers removed")


def test_zun_cli_container_lifecycle(zun: Callable[..., subprocess.CompletedProcess[str]],
                                     keystone: Keystone, docker_api: docker.APIClient) -> None:
    """As the Keystone admin: `delete --force` is an admin power (Zun's default policy)."""
    name = "ks-run"
    ran = zun("run", "--name", name, "busybox", "sh", "-c", "echo hi from keystone; sleep 300",
              user="admin")
    assert name in ran.stdout

    def listed_running() -> str | None:
        out = zun("list", user="admin").stdout
        row = next((line for line in out.splitlines() if f" {name} " in line), "")
        return row if "Running" in row else None
    row = wait_for(listed_running, timeout=90, interval=0.5, what=f"{name} Running in zun list")
    uuid = row.split("|")[1].strip()
    [found] = containers_of(docker_api, uuid)
    assert found["Labels"]["capsuled.project"] == keystone.project_ids["admin"]

    logs = wait_for(lambda: "hi from keystone" in (out := zun("logs", name, user="admin").stdout)
                    and out, timeout=30, interval=0.5, what="the log line")
    assert "hi from keystone" in logs

    deleted = zun("delete", "--force", name, user="admin")
    assert f"Request to delete container {name} has been accepted." in deleted.stdout
    wait_for(lambda: not containers_of(docker_api, uuid), timeout=60, what="container removed")


def test_zun_cli_commit_and_rebuild(zun: Callable[..., subprocess.CompletedProcess[str]],
                                    keystone: Keystone, docker_api: docker.APIClient) -> None:
    """As a Keystone member: `zun commit` makes the project's image, `zun rebuild` moves
    the container onto it; a commit over a base image is refused."""
    name, repo = "ks-acts", "ks-acts-img"
    zun("run", "--name", name, "busybox", "sh", "-c",
        "trap 'exit 0' TERM; echo ks > /ks; while true; do sleep 1; done")
    uuid = ""
    try:
        def running_uuid() -> str | None:
            row = next((line for line in zun("list").stdout.splitlines() if f" {name} " in line), "")
            return row.split("|")[1].strip() if "Running" in row else None
        uuid = wait_for(running_uuid, timeout=90, interval=0.5, what=f"{name} Running")
        [before] = containers_of(docker_api, uuid)

        out = zun("commit", name, f"{repo}:v1").stdout
        assert f"Request to commit container {name} has been accepted" in out, out
        image = docker_api.inspect_image(f"{repo}:v1")
        assert image["Config"]["Labels"]["capsuled.project"] == keystone.project_ids["demo"]
        refused = zun("commit", name, "busybox:latest").stdout
        assert "Commit for container" in refused and "repository" in refused, refused

        out = zun("rebuild", "--image", f"{repo}:v1", name).stdout
        assert f"Request to rebuild container {name} has been accepted" in out, out

        def rebuilt() -> bool:
            found = containers_of(docker_api, uuid)
            return len(found) == 1 and found[0]["Id"] != before["Id"] \
                and found[0]["State"] == "running"
        wait_for(rebuilt, timeout=90, interval=0.5, what="the rebuilt container running")
        [after] = containers_of(docker_api, uuid)
        assert after["Image"] == f"{repo}:v1"
        assert f"{repo}:v1" in zun("show", name).stdout
    finally:
        zun("delete", "--stop", name, check=False)
        if uuid:
            wait_for(lambda: not containers_of(docker_api, uuid), timeout=60, what="removed")
        try:
            docker_api.remove_image(f"{repo}:v1", force=True)
        except docker.errors.APIError:
            pass


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory,
                     docker_api: docker.APIClient) -> Iterator[Any]:
    from private_registry import start_registry
    yield from start_registry(tmp_path_factory.mktemp("ks-registry"), docker_api)


def test_zun_cli_registries(zun: Callable[..., subprocess.CompletedProcess[str]],
                            private_registry: Any, docker_api: docker.APIClient,
                            ks_server: Server) -> None:
    """zun registry-create/list/show/update/delete and `zun run --registry` as a member
    of a Keystone project; another Keystone project sees none of it."""
    from private_registry import PASSWORD, REPO, USER
    domain = private_registry.domain
    made = zun("registry-create", "--name", "ksreg", "--domain", domain, "--username", USER,
               "--password", PASSWORD)
    assert "***" in made.stdout and PASSWORD not in made.stdout
    listed = zun("registry-list").stdout
    assert "ksreg" in listed and domain in listed and PASSWORD not in listed
    assert "ksreg" not in zun("registry-list", user="admin").stdout  # another project's
    assert "ksreg" in zun("registry-list", "--all-projects", user="admin").stdout
    shown = zun("registry-show", "ksreg").stdout
    assert domain in shown and PASSWORD not in shown
    # The cloud admin reaches any project's registry by name, as in Zun; still no password.
    assert PASSWORD not in zun("registry-show", "ksreg", user="admin").stdout
    zun("registry-update", "ksreg", "--password", PASSWORD)
    ran = zun("run", "--name", "ks-private", "--registry", "ksreg", REPO, "sleep", "300")
    assert "ks-private" in ran.stdout

    def running() -> bool:
        return "Running" in zun("show", "ks-private").stdout
    wait_for(running, timeout=90, interval=0.5, what="the private image Running")
    found = docker_api.containers(filters={"label": ["capsuled.name=ks-private"]})
    assert docker_api.inspect_container(found[0]["Id"])["Config"]["Image"] == private_registry.image
    zun("delete", "--stop", "ks-private")
    wait_for(lambda: "ks-private" not in zun("list").stdout, timeout=60, what="container gone")
    deleted = zun("registry-delete", "ksreg")
    assert "has been accepted" in deleted.stdout
    assert "ksreg" not in zun("registry-list").stdout
    assert PASSWORD not in Path(ks_server.log or "").read_text()


def _docker_state(docker_api: docker.APIClient, uuid: str) -> str:
    [found] = containers_of(docker_api, uuid)
    return str(found["State"])


def test_openstack_appcontainer_lifecycle(openstack: Callable[..., subprocess.CompletedProcess[str]],
                                          ks_server: Server, keystone: Keystone,
                                          docker_api: docker.APIClient) -> None:
    """`openstack appcontainer run --wait/list/show/logs/exec/stop/start/delete` as a
    Keystone member, checked against what the user reads and what Docker did. (Keystone
    projects' isolation is the zun CLI tests' and the HTTP tests' above: each `openstack`
    is a login and a second of start-up, so this test makes only the calls it proves.)"""
    name = "ks-osc-run"
    demo = keystone.project_ids["demo"]
    # `--wait` polls every 5 s on one kept-alive connection; so that the server never closes
    # it just as the CLI reuses it, idle connections live longer: this one lasts the test.
    idle = http.client.HTTPConnection("127.0.0.1", ks_server.port, timeout=10)
    idle.request("GET", "/")
    assert idle.getresponse().read()
    idle_sock = idle.sock
    # -f json before the image: everything after it is the container's command.
    ran = json.loads(openstack(
        "appcontainer", "run", "--wait", "--name", name, "-f", "json", "busybox", "sh", "-c",
        "trap 'exit 0' TERM; echo hi from osc; while true; do sleep 1; done").stdout)
    uuid, removed = ran["uuid"], False
    try:
        assert ran["name"] == name and ran["status"] == "Running" and ran["project_id"] == demo
        [found] = containers_of(docker_api, uuid)
        assert found["State"] == "running" and found["Labels"]["capsuled.project"] == demo

        [row] = [r for r in json.loads(openstack("appcontainer", "list", "-f", "json").stdout)
                 if r["name"] == name]
        assert row["uuid"] == uuid and row["status"] == "Running" and row["image"] == "busybox"
        shown = json.loads(openstack("appcontainer", "show", name, "-f", "json").stdout)
        assert shown["uuid"] == uuid and shown["command"][0] == "sh"

        logs = wait_for(lambda: "hi from osc" in (out := openstack(
            "appcontainer", "logs", name).stdout) and out, timeout=20, interval=0.5,
            what="the log line")
        assert "hi from osc" in logs

        # Non-interactive exec: the output printed, the command's exit code is the CLI's.
        done = openstack("appcontainer", "exec", name, "sh", "-c", "hostname; exit 3",
                         check=False)
        assert done.returncode == 3 and done.stdout.strip() == name, done
        # Interactive exec: the plugin asks for run=False + interactive and joins the
        # websocket; the session ends when the shell exits.
        session = openstack("appcontainer", "exec", "--interactive", name, "sh",
                            typed="echo inside-$((6*7)); exit\n")
        assert "inside-42" in session.stdout, session

        assert f"Request to stop container {name} has been accepted." in openstack(
            "appcontainer", "stop", name).stdout
        wait_for(lambda: _docker_state(docker_api, uuid) == "exited", timeout=30,
                 what="stopped in Docker")
        assert f"Request to start container {name} has been accepted" in openstack(
            "appcontainer", "start", name).stdout
        wait_for(lambda: _docker_state(docker_api, uuid) == "running", timeout=30,
                 what="running again in Docker")

        deleted = openstack("appcontainer", "delete", "--stop", name).stdout
        assert f"Request to delete container {name} has been accepted." in deleted
        wait_for(lambda: not containers_of(docker_api, uuid), timeout=60,
                 what="container removed")
        removed = True
    finally:
        if not removed:
            openstack("appcontainer", "delete", "--stop", uuid, check=False)
    idle.request("GET", "/")  # http.client reconnects only if it saw the close: it did not
    assert idle.getresponse().status == 200 and idle.sock is idle_sock
    idle.close()


def test_openstack_capsule_lifecycle(openstack: Callable[..., subprocess.CompletedProcess[str]],
                                     ks_server: Server, keystone: Keystone,
                                     docker_api: docker.APIClient, tmp_path: Path) -> None:
    """The plugin's capsule commands: `openstack capsule create/list/show/delete`."""
    name = "ks-osc-capsule"
    demo = keystone.project_ids["demo"]
    tmpl = {"kind": "capsule", "metadata": {"name": name, "labels": {"via": "osc"}},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                                     "command": ["sleep", "3600"],
                                     "resources": {"requests": {"cpu": 0.25, "memory": 32}}}]}}
    path = tmp_path / "capsule.yaml"
    path.write_text(yaml.safe_dump(tmpl))

    created = json.loads(openstack("capsule", "create", "--file", str(path), "-f", "json").stdout)
    uuid, removed = created["uuid"], False
    try:
        assert created["name"] == name and created["status"] == "Creating"
        assert created["labels"] == {"via": "osc"} and created["project_id"] == demo

        with api(ks_server, keystone.token("demo")) as c:  # polls cheaper than the CLI
            wait_for(lambda: c.get(f"/v1/capsules/{uuid}").json()["status"] == "Running",
                     timeout=90, what=f"{name} Running")
        shown = json.loads(openstack("capsule", "show", name, "-f", "json").stdout)
        assert shown["uuid"] == uuid and shown["status"] == "Running" and shown["networks"]
        assert [c["name"] for c in shown["containers"]] == ["main"]
        found = containers_of(docker_api, uuid)
        assert {c["Labels"]["capsuled.project"] for c in found} == {demo}
        assert any(c["State"] == "running" and c["Labels"].get("capsuled.name") == "main"
                   for c in found), found

        [row] = [r for r in json.loads(openstack("capsule", "list", "-f", "json").stdout)
                 if r["uuid"] == uuid]
        assert row["name"] == name and row["status"] == "Running" and row["addresses"]

        deleted = openstack("capsule", "delete", name).stdout
        assert f"Request to delete capsule {name} has been accepted." in deleted
        wait_for(lambda: not containers_of(docker_api, uuid), timeout=60,
                 what="capsule containers removed")
        removed = True
    finally:
        if not removed:
            openstack("capsule", "delete", uuid, check=False)
