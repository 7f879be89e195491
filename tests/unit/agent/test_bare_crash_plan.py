"""Bare containers survive an agent that dies between any two steps: a container created
but not yet given its injected files is made again, never started without them, and a
one-shot auto_remove container never runs twice after a restart."""

from __future__ import annotations

from typing import Any

import pytest

from capsuled.agent.bare import BarePlan, BareExecutor, compute_bare_plan
from capsuled.agent.networks import ProjectNetworks
from capsuled.domain import labels as L
from capsuled.domain.channel import BareReport, ContainerAssignment
from capsuled.domain.spec import BareSpec, ContainerSpec, InjectedFile
from capsuled.drivers.runtime.base import Observed

FILE = InjectedFile(path="/etc/app.conf", content_b64="aGk=")
PLAIN = BareSpec(container=ContainerSpec(name="web", image="busybox"))
WITH_FILES = PLAIN.model_copy(update={"files": [FILE]})
ONE_SHOT = PLAIN.model_copy(update={"auto_remove": True})


def want(spec: BareSpec, state: str = "running", **kw: Any) -> ContainerAssignment:
    return ContainerAssignment(uuid="u1", name="web", generation=1, desired_state=state,
                               spec=spec, **kw)


def seen(spec: BareSpec, state: str = "created", cid: str = "c1") -> Observed:
    return Observed(id=cid, labels={L.ROLE: L.ROLE_BARE, L.SPEC_HASH: spec.runtime_hash()},
                    state=state)  # type: ignore[arg-type]


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


class FakeDocker:
    """A stateful runtime: containers by id; `die_at` names the call that kills the agent.
    `auto_remove` containers run to completion and are removed as soon as they start."""

    def __init__(self) -> None:
        self.containers: dict[str, Observed] = {}
        self.files: dict[str, bool] = {}
        self.runs: list[str] = []  # ids started, in order
        self.die_at: str | None = None
        self._n = 0
        self._auto_remove: set[str] = set()

    def _maybe_die(self, call: str) -> None:
        if self.die_at == call:
            self.die_at = None
            raise Crash(call)

    def observe_capsule(self, instance: str, capsule: str) -> list[Observed]:
        return [o for o in self.containers.values() if o.labels.get(L.CAPSULE) == capsule]

    def ensure_image(self, image: str, policy: str) -> None:
        pass

    def create_container(self, req: Any) -> str:
        self._n += 1
        cid = f"c{self._n}"
        self.containers[cid] = Observed(id=cid, labels=req.labels, state="created")  # type: ignore[arg-type]
        self.files[cid] = False
        if req.auto_remove:
            self._auto_remove.add(cid)
        self._maybe_die("after_create")
        if req.start:
            self.start(cid)
        return cid

    def put_archive(self, cid: str, path: str, data: bytes) -> None:
        self.files[cid] = True
        self._maybe_die("after_put")

    def start(self, cid: str) -> None:
        self.runs.append(cid)
        assert self.files[cid] or not self.needs_files, "started without its injected files"
        if cid in self._auto_remove:
            del self.containers[cid]  # ran, exited, removed by Docker
        else:
            self.containers[cid] = Observed(id=cid, labels=self.containers[cid].labels,
                                            state="running", started_at="now")

    def remove_container(self, cid: str, stop_timeout: int) -> None:
        self.containers.pop(cid, None)

    needs_files = False


class NoVolumes:
    def remove_owned(self, instance: str, capsule: str) -> list[str]:
        return []

    def ensure_volume(self, req: Any) -> None:
        pass


class Store:
    """What the control plane remembers across agent restarts: the last reported id."""

    def __init__(self) -> None:
        self.runtime_id: str | None = None

    def report(self, r: BareReport) -> None:
        if r.container is not None and r.container.runtime_id:
            self.runtime_id = r.container.runtime_id

    def assignment(self, spec: BareSpec) -> ContainerAssignment:
        return want(spec, runtime_id=self.runtime_id)


def agent(docker: FakeDocker, store: Store) -> BareExecutor:
    """A fresh agent process: it remembers nothing but what the store tells it."""
    return BareExecutor(docker, ProjectNetworks(None, "inst", grace=60), NoVolumes(),  # type: ignore[arg-type]
                        "inst", 5, announce=store.report)


def sync(ex: BareExecutor, store: Store, spec: BareSpec) -> None:
    outcome = ex.sync("u1", store.assignment(spec))
    if outcome.report is not None:
        store.report(outcome.report)


@pytest.mark.parametrize("die_at", ["after_create", "after_put"])
def test_killed_before_its_files_are_in_or_before_the_start_it_is_made_again(die_at: str) -> None:
    docker, store = FakeDocker(), Store()
    docker.needs_files = True
    docker.die_at = die_at
    with pytest.raises(Crash):
        sync(agent(docker, store), store, WITH_FILES)
    assert docker.runs == [] and len(docker.containers) == 1
    sync(agent(docker, store), store, WITH_FILES)  # the restarted agent
    (only,) = docker.containers.values()
    assert only.state == "running" and only.id == "c2" and docker.files["c2"]
    assert docker.runs == ["c2"]


@pytest.mark.parametrize("die_at", [None, "after_create", "after_put"])
def test_a_one_shot_container_runs_once_however_the_agent_dies(die_at: str | None) -> None:
    docker, store = FakeDocker(), Store()
    spec = ONE_SHOT.model_copy(update={"files": [FILE]}) if die_at == "after_put" else ONE_SHOT
    docker.die_at = die_at
    try:
        sync(agent(docker, store), store, spec)
    except Crash:
        pass
    # The agent is killed once more, right after the start (before any report but the
    # announcement), and restarted a few times.
    for _ in range(3):
        sync(agent(docker, store), store, spec)
    assert len(docker.runs) == 1 and docker.containers == {}


def test_killed_right_after_the_start_of_a_one_shot_container_it_does_not_run_again() -> None:
    docker, store = FakeDocker(), Store()
    ex = agent(docker, store)
    # Only the announcement reaches the store; the report at the end of the sync is lost.
    outcome = ex.sync("u1", store.assignment(ONE_SHOT))
    assert docker.runs == ["c1"] and outcome.report is not None
    for _ in range(3):
        sync(agent(docker, store), store, ONE_SHOT)  # restarted, with the store's view
    assert docker.runs == ["c1"]
