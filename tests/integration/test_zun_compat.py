"""What Zun's own API tests send and expect (issue 11): the project's `default` security
group on every create, Zun-shaped error codes for routing errors, and the archive round
trip of zun-tempest-plugin's archive tests (which scripts/zun-tempest.sh can only run up to
their Neutron-address assertion)."""

from __future__ import annotations

import base64
import io
import tarfile
import time

import docker
import httpx
import pytest
from conftest import Server, exec_in, wait_for

pytestmark = [pytest.mark.docker]


def test_the_default_security_group_is_accepted_and_reported(server: Server) -> None:
    with server.client(server.issue_token("zc-proj", "zed", "member")) as c:
        r = c.post("/v1/containers", json={"image": "busybox", "name": "zc-sg",
                                           "security_groups": ["default"]})
        assert r.status_code == 202, r.text
        try:
            assert r.json()["security_groups"] == ["default"]
            assert c.get(f"/v1/containers/{r.json()['uuid']}").json()["security_groups"] == ["default"]
        finally:
            c.delete(f"/v1/containers/{r.json()['uuid']}", params={"force": "true"})
        # Other groups are the project's own (/v1/security_groups); one it lacks is a 400.
        other = c.post("/v1/containers", json={"image": "busybox", "security_groups": ["web"]})
        assert other.status_code == 400
        assert other.json()["errors"][0]["detail"] == (
            "security_groups: no security group named 'web' in this project")


@pytest.mark.parametrize("method,path,status,code", [
    ("POST", "/v1/containers/nope/frobnicate", 404, "container.not-found"),
    ("GET", "/v1/nothing-here", 404, "container.not-found"),
    ("PUT", "/v1/capsules", 405, "container.method-not-allowed"),
])
def test_routing_errors_have_zun_shaped_codes(api: httpx.Client, method: str, path: str,
                                              status: int, code: str) -> None:
    r = api.request(method, path)
    assert r.status_code == status, r.text
    assert r.json()["errors"][0]["code"] == code


def _tempest_tar(content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name="test.txt")
        info.size = len(content)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.mark.parametrize("version", ["1.20", "1.40"])
def test_the_tempest_archive_round_trip(server: Server, docker_api: docker.APIClient,
                                        version: str) -> None:
    """test_put_and_get_archive_from_container[_encoded], after its addresses check: before
    1.25 the tar travels as the JSON string of its bytes (oslo's jsonutils decodes bytes as
    UTF-8), from 1.25 as base64; the container is the plugin's default run request."""
    encoded = version == "1.40"
    headers = {"OpenStack-API-Version": f"container {version}"}
    with server.client(server.issue_token("zc-arch", "tempest", "member")) as c:
        c.headers.update(headers)
        r = c.post("/v1/containers/", params={"run": "True"}, json={
            "name": f"tempest-archive-{version}", "image": "busybox:latest",
            "command": ["sleep", "10000"], "cpu": 0.1, "memory": "100", "environment": {},
            "labels": {}, "image_driver": "docker", "restart_policy": {"Name": "no"},
            "workdir": "/", "interactive": False, "security_groups": ["default"]})
        assert r.status_code == 202, r.text
        assert r.headers["OpenStack-API-Version"] == f"container {version}"
        uuid = r.json()["uuid"]
        try:
            wait_for(lambda: c.get(f"/v1/containers/{uuid}").json()["status"] == "Running",
                     timeout=60, what="Running")
            tar = _tempest_tar(b"Random text")
            data = base64.b64encode(tar).decode() if encoded else tar.decode("utf-8")
            put = c.post(f"/v1/containers/{uuid}/put_archive", params={"path": "/tmp"},
                         json={"data": data})
            assert put.status_code == 200, put.text
            [found] = docker_api.containers(filters={"label": [f"capsuled.container={uuid}"]})
            assert exec_in(docker_api, found["Id"], "cat", "/tmp/test.txt") == (0, "Random text")

            got = c.get(f"/v1/containers/{uuid}/get_archive", params={"path": "/tmp/test.txt"})
            assert got.status_code == 200, got.text
            body = got.json()
            raw = base64.b64decode(body["data"]) if encoded else body["data"].encode()
            with tarfile.open(fileobj=io.BytesIO(raw)) as back:
                member = back.extractfile("test.txt")
                assert member is not None and member.read() == b"Random text"
            assert (body["stat"]["name"], body["stat"]["size"]) == ("test.txt", 11)
        finally:
            # What the plugin's tearDown sends (force is an admin's power).
            assert c.delete(f"/v1/containers/{uuid}", params={"stop": "True"}).status_code == 204
