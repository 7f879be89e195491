"""Updates survive an agent that dies between any two runtime calls: the next agent, given
the same desired revision, finishes it, so that in the end every container is on that one
revision (never a mix of two), the sandbox is kept for an in-place change and remade once
for a sandbox-level one, and a rollback given while the agent was dead wins. Also the
plan's rules for one-at-a-time replacement."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from capsuled.agent.execute import CapsuleExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.agent.plan import Plan, compute_plan
from capsuled.domain import labels as L
from capsuled.domain.channel import Assignment
from capsuled.domain.spec import CapsuleSpec, ContainerSpec, Probe, spec_hash
from capsuled.domain.update import plan_change
from capsuled.drivers.runtime.base import Observed
from capsuled.drivers.runtime.fake import FakeRuntime
from tests.unit.agent.rigs import INFRA, MemoryNetworks, MemoryVolumes, fake_runtime

CAP = "cap-upd"
WEB = ContainerSpec(uuid="u-web", name="web", image="busybox", command=["httpd", "-f"])
SIDE = ContainerSpec(uuid="u-side", name="side", image="busybox", command=["sleep", "3600"])
V1 = CapsuleSpec(name="demo", containers=[WEB, SIDE])
# Both containers change: two replacements, one at a time.
V2 = plan_change(V1, V1.model_copy(update={"containers": [
    WEB.model_copy(update={"env": {"V": "2"}}), SIDE.model_copy(update={"env": {"V": "2"}})]})).new
# A new init container: a new sandbox.
V3 = plan_change(V1, V1.model_copy(update={"init_containers": [ContainerSpec(
    name="prep", role="init", image="busybox", command=["true"])]})).new

MUTATIONS = ("create_sandbox", "create_container", "start", "remove_container",
             "update_resources", "restart")


class Crash(BaseException):
    """The agent process dies here (not an Exception: nothing may catch it)."""


class DiesAfter:
    """The runtime, except that the agent dies right after its `n`-th change of Docker."""

    def __init__(self, runtime: FakeRuntime, n: int) -> None:
        self._rt, self._left = runtime, n

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._rt, name)
        if name not in MUTATIONS:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            self._left -= 1
            if self._left == 0:
                raise Crash(f"killed after {name}")
            return out
        return call


@pytest.fixture()
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as p:
        yield p


def agent(runtime: Any, pool: ThreadPoolExecutor) -> CapsuleExecutor:
    """A fresh agent process: it knows nothing but what Docker holds."""
    return CapsuleExecutor(runtime, MemoryVolumes(), ProjectNetworks(MemoryNetworks(), "inst", grace=60),
                           "inst", INFRA, stop_timeout=1, parallel=pool)


def want(spec: CapsuleSpec, generation: int) -> Assignment:
    return Assignment(uuid=CAP, generation=generation, spec=spec)


def on_revision(runtime: FakeRuntime, spec: CapsuleSpec) -> bool:
    """Docker holds exactly `spec`: one running sandbox of its epoch, and each container
    once, made from its spec."""
    seen = runtime.observe_capsule("inst", CAP)
    boxes = [o for o in seen if o.labels[L.ROLE] == L.ROLE_SANDBOX]
    members = [o for o in seen if o.labels[L.ROLE] != L.ROLE_SANDBOX]
    hashes = Counter(o.labels[L.SPEC_HASH] for o in members if o.labels[L.ROLE] == "app")
    return (len(boxes) == 1 and boxes[0].state == "running"
            and boxes[0].labels.get(L.SANDBOX_EPOCH) == str(spec.sandbox_epoch)
            and hashes == Counter(spec_hash(c, spec.restart_policy) for c in spec.containers)
            and all(o.state in ("running", "exited") for o in members))


def _sandbox_id(runtime: FakeRuntime) -> str:
    (box,) = [o for o in runtime.observe_capsule("inst", CAP) if o.labels[L.ROLE] == L.ROLE_SANDBOX]
    return box.id


def _crash_points(pool: ThreadPoolExecutor, new: CapsuleSpec) -> Iterator[tuple[int, FakeRuntime, str]]:
    """For n = 1, 2, …: a capsule on V1, then an agent that dies after its n-th change of
    Docker while it updates to `new`; until an update goes through without dying."""
    n = 0
    while True:
        n += 1
        runtime = fake_runtime()
        assert agent(runtime, pool).sync(CAP, want(V1, 1)).settled
        box = _sandbox_id(runtime)
        try:
            agent(DiesAfter(runtime, n), pool).sync(CAP, want(new, 2))
        except Crash:
            yield n, runtime, box
            continue
        assert n > 2, "the update made hardly any change"
        return


@pytest.mark.parametrize("new", [V2, V3], ids=["in-place", "new-sandbox"])
def test_an_agent_killed_anywhere_in_an_update_is_finished_by_the_next(
        pool: ThreadPoolExecutor, new: CapsuleSpec) -> None:
    points = 0
    for n, runtime, box in _crash_points(pool, new):
        points += 1
        outcome = agent(runtime, pool).sync(CAP, want(new, 2))  # restarted
        report = outcome.report
        assert outcome.settled and report is not None and report.converged, n
        assert on_revision(runtime, new), f"not on the new revision after dying at change {n}"
        if new.sandbox_epoch == V1.sandbox_epoch:
            assert _sandbox_id(runtime) == box, n  # an in-place change keeps the sandbox
    assert points >= 3


def test_a_rollback_given_while_the_agent_was_dead_wins(pool: ThreadPoolExecutor) -> None:
    back = plan_change(V2, V1).new  # the old spec, as the store writes a rollback
    for n, runtime, _ in _crash_points(pool, V2):
        assert agent(runtime, pool).sync(CAP, want(back, 3)).settled
        assert on_revision(runtime, back), n
        assert not on_revision(runtime, V2)


# -- the plan's one-at-a-time rules ------------------------------------------------------

START = "2024-05-01T10:00:00Z"
BOX = Observed(id="sb", labels={L.CAPSULE: CAP, L.ROLE: L.ROLE_SANDBOX}, state="running",
               started_at=START)


def seen(c: ContainerSpec, spec: CapsuleSpec, state: str = "running", **kw: Any) -> Observed:
    return Observed(id=f"id-{c.name}", state=state, started_at=START,  # type: ignore[arg-type]
                    labels={L.CAPSULE: CAP, L.CONTAINER: c.uuid, L.NAME: c.name, L.ROLE: c.role,
                            L.SPEC_HASH: spec_hash(c, spec.restart_policy),
                            L.SANDBOX_START: START}, **kw)


def test_changed_containers_go_one_at_a_time_in_spec_order() -> None:
    old_web, old_side = V1.containers
    plan = compute_plan(want(V2, 2), [BOX, seen(old_web, V1), seen(old_side, V1)])
    assert (plan.remove, plan.replacing, plan.create_apps) == (["id-web"], "web", [])
    new_web = V2.containers[0]
    # web is gone: it is made again before anything else is taken down.
    plan = compute_plan(want(V2, 2), [BOX, seen(old_side, V1)])
    assert plan.create_apps == [new_web] and plan.remove == []
    # web runs on the new spec: side's turn.
    plan = compute_plan(want(V2, 2), [BOX, seen(new_web, V2), seen(old_side, V1)])
    assert plan.remove == ["id-side"] and not plan.converged
    # Everything on the new spec: nothing left.
    done = compute_plan(want(V2, 2), [BOX, seen(new_web, V2), seen(V2.containers[1], V2)])
    assert done.empty and done.converged


def test_the_next_replacement_waits_for_the_last_one_to_be_ready() -> None:
    gated = WEB.model_copy(update={"env": {"V": "2"}, "readiness": Probe(kind="tcp", port=80)})
    spec = V1.model_copy(update={"containers": [gated, SIDE.model_copy(update={"env": {"V": "2"}})]})
    observed = [BOX, seen(gated, spec), seen(SIDE, V1)]
    waiting = compute_plan(want(spec, 2), observed, ready={"id-web": False})
    assert waiting.remove == [] and waiting.waiting == "waiting for container web to be ready"
    assert waiting.empty and not waiting.converged
    # Not probed yet (the prober has not seen it) is not ready either.
    assert compute_plan(want(spec, 2), observed, ready={}).waiting is not None
    assert compute_plan(want(spec, 2), observed, ready={"id-web": True}).remove == ["id-side"]
    # No prober at all: probes gate nothing.
    assert compute_plan(want(spec, 2), observed).remove == ["id-side"]
    # Crash-looping: wait (the rollout's deadline decides), never take the next one down.
    looping = [BOX, seen(gated, spec, "restarting"), seen(SIDE, V1)]
    assert compute_plan(want(spec, 2), looping, ready={"id-web": True}).waiting is not None


def test_a_finished_container_the_policy_keeps_stopped_holds_nothing_up() -> None:
    spec = V1.model_copy(update={"restart_policy": "OnFailure"})
    new = plan_change(spec, spec.model_copy(update={"containers": [
        WEB, SIDE.model_copy(update={"image": "busybox:2"})]})).new
    observed = [BOX, seen(WEB, spec, "exited", exit_code=0), seen(SIDE, spec)]
    assert compute_plan(want(new, 2), observed).remove == ["id-side"]


def test_a_new_sandbox_epoch_remakes_everything_without_counting_a_restart() -> None:
    observed = [BOX, seen(WEB, V1), seen(SIDE, V1)]
    plan = compute_plan(want(V3, 2), observed)
    assert plan == Plan(remove=["id-web", "id-side", "sb"], create_sandbox=True,
                        sandbox_replaced="the update needs a new sandbox")
