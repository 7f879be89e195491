"""Bad input from a member is a 4xx naming the field, never a 500 (issue 9, "No 5xx")."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import docker
import httpx
import pytest
from conftest import Server, remove_instance_objects, sleeper, start_server, template, wait_for
from sqlalchemy import create_engine, make_url, text
from test_databases import ADMIN_URLS, _admin_engine

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def member(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.issue_token("bad-proj", "mallory", "member")) as c:
        yield c


def _read_response(sock: socket.socket) -> str:
    """The whole response: the head and body may come in separate segments."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(4096)
        if not piece:
            return data.decode()
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        piece = sock.recv(4096)
        if not piece:
            break
        body += piece
    return (head + b"\r\n\r\n" + body).decode()


def test_oversized_body_is_413_before_it_is_read(server: Server, member: httpx.Client) -> None:
    # Declared too large: refused on the header, with the body never sent.
    u = urlparse(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/capsules HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Auth-Token: " + member.headers["X-Auth-Token"].encode() +
                     b"\r\nContent-Length: 1000000000\r\n\r\n")
        head = _read_response(sock)
    assert head.startswith("HTTP/1.1 413"), head
    assert "larger than" in head

    # Chunked (no length): cut off as soon as the limit passes.
    def chunks() -> Iterator[bytes]:
        yield b'{"template": "'
        for _ in range(200):
            yield b"x" * 65536
    r = member.post("/v1/capsules", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["errors"][0]["code"] == "container.payload-too-large"
    assert member.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/v1/capsules", "/v1/containers"])
def test_deeply_nested_json_body_is_400(member: httpx.Client, path: str) -> None:
    r = member.post(path, content=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert "nested deeper" in r.text


@pytest.mark.parametrize("body,field", [
    ({"image": "busybox", "cpu": 10 ** 400}, "cpu"),
    ({"image": "busybox", "cpu": "1e999"}, "cpu"),
    ({"image": "busybox", "memory": "9" * 5000}, "memory"),
    ({"image": "busybox", "healthcheck": {"cmd": "true", "interval": "²"}}, "healthcheck.interval"),
    ({"image": "busybox", "healthcheck": {"cmd": "true", "interval": 10 ** 30}}, "healthcheck.interval"),
    ({"image": "busybox", "mounts": [{"size": "²", "destination": "/d"}]}, "mounts[0].size"),
    ({"image": "busybox", "restart_policy": {"Name": "on-failure", "MaximumRetryCount": "²"}},
     "restart_policy.MaximumRetryCount"),
    ({"image": "busybox", "labels": {"k": "v" * 100_000}}, "labels.k"),
    ({"image": "busybox", "labels": {"k": "a\x00b"}}, "labels.k"),
])
def test_bad_container_numbers_are_400(member: httpx.Client, body: dict[str, object], field: str) -> None:
    r = member.post("/v1/containers", json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()["errors"][0]["detail"]


@pytest.mark.parametrize("probe,field", [
    ({"periodSeconds": 10 ** 400}, "periodSeconds"),
    ({"periodSeconds": "²"}, "periodSeconds"),
    ({"failureThreshold": 1e308}, "failureThreshold"),
])
def test_bad_probe_numbers_are_400(member: httpx.Client, probe: dict[str, object], field: str) -> None:
    c = sleeper("app", livenessProbe={"exec": {"command": ["true"]}, **probe})
    r = member.post("/v1/capsules", json={"template": template("bad-probe", [c])})
    assert r.status_code == 400, r.text
    assert f"spec.containers[0].livenessProbe.{field}" in r.text


# -- numbers in query strings, JSON bodies and headers -------------------------------------

@pytest.fixture(scope="module")
def running(member: httpx.Client) -> Iterator[str]:
    """A running bare container of the member's, for the per-container parameters."""
    r = member.post("/v1/containers", json={"image": "busybox", "name": "bad-input-target",
                                            "command": ["sleep", "3600"]}, params={"run": "true"})
    assert r.status_code == 202, r.text
    uuid = r.json()["uuid"]
    wait_for(lambda: member.get(f"/v1/containers/{uuid}").json()["status"] == "Running",
             what="the target container running")
    yield uuid
    member.delete(f"/v1/containers/{uuid}", params={"stop": "true"})


MANY_DIGITS = "9" * 5000


@pytest.mark.parametrize("body,field", [
    ('{"cpu": Infinity}', "cpu"),
    ('{"cpu": NaN}', "cpu"),
    ('{"cpu": 1e999}', "cpu"),
    ('{"cpu": "Infinity"}', "cpu"),
    ('{"memory": Infinity}', "memory"),
    ('{"memory": 1e999}', "memory"),
    ('{"memory": "NaN"}', "memory"),
])
def test_resize_to_infinity_is_400(member: httpx.Client, running: str, body: str, field: str) -> None:
    r = member.patch(f"/v1/containers/{running}", content=body,
                     headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith(f"{field}:"), r.text


@pytest.mark.parametrize("params,field", [
    ({"since": "²"}, "since"),
    ({"since": MANY_DIGITS}, "since"),
    ({"tail": "²"}, "tail"),
    ({"tail": MANY_DIGITS}, "tail"),
])
def test_bad_log_parameters_are_400(member: httpx.Client, running: str,
                                    params: dict[str, str], field: str) -> None:
    r = member.get(f"/v1/containers/{running}/logs", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith(f"{field}:"), r.text


@pytest.mark.parametrize("action,params,field", [
    ("kill", {"signal": "²"}, "signal"),
    ("kill", {"signal": MANY_DIGITS}, "signal"),
    ("kill", {"signal": "9" * 30}, "signal"),
    ("stop", {"timeout": "²"}, "timeout"),
    ("stop", {"timeout": MANY_DIGITS}, "timeout"),
])
def test_bad_action_parameters_are_400(member: httpx.Client, running: str, action: str,
                                       params: dict[str, str], field: str) -> None:
    r = member.post(f"/v1/containers/{running}/{action}", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith(f"{field}:"), r.text
    assert member.get(f"/v1/containers/{running}").json()["status"] == "Running"


@pytest.mark.parametrize("body,field", [
    ('{"w": Infinity, "h": 24}', "w"),
    ('{"w": 80, "h": 1e999}', "h"),
    ('{"w": "²", "h": 24}', "w"),
    ('{"w": 80, "h": "' + MANY_DIGITS + '"}', "h"),
    ('{"w": 10000000000000000000000, "h": 24}', "w"),
])
def test_bad_resize_dimensions_are_400(member: httpx.Client, running: str, body: str,
                                       field: str) -> None:
    r = member.post(f"/v1/containers/{running}/resize", content=body,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith(f"{field}:"), r.text


@pytest.mark.parametrize("path", ["/v1/capsules", "/v1/containers"])
@pytest.mark.parametrize("limit", ["²", MANY_DIGITS, "1e999", "0"])
def test_bad_list_limit_is_400(member: httpx.Client, path: str, limit: str) -> None:
    r = member.get(path, params={"limit": limit})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith("limit:"), r.text


@pytest.mark.parametrize("header", [
    "container 1." + "1" * 5000,
    "container " + "1" * 5000 + ".1",
    "container 1.30, " + "x" * 5000,
])
def test_bad_microversion_is_406_before_auth(server: Server, header: str) -> None:
    # No token at all: the version is judged first, as Zun does.
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        r = anonymous.get("/v1/capsules", headers={"OpenStack-API-Version": header})
    assert r.status_code == 406, r.text
    detail = r.json()["errors"][0]["detail"]
    assert "OpenStack-API-Version" in detail
    assert len(detail) < 500  # the hostile header is not echoed back in full


# -- list filters: refused before they reach SQL --------------------------------------------

@pytest.mark.parametrize("params,field", [
    ({"labels": "app=a\x00b"}, "labels"),
    ({"labels": "a\x00b=x"}, "labels"),
    ({"labels": "app=" + "v" * 256}, "labels"),
    ({"labels": "k" * 256 + "=v"}, "labels"),
    ({"marker": "a\x00b"}, "marker"),
    ({"marker": "m" * 5000}, "marker"),
    ({"sort_key": "name\x00"}, "sort_key"),
    ({"sort_key": "spec"}, "sort_key"),
    ({"sort_key": "project_id; DROP TABLE capsules"}, "sort_key"),
])
def test_bad_capsule_list_filters_are_400(member: httpx.Client, params: dict[str, str],
                                          field: str) -> None:
    r = member.get("/v1/capsules", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith(f"{field}:"), r.text


@pytest.mark.parametrize("params,field", [
    ({"name": "a\x00b"}, "name"),
    ({"image": "busybox\x00"}, "image"),
    ({"status": "Running\x00"}, "status"),
    ({"user_id": "u" * 256}, "user_id"),
    ({"project_id": "\x00"}, "project_id"),
    ({"name": "n" * 5000}, "name"),
    ({"marker": "a\x00b"}, "marker"),
    ({"sort_key": "spec"}, "sort_key"),
    ({"sort_key": "\x00"}, "sort_key"),
])
def test_bad_container_list_filters_are_400(member: httpx.Client, params: dict[str, str],
                                            field: str) -> None:
    r = member.get("/v1/containers", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith(f"{field}:"), r.text


# -- template labels that do not fit their column, on every database -------------------------

@contextmanager
def _database_url(kind: str) -> Iterator[dict[str, str]]:
    """Server settings for a throwaway database of `kind` (skipped where none answers,
    as in test_databases; SQLite: the server's default)."""
    if kind == "sqlite":
        yield {}
        return
    admin = _admin_engine(kind)
    name = f"capsuled_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield {"CAPSULED_DATABASE_URL": make_url(ADMIN_URLS[kind]).set(database=name)
               .render_as_string(hide_password=False)}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name}" + (" WITH (FORCE)" if kind == "postgresql"
                                                         else "")))
        admin.dispose()


@contextmanager
def _server_on(kind: str, tmp_path: Path, docker_api: docker.APIClient) -> Iterator[Server]:
    """A capsuled of its own on a throwaway database; its Docker objects removed after."""
    with _database_url(kind) as env:
        srv = start_server(tmp_path, docker_api, **env)
        url = env.get("CAPSULED_DATABASE_URL", f"sqlite:///{tmp_path / 'capsuled.db'}")
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                instance = conn.execute(text(
                    "SELECT value FROM meta WHERE meta.key = 'instance_id'")).scalar_one()
            try:
                yield srv
            finally:
                srv.stop()
                remove_instance_objects(docker_api, instance)
        finally:
            engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_template_labels_that_do_not_fit_are_400(kind: str, tmp_path: Path,
                                                 docker_api: docker.APIClient) -> None:
    with _server_on(kind, tmp_path, docker_api) as srv:
        with srv.client(srv.issue_token("labels", "mallory", "member")) as c:
            for labels, selector, field in [
                ({"app": "v" * 256}, {}, "metadata.labels.app"),
                ({"app": "a\x00b"}, {}, "metadata.labels.app"),
                ({}, {"disk": "s" * 256}, "spec.nodeSelector.disk"),
                ({}, {"disk": "\x00"}, "spec.nodeSelector.disk"),
            ]:
                tmpl = template("too-long", [sleeper("app")], labels=labels, nodeSelector=selector)
                r = c.post("/v1/capsules", json={"template": tmpl})
                assert r.status_code == 400, (labels, selector, r.text)
                assert field in r.json()["errors"][0]["detail"]
            # NUL is refused in annotations and env too; a long env value is fine.
            tmpl = template("nul", [sleeper("app", env={"A": "a\x00"})])
            tmpl["metadata"]["annotations"] = {"note": "\x00"}
            r = c.post("/v1/capsules", json={"template": tmpl})
            assert r.status_code == 400, r.text
            assert "metadata.annotations.note" in r.text
            # 255 characters fit the column, and the label selects the capsule.
            tmpl = template("fits", [sleeper("app", env={"LONG": "x" * 4096})],
                            labels={"app": "v" * 255})
            r = c.post("/v1/capsules", json={"template": tmpl})
            assert r.status_code == 202, r.text
            listed = c.get("/v1/capsules", params={"labels": "app=" + "v" * 255}).json()
            assert [x["uuid"] for x in listed["capsules"]] == [r.json()["uuid"]]
            c.delete(f"/v1/capsules/{r.json()['uuid']}")


@pytest.mark.parametrize("body,field", [
    ('{"cpu": 1' + "0" * 400 + "}", "cpu"),
    ('{"containers": Infinity}', "containers"),
    ('{"memory": NaN}', "memory"),
])
def test_bad_quota_numbers_are_400_for_admins_too(server: Server, body: str, field: str) -> None:
    with server.client() as admin:
        r = admin.put("/v1/quotas/bad-proj", content=body,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith(f"{field}:"), r.text


@pytest.mark.parametrize("expires_in", [10 ** 400, "9" * 5000 + "s", "99999999999d", "١d"])
def test_bad_token_lifetimes_are_400(server: Server, expires_in: object) -> None:
    with server.client() as admin:
        r = admin.post("/v1/tokens", json={"project_id": "bad-proj", "user_id": "u",
                                           "roles": ["member"], "expires_in": expires_in})
    assert r.status_code == 400, r.text
    assert "expires_in:" in r.json()["errors"][0]["detail"], r.text


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_idents_with_nul_are_not_found_on_every_database(kind: str, tmp_path: Path,
                                                         docker_api: docker.APIClient) -> None:
    # PostgreSQL refuses NUL in a query: such an ident is unknown, never a 500.
    with _server_on(kind, tmp_path, docker_api) as srv:
        with srv.client(srv.issue_token("nul", "mallory", "member")) as c:
            r = c.post("/v1/containers", json={"image": "busybox", "name": "nul-target"})
            assert r.status_code == 202, r.text
            target = r.json()["uuid"]
            for path in ("/v1/capsules/a%00b", "/v1/containers/a%00b",
                         f"/v1/containers/{target}/container_actions/req%00x",
                         "/v1/containers/" + "n" * 300):
                r = c.get(path)
                assert r.status_code == 404, (path, r.text)
            r = c.get("/v1/containers", params={"capsule": "a\x00b"})
            assert r.status_code == 404, r.text
        with srv.client() as admin:
            r = admin.get("/v1/hosts/a%00b", headers={"OpenStack-API-Version": "container latest"})
            assert r.status_code == 404, r.text
            for path, field in (("/v1/quotas/a%00b", "project_id"),
                                ("/v1/quota_classes/a%00b", "name"),
                                ("/v1/quotas/" + "p" * 300, "project_id")):
                r = admin.get(path)
                assert r.status_code == 400, (path, r.text)
                assert r.json()["errors"][0]["detail"].startswith(f"{field}:")
                r = admin.put(path, json={"cpu": 1})
                assert r.status_code == 400, (path, r.text)


@pytest.mark.parametrize("body,where", [
    ({"image": "busybox", "workdir": "/a\x00"}, "workdir"),
    ({"image": "busybox", "command": ["sh", "-c", "true\x00"]}, "command[2]"),
    ({"image": "busybox", "entrypoint": ["\x00"]}, "entrypoint[0]"),
])
def test_nul_anywhere_in_a_container_request_is_400(member: httpx.Client, body: dict[str, object],
                                                   where: str) -> None:
    r = member.post("/v1/containers", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"] == f"{where}: must not contain NUL characters"


@pytest.mark.parametrize("container,where", [
    (sleeper("app", workDir="/a\x00"), "spec.containers[0].workDir"),
    (sleeper("app", args=["x\x00"]), "spec.containers[0].args[0]"),
    (sleeper("app", env={"A\x00": "v"}), "spec.containers[0].env.A\\0"),
])
def test_nul_anywhere_in_a_template_is_400(member: httpx.Client, container: dict[str, object],
                                           where: str) -> None:
    r = member.post("/v1/capsules", json={"template": template("nul", [container])})
    assert r.status_code == 400, r.text
    assert f"{where}: must not contain NUL characters" in r.json()["errors"][0]["detail"]


@pytest.mark.parametrize("ps_args", ["²", "a\x00b", "%", "-1"])
def test_ps_args_that_ps_refuses_are_400(member: httpx.Client, running: str, ps_args: str) -> None:
    r = member.get(f"/v1/containers/{running}/top", params={"ps_args": ps_args})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"].startswith("ps_args: ps refused them"), r.text
    assert member.get(f"/v1/containers/{running}/top", params={"ps_args": "-ef"}).status_code == 200
