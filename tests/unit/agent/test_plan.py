"""compute_plan over tables of desired Assignment × observed containers."""

from __future__ import annotations

from typing import Any

import pytest

from capsuled.agent.plan import Plan, compute_plan
from capsuled.domain import labels as L
from capsuled.domain.channel import Assignment
from capsuled.domain.spec import CapsuleSpec, ContainerSpec, RestartPolicy, spec_hash
from capsuled.drivers.runtime.base import Observed

CAP = "cap-0001"
START = "2024-05-01T10:00:00.000000001Z"
OLD_START = "2024-05-01T09:00:00.000000001Z"

WEB = ContainerSpec(uuid="uuid-web", name="web", role="app", image="busybox",
                    command=["httpd", "-f"])
PROBE = ContainerSpec(uuid="uuid-probe", name="probe", role="app", image="busybox",
                      command=["sleep", "3600"])
PREP = ContainerSpec(uuid="uuid-prep", name="prep", role="init", image="busybox",
                     command=["true"])
SEED = ContainerSpec(uuid="uuid-seed", name="seed", role="init", image="busybox",
                     command=["true"])


def desired(apps: tuple[ContainerSpec, ...] = (WEB, PROBE), inits: tuple[ContainerSpec, ...] = (),
            policy: RestartPolicy = "Always", deleting: bool = False) -> Assignment:
    return Assignment(uuid=CAP, generation=3, deleting=deleting,
                      spec=CapsuleSpec(name="demo", restart_policy=policy,
                                       init_containers=list(inits), containers=list(apps)))


def sandbox(state: str = "running", started_at: str | None = START, exit_code: int | None = None,
            id: str = "sb") -> Observed:
    return Observed(id=id, labels={L.INSTANCE: "inst", L.CAPSULE: CAP, L.ROLE: L.ROLE_SANDBOX},
                    state=state, started_at=started_at, exit_code=exit_code)  # type: ignore[arg-type]


def member(c: ContainerSpec, state: str = "running", exit_code: int | None = None,
           policy: RestartPolicy = "Always", sandbox_start: str = START,
           spec_digest: str | None = None, **kw: Any) -> Observed:
    labels = {L.INSTANCE: "inst", L.CAPSULE: CAP, L.CONTAINER: c.uuid, L.NAME: c.name,
              L.ROLE: c.role, L.SPEC_HASH: spec_digest or spec_hash(c, policy),
              L.SANDBOX_START: sandbox_start}
    return Observed(id=f"id-{c.name}", labels=labels, state=state, exit_code=exit_code,  # type: ignore[arg-type]
                    started_at=START, **kw)


SB = sandbox()
STEADY = [SB, member(WEB), member(PROBE)]


# --------------------------------------------------------------------------- teardown


@pytest.mark.parametrize(("want", "observed", "expected"), [
    (desired(deleting=True), [SB, member(WEB), member(PROBE)],
     Plan(remove=["id-web", "id-probe", "sb"])),
    (desired(deleting=True), [member(WEB), SB, member(PREP, "exited", 0)],
     Plan(remove=["id-web", "id-prep", "sb"])),
    (desired(deleting=True), [SB], Plan(remove=["sb"])),
    (desired(deleting=True), [], Plan(remove_volumes=True, gone=True)),
    (None, [SB, member(WEB), member(PROBE)], Plan(remove=["id-web", "id-probe", "sb"])),
    (None, [], Plan(remove_volumes=True, gone=True)),
], ids=["deleting-members-first", "deleting-init-member", "deleting-sandbox-only",
        "deleting-nothing-left", "orphan", "orphan-nothing-left"])
def test_plan_tears_down_when_deleting_or_orphaned(want: Assignment | None,
                                                   observed: list[Observed],
                                                   expected: Plan) -> None:
    plan = compute_plan(want, observed)
    assert plan == expected
    assert not plan.empty


# --------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize(("observed", "expected"), [
    ([], Plan(create_sandbox=True)),
    ([member(WEB)], Plan(remove=["id-web"], create_sandbox=True)),
    ([sandbox("exited", exit_code=137), member(WEB), member(PROBE)],
     Plan(remove=["id-web", "id-probe", "sb"], create_sandbox=True,
          sandbox_recreated="sandbox exited with code 137")),
    ([sandbox("created")], Plan(remove=["sb"], create_sandbox=True,
                                sandbox_recreated="sandbox created")),
    ([SB, member(WEB, sandbox_start=OLD_START), member(PROBE)],
     Plan(remove=["id-web", "id-probe", "sb"], create_sandbox=True,
          sandbox_recreated="sandbox restarted: its containers lost their namespaces")),
], ids=["nothing-observed", "member-without-sandbox", "sandbox-exited", "sandbox-not-started",
        "member-joined-older-sandbox-start"])
