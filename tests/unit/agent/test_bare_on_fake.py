"""BareExecutor on FakeRuntime: a bare container follows its desired state, is resized in
place, replaced when its spec changes, repaired after a crash and removed for good."""

from __future__ import annotations

from typing import Any

import pytest

from capsuled.agent.bare import BareExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.domain.channel import BareReport, ContainerAssignment, DesiredState
from capsuled.domain.spec import BareSpec, ContainerSpec, DockerRestart
from capsuled.drivers.runtime.base import ContainerRequest
from capsuled.errors import DriverError
from tests.unit.agent.rigs import MemoryNetworks, MemoryVolumes, fake_runtime

UUID = "u-bare"
PLAIN = BareSpec(container=ContainerSpec(name="web", image="busybox", command=["sleep", "300"]))


def want(spec: BareSpec = PLAIN, state: DesiredState = "running", generation: int = 1,
         **kw: Any) -> ContainerAssignment:
    return ContainerAssignment(uuid=UUID, name="web", generation=generation, desired_state=state,
                               spec=spec, **kw)


class Rig:
    def __init__(self) -> None:
        self.runtime = fake_runtime()
        self.networks = MemoryNetworks()
        self.volumes = MemoryVolumes()
        self.announced: list[BareReport] = []

    def agent(self) -> BareExecutor:
        return BareExecutor(self.runtime, ProjectNetworks(self.networks, "inst", grace=60),
                            self.volumes, "inst", 1, announce=self.announced.append)

    def only(self) -> tuple[str, str]:
        (o,) = self.runtime.observe_capsule("inst", UUID)
        return o.id, o.state


def test_it_follows_the_desired_state_without_being_recreated() -> None:
    rig = Rig()
    ex = rig.agent()
    first = ex.sync(UUID, want())
    assert first.settled and first.report is not None and first.report.container is not None
    cid, state = rig.only()
    assert state == "running" and first.report.container.runtime_id == cid
    # An exited container is not started to be paused: it stays as it is.
    steps: list[tuple[DesiredState, str]] = [
        ("paused", "paused"), ("running", "running"), ("stopped", "exited"),
        ("paused", "exited"), ("stopped", "exited")]
    for goal, expected in steps:
        outcome = ex.sync(UUID, want(state=goal))
        assert outcome.settled and rig.only() == (cid, expected), goal
    # Exited stays exited when desired running: restarting it is its restart policy's job.
    rig.runtime.start(cid)
    rig.runtime.exit(cid, 2)
    assert ex.sync(UUID, want()).settled and rig.only() == (cid, "exited")


def test_new_limits_are_applied_in_place_and_a_new_spec_replaces_it() -> None:
    rig = Rig()
    ex = rig.agent()
    ex.sync(UUID, want())
    cid, _ = rig.only()
    bigger = PLAIN.model_copy(update={"container": PLAIN.container.model_copy(
        update={"cpu": 0.5, "memory": 64})})
    assert ex.sync(UUID, want(bigger, generation=2)).settled
    (o,) = rig.runtime.observe_capsule("inst", UUID)  # `docker update`, not a recreate
    assert (o.id, o.nano_cpus, o.memory_bytes) == (cid, 500_000_000, 64 * 1024 * 1024)
    other = PLAIN.model_copy(update={"container": PLAIN.container.model_copy(
        update={"command": ["sleep", "600"]})})
    assert ex.sync(UUID, want(other, generation=3)).settled
    new_id, state = rig.only()
    assert new_id != cid and state == "running" and cid not in rig.runtime.containers


def test_its_restart_policy_is_the_runtimes() -> None:
    rig = Rig()
    spec = PLAIN.model_copy(update={"restart": DockerRestart(name="on-failure", max_retry=1)})
    ex = rig.agent()
    ex.sync(UUID, want(spec))
    cid, _ = rig.only()
    rig.runtime.exit(cid, 1)
    (o,) = rig.runtime.observe_capsule("inst", UUID)
    assert (o.state, o.restart_count) == ("running", 1)
    rig.runtime.exit(cid, 1)  # out of retries
    report = ex.sync(UUID, want(spec)).report
    assert report is not None and report.container is not None
    assert (report.container.state, report.container.exit_code,
            report.container.restart_count) == ("exited", 1, 1)


