"""FakeRuntime's own behaviour beyond the shared contract: what Docker does on its own
(restart policies, auto-remove, pulls, health) and the failures tests inject."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from capsuled.domain import labels as L
from capsuled.drivers.runtime.base import ContainerRequest, SandboxRequest
from capsuled.drivers.runtime.fake import FakeRuntime
from capsuled.errors import DriverError, ImageNotFound, NotFound, RuntimeConflict

LABELS = {L.INSTANCE: "inst", L.CAPSULE: "cap"}


def request(name: str = "c", **kw: Any) -> ContainerRequest:
    return replace(ContainerRequest(name=name, image="busybox", sandbox_id=None, labels=LABELS),
                   **kw)


def test_restart_policies_act_as_dockers() -> None:
    rt = FakeRuntime(images=("busybox",))
    always = rt.create_container(request("a", restart_policy="always"))
    retry = rt.create_container(request("r", restart_policy="on-failure", max_retry=1))
    rt.exit(always, 0)
    rt.exit(retry, 0)  # a clean exit is no failure
    by_id = {o.id: o for o in rt.observe_capsule("inst", "cap")}
    assert (by_id[always].state, by_id[always].restart_count) == ("running", 1)
    assert (by_id[retry].state, by_id[retry].exit_code) == ("exited", 0)
    rt.start(retry)
    rt.exit(retry, 2)
    rt.exit(retry, 2)  # out of retries
    (o,) = [o for o in rt.observe_capsule("inst", "cap") if o.id == retry]
    assert (o.state, o.exit_code, o.restart_count) == ("exited", 2, 1)
    assert [e.action for e in rt.history(always)] == ["create", "start", "die", "start"]
    with pytest.raises(RuntimeConflict):
        rt.exit(retry, 1)


def test_programs_and_auto_remove() -> None:
    rt = FakeRuntime(images=("busybox",), program=lambda c: 0 if c.cmd == ["true"] else None)
    cid = rt.create_container(request(cmd=["true"], auto_remove=True))
    assert cid not in rt.containers
    assert [e.action for e in rt.history(cid)] == ["create", "start", "die", "destroy"]


def test_pulls_follow_the_policy_and_the_registry() -> None:
    rt = FakeRuntime(images=("busybox",), registry=("nginx:1",))
    rt.ensure_image("busybox", "IfNotPresent")
    rt.ensure_image("nginx:1", "IfNotPresent")
    rt.ensure_image("nginx:1", "IfNotPresent")
    rt.ensure_image("busybox:latest", "Always")
    assert rt.pulls == ["nginx:1", "busybox:latest"]
    with pytest.raises(ImageNotFound):
        rt.ensure_image("ghost", "Always")


def test_health_shows_in_the_status_line_the_relist_reads() -> None:
    rt = FakeRuntime(images=("busybox",))
    cid = rt.create_container(request())
    rt.set_health(cid, "unhealthy")
    (s,) = rt.list_summaries("inst")
    assert "(unhealthy)" in s.status
    rt.stop(cid, 1)
    (s,) = rt.list_summaries("inst")
    assert s.status.startswith("Exited (137)")


def test_a_missing_network_fails_the_create_and_injected_faults_run_out() -> None:
    rt = FakeRuntime(images=("busybox", "infra"))
    rt.missing_networks.add("net-1")
    with pytest.raises(NotFound, match="network net-1 not found"):
        rt.create_sandbox(SandboxRequest(name="sb", image="infra", hostname="h", labels=LABELS,
                                         network="net-1"))
    assert rt.containers == {}
    rt.inject("create_container", DriverError("boom"), times=2)
    for _ in range(2):
        with pytest.raises(DriverError, match="boom"):
            rt.create_container(request())
    rt.create_container(request())
    rt.inject("create_container", DriverError("after"), after=True)
    with pytest.raises(DriverError, match="after"):
        rt.create_container(request("second"))
    assert len(rt.containers) == 2  # it was made all the same
