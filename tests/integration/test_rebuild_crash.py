"""On the real Docker Engine: an agent killed in the middle of a rebuild (the old container
removed, the new one not made yet) leaves a state the next agent finishes from the stored
spec: one container, from the new image, with the volume and its data."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from conftest import exec_in

from capsuled.agent.bare import BareExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.domain import labels as L
from capsuled.domain.channel import ContainerAssignment
from capsuled.domain.spec import BareSpec, ContainerSpec, VolumeMount, VolumeSpec
from capsuled.drivers.runtime.docker import DockerRuntime
from capsuled.drivers.volume.docker import LocalVolumes

pytestmark = [pytest.mark.docker]


class Crash(BaseException):
    """The agent process dies here."""


class DiesAfterRemove:
    """The real runtime, except that the agent dies right after Docker removed the old
    container, before the new one is created."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self._rt = runtime

    def remove_container(self, *args: Any) -> None:
        self._rt.remove_container(*args)
        raise Crash("killed between remove and create")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rt, name)


@pytest.fixture()
def instance(docker_api: docker.APIClient) -> Iterator[str]:
    name = f"rbcrash-{secrets.token_hex(4)}"
    yield name
    for c in docker_api.containers(all=True, filters={"label": [f"{L.INSTANCE}={name}"]}):
        docker_api.remove_container(c["Id"], force=True)
    for v in docker_api.volumes(filters={"label": [f"{L.INSTANCE}={name}"]}).get("Volumes") or []:
        docker_api.remove_volume(v["Name"], force=True)
    try:
        docker_api.remove_image(f"{name}:v2", force=True)
    except docker.errors.APIError:
        pass


def test_a_rebuild_interrupted_after_the_remove_is_finished_by_the_next_agent(
        docker_api: docker.APIClient, instance: str) -> None:
    old = BareSpec(container=ContainerSpec(
        name="web", image="busybox", command=["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"],
        volume_mounts=[VolumeMount(name="v0", mount_path="/data")]),
        volumes=[VolumeSpec(name="v0", type="emptyDir", size=1)])
    uuid = f"u-{instance}"

    def agent(runtime: Any) -> BareExecutor:
        return BareExecutor(runtime, ProjectNetworks(None, instance, grace=60),  # type: ignore[arg-type]
                            LocalVolumes(docker_api), instance, 1)

    def want(spec: BareSpec, generation: int) -> ContainerAssignment:
        return ContainerAssignment(uuid=uuid, name="web", generation=generation, spec=spec)

    assert agent(DockerRuntime(docker_api)).sync(uuid, want(old, 1)).settled
    (first,) = docker_api.containers(filters={"label": [f"{L.INSTANCE}={instance}"]})
    assert exec_in(docker_api, first["Id"], "sh", "-c", "echo kept > /data/f") == (0, "")
    docker_api.tag("busybox:latest", instance, "v2")  # "a new image"
    new = old.model_copy(update={
        "container": old.container.model_copy(update={"image": f"{instance}:v2"}), "rebuilds": 1})

    with pytest.raises(Crash):
        agent(DiesAfterRemove(DockerRuntime(docker_api))).sync(uuid, want(new, 2))
    assert docker_api.containers(all=True, filters={"label": [f"{L.INSTANCE}={instance}"]}) == []

    outcome = agent(DockerRuntime(docker_api)).sync(uuid, want(new, 2))  # restarted
    assert outcome.settled and outcome.report is not None
    (now,) = docker_api.containers(all=True, filters={"label": [f"{L.INSTANCE}={instance}"]})
    assert now["Id"] != first["Id"] and now["State"] == "running"
    assert now["Image"] == f"{instance}:v2"
    assert now["Labels"][L.SPEC_HASH] == new.runtime_hash()
    assert exec_in(docker_api, now["Id"], "cat", "/data/f") == (0, "kept\n")