def test_a_project_container_joins_its_network_and_a_stray_copy_is_removed() -> None:
    rig = Rig()
    ex = rig.agent()
    ex.sync(UUID, want(project_id="p1"))
    (o,) = rig.runtime.observe_capsule("inst", UUID)
    assert o.networks == (rig.networks.networks["p1"].name,)
    # A second container of the same uuid (an agent died mid-replace): one is kept.
    rig.runtime.create_container(ContainerRequest(name="web-copy", image="busybox",
                                                  sandbox_id=None, labels=dict(o.labels)))
    assert ex.sync(UUID, want(project_id="p1")).settled
    assert len(rig.runtime.observe_capsule("inst", UUID)) == 1


def test_a_failed_create_is_retried_and_delete_removes_it() -> None:
    rig = Rig()
    rig.runtime.inject("create_container", DriverError("create container web: out of disk"))
    ex = rig.agent()
    failed = ex.sync(UUID, want())
    assert not failed.settled and failed.report is not None and "out of disk" in (failed.report.error or "")
    assert rig.runtime.observe_capsule("inst", UUID) == []
    assert ex.sync(UUID, want()).settled and rig.only()[1] == "running"
    gone = ex.sync(UUID, want(deleting=True, generation=2))
    assert gone.settled and gone.report is not None and gone.report.gone
    assert rig.runtime.observe_capsule("inst", UUID) == []


@pytest.mark.parametrize("goal", ["running", "stopped"])
def test_a_restarted_agent_adopts_what_is_there(goal: DesiredState) -> None:
    rig = Rig()
    rig.agent().sync(UUID, want(state=goal))
    before = rig.only()
    creates = [e for e in rig.runtime.history() if e.action == "create"]
    assert rig.agent().sync(UUID, want(state=goal, runtime_id=before[0])).settled
    assert rig.only() == before
    assert [e for e in rig.runtime.history() if e.action == "create"] == creates


def test_a_pull_plan_pulls_its_reference_always_with_its_credentials() -> None:
    from capsuled.domain.channel import ImagePull
    rig = Rig()
    ref = "127.0.0.1:5000/private/busybox"
    rig.runtime.registry.add(f"{ref}:latest")
    spec = BareSpec(container=ContainerSpec(name="web", image="private/busybox", registry="r1",
                                            command=["sleep", "300"]))
    plan = ImagePull(container="web", image=ref, always=True, username="u", password="pw")
    assert "pw" not in repr(want(spec, pulls=[plan]))
    ex = rig.agent()
    assert ex.sync(UUID, want(spec, pulls=[plan])).settled
    assert rig.runtime.pull_auths[-1] == (f"{ref}:latest", "u")
    assert rig.runtime.pulls == [f"{ref}:latest"]
    cid, _ = rig.only()
    assert rig.runtime.containers[cid].image == ref
    # A plan that says always (older API) pulls even a cached image: a refusal fails.
    rig.runtime.registry.discard(f"{ref}:latest")
    rig.runtime.remove_container(cid, 0)
    out = ex.sync(UUID, want(spec, pulls=[plan.model_copy(update={"username": None})]))
    assert out.report is not None and "could not be pulled" in str(out.report)


def test_it_reports_its_project_address_and_asks_for_it_again_when_remade() -> None:
    from capsuled.domain.addresses import Address, network_uuid
    rig = Rig()
    ex = rig.agent()
    first = ex.sync(UUID, want(project_id="p1"))
    assert first.report is not None and first.report.container is not None
    (addr,) = first.report.container.addresses
    assert addr.network_id == network_uuid("p1") and addr.subnet.endswith("/24")
    # Stopped: nothing observed now (the store keeps the last one).
    stopped = ex.sync(UUID, want(state="stopped", project_id="p1"))
    assert stopped.report is not None and stopped.report.container is not None
    assert stopped.report.container.addresses == []
    # Removed behind the agent's back: made again with the address it had.
    cid, _ = rig.only()
    rig.runtime.remove_container(cid, 0)
    again = ex.sync(UUID, want(project_id="p1", addresses=[addr], runtime_id=cid))
    assert again.report is not None and again.report.container is not None
    assert again.report.container.addresses == [addr]
    assert rig.only()[0] != cid
    # Another project's address is never asked for: a fresh one on this project's network.
    other = Address(network_id=network_uuid("p2"), addr="10.9.9.9", subnet="10.9.9.0/24")
    rig.runtime.remove_container(rig.only()[0], 0)
    last = ex.sync(UUID, want(project_id="p1", addresses=[other], runtime_id="gone"))
    assert last.report is not None and last.report.container is not None
    assert [a.network_id for a in last.report.container.addresses] == [network_uuid("p1")]
    assert last.report.container.addresses[0].addr != "10.9.9.9"
