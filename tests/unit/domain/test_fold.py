"""fold_report: what a capsule report does to the statuses, and the events it records
(pure: plain state in, plain result out; no database)."""

from __future__ import annotations

from functools import partial
from typing import Any

from capsuled.domain.channel import CapsuleReport, ContainerReport
from capsuled.domain.fold import CapsuleState, ChildState, EventRecord, fold_report
from capsuled.domain.status import Status


def child(role: str, name: str, state: str, exit_code: int | None = None,
          **kw: Any) -> ContainerReport:
    return ContainerReport.model_validate({"uuid": f"uuid-{name}", "name": name, "role": role,
                                           "state": state, "exit_code": exit_code, **kw})


app, init = partial(child, "app"), partial(child, "init")


def report(*containers: ContainerReport, sandbox: str = "running", **kw: Any) -> CapsuleReport:
    return CapsuleReport.model_validate({"uuid": "cap-1", "generation": 1, "sandbox_id": "sb",
                                         "sandbox_state": sandbox,
                                         "containers": list(containers), **kw})


def state(status: str = "Creating", reason: str | None = None, deleting: bool = False,
          **children: tuple[str, int | None, int]) -> CapsuleState:
    return CapsuleState(status=status, status_reason=reason, deleting=deleting,
                        containers={f"uuid-{n}": ChildState(*c) for n, c in children.items()})


def test_creating_to_running_updates_every_child_and_records_the_transition() -> None:
    fold = fold_report(state(web=("Creating", None, 0), probe=("Creating", None, 0)),
                       report(app("web", "running", runtime_id="r1"), app("probe", "running")))
    assert [(u.report.name, u.status, u.reason, u.changed) for u in fold.containers] == [
        ("web", Status.RUNNING, None, True), ("probe", Status.RUNNING, None, True)]
    assert fold.containers[0].report.runtime_id == "r1"
    assert (fold.status, fold.reason, fold.changed) == (Status.RUNNING, None, True)
    assert fold.events == [EventRecord("Normal", "Running", "Creating → Running")]
    assert not fold.sandbox_recreated


def test_a_repeated_report_changes_nothing_and_records_nothing() -> None:
    fold = fold_report(state("Running", web=("Running", None, 0)), report(app("web", "running")))
    assert [u.changed for u in fold.containers] == [False]
    assert (fold.status, fold.changed, fold.events) == (Status.RUNNING, False, [])


def test_a_new_reason_with_the_same_status_changes_but_records_no_event() -> None:
    fold = fold_report(state("Creating", "pulling busybox", web=("Creating", None, 0)),
                       report(app("web", "missing"), progress="creating containers"))
    assert (fold.status, fold.reason, fold.changed) == (
        Status.CREATING, "creating containers", True)
    assert fold.events == []


def test_unknown_containers_are_left_out() -> None:
    fold = fold_report(state(web=("Creating", None, 0)),
                       report(app("web", "running"), app("stranger", "running")))
    assert [u.report.name for u in fold.containers] == ["web"]


def test_a_failed_init_container_records_init_failed_then_the_error() -> None:
    fold = fold_report(state(setup=("Running", None, 0), app=("Creating", None, 0)),
                       report(init("setup", "exited", 4), app("app", "missing")))
    assert [(u.report.name, u.status, u.reason) for u in fold.containers] == [
        ("setup", Status.STOPPED, "exited with code 4"), ("app", Status.CREATING, None)]
    assert (fold.status, fold.reason) == (
        Status.ERROR, "init container setup failed: exited with code 4")
    assert fold.events == [
        EventRecord("Warning", "InitFailed", "init container setup exited with code 4", "setup"),
        EventRecord("Warning", "Error",
                    "Creating → Error: init container setup failed: exited with code 4")]


def test_re_reports_of_a_blocked_capsule_do_not_repeat_init_failed() -> None:
    blocked = state("Error", "init container setup failed: exited with code 4",
                    setup=("Stopped", 4, 0), app=("Creating", None, 0))
    fold = fold_report(blocked, report(init("setup", "exited", 4), app("app", "missing")))
    assert fold.events == [] and not fold.changed


def test_an_init_container_exiting_zero_records_nothing_of_its_own() -> None:
    fold = fold_report(state(setup=("Running", None, 0), app=("Creating", None, 0)),
                       report(init("setup", "exited", 0), app("app", "missing")))
    assert fold.events == [] and fold.status is Status.CREATING


def test_the_agents_events_come_before_the_status_change() -> None:
    fold = fold_report(state("Running", web=("Running", None, 0)),
                       report(app("web", "running"), error="image busybox:nope not found",
                              events=[("Warning", "Failed", "pull failed", "web")]))
    assert fold.events == [
        EventRecord("Warning", "Failed", "pull failed", "web"),
        EventRecord("Warning", "Error", "Running → Error: image busybox:nope not found")]


def test_restarts_are_a_change_and_a_warning() -> None:
    fold = fold_report(state("Running", web=("Running", None, 0)),
                       report(app("web", "restarting", 1, restart_count=2)))
    assert [(u.status, u.changed) for u in fold.containers] == [(Status.RESTARTING, True)]
    assert fold.events == [EventRecord(
        "Warning", "Restarting", "Running → Restarting: restarting: web (exit code 1, 2 restarts)")]


def test_a_restart_count_change_alone_is_a_change() -> None:
    fold = fold_report(state("Running", web=("Running", None, 1)),
                       report(app("web", "running", restart_count=2)))
    assert [u.changed for u in fold.containers] == [True] and fold.events == []


def test_all_exited_zero_is_stopped_as_a_normal_event() -> None:
    fold = fold_report(state("Running", web=("Running", None, 0)), report(app("web", "exited", 0)))
    assert (fold.status, fold.reason) == (Status.STOPPED, "all containers exited with code 0")
    assert fold.events == [EventRecord(
        "Normal", "Stopped", "Running → Stopped: all containers exited with code 0")]


def test_a_recreated_sandbox_counts_a_restart() -> None:
    fold = fold_report(state("Running", web=("Running", None, 0)),
                       report(app("web", "missing"), sandbox="created", sandbox_recreated=True))
    assert fold.sandbox_recreated
    assert fold.status is Status.CREATING
    assert fold.events == [EventRecord("Normal", "Creating",
                                       "Running → Creating: starting the sandbox")]


def test_deleting_wins_and_records_no_change_once_deleting() -> None:
    fold = fold_report(state("Deleting", deleting=True, web=("Running", None, 0)),
                       report(app("web", "exited", 1), error="boom"))
    assert (fold.status, fold.reason, fold.changed) == (Status.DELETING, None, False)
    assert fold.events == []


def test_a_container_reported_twice_is_compared_with_its_first_update() -> None:
    fold = fold_report(state(setup=("Running", None, 0)),
                       report(init("setup", "exited", 4), init("setup", "exited", 4)))
    assert [u.changed for u in fold.containers] == [True, False]
    assert [e.reason for e in fold.events].count("InitFailed") == 1


def test_the_aggregation_key_is_type_reason_message_and_container() -> None:
    assert EventRecord("Warning", "Failed", "boom").key == ("Warning", "Failed", "boom", None)
    assert EventRecord("Warning", "Failed", "boom", "web").key != EventRecord(
        "Warning", "Failed", "boom").key
