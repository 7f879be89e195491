"""Bad input from a member is a 4xx naming the field, never a 500 (issue 9, "No 5xx")."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest
from conftest import Server, sleeper, template

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def member(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.issue_token("bad-proj", "mallory", "member")) as c:
        yield c


def test_oversized_body_is_413_before_it_is_read(server: Server, member: httpx.Client) -> None:
    # Declared too large: refused on the header, with the body never sent.
    u = urlparse(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/capsules HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Auth-Token: " + member.headers["X-Auth-Token"].encode() +
                     b"\r\nContent-Length: 1000000000\r\n\r\n")
        head = sock.recv(4096).decode()
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
