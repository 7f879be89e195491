"""Killed in the middle of an update, on the real Docker Engine: the agent at three points
(the old container removed and its replacement not made; one container replaced and the
other not, so Docker holds a mix; a new sandbox made and nothing in it) leaves a state
the next agent finishes on the one revision the store holds; and a whole capsuled process
killed with SIGKILL mid-update ends, after its restart, on the new revision, or on the
old one when it stayed dead past the update's deadline, never a mix, never Updating."""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import pytest
from conftest import Server, exec_in, member, sleeper, template, wait_for

from capsuled.agent.execute import CapsuleExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.domain import labels as L
from capsuled.domain.channel import Assignment
from capsuled.domain.spec import CapsuleSpec, ContainerSpec, VolumeMount, VolumeSpec, spec_hash
from capsuled.domain.update import plan_change
from capsuled.drivers.runtime.docker import DockerRuntime
from capsuled.drivers.volume.docker import LocalVolumes

pytestmark = [pytest.mark.docker]

HTTPD = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"


class Crash(BaseException):
    """The agent process dies here."""


class DiesAfter:
    """The real runtime, except that the agent dies right after the `nth` call of `method`."""

    def __init__(self, runtime: DockerRuntime, method: str, nth: int = 1) -> None:
        self._rt, self._method, self._left = runtime, method, nth

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._rt, name)
        if name != self._method:
            return real

        def call(*args: Any) -> Any:
            out = real(*args)
            self._left -= 1
            if self._left == 0:
                raise Crash(f"killed after {name}")
            return out
        return call


@pytest.fixture()
def instance(docker_api: docker.APIClient) -> Iterator[str]:
    name = f"updcrash-{secrets.token_hex(4)}"
    yield name
    for c in docker_api.containers(all=True, filters={"label": [f"{L.INSTANCE}={name}"]}):
        docker_api.remove_container(c["Id"], force=True)
    for v in docker_api.volumes(filters={"label": [f"{L.INSTANCE}={name}"]}).get("Volumes") or []:
        docker_api.remove_volume(v["Name"], force=True)


KEEP = "trap 'exit 0' TERM; sleep 300 & wait"
DATA = [VolumeMount(name="data", mount_path="/data")]
V1 = CapsuleSpec(name="crash", volumes=[VolumeSpec(name="data", type="emptyDir")], containers=[
    ContainerSpec(uuid="u-web", name="web", image="busybox", command=["sh", "-c", KEEP],
                  volume_mounts=DATA),
    ContainerSpec(uuid="u-side", name="side", image="busybox", command=["sh", "-c", KEEP])])
V2 = plan_change(V1, V1.model_copy(update={"containers": [
    c.model_copy(update={"env": {"V": "2"}}) for c in V1.containers]})).new
V3 = plan_change(V1, V1.model_copy(update={"init_containers": [ContainerSpec(
    name="prep", role="init", image="busybox", command=["true"])]})).new


@pytest.mark.parametrize(("new", "method", "nth"), [
    (V2, "remove_container", 1),  # old web gone, new web not made
    (V2, "create_container", 1),  # new web made, side still old: a mix in Docker
    (V3, "create_sandbox", 1),  # a new sandbox, empty
], ids=["after-remove", "mid-replacement", "new-sandbox"])
def test_an_agent_killed_mid_update_is_finished_by_the_next(
        docker_api: docker.APIClient, instance: str, new: CapsuleSpec, method: str, nth: int) -> None:
    uuid = f"u-{instance}"
    pool = ThreadPoolExecutor(4)

    def agent(runtime: Any) -> CapsuleExecutor:
        return CapsuleExecutor(runtime, LocalVolumes(docker_api),
                               ProjectNetworks(None, instance, grace=60),  # type: ignore[arg-type]
                               instance, "capsuled/infra:latest", 1, pool)

    try:
        assert agent(DockerRuntime(docker_api)).sync(uuid, Assignment(uuid=uuid, generation=1, spec=V1)).settled
        web = member(docker_api, uuid, "web")
        assert exec_in(docker_api, web["Id"], "sh", "-c", "echo kept > /data/f") == (0, "")
        desired = Assignment(uuid=uuid, generation=2, spec=new)
        with pytest.raises(Crash):
            agent(DiesAfter(DockerRuntime(docker_api), method, nth)).sync(uuid, desired)

        restarted = agent(DockerRuntime(docker_api))
        for _ in range(50):  # as Docker's events would sync it again (an init container exits)
            outcome = restarted.sync(uuid, desired)
            if outcome.report is not None and outcome.report.converged:
                break
            time.sleep(0.1)
        assert outcome.settled and outcome.report is not None and outcome.report.converged
        found = docker_api.containers(all=True, filters={"label": [f"{L.CAPSULE}={uuid}"]})
        boxes = [c for c in found if c["Labels"][L.ROLE] == L.ROLE_SANDBOX]
        apps = [c for c in found if c["Labels"][L.ROLE] == "app"]
        assert len(boxes) == 1 and boxes[0]["Labels"][L.SANDBOX_EPOCH] == str(new.sandbox_epoch)
        assert sorted(c["Labels"][L.SPEC_HASH] for c in apps) == sorted(
            spec_hash(c, new.restart_policy) for c in new.containers)  # all new, none old
        assert all(c["State"] == "running" for c in apps)
        web = member(docker_api, uuid, "web")
        assert exec_in(docker_api, web["Id"], "cat", "/data/f") == (0, "kept\n")  # the volume stays
    finally:
        pool.shutdown()


