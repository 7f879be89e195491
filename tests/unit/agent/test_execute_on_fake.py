"""CapsuleExecutor on FakeRuntime: a capsule comes up in order, survives a runtime that
fails (or an agent that dies) between any two steps, repairs what died, and goes without
leaving anything behind."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from capsuled.agent.execute import CapsuleExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.domain import labels as L
from capsuled.domain.channel import Assignment, CapsuleReport
from capsuled.domain.spec import CapsuleSpec, ContainerSpec, RestartPolicy, VolumeSpec
from capsuled.drivers.runtime.fake import FakeRuntime
from capsuled.errors import DriverError, Unavailable
from tests.unit.agent.rigs import INFRA, MemoryNetworks, MemoryVolumes, fake_runtime

CAP = "cap-0001"
WEB = ContainerSpec(uuid="u-web", name="web", image="busybox", command=["httpd", "-f"])
SIDE = ContainerSpec(uuid="u-side", name="side", image="busybox", command=["sleep", "3600"])
PREP = ContainerSpec(uuid="u-prep", name="prep", role="init", image="busybox", command=["true"])


class Crash(BaseException):
    """The agent process dies here (not an Exception: nothing may catch it)."""


def desired(policy: RestartPolicy = "Always", deleting: bool = False, generation: int = 1,
            project: str | None = None, apps: tuple[ContainerSpec, ...] = (WEB, SIDE),
            volumes: tuple[VolumeSpec, ...] = ()) -> Assignment:
    return Assignment(uuid=CAP, generation=generation, deleting=deleting, project_id=project,
                      spec=CapsuleSpec(name="demo", restart_policy=policy, init_containers=[PREP],
                                       containers=list(apps), volumes=list(volumes)))


@pytest.fixture()
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as p:
        yield p


class Rig:
    def __init__(self, pool: ThreadPoolExecutor, runtime: FakeRuntime | None = None) -> None:
        self.runtime = runtime or fake_runtime()
        self.volumes = MemoryVolumes()
        self.networks = MemoryNetworks()
        self._pool = pool

    def agent(self) -> CapsuleExecutor:
        """A fresh agent process: it knows nothing but what the runtime holds."""
        return CapsuleExecutor(self.runtime, self.volumes,
                               ProjectNetworks(self.networks, "inst", grace=60), "inst", INFRA,
                               stop_timeout=1, parallel=self._pool)

    def roles(self) -> Counter[str]:
        return Counter(o.labels.get(L.NAME) or o.labels[L.ROLE]
                       for o in self.runtime.observe_capsule("inst", CAP))

    def state(self, name: str) -> str:
        (o,) = [o for o in self.runtime.observe_capsule("inst", CAP)
                if (o.labels.get(L.NAME) or o.labels[L.ROLE]) == name]
        return o.state


def running(report: CapsuleReport | None) -> bool:
    return report is not None and report.error is None and report.sandbox_state == "running" \
        and all(c.state == ("exited" if c.role == "init" else "running") for c in report.containers)


def test_a_capsule_comes_up_in_order_and_a_second_sync_changes_nothing(pool: ThreadPoolExecutor) -> None:
    rig = Rig(pool)
    outcome = rig.agent().sync(CAP, desired())
    assert outcome.settled and running(outcome.report)
    assert rig.roles() == Counter({"sandbox": 1, "prep": 1, "web": 1, "side": 1})
    # The sandbox first, then the init container (it exited 0) before any app started.
    starts = [e.container_id for e in rig.runtime.history() if e.action == "start"]
    names = {o.id: o.labels.get(L.NAME) or "sandbox" for o in rig.runtime.observe_capsule("inst", CAP)}
    assert [names[i] for i in starts][:2] == ["sandbox", "prep"]
    assert outcome.report is not None
    assert [e[1] for e in outcome.report.events][:2] == ["SandboxCreated", "Started"]
    before = len(rig.runtime.history())
    again = rig.agent().sync(CAP, desired())
    assert again.settled and running(again.report) and len(rig.runtime.history()) == before


def test_the_runtime_failing_after_the_sandbox_is_retried_without_duplicates(
        pool: ThreadPoolExecutor) -> None:
    rig = Rig(pool)
    rig.runtime.inject("create_container", DriverError("create container: engine hiccup"))
    first = rig.agent().sync(CAP, desired())
    assert not first.settled and first.report is not None
    assert "engine hiccup" in (first.report.error or "")
    assert rig.roles() == Counter({"sandbox": 1})
    second = rig.agent().sync(CAP, desired())
    assert second.settled and running(second.report)
    assert rig.roles() == Counter({"sandbox": 1, "prep": 1, "web": 1, "side": 1})


@pytest.mark.parametrize("method", ["create_sandbox", "create_container", "ensure_image"])
def test_an_agent_killed_after_any_create_leaves_nothing_a_restart_duplicates(
        pool: ThreadPoolExecutor, method: str) -> None:
    rig = Rig(pool)
    rig.runtime.inject(method, Crash(method), after=True)
    with pytest.raises(Crash):
        rig.agent().sync(CAP, desired(policy="Never"))
    outcome = rig.agent().sync(CAP, desired(policy="Never"))  # the restarted agent
    assert outcome.settled and running(outcome.report)
    assert rig.roles() == Counter({"sandbox": 1, "prep": 1, "web": 1, "side": 1})


def test_a_container_that_died_is_restarted_by_policy_or_reported(pool: ThreadPoolExecutor) -> None:
    rig = Rig(pool)
    rig.agent().sync(CAP, desired(policy="Never"))
    web = next(o for o in rig.runtime.observe_capsule("inst", CAP) if o.labels.get(L.NAME) == "web")
    rig.runtime.exit(web.id, 3)
    outcome = rig.agent().sync(CAP, desired(policy="Never"))
    assert outcome.settled and outcome.report is not None
    (report,) = [c for c in outcome.report.containers if c.name == "web"]
    assert (report.state, report.exit_code, report.runtime_id) == ("exited", 3, web.id)
    # Under Always the runtime restarts it itself; the agent sees the count go up.
    rig2 = Rig(pool)
    rig2.agent().sync(CAP, desired())
    web2 = next(o for o in rig2.runtime.observe_capsule("inst", CAP) if o.labels.get(L.NAME) == "web")
    rig2.runtime.exit(web2.id, 1)
    report2 = rig2.agent().sync(CAP, desired()).report
    assert report2 is not None
    (w,) = [c for c in report2.containers if c.name == "web"]
    assert (w.state, w.restart_count, w.runtime_id) == ("running", 1, web2.id)


def test_a_dead_sandbox_is_recreated_with_all_its_containers(pool: ThreadPoolExecutor) -> None:
    rig = Rig(pool)
    rig.agent().sync(CAP, desired())
    old = {o.id for o in rig.runtime.observe_capsule("inst", CAP)}
    (sandbox,) = [o for o in rig.runtime.observe_capsule("inst", CAP)
                  if o.labels[L.ROLE] == L.ROLE_SANDBOX]
    rig.runtime.exit(sandbox.id, 137)  # its members die with it
    assert rig.state("web") == "exited"
    outcome = rig.agent().sync(CAP, desired())
    assert outcome.settled and running(outcome.report) and outcome.report is not None
    assert outcome.report.sandbox_recreated
    now = {o.id for o in rig.runtime.observe_capsule("inst", CAP)}
    assert not now & old and rig.roles() == Counter({"sandbox": 1, "prep": 1, "web": 1, "side": 1})


def test_a_failing_init_container_blocks_the_apps(pool: ThreadPoolExecutor) -> None:
    runtime = FakeRuntime(images=(INFRA, "busybox"),
                          program=lambda c: 1 if c.entrypoint == ["true"] else None)
    rig = Rig(pool, runtime)
    outcome = rig.agent().sync(CAP, desired(policy="Never"))
    assert rig.roles() == Counter({"sandbox": 1, "prep": 1})
    assert outcome.report is not None
    (prep,) = [c for c in outcome.report.containers if c.name == "prep"]
    assert (prep.state, prep.exit_code) == ("exited", 1)


def test_a_missing_image_is_reported_and_nothing_half_made_is_left_running(
        pool: ThreadPoolExecutor) -> None:
    rig = Rig(pool)
    ghost = WEB.model_copy(update={"image": "nowhere/ghost:1"})
    outcome = rig.agent().sync(CAP, desired(apps=(ghost,)))
    assert not outcome.settled and outcome.report is not None
    assert "ghost" in (outcome.report.error or "")
    assert "web" not in rig.roles()


def test_delete_removes_everything_and_its_volumes(pool: ThreadPoolExecutor) -> None:
    rig = Rig(pool)
    vols = (VolumeSpec(name="data", type="emptyDir"),)
    rig.agent().sync(CAP, desired(volumes=vols, project="p1"))
    assert len(rig.volumes.volumes) == 1
    (sb,) = [o for o in rig.runtime.observe_capsule("inst", CAP) if o.labels[L.ROLE] == L.ROLE_SANDBOX]
    assert sb.networks == (rig.networks.networks["p1"].name,)
    outcome = rig.agent().sync(CAP, desired(deleting=True, generation=2, volumes=vols, project="p1"))
    assert outcome.settled and outcome.report is not None and outcome.report.gone
    assert rig.runtime.observe_capsule("inst", CAP) == [] and rig.volumes.volumes == {}
    # An orphan (the control plane forgot it) goes the same way, with no report.
    rig.agent().sync(CAP, desired())
    orphan = rig.agent().sync(CAP, None)
    assert orphan.settled and orphan.report is None and rig.runtime.observe_capsule("inst", CAP) == []


def test_a_runtime_that_cannot_be_reached_leaves_the_sync_unsettled(pool: ThreadPoolExecutor) -> None:
    rig = Rig(pool)
    rig.runtime.inject("observe_capsule", Unavailable("Docker Engine unreachable"))
    with pytest.raises(Unavailable):  # not a DriverError: the worker retries with back-off
        rig.agent().sync(CAP, desired())
    assert rig.agent().sync(CAP, desired()).settled


def test_an_agent_killed_halfway_through_a_delete_finishes_it_after_a_restart(
        pool: ThreadPoolExecutor) -> None:
    rig = Rig(pool)
    rig.agent().sync(CAP, desired())
    rig.runtime.inject("remove_container", Crash("remove"), after=True)
    with pytest.raises(Crash):
        rig.agent().sync(CAP, desired(deleting=True, generation=2))
    assert 0 < len(rig.runtime.observe_capsule("inst", CAP)) < 4
    outcome = rig.agent().sync(CAP, desired(deleting=True, generation=2))
    assert outcome.settled and outcome.report is not None and outcome.report.gone
    assert rig.runtime.observe_capsule("inst", CAP) == []


def test_a_cold_start_lists_the_capsule_once_and_reports_what_it_started(
        pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    # The step that made the apps knows what Docker holds (its own inspects): a second
    # list + inspect round before the report would only delay the capsule's Running.
    rig = Rig(pool)
    lists = []
    real = rig.runtime.observe_capsule
    monkeypatch.setattr(rig.runtime, "observe_capsule",
                        lambda instance, capsule: lists.append(capsule) or real(instance, capsule))
    apps_only = Assignment(uuid=CAP, generation=1,
                           spec=CapsuleSpec(name="demo", containers=[WEB, SIDE]))
    outcome = rig.agent().sync(CAP, apps_only)
    assert lists == [CAP]
    assert outcome.settled and running(outcome.report)
    assert outcome.report is not None
    assert {c.name: c.runtime_id for c in outcome.report.containers} == {
        o.labels[L.NAME]: o.id for o in real("inst", CAP) if o.labels.get(L.NAME)}
    # Nothing changed since: the next sync (a fresh look) has nothing to do.
    before = len(rig.runtime.history())
    again = rig.agent().sync(CAP, apps_only)
    assert again.settled and running(again.report) and len(rig.runtime.history()) == before


def test_the_members_images_are_checked_while_the_sandbox_is_made(
        pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not after it: the checks (and any pull) then cost a cold start nothing.
    rig = Rig(pool)
    checked = threading.Event()
    during: list[bool] = []
    real_identity, real_sandbox = rig.runtime.image_identity, rig.runtime.create_sandbox

    def identity(image: str) -> Any:
        if image != INFRA:
            checked.set()
        return real_identity(image)

    def sandbox(req: Any) -> Any:
        during.append(checked.wait(5))
        return real_sandbox(req)

    monkeypatch.setattr(rig.runtime, "image_identity", identity)
    monkeypatch.setattr(rig.runtime, "create_sandbox", sandbox)
    outcome = rig.agent().sync(CAP, desired())
    assert during == [True]
    assert outcome.settled and running(outcome.report)


def test_an_image_checked_ahead_that_is_missing_fails_its_container_as_before(
        pool: ThreadPoolExecutor) -> None:
    rig = Rig(pool)
    missing = dataclasses.replace(SIDE, image="nosuch:1", image_pull_policy="Never") \
        if dataclasses.is_dataclass(SIDE) else SIDE.model_copy(
            update={"image": "nosuch:1", "image_pull_policy": "Never"})
    outcome = rig.agent().sync(CAP, desired(apps=(WEB, missing)))
    assert not outcome.settled and outcome.report is not None
    assert "nosuch:1" in (outcome.report.error or "")
    assert rig.roles()["sandbox"] == 1 and "side" not in rig.roles()


def test_a_check_still_queued_on_a_busy_pool_is_made_by_the_member_itself() -> None:
    # The pool's only thread is busy for the whole sandbox step: the init container's
    # check, still queued when it is made, is cancelled and made inline, not waited for
    # (from a thread of that pool, waiting could be for ever).
    with ThreadPoolExecutor(1) as one:
        rig = Rig(one)
        busy, over = threading.Event(), threading.Event()
        one.submit(lambda: (busy.wait(10), over.set()))
        made_while_busy: list[bool] = []
        real_create = rig.runtime.create_container

        def create(req: Any) -> Any:
            if req.labels.get(L.NAME) == "prep":
                made_while_busy.append(not over.is_set())
                busy.set()  # the apps' creates need the pool
            return real_create(req)

        rig.runtime.create_container = create  # type: ignore[method-assign]
        outcome = rig.agent().sync(CAP, desired(apps=(WEB,)))
        assert made_while_busy == [True]
        assert outcome.settled and running(outcome.report)
