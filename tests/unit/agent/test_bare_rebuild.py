"""A rebuild is a change of the stored spec (its rebuild count, maybe its image): the agent
replaces the Docker container, and an agent killed at any step of that still converges to
exactly one container from the new spec, with the volumes it had."""

from __future__ import annotations

import pytest

from capsuled.agent.bare import BarePlan, compute_bare_plan
from capsuled.domain import labels as L
from capsuled.domain.spec import BareSpec, ContainerSpec, VolumeMount, VolumeSpec
from capsuled.drivers.runtime.base import Observed
from capsuled.drivers.runtime.fake import FakeRuntime
from tests.unit.agent.rigs import MemoryVolumes
from tests.unit.agent.test_bare_crash_plan import Crash, Store, agent, created, want

OLD = BareSpec(container=ContainerSpec(name="web", image="busybox",
                                       volume_mounts=[VolumeMount(name="v0", mount_path="/data")]),
               volumes=[VolumeSpec(name="v0", type="emptyDir", size=1)])


def rebuilt(spec: BareSpec, image: str | None = None) -> BareSpec:
    c = spec.container if image is None else spec.container.model_copy(update={"image": image})
    return spec.model_copy(update={"container": c, "rebuilds": spec.rebuilds + 1})


def test_the_rebuild_count_changes_the_runtime_hash_but_not_old_hashes() -> None:
    assert rebuilt(OLD).runtime_hash() != OLD.runtime_hash()
    assert rebuilt(rebuilt(OLD)).runtime_hash() != rebuilt(OLD).runtime_hash()
    # Specs stored before rebuilds existed keep their hash: no container is recreated.
    assert "rebuilds" not in OLD.model_dump(exclude_defaults=True)
    assert OLD.runtime_hash() == BareSpec.model_validate(
        OLD.model_dump(mode="json", exclude={"rebuilds"})).runtime_hash()


def test_the_old_container_is_removed_then_a_new_one_made() -> None:
    old = Observed(id="c1", labels={L.ROLE: L.ROLE_BARE, L.SPEC_HASH: OLD.runtime_hash()},
                   state="running")
    assert compute_bare_plan(want(rebuilt(OLD)), [old]) == BarePlan(remove=["c1"])
    assert compute_bare_plan(want(rebuilt(OLD)), []) == BarePlan(create=True)


@pytest.mark.parametrize("die_at", [None, "remove_container", "create_container"])
def test_a_rebuild_converges_however_the_agent_dies(die_at: str | None) -> None:
    docker = FakeRuntime(images=("busybox", "team/app:v2"))
    store = Store()
    volumes = MemoryVolumes()
    store_sync(agent_on(docker, store, volumes), store, OLD)
    (before,) = docker.containers.values()
    new = rebuilt(OLD, "team/app:v2")
    if die_at is not None:
        docker.inject(die_at, Crash(die_at), after=True)
        with pytest.raises(Crash):
            store_sync(agent_on(docker, store, volumes), store, new)
    store_sync(agent_on(docker, store, volumes), store, new)  # restarted
    (after,) = docker.containers.values()
    assert after.id != before.id and after.image == "team/app:v2" and after.state == "running"
    assert after.labels[L.SPEC_HASH] == new.runtime_hash()
    assert created(docker)[-1] == after.id
    assert len(volumes.volumes) == 1  # the same volume, never removed nor made twice


def agent_on(docker: FakeRuntime, store: Store, volumes: MemoryVolumes):  # type: ignore[no-untyped-def]
    """A fresh agent process on the same host: the host's volumes outlive it."""
    ex = agent(docker, store)
    ex._volumes = volumes
    return ex


def store_sync(ex, store: Store, spec: BareSpec) -> None:  # type: ignore[no-untyped-def]
    outcome = ex.sync("u1", store.assignment(spec))
    if outcome.report is not None:
        store.report(outcome.report)