def _envs(docker_api: docker.APIClient, uuid: str) -> dict[str, bool] | None:
    """Per container: whether it runs the new revision (V=2 in its environment); None
    while one is being replaced (not there, or there twice)."""
    out: dict[str, bool] = {}
    for name in ("web", "side"):
        found = docker_api.containers(all=True, filters={"label": [f"{L.CAPSULE}={uuid}",
                                                                   f"{L.NAME}={name}"]})
        if len(found) != 1:
            return None
        try:
            env = docker_api.inspect_container(found[0]["Id"])["Config"]["Env"] or []
        except docker.errors.NotFound:
            return None
        out[name] = "V=2" in env
    return out


@pytest.mark.parametrize(("deadline", "dead_for"), [(60, 0.0), (4, 5.0)],
                         ids=["back-soon", "back-after-the-deadline"])
def test_capsuled_killed_mid_update_ends_on_one_revision(
        own_server: Callable[..., Server], docker_api: docker.APIClient,
        unique: Callable[[str], str], deadline: int, dead_for: float) -> None:
    srv = own_server(CAPSULED_API__ROLLOUT_CHECK_INTERVAL="0.2")
    web = {"name": "web", "image": "busybox", "command": ["sh", "-c", HTTPD],
           "readinessProbe": {"httpGet": {"port": 8080}, "periodSeconds": 1,
                              "initialDelaySeconds": 2}}
    tmpl = template(unique("kill"), [web, sleeper("side")], progressDeadlineSeconds=deadline)
    with srv.client() as api:
        r = api.post("/v1/capsules", json={"template": tmpl})
        uuid = r.json()["uuid"]
        wait_for(lambda: api.get(f"/v1/capsules/{uuid}").json()["all_ready"], timeout=60, what="ready")
        r = api.patch(f"/v1/capsules/{uuid}", json={"containers": [
            {"name": "web", "env": {"V": "2"}}, {"name": "side", "env": {"V": "2"}}]})
        assert r.status_code == 202, r.text
    # web is replaced first; side waits for web's readiness (2 s at least): kill then.
    wait_for(lambda: _envs(docker_api, uuid) == {"web": True, "side": False}, timeout=20,
             interval=0.05, what="web replaced, side not yet")
    srv.stop(signal.SIGKILL)
    assert _envs(docker_api, uuid) == {"web": True, "side": False}  # a mix, for now
    time.sleep(dead_for)
    srv.start()
    with srv.client() as api:
        def settled() -> dict[str, Any] | None:
            body = api.get(f"/v1/capsules/{uuid}").json()
            return body if body["rollout"] is None and body["status"] == "Running" else None
        done = wait_for(settled, timeout=60, what="the update to end after the restart")
        outcomes = [r["outcome"] for r in api.get(f"/v1/capsules/{uuid}/revisions").json()["revisions"]]
    envs = _envs(docker_api, uuid)
    if dead_for:
        # Dead past progressDeadlineSeconds: the restarted supervisor rolled it back.
        assert (done["revision"], outcomes, envs) == (3, [None, "Failed", "Ready"],
                                                     {"web": False, "side": False})
    else:
        assert (done["revision"], outcomes, envs) == (2, [None, "Ready"], {"web": True, "side": True})
    with srv.client() as api:
        api.delete(f"/v1/capsules/{uuid}")
