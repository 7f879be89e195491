"""Bare containers survive an agent that dies between any two steps: a container created
but not yet given its injected files is made again, never started without them, and a
one-shot auto_remove container never runs twice after a restart."""

from __future__ import annotations

from typing import Any

import pytest

from capsuled.agent.bare import BarePlan, BareExecutor, compute_bare_plan
from capsuled.agent.networks import ProjectNetworks
from capsuled.domain import labels as L
from capsuled.domain.channel import (BareReport, ContainerAssignment, ContainerState,
                                     DesiredState)
from capsuled.domain.spec import BareSpec, ContainerSpec, InjectedFile
from capsuled.drivers.runtime.base import Observed
from capsuled.drivers.runtime.fake import FakeContainer, FakeRuntime
from tests.unit.agent.rigs import MemoryNetworks, MemoryVolumes

FILE = InjectedFile(path="/etc/app.conf", content_b64="aGk=")
PLAIN = BareSpec(container=ContainerSpec(name="web", image="busybox"))
WITH_FILES = PLAIN.model_copy(update={"files": [FILE]})
ONE_SHOT = PLAIN.model_copy(update={"auto_remove": True})


def want(spec: BareSpec, state: DesiredState = "running", **kw: Any) -> ContainerAssignment:
    return ContainerAssignment(uuid="u1", name="web", generation=1, desired_state=state,
                               spec=spec, **kw)


def seen(spec: BareSpec, state: ContainerState = "created", cid: str = "c1") -> Observed:
    return Observed(id=cid, labels={L.ROLE: L.ROLE_BARE, L.SPEC_HASH: spec.runtime_hash()},
                    state=state)


# -- the plan --------------------------------------------------------------------------

def test_a_never_started_container_nobody_vouches_for_is_made_again() -> None:
    assert compute_bare_plan(want(WITH_FILES), [seen(WITH_FILES)]) == BarePlan(remove=["c1"])
    # Kept stopped, too: it would start without its files later.
    assert compute_bare_plan(want(WITH_FILES, "stopped"), [seen(WITH_FILES)]) == \
        BarePlan(remove=["c1"])


def test_a_container_whose_files_went_in_is_started() -> None:
    # This process put them in …
    assert compute_bare_plan(want(WITH_FILES), [seen(WITH_FILES)],
                             completed=frozenset({"c1"})) == BarePlan(start=True)
    # … or an agent reported it (reports come after the files), so the store knows it.
    assert compute_bare_plan(want(WITH_FILES, runtime_id="c1"), [seen(WITH_FILES)]) == \
        BarePlan(start=True)
    # Once started it had its files: nothing to repair.
    assert compute_bare_plan(want(WITH_FILES), [seen(WITH_FILES, "running")]) == BarePlan()
    # Without files a created container is simply started, as before.
    assert compute_bare_plan(want(PLAIN), [seen(PLAIN)]) == BarePlan(start=True)


def test_a_one_shot_container_is_announced_before_its_first_start() -> None:
    assert compute_bare_plan(want(ONE_SHOT), [seen(ONE_SHOT)]) == BarePlan(announce=True)
    assert compute_bare_plan(want(ONE_SHOT), [seen(ONE_SHOT)], announced=frozenset({"c1"})) == \
        BarePlan(start=True)
    assert compute_bare_plan(want(ONE_SHOT, runtime_id="c1"), [seen(ONE_SHOT)]) == \
        BarePlan(start=True)
    # Kept stopped: nothing runs, nothing to announce yet.
    assert compute_bare_plan(want(ONE_SHOT, "stopped"), [seen(ONE_SHOT)]) == BarePlan()
    # Announced, ran, removed by Docker: the store's runtime id says it existed.
    assert compute_bare_plan(want(ONE_SHOT, runtime_id="c1"), []) == BarePlan(gone=True)


# -- the executor, killed between steps -------------------------------------------------

