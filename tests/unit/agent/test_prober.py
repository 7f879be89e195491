"""The prober's state machine (ContainerProbes) and its runner (Prober) on a stub driver:
Kubernetes' semantics, no sleeps (time is passed in)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from capsuled.agent.prober import ContainerProbes, Prober, Target
from capsuled.domain.spec import ContainerSpec, Probe


def spec(**probes: Probe) -> ContainerSpec:
    return ContainerSpec(name="app", image="busybox", uuid="u-app", **probes)


EXEC = Probe(kind="exec", command=["true"], period=1, failure_threshold=2)


def test_startup_gates_liveness_and_readiness() -> None:
    s = ContainerProbes(spec(startup=EXEC, liveness=EXEC, readiness=EXEC), started_mono=0.0)
    assert s.due(0.0) == ["startup"] and not s.ready
    assert s.record("startup", True, None, 0.0) is False
    assert s.started and s.due(1.0) == ["liveness", "readiness"]


def test_initial_delay_and_period_decide_when_a_probe_is_due() -> None:
    s = ContainerProbes(spec(readiness=Probe(kind="tcp", port=80, initial_delay=5, period=3)), 10.0)
    assert s.due(14.9) == [] and s.due(15.0) == ["readiness"]
    s.record("readiness", True, None, 15.0)
    assert s.due(17.9) == [] and s.due(18.0) == ["readiness"]


def test_liveness_kills_after_failure_threshold_consecutive_failures() -> None:
    s = ContainerProbes(spec(liveness=EXEC), 0.0)
    assert s.record("liveness", False, "exited with 1", 0.0) is False
    assert s.record("liveness", True, None, 1.0) is False  # a success resets the count
    assert s.record("liveness", False, "exited with 1", 2.0) is False
    assert s.record("liveness", False, "exited with 1", 3.0) is True
    assert s.results()["liveness"].consecutive_failures == 2
    assert s.results()["liveness"].last_failure == "exited with 1"


def test_startup_failures_kill_too() -> None:
    s = ContainerProbes(spec(startup=Probe(kind="tcp", port=1, failure_threshold=1)), 0.0)
    assert s.record("startup", False, "refused", 0.0) is True and not s.ready


def test_readiness_flips_without_a_kill_and_needs_success_threshold_to_come_back() -> None:
    s = ContainerProbes(spec(readiness=Probe(kind="tcp", port=80, success_threshold=2,
                                             failure_threshold=1)), 0.0)
    assert not s.ready  # not ready before its first success
    s.record("readiness", True, None, 0.0)
    assert not s.ready
    s.record("readiness", True, None, 1.0)
    assert s.ready
    assert s.record("readiness", False, "refused", 2.0) is False
    assert not s.ready
    s.record("readiness", True, None, 3.0)
    assert not s.ready
    s.record("readiness", True, None, 4.0)
    assert s.ready


def test_a_container_without_readiness_or_startup_is_ready() -> None:
    assert ContainerProbes(spec(liveness=EXEC), 0.0).ready


class StubDriver:
    def __init__(self) -> None:
        self.exit_code: int | None = 0
        self.killed: list[str] = []

    def exec_probe(self, container_id: str, command: list[str], timeout: int) -> tuple[int | None, bytes]:
        return self.exit_code, b"no such file"

    def kill_main_process(self, container_id: str) -> None:
        self.killed.append(container_id)

    def container_pid(self, container_id: str) -> int:
        raise AssertionError("exec probes need no pid")


class InlinePool(ThreadPoolExecutor):
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        fn(*args, **kwargs)


def _prober(driver: StubDriver) -> tuple[Prober, list[str]]:
    changed: list[str] = []
    p = Prober(driver, on_change=changed.append)
    p._pool = InlinePool()  # run probes inline: no threads, no sleeps
    return p, changed


def test_prober_kills_on_liveness_failure_records_an_event_and_reports() -> None:
    driver = StubDriver()
    p, changed = _prober(driver)
    p.track("cap", [Target("cap", "cid", "sbx", "t0", spec(liveness=EXEC))])
    p.run_due(1e12)
    assert p.state("cid")[1]["liveness"].result == "success" and changed == ["cap"]
    driver.exit_code = 1
    p.run_due(2e12)
    assert driver.killed == []
    assert p.state("cid")[1]["liveness"].last_failure == "command exited with 1: no such file"
    p.run_due(3e12)
    assert driver.killed == ["cid"]
    (event,) = p.drain_events("cap")
    assert event[1] == "Unhealthy" and event[3] == "app" and "liveness probe 2 times" in event[2]
    assert p.state("cid") == (None, {})  # starts over when the container comes back
    p.track("cap", [Target("cap", "cid", "sbx", "t1", spec(liveness=EXEC))])
    assert p.state("cid")[0] is True


def test_prober_forgets_containers_no_longer_tracked() -> None:
    p, _ = _prober(StubDriver())
    p.track("cap", [Target("cap", "cid", "sbx", "t0", spec(readiness=EXEC))])
    assert p.state("cid")[0] is False
    p.track("cap", [])
    assert p.state("cid") == (None, {})


def test_restart_capsule_kills_the_sandbox_instead() -> None:
    driver = StubDriver()
    driver.exit_code = 1
    p, _ = _prober(driver)
    one = Probe(kind="exec", command=["false"], period=1, failure_threshold=1)
    p.track("cap", [Target("cap", "cid", "sbx", "t0", spec(liveness=one), restart_capsule=True)])
    p.run_due(1e12)
    assert driver.killed == ["sbx"]
    assert "restarting the whole capsule" in p.drain_events("cap")[0][2]