def test_plan_recreates_sandbox_when_missing_down_or_restarted(observed: list[Observed],
                                                                expected: Plan) -> None:
    assert compute_plan(desired(), observed) == expected


def test_plan_replacing_a_never_started_sandbox_is_no_recreation() -> None:
    # A crash between the sandbox's create and start leaves it "created" with no start time.
    plan = compute_plan(desired(), [sandbox("created", started_at=None)])
    assert plan == Plan(remove=["sb"], create_sandbox=True, sandbox_recreated=None)


def test_plan_removes_extra_sandbox_when_another_runs() -> None:
    old = sandbox("exited", started_at=OLD_START, exit_code=0, id="sb-old")
    plan = compute_plan(desired(), [old, SB, member(WEB), member(PROBE)])
    assert plan == Plan(remove=["sb-old"])


# --------------------------------------------------------------------------- drift


def test_plan_removes_member_when_container_uuid_unknown() -> None:
    ghost = ContainerSpec(uuid="uuid-ghost", name="ghost", image="busybox")
    plan = compute_plan(desired(), [*STEADY, member(ghost)])
    assert plan == Plan(remove=["id-ghost"])


def test_plan_removes_member_when_unknown_even_if_sandbox_start_differs() -> None:
    ghost = ContainerSpec(uuid="uuid-ghost", name="ghost", image="busybox")
    plan = compute_plan(desired(), [*STEADY, member(ghost, sandbox_start=OLD_START)])
    assert plan == Plan(remove=["id-ghost"])


@pytest.mark.parametrize("observed_web", [
    member(WEB.model_copy(update={"image": "busybox:1.36"})),
    member(WEB, policy="Never"),
    member(WEB, spec_digest="0000000000000000"),
], ids=["image-changed", "restart-policy-changed", "garbage-hash"])
def test_plan_removes_app_when_spec_hash_differs(observed_web: Observed) -> None:
    plan = compute_plan(desired(), [SB, observed_web, member(PROBE)])
    assert plan == Plan(remove=["id-web"], sandbox=SB, replacing="web")


# --------------------------------------------------------------------------- init containers


@pytest.mark.parametrize(("members", "expected"), [
    ([], Plan(run_init=PREP, sandbox=SB)),
    ([member(PREP, "exited", 0)], Plan(run_init=SEED, sandbox=SB)),
    ([member(PREP, "running")], Plan(wait_init=member(PREP, "running"), sandbox=SB)),
    ([member(PREP, "created")], Plan(wait_init=member(PREP, "created"), start_init=True,
                                     sandbox=SB)),
    ([member(PREP, "exited", 0), member(SEED, "running")],
     Plan(wait_init=member(SEED, "running"), sandbox=SB)),
    ([member(PREP, "exited", 1)], Plan(blocked="init container prep exited with code 1")),
    ([member(PREP, "exited", 0), member(SEED, "exited", 7)],
     Plan(blocked="init container seed exited with code 7")),
    ([member(PREP, "exited", 0), member(SEED, "exited", 0)],
     Plan(create_apps=[WEB, PROBE], sandbox=SB)),
    ([member(PREP, "exited", 0), member(SEED, "exited", 0), member(WEB)],
     Plan(create_apps=[PROBE], sandbox=SB)),
], ids=["first-missing", "first-done-second-missing", "first-running", "first-created",
        "second-running", "first-failed", "second-failed", "all-done", "all-done-one-app-up"])
def test_plan_runs_init_containers_in_order(members: list[Observed], expected: Plan) -> None:
    plan = compute_plan(desired(inits=(PREP, SEED)), [SB, *members])
    assert plan == expected


def test_plan_blocks_without_creating_apps_when_init_failed() -> None:
    plan = compute_plan(desired(inits=(PREP,)), [SB, member(PREP, "exited", 1)])
    assert plan.blocked == "init container prep exited with code 1"
    assert (plan.create_apps, plan.start, plan.run_init, plan.create_sandbox) == ([], [], None,
                                                                                  False)


