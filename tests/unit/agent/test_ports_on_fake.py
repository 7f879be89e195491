"""Published ports on FakeRuntime: a capsule's hostPorts are published by its sandbox at the
agent's publish address, a port something else holds fails the capsule with a reason
that names it (and it comes up once the port is free), a change of ports remakes the
sandbox, and a bare container's exposed ports get host ports the runtime picks, which
its report carries."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from capsuled.agent.bare import BareExecutor
from capsuled.agent.execute import CapsuleExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.domain import labels as L
from capsuled.domain.channel import Assignment, ContainerAssignment
from capsuled.domain.ports import PublishedPort
from capsuled.domain.spec import BareSpec, CapsuleSpec, ContainerSpec, Port
from capsuled.domain.status import Status, derive_capsule_status
from capsuled.drivers.runtime.fake import FakeRuntime
from tests.unit.agent.rigs import INFRA, MemoryNetworks, MemoryVolumes, fake_runtime

CAP = "cap-ports"
WEB = ContainerSpec(uuid="u-web", name="web", image="busybox",
                    ports=[Port(container_port=8080, host_port=18080),
                           Port(container_port=9090)])  # not published: documentation
DNS = ContainerSpec(uuid="u-dns", name="dns", image="busybox",
                    ports=[Port(container_port=53, protocol="UDP", host_port=15353)])


def desired(*apps: ContainerSpec, generation: int = 1) -> Assignment:
    return Assignment(uuid=CAP, generation=generation,
                      spec=CapsuleSpec(name="web", containers=list(apps or (WEB, DNS))))


@pytest.fixture()
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as p:
        yield p


def executor(runtime: FakeRuntime, pool: ThreadPoolExecutor) -> CapsuleExecutor:
    return CapsuleExecutor(runtime, MemoryVolumes(), ProjectNetworks(MemoryNetworks(), "inst", grace=60),
                           "inst", INFRA, stop_timeout=1, parallel=pool,
                           publish_address="127.0.0.1")


def sandbox_ports(runtime: FakeRuntime) -> set[PublishedPort]:
    seen = runtime.observe_capsule("inst", CAP)
    (sb,) = [o for o in seen if o.labels[L.ROLE] == L.ROLE_SANDBOX]
    assert all(o.ports == () for o in seen if o is not sb)  # members publish nothing of their own
    return set(sb.ports)


def test_the_sandbox_publishes_every_members_host_ports(pool: ThreadPoolExecutor) -> None:
    runtime = fake_runtime()
    outcome = executor(runtime, pool).sync(CAP, desired())
    assert outcome.settled and outcome.report is not None and outcome.report.error is None
    assert sandbox_ports(runtime) == {
        PublishedPort(container_port=8080, protocol="TCP", host_port=18080, host_ip="127.0.0.1"),
        PublishedPort(container_port=53, protocol="UDP", host_port=15353, host_ip="127.0.0.1")}
    # A second sync finds the sandbox as wanted: nothing is remade.
    before = {o.id for o in runtime.observe_capsule("inst", CAP)}
    assert executor(runtime, pool).sync(CAP, desired()).settled
    assert {o.id for o in runtime.observe_capsule("inst", CAP)} == before


def test_a_port_something_else_holds_fails_the_capsule_until_it_is_free(
        pool: ThreadPoolExecutor) -> None:
    runtime = fake_runtime()
    runtime.occupied.add(("UDP", 15353))
    outcome = executor(runtime, pool).sync(CAP, desired())
    assert not outcome.settled and outcome.report is not None
    assert outcome.report.error is not None and "UDP port 15353" in outcome.report.error
    assert "already uses it" in outcome.report.error
    status, reason = derive_capsule_status(outcome.report, deleting=False)
    assert status is Status.ERROR and reason is not None and "UDP port 15353" in reason
    assert runtime.observe_capsule("inst", CAP) == []  # no half-made sandbox left behind
    runtime.occupied.clear()
    again = executor(runtime, pool).sync(CAP, desired())
    assert again.settled and again.report is not None and again.report.error is None
    assert {p.host_port for p in sandbox_ports(runtime)} == {18080, 15353}


def test_other_host_ports_remake_the_sandbox(pool: ThreadPoolExecutor) -> None:
    runtime = fake_runtime()
    executor(runtime, pool).sync(CAP, desired())
    moved = WEB.model_copy(update={"ports": [Port(container_port=8080, host_port=18081)]})
    outcome = executor(runtime, pool).sync(CAP, desired(moved, DNS, generation=2))
    assert outcome.settled and outcome.report is not None and outcome.report.sandbox_recreated
    assert {p.host_port for p in sandbox_ports(runtime)} == {18081, 15353}
    # No host ports at all: the sandbox carries no ports label, as before there were any.
    plain = [WEB.model_copy(update={"ports": []}), DNS.model_copy(update={"ports": []})]
    executor(runtime, pool).sync(CAP, desired(*plain, generation=3))
    (sb,) = [o for o in runtime.observe_capsule("inst", CAP) if o.labels[L.ROLE] == L.ROLE_SANDBOX]
    assert L.PORTS not in sb.labels and sb.ports == ()


def test_a_bare_containers_exposed_ports_get_host_ports_the_runtime_picks() -> None:
    runtime = fake_runtime()
    spec = BareSpec(container=ContainerSpec(name="web", image="busybox", ports=[
        Port(container_port=80, host_port=0), Port(container_port=53, protocol="UDP", host_port=0)]))
    ex = BareExecutor(runtime, ProjectNetworks(MemoryNetworks(), "inst", grace=60), MemoryVolumes(),
                      "inst", 1)
    want = ContainerAssignment(uuid="u-bare", name="web", generation=1, spec=spec)
    outcome = ex.sync("u-bare", want)
    assert outcome.report is not None and outcome.report.container is not None
    got = {(p.protocol, p.container_port): p.host_port for p in outcome.report.container.ports}
    assert set(got) == {("TCP", 80), ("UDP", 53)} and all(port >= 49153 for port in got.values())
    # Stopped, it holds no host port, and its report says so.
    stopped = ex.sync("u-bare", want.model_copy(update={"desired_state": "stopped", "generation": 2}))
    assert stopped.report is not None and stopped.report.container is not None
    assert stopped.report.container.ports == []
