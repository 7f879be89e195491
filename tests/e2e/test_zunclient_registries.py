"""Private registries through the unmodified python-zunclient library and the `capsule`
CLI, against a real server, Docker Engine and registry (docker-registry + htpasswd)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import Server, wait_for
from private_registry import PASSWORD, REPO, USER, PrivateRegistry, start_registry
from zunclient import client as zun_client
from zunclient.common.apiclient import exceptions as zun_exc

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory,
             docker_api: docker.APIClient) -> Iterator[PrivateRegistry]:
    yield from start_registry(tmp_path_factory.mktemp("registry"), docker_api)


def zun_for(server: Server, token: str):  # type: ignore[no-untyped-def]
    return zun_client.Client("1.latest", auth_token=token, endpoint_override=server.url + "/v1")


def test_zunclient_registry_crud_and_a_container_through_it(  # type: ignore[no-untyped-def]
        server: Server, registry: PrivateRegistry, docker_api: docker.APIClient, unique) -> None:
    project = unique("zreg")
    zun = zun_for(server, server.issue_token(project, "u1", "member"))
    name = unique("r")
    made = zun.registries.create(name=name, domain=registry.domain, username=USER,
                                 password=PASSWORD)
    info = made._info["registry"]
    assert info["password"] == "***" and info["username"] == USER and info["name"] == name
    listed = zun.registries.list()
    assert [(r.uuid, r.password) for r in listed] == [(info["uuid"], "***")]
    shown = zun.registries.get(name)._info["registry"]
    assert shown["uuid"] == info["uuid"] and shown["domain"] == registry.domain
    updated = zun.registries.update(info["uuid"], username=USER, password=PASSWORD)
    assert updated._info["registry"]["password"] == "***"

    # The registry listens on loopback: a member's search may not reach it there (no
    # server-side request forgery); an admin of the project's may.
    with pytest.raises(zun_exc.BadRequest):
        zun.images.search_image(f"{registry.domain}/busybox", exact_match=False)
    admin = zun_for(server, server.issue_token(project, "ops", "admin"))
    hits = admin.images.search_image(f"{registry.domain}/busybox", exact_match=False)
    assert [h.name for h in hits] == [registry.image]

    c = zun.containers.run(image=REPO, registry=name, command=["sleep", "3600"])
    assert c.registry_id == info["uuid"]
    wait_for(lambda: zun.containers.get(c.uuid).status == "Running", timeout=60,
             what="the private image to run")
    found = docker_api.containers(filters={"label": [f"capsuled.container={c.uuid}"]})
    assert docker_api.inspect_container(found[0]["Id"])["Config"]["Image"] == registry.image
    with pytest.raises(zun_exc.Conflict):
        zun.registries.delete(name)

    other = zun_for(server, server.issue_token(unique("other"), "u2", "member"))
    with pytest.raises(zun_exc.NotFound):
        other.registries.get(info["uuid"])
    with pytest.raises(zun_exc.NotFound):
        other.registries.delete(name)
    assert other.registries.list() == []

    zun.containers.delete(c.uuid, stop=True)
    wait_for(lambda: not [x for x in zun.containers.list() if x.uuid == c.uuid], timeout=30)
    zun.registries.delete(name)
    with pytest.raises(zun_exc.NotFound):
        zun.registries.get(name)
    assert PASSWORD not in Path(server.log or "").read_text()


def test_capsule_cli_registry_commands_and_run(server: Server, registry: PrivateRegistry,  # type: ignore[no-untyped-def]
                                               unique) -> None:
    name = unique("cli")
    made = server.cli("registry", "create", "--name", name, "--domain", registry.domain,
                      "--username", USER, "--password-stdin", "-o", "json", input=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    body = json.loads(made.stdout)
    assert body["password"] == "***" and PASSWORD not in made.stdout
    listed = server.cli("registry", "list", "-o", "json")
    assert name in [r["name"] for r in json.loads(listed.stdout)]
    table = server.cli("registry", "show", name)
    assert table.returncode == 0 and registry.domain in table.stdout and PASSWORD not in table.stdout
    upd = server.cli("registry", "update", name, "--username", USER, "-o", "json")
    assert upd.returncode == 0 and json.loads(upd.stdout)["username"] == USER
    run = server.cli("run", "--registry", name, "--name", unique("c"), "--wait", "-o", "json",
                     REPO, "sleep", "3600")
    assert run.returncode == 0, run.stderr
    uuid = json.loads(run.stdout)["uuid"]
    refused = server.cli("registry", "delete", name)
    assert refused.returncode == 1 and "in use" in refused.stderr
    assert server.cli("container", "delete", "--stop", uuid).returncode == 0
    wait_for(lambda: server.cli("container", "show", uuid).returncode != 0, timeout=30)
    gone = server.cli("registry", "delete", name)
    assert gone.returncode == 0, gone.stderr
    missing = server.cli("registry", "show", name)
    assert missing.returncode == 1 and "could not be found" in missing.stderr