def test_plan_keeps_init_member_when_its_spec_hash_differs() -> None:
    done = member(PREP, "exited", 0, spec_digest="0000000000000000")
    plan = compute_plan(desired(inits=(PREP,)), [SB, done, member(WEB), member(PROBE)])
    assert plan == Plan(sandbox=SB)


# --------------------------------------------------------------------------- apps


@pytest.mark.parametrize(("policy", "state", "exit_code", "start"), [
    ("Always", "exited", 0, ["id-web"]),
    ("Always", "exited", 1, ["id-web"]),
    ("OnFailure", "exited", 0, []),
    ("OnFailure", "exited", 2, ["id-web"]),
    ("Never", "exited", 0, []),
    ("Never", "exited", 1, []),
    ("Always", "created", None, ["id-web"]),
    ("Never", "created", None, ["id-web"]),
    ("Always", "restarting", 1, []),
    ("Always", "paused", None, []),
], ids=["always-code-0", "always-code-1", "onfailure-code-0", "onfailure-code-2",
        "never-code-0", "never-code-1", "created-always", "created-never", "restarting",
        "paused"])
def test_plan_starts_stopped_app_when_policy_says_run(policy: RestartPolicy, state: str,
                                                      exit_code: int | None,
                                                      start: list[str]) -> None:
    web = member(WEB, state, exit_code, policy=policy)
    plan = compute_plan(desired(policy=policy), [SB, web, member(PROBE, policy=policy)])
    assert plan == Plan(start=start, sandbox=SB)
    assert plan.empty is (start == [])


def test_plan_creates_missing_apps_together() -> None:
    plan = compute_plan(desired(), [SB])
    assert plan == Plan(create_apps=[WEB, PROBE], sandbox=SB)
    assert not plan.empty


def test_plan_creates_and_starts_in_one_step() -> None:
    plan = compute_plan(desired(), [SB, member(WEB, "exited", 0)])
    assert plan == Plan(create_apps=[PROBE], start=["id-web"], sandbox=SB)


def test_plan_empty_when_steady() -> None:
    plan = compute_plan(desired(), STEADY)
    assert plan == Plan(sandbox=SB)
    assert plan.empty


def test_plan_empty_when_steady_after_inits() -> None:
    observed = [SB, member(PREP, "exited", 0), member(WEB), member(PROBE)]
    plan = compute_plan(desired(inits=(PREP,)), observed)
    assert plan == Plan(sandbox=SB)
    assert plan.empty


def test_plan_restarts_an_app_whose_liveness_probe_fails() -> None:
    from capsuled.domain.spec import HealthCheck

    live = WEB.model_copy(update={"health": HealthCheck(command=["cat", "/tmp/ok"])})
    want = desired(apps=(live, PROBE))
    plan = compute_plan(want, [SB, member(live, health="unhealthy"), member(PROBE)])
    assert plan.restart == [("id-web", "web")] and not plan.remove
    assert compute_plan(want, [SB, member(live, health="healthy"), member(PROBE)]).empty
    assert compute_plan(want, [SB, member(live, health="starting"), member(PROBE)]).empty
    # A container without a probe is never restarted for its (image's) health check.
    assert compute_plan(desired(), [SB, member(WEB, health="unhealthy"), member(PROBE)]).empty


def test_failure_policy_restart_capsule_remakes_the_capsule_for_an_unhealthy_container() -> None:
    from capsuled.domain.spec import HealthCheck

    live = WEB.model_copy(update={"health": HealthCheck(command=["cat", "/tmp/ok"])})
    base = desired(apps=(live, PROBE))
    want = base.model_copy(update={"spec": base.spec.model_copy(update={"failure_policy": "RestartCapsule"})})
    plan = compute_plan(want, [SB, member(live, health="unhealthy"), member(PROBE)])
    assert plan.create_sandbox and sorted(plan.remove) == ["id-probe", "id-web", "sb"]
    assert plan.sandbox_recreated == "container web failed its liveness probe"
    assert compute_plan(want, [SB, member(live, health="healthy"), member(PROBE)]).empty


def test_a_missing_pids_limit_is_applied_in_place_not_by_a_recreate() -> None:
    """Containers made before the pids limit (or under another one) are updated live."""
    from dataclasses import replace
    old_sb = replace(SB, pids_ok=False)
    plan = compute_plan(desired(), [old_sb, member(WEB, pids_ok=False), member(PROBE)])
    assert plan.resize == [("id-web", None, None), ("sb", None, None)]
    assert not (plan.remove or plan.create_sandbox or plan.create_apps)
    assert compute_plan(desired(), STEADY).empty
