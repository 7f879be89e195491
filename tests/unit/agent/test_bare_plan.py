"""compute_bare_plan: what the agent does next for one bare container."""

from __future__ import annotations

from typing import Any

import pytest

from capsuled.agent.bare import BarePlan, compute_bare_plan
from capsuled.domain import labels as L
from capsuled.domain.channel import ContainerAssignment
from capsuled.domain.spec import BareSpec, ContainerSpec
from capsuled.drivers.runtime.base import Observed

SPEC = BareSpec(container=ContainerSpec(name="web", image="busybox", cpu=0.5, memory=64))
MiB = 1024 * 1024


def want(state: str = "running", **kw: Any) -> ContainerAssignment:
    return ContainerAssignment(uuid="u1", name="web", generation=1, desired_state=state,
                               spec=kw.pop("spec", SPEC), **kw)


def seen(state: str, cid: str = "c1", spec: BareSpec = SPEC, **kw: Any) -> Observed:
    labels = {L.ROLE: L.ROLE_BARE, L.SPEC_HASH: spec.runtime_hash()}
    return Observed(id=cid, labels=labels, state=state,  # type: ignore[arg-type]
                    nano_cpus=kw.pop("nano_cpus", 500_000_000), memory_bytes=kw.pop("memory_bytes", 64 * MiB),
                    **kw)


@pytest.mark.parametrize(("desired", "observed", "plan"), [
    (None, [], BarePlan(gone=True)),
    (None, [seen("running")], BarePlan(remove=["c1"])),
    (want(deleting=True), [seen("running")], BarePlan(remove=["c1"])),
    (want(), [], BarePlan(create=True)),
    (want("stopped"), [], BarePlan(create=True)),
    (want(), [seen("running")], BarePlan()),
    (want(), [seen("exited", exit_code=1)], BarePlan()),  # its restart policy's business
    (want(), [seen("created")], BarePlan(start=True)),
    (want(), [seen("paused")], BarePlan(unpause=True)),
    (want("stopped"), [seen("running")], BarePlan(stop=True)),
    (want("stopped"), [seen("paused")], BarePlan(unpause=True, stop=True)),
    (want("stopped"), [seen("exited")], BarePlan()),
    (want("paused"), [seen("running")], BarePlan(pause=True)),
    (want(), [seen("running", memory_bytes=32 * MiB)], BarePlan(update=True)),
    (want(), [seen("running", pids_ok=False)], BarePlan(update=True)),  # made before the limit
    (want(), [seen("running"), seen("running", cid="c2")], BarePlan(remove=["c2"])),
])
def test_bare_plan(desired: ContainerAssignment | None, observed: list[Observed], plan: BarePlan) -> None:
    got = compute_bare_plan(desired, observed)
    if plan.remove and len(observed) > 1:
        assert len(got.remove) == 1
    else:
        assert got == plan


def test_changed_spec_recreates_but_cpu_memory_and_name_do_not() -> None:
    other = SPEC.model_copy(update={"container": SPEC.container.model_copy(update={"image": "other"})})
    assert compute_bare_plan(want(spec=other), [seen("running")]) == BarePlan(remove=["c1"])
    resized = SPEC.model_copy(update={"container": SPEC.container.model_copy(
        update={"cpu": 1.0, "name": "renamed"})})
    assert compute_bare_plan(want(spec=resized), [seen("running")]) == BarePlan(update=True)


def test_missing_auto_remove_container_that_existed_is_gone_not_recreated() -> None:
    spec = SPEC.model_copy(update={"auto_remove": True})
    assert compute_bare_plan(want(spec=spec, runtime_id="c1"), []) == BarePlan(gone=True)
    assert compute_bare_plan(want(spec=spec), [], existed=True) == BarePlan(gone=True)
    assert compute_bare_plan(want(spec=spec), []) == BarePlan(create=True)
    # Removed by hand, not auto_remove: bring it back.
    assert compute_bare_plan(want(runtime_id="c1"), []) == BarePlan(create=True)


class _Docker:
    """Just enough runtime for BareExecutor: containers by id, created and listed."""

    def __init__(self) -> None:
        self.containers: dict[str, Observed] = {}
        self.created = 0

    def observe_capsule(self, instance: str, capsule: str) -> list[Observed]:
        return [o for o in self.containers.values() if o.labels.get(L.CAPSULE) == capsule]

    def ensure_image(self, image: str, policy: str) -> None:
        pass

    def image_identity(self, image: str) -> Any:
        from capsuled.drivers.runtime.base import ImageIdentity
        return ImageIdentity(id="sha256:1", from_registry=False)

    def create_container(self, req: Any) -> str:
        self.created += 1
        cid = f"c{self.created}"
        self.containers[cid] = Observed(id=cid, labels=req.labels, state="running",  # type: ignore[arg-type]
                                        nano_cpus=req.nano_cpus, memory_bytes=req.memory_bytes)
        return cid


class _NoVolumes:
    def remove_owned(self, instance: str, capsule: str) -> list[str]:
        return []


def test_a_stale_assignment_never_brings_back_an_auto_removed_container() -> None:
    from capsuled.agent.bare import BareExecutor
    from capsuled.agent.networks import ProjectNetworks

    docker = _Docker()
    ex = BareExecutor(docker, ProjectNetworks(None, "inst", grace=60), _NoVolumes(),  # type: ignore[arg-type]
                      "inst", 5)
    spec = SPEC.model_copy(update={"auto_remove": True})
    stale = want(spec=spec)  # taken before the first report (with its runtime id) landed
    ex.sync("u1", stale)
    assert docker.created == 1
    docker.containers.clear()  # it exited; Docker removed it
    for _ in range(3):  # the die and destroy events, a relist: all with the stale copy
        outcome = ex.sync("u1", stale)
        assert outcome.report is not None and outcome.report.gone
    assert docker.created == 1 and docker.containers == {}
    ex.forget("u1")  # no longer assigned: a new assignment of that uuid would be created
    assert ex.sync("u1", stale).report.container is not None and docker.created == 2  # type: ignore[union-attr]


def test_an_unhealthy_container_is_restarted_only_with_auto_heal() -> None:
    from capsuled.domain.spec import HealthCheck

    def with_health(restart: bool) -> BareSpec:
        return SPEC.model_copy(update={"container": SPEC.container.model_copy(update={
            "health": HealthCheck(command=["true"], restart=restart)})})
    healing, watching = with_health(True), with_health(False)
    assert compute_bare_plan(want(spec=healing), [seen("running", spec=healing, health="unhealthy")]) \
        == BarePlan(restart=True)
    assert compute_bare_plan(want(spec=watching), [seen("running", spec=watching, health="unhealthy")]) \
        == BarePlan()
    assert compute_bare_plan(want(spec=healing), [seen("running", spec=healing, health="starting")]) \
        == BarePlan()
    assert compute_bare_plan(want("stopped", spec=healing),
                             [seen("running", spec=healing, health="unhealthy")]) == BarePlan(stop=True)
