"""What an update changes (domain/update.py), the health gate (domain/rollout.py) and a
spec written back as a template (domain/template_out.py): pure rules, tables of cases."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from capsuled.domain.resources import capsule_with_default_limits
from capsuled.domain.rollout import Member, judge, start
from capsuled.domain.spec import CapsuleSpec
from capsuled.domain.template import Limits, parse_template
from capsuled.domain.template_out import render_template
from capsuled.domain.update import (apply_quick_changes, claim_during, immutable_problems,
                                    needs_new_sandbox, plan_change)
from capsuled.errors import InvalidInput

FULL: dict[str, Any] = {
    "kind": "capsule", "metadata": {"name": "web", "labels": {"app": "web"},
                                    "annotations": {"team": "a"}},
    "availabilityZone": "nova",
    "spec": {"restartPolicy": "OnFailure", "failurePolicy": "RestartCapsule",
             "minReadySeconds": 3, "progressDeadlineSeconds": 40, "nodeSelector": {"disk": "ssd"},
             "volumes": [{"name": "d", "emptyDir": {}},
                         {"name": "c", "cinder": {"size": 2, "autoRemove": True}}],
             "initContainers": [{"image": "busybox", "command": ["true"],
                                 "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
             "containers": [
                 {"name": "a", "image": "nginx:1.27", "args": ["-g", "x"], "workDir": "/srv",
                  "env": {"A": "1"}, "tty": True, "stdin": True, "imagePullPolicy": "Always",
                  "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 53,
                                                                    "protocol": "UDP"}],
                  "resources": {"requests": {"cpu": 0.5, "memory": 128}},
                  "volumeMounts": [{"name": "c", "mountPath": "/c", "readOnly": True}],
                  "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5},
                  "readinessProbe": {"httpGet": {"port": "http", "path": "/r", "httpHeaders": [
                      {"name": "X", "value": "1"}]}, "successThreshold": 2}},
                 {"image": "busybox", "registry": "my-registry",
                  "startupProbe": {"tcpSocket": {"port": 80}, "failureThreshold": 30},
                  "livenessProbe": {"httpGet": {"port": 80}}}]},
}


def spec_of(template: dict[str, Any]) -> CapsuleSpec:
    return capsule_with_default_limits(parse_template(template), Limits())


def test_a_rendered_spec_parses_back_to_the_same_spec() -> None:
    spec = spec_of(FULL)
    rendered = render_template(spec)
    assert spec_of(rendered) == spec
    assert render_template(spec_of(rendered)) == rendered  # and it is stable


def base(**changes: Any) -> CapsuleSpec:
    tmpl = {"kind": "capsule", "metadata": {"name": "web"}, "spec": {
        "volumes": [{"name": "d", "emptyDir": {}}],
        "containers": [{"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
                        "volumeMounts": [{"name": "d", "mountPath": "/d"}]},
                       {"name": "b", "image": "busybox"}]}}
    tmpl["spec"].update(changes)
    return spec_of(tmpl)


CURRENT = plan_change(base(), base()).new  # with uuids, as stored


@pytest.mark.parametrize(("new", "sandbox", "watched", "replaced"), [
    (base(), None, (), ()),
    (base(containers=[{"name": "a", "image": "busybox:2", "ports": [{"containerPort": 80}],
                       "volumeMounts": [{"name": "d", "mountPath": "/d"}]},
                      {"name": "b", "image": "busybox"}]), None, ("a",), ("a",)),
    (base(containers=[{"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
                       "volumeMounts": [{"name": "d", "mountPath": "/d"}],
                       "resources": {"requests": {"cpu": 1}}},
                      {"name": "b", "image": "busybox"}]), None, (), ()),
    (base(containers=[{"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
                       "volumeMounts": [{"name": "d", "mountPath": "/d"}],
                       "readinessProbe": {"tcpSocket": {"port": 80}}},
                      {"name": "b", "image": "busybox"}]), None, ("a",), ()),
    (base(containers=[{"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
                       "volumeMounts": [{"name": "d", "mountPath": "/d"}]},
                      {"name": "c", "image": "busybox"}]), None, ("c",), ()),
    (base(restartPolicy="Never"), None, ("a", "b"), ("a", "b")),
    (base(containers=[{"name": "a", "image": "busybox", "ports": [{"containerPort": 81}],
                       "volumeMounts": [{"name": "d", "mountPath": "/d"}]},
                      {"name": "b", "image": "busybox"}]),
     "the capsule's ports changed", ("a", "b"), ()),
    (base(volumes=[{"name": "d", "emptyDir": {}}, {"name": "e", "emptyDir": {}}],
          containers=[{"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
                       "volumeMounts": [{"name": "d", "mountPath": "/d"}]},
                      {"name": "b", "image": "busybox", "volumeMounts": [
                          {"name": "e", "mountPath": "/e"}]}]),
     "the set of volumes changed", ("a", "b"), ()),
    (base(initContainers=[{"image": "busybox", "command": ["true"]}]),
     "the init containers changed", ("a", "b"), ()),
], ids=["nothing", "image", "cpu-in-place", "probe", "swap-a-container", "restart-policy",
        "ports", "volumes", "init"])
def test_what_a_change_does(new: CapsuleSpec, sandbox: str | None, watched: tuple[str, ...],
                            replaced: tuple[str, ...]) -> None:
    change = plan_change(CURRENT, new)
    assert (change.new_sandbox, change.watched, change.replaced) == (sandbox, watched, replaced)
    assert change.new.sandbox_epoch == (1 if sandbox else 0)
    old = {c.name: c.uuid for c in CURRENT.all_containers}
    for c in change.new.all_containers:  # a container keeps its uuid by name; new ones get one
        assert c.uuid == old.get(c.name, c.uuid) and c.uuid
    if new == base():
        assert change.new == CURRENT


def test_rolling_back_to_an_old_spec_is_a_change_too() -> None:
    v2 = plan_change(CURRENT, base(initContainers=[{"image": "busybox", "command": ["true"]}])).new
    back = plan_change(v2, CURRENT)
    assert back.new_sandbox == "the init containers changed" and back.new.sandbox_epoch == 2
    assert needs_new_sandbox(v2, CURRENT) is not None


def test_what_cannot_change_in_place() -> None:
    renamed = CURRENT.model_copy(update={"name": "other"})
    retyped = CURRENT.model_copy(update={"volumes": [CURRENT.volumes[0].model_copy(
        update={"type": "cinder", "size": 1, "auto_remove": False})]})
    assert immutable_problems(CURRENT, renamed)[0].startswith("metadata.name: a capsule keeps its name (web)")
    assert immutable_problems(CURRENT, retyped) == [
        "spec.volumes[0]: volume 'd' is emptyDir; it keeps its data and type: give a new "
        "volume another name"]
    assert immutable_problems(CURRENT, base()) == []


def test_the_claim_during_an_update_is_the_larger_of_both() -> None:
    bigger = base(containers=[{"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
                               "volumeMounts": [{"name": "d", "mountPath": "/d"}],
                               "resources": {"requests": {"cpu": 2, "memory": 16}}}])
    claim = claim_during(CURRENT, bigger)
    assert (claim.cpu, claim.memory) == (2.0, 512)


@pytest.mark.parametrize(("changes", "problem"), [
    ([{"name": "a", "image": "x:1"}, {"name": "a", "env": {}}], "containers[1].name: container 'a' is given twice"),
    ([{"name": "a"}], "containers[0]: give image and/or env"),
    ([{"name": "a", "env": {"K=V": "1"}}], "containers[0].env.K=V: must be a variable name"),
    ([{"name": "a", "env": ["K"]}], "containers[0].env: must be a map"),
    ([{"name": "a", "image": "x" * 300}], "containers[0].image"),
    ([{"name": "a", "image": "a\x00b"}], "must not contain NUL"),
    ("a=b", "containers: must be a list"),
    ([{"name": n, "image": "x:1"} for n in range(30)], "containers: must be a list of 1 to 24"),
])
def test_bad_quick_changes_name_the_field(changes: Any, problem: str) -> None:
    with pytest.raises(InvalidInput) as got:
        apply_quick_changes(CURRENT, changes)
    assert problem in got.value.message


def test_quick_changes_touch_only_what_they_name() -> None:
    new = apply_quick_changes(CURRENT, [{"name": "b", "image": "busybox:2", "env": {"K": "v"}}])
    assert new.containers[0] == CURRENT.containers[0]
    assert (new.containers[1].image, new.containers[1].env) == ("busybox:2", {"K": "v"})


T0 = datetime(2026, 1, 1)


def rollout(**kw: Any) -> Any:
    r = start("update", 1, 2, T0, 60, 5, ["a"])
    return r.model_copy(update=kw)


def running(ready: bool = True, restarts: int = 0, status: str = "Running") -> list[Member]:
    return [Member("a", status, ready, restarts), Member("b", "Running", False, 3)]


@pytest.mark.parametrize(("r", "members", "at", "outcome", "reason"), [
    (rollout(), running(), 1, "progressing", "waiting for the agent"),
    (rollout(reported=True, observed="Running"), running(), 1, "progressing",
     "the agent is replacing containers"),
    (rollout(reported=True, converged=True, observed="Creating", observed_reason="pulling"),
     running(), 1, "progressing", "the capsule is Creating (pulling)"),
    (rollout(reported=True, converged=True, observed="Running"), running(ready=False), 1,
     "progressing", "not ready: a"),
    (rollout(reported=True, converged=True, observed="Running"), running(restarts=1), 1,
     "progressing", "a restarted 1 time"),
    (rollout(reported=True, converged=True, observed="Running"), running(status="Restarting"), 1,
     "progressing", "a is Restarting"),
    (rollout(reported=True, converged=True, observed="Running"), running(), 1, "progressing",
     "ready; waiting minReadySeconds (5s)"),
    (rollout(reported=True, converged=True, observed="Running", ready_since=T0), running(), 6,
     "done", "ready"),
    (rollout(reported=True, observed="Error", observed_reason="init container p failed"),
     running(), 1, "failed", "init container p failed"),
    (rollout(observed="Error"), running(), 1, "progressing", "waiting for the agent"),
    (rollout(reported=True, converged=True, observed="Running"), running(ready=False), 61,
     "failed", "not ready within progressDeadlineSeconds (60s): not ready: a"),
], ids=["unreported", "replacing", "creating", "unready", "crashed", "restarting",
        "min-ready", "done", "error", "stale-error", "deadline"])
def test_the_health_gate(r: Any, members: list[Member], at: float, outcome: str, reason: str) -> None:
    verdict = judge(r, members, T0 + timedelta(seconds=at))
    assert (verdict.outcome, verdict.reason) == (outcome, reason)


def test_ready_since_starts_over_when_a_gate_drops() -> None:
    r = rollout(reported=True, converged=True, observed="Running")
    first = judge(r, running(), T0 + timedelta(seconds=1)).rollout
    assert first.ready_since == T0 + timedelta(seconds=1)
    dropped = judge(first, running(ready=False), T0 + timedelta(seconds=3)).rollout
    assert dropped.ready_since is None
    again = judge(dropped, running(), T0 + timedelta(seconds=4))
    assert again.outcome == "progressing" and again.rollout.ready_since == T0 + timedelta(seconds=4)
