"""The unmodified python-zunclient's security-group calls on a real server and Docker:
`run` with security_groups, then add_security_group / remove_security_group at 1.14 (Zun
removed them at 1.15), proven with real traffic from a client capsule of the project; a
member cannot name another project's group."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import docker
import httpx
import pytest
from conftest import Capsules, Server, exec_in, member, sleeper, template, wait_for
from zunclient import client as zun_client
from zunclient.common.apiclient import exceptions as zun_exc

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

SERVE = ("mkdir -p /www && echo up > /www/index.html && httpd -p 8080 -h /www && "
         "exec httpd -f -p 9090 -h /www")


def answers(docker_api: docker.APIClient, client: str, ip: str, port: int) -> bool:
    code, out = exec_in(docker_api, client, "sh", "-c",
                        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port}")
    return code == 0 and "200 OK" in out


def times_out(docker_api: docker.APIClient, client: str, ip: str, port: int) -> bool:
    started = time.monotonic()
    return not answers(docker_api, client, ip, port) and time.monotonic() - started >= 1.5


@pytest.fixture()
def project(server: Server, unique: Callable[[str], str]) -> Iterator[tuple[str, httpx.Client]]:
    token = server.issue_token(unique("zsg"), "zed", "member")
    with server.client(token) as c:
        yield token, c


def test_zunclient_moves_a_container_between_groups(
        server: Server, project: tuple[str, httpx.Client], docker_api: docker.APIClient,
        unique: Callable[[str], str]) -> None:
    token, rest = project
    assert rest.post("/v1/security_groups", json={"name": "web-a", "rules": [
        {"protocol": "tcp", "port_range_min": 8080, "port_range_max": 8080,
         "remote_group": "default"}]}).status_code == 201
    zun = zun_client.Client("1.14", auth_token=token, endpoint_override=server.url + "/v1")
    capsules = Capsules(rest)
    made = zun.containers.run(name=unique("zsrv"), image="busybox", command=["sh", "-c", SERVE],
                              security_groups=["default"])
    try:
        assert made.security_groups == ["default"]
        cli = capsules.create(template(unique("cli"), [sleeper("c")]))
        capsules.wait_status(cli["uuid"], "Running")
        wait_for(lambda: zun.containers.get(made.uuid).status == "Running", timeout=60)
        (ports,) = zun.containers.get(made.uuid).addresses.values()
        ip = ports[0]["addr"]
        client = member(docker_api, cli["uuid"], "c")["Id"]
        assert answers(docker_api, client, ip, 8080) and answers(docker_api, client, ip, 9090)

        zun.containers.add_security_group(made.uuid, "web-a")
        zun.containers.remove_security_group(made.uuid, "default")
        assert zun.containers.get(made.uuid).security_groups == ["web-a"]
        wait_for(lambda: not answers(docker_api, client, ip, 9090), timeout=15,
                 what="9090 closed")
        assert times_out(docker_api, client, ip, 9090) and answers(docker_api, client, ip, 8080)
        actions = [a.action for a in zun.actions.list(made.uuid)]
        assert actions[-2:] == ["add_security_group", "remove_security_group"]

        zun.containers.add_security_group(made.uuid, "default")  # back: both answer again
        wait_for(lambda: answers(docker_api, client, ip, 9090), timeout=15, what="9090 open")
        with pytest.raises(zun_exc.BadRequest, match="already in security group default"):
            zun.containers.add_security_group(made.uuid, "default")
        zun.containers.remove_security_group(made.uuid, "web-a")  # the group gone: both still
        assert zun.containers.get(made.uuid).security_groups == ["default"]
        assert answers(docker_api, client, ip, 8080) and answers(docker_api, client, ip, 9090)

        # Another project: neither our group nor our container exists for them.
        other = zun_client.Client("1.14", auth_token=server.issue_token(unique("zsg-b"), "eve"),
                                  endpoint_override=server.url + "/v1")
        with pytest.raises(zun_exc.BadRequest, match="no security group named 'web-a'"):
            other.containers.create(name=unique("zeve"), image="busybox", security_groups=["web-a"])
        with pytest.raises(zun_exc.NotFound):
            other.containers.add_security_group(made.uuid, "default")
    finally:
        capsules.cleanup()
        zun.containers.delete(made.uuid, stop=True)
        wait_for(lambda: rest.get(f"/v1/containers/{made.uuid}").status_code == 404, timeout=60)
        rest.delete("/v1/security_groups/web-a")