class Crash(BaseException):
    """The agent process dies here (not an Exception: nothing may catch it)."""


def fake_docker(needs_files: bool = False) -> FakeRuntime:
    """`auto_remove` containers run to completion (and Docker removes them) as soon as
    they start; with `needs_files`, a container started without its injected files fails
    the test."""
    def program(c: FakeContainer) -> int | None:
        assert c.archives or not needs_files, "started without its injected files"
        return 0 if c.auto_remove else None

    return FakeRuntime(images=("busybox",), program=program)


def runs(docker: FakeRuntime) -> list[str]:
    """Ids started, in order."""
    return [e.container_id for e in docker.history() if e.action == "start"]


def created(docker: FakeRuntime) -> list[str]:
    return [e.container_id for e in docker.history() if e.action == "create"]


class Store:
    """What the control plane remembers across agent restarts: the last reported id."""

    def __init__(self) -> None:
        self.runtime_id: str | None = None

    def report(self, r: BareReport) -> None:
        if r.container is not None and r.container.runtime_id:
            self.runtime_id = r.container.runtime_id

    def assignment(self, spec: BareSpec) -> ContainerAssignment:
        return want(spec, runtime_id=self.runtime_id)


def agent(docker: FakeRuntime, store: Store) -> BareExecutor:
    """A fresh agent process: it remembers nothing but what the store tells it."""
    return BareExecutor(docker, ProjectNetworks(MemoryNetworks(), "inst", grace=60),
                        MemoryVolumes(), "inst", 5, announce=store.report)


def die(docker: FakeRuntime, at: str | None) -> None:
    """The agent is killed right after Docker created the container, or put its files in."""
    if at is not None:
        method = {"after_create": "create_container", "after_put": "put_archive"}[at]
        docker.inject(method, Crash(at), after=True)


def sync(ex: BareExecutor, store: Store, spec: BareSpec) -> None:
    outcome = ex.sync("u1", store.assignment(spec))
    if outcome.report is not None:
        store.report(outcome.report)


@pytest.mark.parametrize("die_at", ["after_create", "after_put"])
def test_killed_before_its_files_are_in_or_before_the_start_it_is_made_again(die_at: str) -> None:
    docker, store = fake_docker(needs_files=True), Store()
    die(docker, die_at)
    with pytest.raises(Crash):
        sync(agent(docker, store), store, WITH_FILES)
    assert runs(docker) == [] and len(docker.containers) == 1
    sync(agent(docker, store), store, WITH_FILES)  # the restarted agent
    (only,) = docker.containers.values()
    assert only.state == "running" and only.id == created(docker)[1] and only.archives
    assert runs(docker) == [created(docker)[1]]


@pytest.mark.parametrize("die_at", [None, "after_create", "after_put"])
def test_a_one_shot_container_runs_once_however_the_agent_dies(die_at: str | None) -> None:
    docker, store = fake_docker(), Store()
    spec = ONE_SHOT.model_copy(update={"files": [FILE]}) if die_at == "after_put" else ONE_SHOT
    die(docker, die_at)
    try:
        sync(agent(docker, store), store, spec)
    except Crash:
        pass
    # The agent is killed once more, right after the start (before any report but the
    # announcement), and restarted a few times.
    for _ in range(3):
        sync(agent(docker, store), store, spec)
    assert len(runs(docker)) == 1 and docker.containers == {}


def test_killed_right_after_the_start_of_a_one_shot_container_it_does_not_run_again() -> None:
    docker, store = fake_docker(), Store()
    ex = agent(docker, store)
    # Only the announcement reaches the store; the report at the end of the sync is lost.
    outcome = ex.sync("u1", store.assignment(ONE_SHOT))
    assert runs(docker) == created(docker)[:1] and outcome.report is not None
    for _ in range(3):
        sync(agent(docker, store), store, ONE_SHOT)  # restarted, with the store's view
    assert runs(docker) == created(docker)[:1]
