"""The unmodified python-zunclient library against a real capsuled and Docker."""

from __future__ import annotations

import docker
import pytest
from conftest import Server, containers_of, member, sleeper, template, wait_for
from zunclient import client as zun_client
from zunclient.common.apiclient import exceptions as zun_exc

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture()
def zun(server: Server):  # type: ignore[no-untyped-def]
    return zun_client.Client("1.latest", auth_token=server.token,
                             endpoint_override=server.url + "/v1")


def test_zunclient_negotiates_the_newest_version(zun) -> None:  # type: ignore[no-untyped-def]
    assert zun.api_version.get_string() == "1.40"


def test_capsule_create_list_show_delete(zun, server: Server, docker_api: docker.APIClient,
                                         unique) -> None:  # type: ignore[no-untyped-def]
    name = unique("zun")
    tmpl = template(name, [sleeper("main", resources={"requests": {"cpu": 0.25, "memory": 32}})],
                    labels={"via": "zunclient"})
    created = zun.capsules.create(template=tmpl)
    assert created.name == name and created.status == "Creating"
    uuid = created.uuid

    def running():  # type: ignore[no-untyped-def]
        return zun.capsules.get(uuid).status == "Running"
    wait_for(running, timeout=60, what="Running via zunclient")

    listed = {c.uuid: c for c in zun.capsules.list()}
    assert listed[uuid].name == name and listed[uuid].status == "Running"
    assert zun.capsules.list(limit=1)  # follows `next` pagination
    shown = zun.capsules.describe(name)
    assert shown.uuid == uuid and shown.memory == "32" and shown.cpu == 0.25
    assert shown.containers[0]["name"] == "main"
    assert member(docker_api, uuid, "main")["State"]["Running"] is True

    zun.capsules.delete(name)
    wait_for(lambda: not containers_of(docker_api, uuid), timeout=60, what="containers removed")
    with pytest.raises(zun_exc.NotFound):
        wait_for(lambda: zun.capsules.get(uuid) and False, timeout=30, interval=0.3)


def test_zunclient_surfaces_validation_errors(zun, unique) -> None:  # type: ignore[no-untyped-def]
    bad = template(unique("bad"), [{"name": "x", "image": "busybox",
                                    "resources": {"requests": {"memory": "256Mi"}}}])
    with pytest.raises(zun_exc.BadRequest) as info:
        zun.capsules.create(template=bad)
    assert "spec.containers[0].resources.requests.memory" in str(info.value)
