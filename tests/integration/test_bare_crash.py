"""On the real Docker Engine: an agent killed between creating a bare container and putting
its injected files in leaves a container the next agent makes again, with its files,
instead of starting it without them."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from capsuled.agent.bare import BareExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.domain import labels as L
from capsuled.domain.channel import BareReport, ContainerAssignment
from capsuled.domain.spec import BareSpec, ContainerSpec, InjectedFile
from capsuled.drivers.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.docker]


class Crash(BaseException):
    """The agent process dies here."""


class DiesAtPut:
    """The real runtime, except that the agent dies right after Docker created the
    container, before its files go in."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self._rt = runtime

    def put_archive(self, *args: Any) -> None:
        raise Crash("killed between create and put")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rt, name)


class NoVolumes:
    def remove_owned(self, instance: str, capsule: str) -> list[str]:
        return []


@pytest.fixture()
def instance(docker_api: docker.APIClient) -> Iterator[str]:
    name = f"crash-{secrets.token_hex(4)}"
    yield name
    for c in docker_api.containers(all=True, filters={"label": [f"{L.INSTANCE}={name}"]}):
        docker_api.remove_container(c["Id"], force=True)


def test_a_container_left_without_its_files_is_made_again_with_them(
        docker_api: docker.APIClient, instance: str) -> None:
    spec = BareSpec(container=ContainerSpec(name="web", image="busybox", command=["sleep", "300"]),
                    files=[InjectedFile(path="/etc/app.conf",
                                        content_b64=base64.b64encode(b"hello").decode())])
    desired = ContainerAssignment(uuid=f"u-{instance}", name="web", generation=1, spec=spec)
    reports: list[BareReport] = []

    def agent(runtime: Any) -> BareExecutor:
        return BareExecutor(runtime, ProjectNetworks(None, instance, grace=60), NoVolumes(),  # type: ignore[arg-type]
                            instance, 1, announce=reports.append)

    with pytest.raises(Crash):
        agent(DiesAtPut(DockerRuntime(docker_api))).sync(desired.uuid, desired)
    (left,) = docker_api.containers(all=True, filters={"label": [f"{L.INSTANCE}={instance}"]})
    assert left["State"] == "created"

    outcome = agent(DockerRuntime(docker_api)).sync(desired.uuid, desired)  # restarted
    assert outcome.settled and outcome.report is not None
    (now,) = docker_api.containers(all=True, filters={"label": [f"{L.INSTANCE}={instance}"]})
    assert now["Id"] != left["Id"] and now["State"] == "running"
    exec_id = docker_api.exec_create(now["Id"], ["cat", "/etc/app.conf"])["Id"]
    assert docker_api.exec_start(exec_id) == b"hello"
