"""What Zun's own API tests send and expect (issue 11, first items): the project's
`default` security group on every create, and Zun-shaped error codes for routing errors."""

from __future__ import annotations

import httpx
import pytest
from conftest import Server

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
        other = c.post("/v1/containers", json={"image": "busybox", "security_groups": ["web"]})
        assert other.status_code == 400
        assert "security_groups: only [\"default\"]" in other.json()["errors"][0]["detail"]


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
