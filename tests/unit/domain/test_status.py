"""derive_capsule_status / container_status over tables of runtime reports."""

from __future__ import annotations

from typing import Any

import pytest

from capsuled.domain.channel import CapsuleReport, ContainerReport
from capsuled.domain.status import Status, container_status, derive_capsule_status


def app(name: str, state: str, exit_code: int | None = None, **kw: Any) -> ContainerReport:
    return ContainerReport(uuid=f"uuid-{name}", name=name, role="app", state=state,  # type: ignore[arg-type]
                           exit_code=exit_code, **kw)


def init(name: str, state: str, exit_code: int | None = None, **kw: Any) -> ContainerReport:
    return ContainerReport(uuid=f"uuid-{name}", name=name, role="init", state=state,  # type: ignore[arg-type]
                           exit_code=exit_code, **kw)


def report(*containers: ContainerReport, sandbox: str = "running", error: str | None = None,
           progress: str | None = None) -> CapsuleReport:
    return CapsuleReport(uuid="cap-1", generation=1, sandbox_id="sb", sandbox_state=sandbox,  # type: ignore[arg-type]
                         error=error, progress=progress, containers=list(containers))


RUNNING_PAIR = (app("web", "running"), app("probe", "running"))

CASES: list[tuple[str, CapsuleReport, bool, Status, str | None]] = [
    ("deleting-wins-over-everything", report(app("web", "exited", 1), error="boom"), True,
     Status.DELETING, None),
    ("deleting-when-running", report(*RUNNING_PAIR), True, Status.DELETING, None),
    ("sync-error", report(*RUNNING_PAIR, error="image busybox:nope not found"), False,
     Status.ERROR, "image busybox:nope not found"),
    ("init-exited-non-zero",
     report(init("prepare", "exited", 1), app("web", "missing"), app("probe", "missing")), False,
     Status.ERROR, "init container prepare failed: exited with code 1"),
    ("second-init-exited-non-zero",
     report(init("first", "exited", 0), init("second", "exited", 3), app("web", "missing")),
     False, Status.ERROR, "init container second failed: exited with code 3"),
    ("init-runtime-error",
     report(init("prepare", "missing", error="image not found"), app("web", "missing")), False,
     Status.ERROR, "init container prepare failed: image not found"),
    ("app-runtime-error", report(app("web", "running"), app("probe", "missing", error="bad mount")),
     False, Status.ERROR, "container probe: bad mount"),
    ("sandbox-missing", report(app("web", "missing"), sandbox="missing"), False,
     Status.CREATING, "starting the sandbox"),
    ("sandbox-created-with-progress",
     report(app("web", "missing"), sandbox="created", progress="pulling busybox"), False,
     Status.CREATING, "pulling busybox"),
    ("sandbox-exited", report(*RUNNING_PAIR, sandbox="exited"), False,
     Status.CREATING, "starting the sandbox"),
    ("some-container-missing",
     report(app("web", "running"), app("probe", "missing"), progress="creating containers"),
     False, Status.CREATING, "creating containers"),
    ("some-container-created", report(app("web", "running"), app("probe", "created")), False,
     Status.CREATING, None),
    ("init-still-running", report(init("prepare", "running"), app("web", "missing")), False,
     Status.CREATING, None),
    ("init-missing-apps-running", report(init("prepare", "missing"), *RUNNING_PAIR), False,
     Status.CREATING, None),
    ("all-apps-running", report(*RUNNING_PAIR), False, Status.RUNNING, None),
    ("all-apps-running-after-init", report(init("prepare", "exited", 0), *RUNNING_PAIR), False,
     Status.RUNNING, None),
    ("one-app-restarting",
     report(app("web", "running"), app("probe", "restarting", 1, restart_count=3)), False,
     Status.RESTARTING, "restarting: probe (exit code 1, 3 restarts)"),
    ("one-exited-zero-one-running", report(app("web", "running"), app("probe", "exited", 0)),
     False, Status.RUNNING, "1 of 2 containers exited: probe (exit code 0)"),
    ("one-exited-non-zero-one-running", report(app("web", "exited", 137), app("probe", "running")),
     False, Status.RUNNING, "1 of 2 containers exited: web (exit code 137)"),
    ("all-exited-zero", report(app("web", "exited", 0), app("probe", "exited", 0)), False,
     Status.STOPPED, "all containers exited with code 0"),
    ("all-exited-one-non-zero", report(app("web", "exited", 0), app("probe", "exited", 2)), False,
     Status.ERROR, "containers exited: web (exit code 0), probe (exit code 2)"),
    ("all-dead", report(app("web", "dead", 1)), False,
     Status.ERROR, "containers exited: web (exit code 1)"),
]


@pytest.mark.parametrize(("rep", "deleting", "status", "reason"),
                         [(r, d, s, why) for _, r, d, s, why in CASES],
                         ids=[c[0] for c in CASES])
def test_derive_capsule_status_from_report(rep: CapsuleReport, deleting: bool, status: Status,
                                           reason: str | None) -> None:
    assert derive_capsule_status(rep, deleting) == (status, reason)


def test_status_values_are_zun_names() -> None:
    assert [s.value for s in (Status.CREATING, Status.RUNNING, Status.RESTARTING, Status.STOPPED,
                              Status.ERROR, Status.DELETING)] == [
        "Creating", "Running", "Restarting", "Stopped", "Error", "Deleting"]


CONTAINER_CASES: list[tuple[str, ContainerReport, Status, str | None]] = [
    ("exited-zero", app("web", "exited", 0), Status.STOPPED, "exited with code 0"),
    ("exited-non-zero", app("web", "exited", 2), Status.STOPPED, "exited with code 2"),
    ("exited-oom", app("web", "exited", 137, oom_killed=True), Status.STOPPED,
     "exited with code 137 (out of memory)"),
    ("exited-no-code", app("web", "exited"), Status.STOPPED, None),
    ("restarting", app("web", "restarting", 1, restart_count=4), Status.RESTARTING,
     "restarting after exit code 1 (4 restarts)"),
    ("error-wins", app("web", "exited", 1, error="no such image"), Status.ERROR, "no such image"),
    ("running", app("web", "running"), Status.RUNNING, None),
    ("created", app("web", "created"), Status.CREATED, None),
    ("missing", app("web", "missing"), Status.CREATING, None),
    ("paused", app("web", "paused"), Status.PAUSED, None),
    ("dead", app("web", "dead", 1), Status.DEAD, None),
    ("removing", app("web", "removing"), Status.DELETING, None),
]


@pytest.mark.parametrize(("c", "status", "reason"), [(c, s, r) for _, c, s, r in CONTAINER_CASES],
                         ids=[c[0] for c in CONTAINER_CASES])
def test_container_status_from_report(c: ContainerReport, status: Status,
                                      reason: str | None) -> None:
    assert container_status(c) == (status, reason)


@pytest.mark.parametrize(("rep", "status", "reason"), [
    (report(app("a", "paused"), app("b", "paused")), Status.PAUSED, "all containers paused"),
    (report(app("a", "paused"), app("b", "running")), Status.RUNNING, "paused: a"),
    (report(app("a", "paused"), app("b", "exited", 1)), Status.RUNNING,
     "1 of 2 containers exited: b (exit code 1); paused: a"),
])
def test_paused_containers_are_named_not_counted_as_exited(rep: CapsuleReport, status: Status,
                                                           reason: str) -> None:
    assert derive_capsule_status(rep, False) == (status, reason)
