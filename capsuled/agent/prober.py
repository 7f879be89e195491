"""The prober: runs the startup, liveness and readiness probes of capsule containers.

Kubernetes' semantics: until its startup probe passes, a container's other probes do not
run; `failureThreshold` consecutive liveness (or startup) failures kill the container,
and Docker's restart policy restarts it (counted in its restart count, with Docker's
back-off); readiness failures only mark it not ready. `ContainerProbes` is that state
machine (pure, driven by `record`); `Prober` runs due probes on a bounded pool and tells
the agent when a container's condition changed, so its next report carries it.

The executor keeps the prober's target list current (`track`, after each sync); a
container that restarted (a new start time) starts over, as a new container does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol

from capsuled.agent import netprobe
from capsuled.domain.channel import ProbeResult
from capsuled.domain.spec import ContainerSpec, Probe
from capsuled.errors import CapsuledError

LOG = logging.getLogger(__name__)
MAX_MESSAGE = 300
MAX_PENDING_EVENTS = 20
EXEC_OUTPUT = 1024
PURPOSES = ("startup", "liveness", "readiness")


class ProbeDriver(Protocol):
    """What the prober needs of the runtime (DockerRuntime has it)."""

    def exec_probe(self, container_id: str, command: list[str], timeout: int) -> tuple[int | None, bytes]: ...

    def kill_main_process(self, container_id: str) -> None:
        """As a crash: the container's restart policy applies and counts it."""
        ...

    def container_pid(self, container_id: str) -> int: ...


@dataclass
class _Count:
    successes: int = 0
    failures: int = 0
    last: Literal["success", "failure", "unknown"] = "unknown"
    message: str | None = None
    next_at: float = 0.0
    running: bool = False


@dataclass
class ContainerProbes:
    """One running container's probe state (one start of it)."""

    spec: ContainerSpec
    started_mono: float  # when the agent first saw this start (monotonic clock)
    counts: dict[str, _Count] = field(default_factory=dict)
    started: bool = False  # its startup probe passed (or it has none)
    ready_flag: bool = False  # its readiness probe passed (or it has none)

    def __post_init__(self) -> None:
        probes = self.spec.probes
        self.started = "startup" not in probes
        self.ready_flag = "readiness" not in probes
        for purpose, probe in probes.items():
            self.counts[purpose] = _Count(next_at=self.started_mono + probe.initial_delay)

    @property
    def ready(self) -> bool:
        return self.started and self.ready_flag

    def due(self, now: float) -> list[str]:
        """The probes to run now: only the startup probe until it has passed."""
        active = ["startup"] if not self.started else ["liveness", "readiness"]
        return [p for p in active if p in self.counts and not self.counts[p].running
                and self.counts[p].next_at <= now]

    def record(self, purpose: str, ok: bool, message: str | None, now: float) -> bool:
        """Take one probe result; True when the container must be killed (liveness or
        startup failed `failureThreshold` times in a row)."""
        probe: Probe = self.spec.probes[purpose]
        c = self.counts[purpose]
        c.running, c.next_at = False, now + probe.period
        if ok:
            c.successes, c.failures, c.last = c.successes + 1, 0, "success"
            if purpose == "startup":
                self.started = True
            elif purpose == "readiness" and c.successes >= probe.success_threshold:
                self.ready_flag = True
            return False
        c.successes, c.failures, c.last = 0, c.failures + 1, "failure"
        c.message = (message or "failed")[:MAX_MESSAGE]
        if c.failures < probe.failure_threshold:
            return False
        if purpose == "readiness":
            self.ready_flag = False
            return False
        return True

    def results(self) -> dict[str, ProbeResult]:
        return {p: ProbeResult(result=c.last, consecutive_failures=c.failures,
                               last_failure=c.message) for p, c in self.counts.items()}

    def condition(self) -> tuple[bool, tuple[tuple[str, str], ...]]:
        """What a report must carry again when it changes."""
        return self.ready, tuple((p, c.last) for p, c in sorted(self.counts.items()))


@dataclass(frozen=True)
class Target:
    capsule: str
    container_id: str
    sandbox_id: str
    started_at: str
    spec: ContainerSpec
    restart_capsule: bool = False  # spec.failurePolicy RestartCapsule


class Prober:
    def __init__(self, driver: ProbeDriver, on_change: Callable[[str], None],
                 concurrency: int = 8, tick: float = 0.2) -> None:
        self._driver = driver
        self._on_change = on_change  # capsule uuid: sync and report it
        # Per capsule: (type, reason, message, container) for its next report; bounded.
        self._events: dict[str, list[tuple[str, str, str, str | None]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="probe")
        self._tick = tick
        self._lock = threading.Lock()
        self._targets: dict[str, Target] = {}  # container id → what to probe
        self._states: dict[str, ContainerProbes] = {}  # container id → its state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the executor tells and asks ------------------------------------------------
    def track(self, capsule: str, targets: list[Target]) -> None:
        """The capsule's running containers with probes now (replaces the previous list)."""
        now = time.monotonic()
        with self._lock:
            for cid in [c for c, t in self._targets.items() if t.capsule == capsule]:
                if not any(t.container_id == cid for t in targets):
                    self._targets.pop(cid)
                    self._states.pop(cid, None)
            if not targets:
                self._events.pop(capsule, None)
            for t in targets:
                old = self._targets.get(t.container_id)
                if old is None or old.started_at != t.started_at or old.spec != t.spec:
                    self._states[t.container_id] = ContainerProbes(t.spec, now)
                self._targets[t.container_id] = t

    def drain_events(self, capsule: str) -> list[tuple[str, str, str, str | None]]:
        with self._lock:
            return self._events.pop(capsule, [])

    def state(self, container_id: str | None) -> tuple[bool | None, dict[str, ProbeResult]]:
        """(ready, probe results) of a container; (None, {}) when it is not probed."""
        with self._lock:
            s = self._states.get(container_id or "")
            return (None, {}) if s is None else (s.ready, s.results())

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="prober", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.run_due(time.monotonic())
            except Exception:  # noqa: BLE001 - a bug here must not stop probing
                LOG.exception("prober tick failed")

    def run_due(self, now: float) -> None:
        with self._lock:
            work = []
            for cid, s in self._states.items():
                for purpose in s.due(now):
                    s.counts[purpose].running = True
                    work.append((self._targets[cid], purpose, s.spec.probes[purpose]))
        for target, purpose, probe in work:
            self._pool.submit(self._run_one, target, purpose, probe)

    def _run_one(self, t: Target, purpose: str, probe: Probe) -> None:
        ok, message = self._check(t, probe)
        with self._lock:
            s = self._states.get(t.container_id)
            if s is None or self._targets.get(t.container_id) != t:
                return  # forgotten or restarted meanwhile: this result is stale
            before = s.condition()
            kill = s.record(purpose, ok, message, time.monotonic())
            changed = s.condition() != before
        if kill:
            name = t.spec.name
            with self._lock:
                pending = self._events.setdefault(t.capsule, [])
                if len(pending) < MAX_PENDING_EVENTS:
                    pending.append(("Warning", "Unhealthy" if purpose == "liveness" else "StartupFailed",
                                    f"container {name} failed its {purpose} probe "
                                    f"{probe.failure_threshold} times ({message}); "
                                    + ("restarting the whole capsule" if t.restart_capsule
                                       else "killed it"), name))
            try:
                # RestartCapsule: the sandbox's end takes its members with it (it is PID 1
                # of their namespace) and the executor remakes the capsule, sandbox and all.
                self._driver.kill_main_process(t.sandbox_id if t.restart_capsule else t.container_id)
            except CapsuledError as exc:
                LOG.warning("killing %s after its %s probe failed: %s", name, purpose, exc.message)
            with self._lock:
                self._states.pop(t.container_id, None)
            changed = True
        if changed:
            self._on_change(t.capsule)

    def _check(self, t: Target, probe: Probe) -> tuple[bool, str | None]:
        try:
            if probe.kind == "exec":
                code, out = self._driver.exec_probe(t.container_id, probe.command, probe.timeout)
                if code == 0:
                    return True, None
                text = out.decode("utf-8", "replace").strip()[:200]
                why = "timed out" if code is None else f"exited with {code}"
                return False, f"command {why}" + (f": {text}" if text else "")
            # Asked afresh each time, never cached: a pid kept past its sandbox's life could
            # by then be another capsule's process (netprobe asks twice around the open).
            def pid_of() -> int:
                return self._driver.container_pid(t.sandbox_id)

            if probe.kind == "tcp":
                netprobe.check_tcp(pid_of, probe.port, probe.timeout)
            else:
                netprobe.check_http(pid_of, probe.port, probe.path, probe.scheme, probe.headers,
                                    probe.timeout)
            return True, None
        except netprobe.ProbeFailed as exc:
            return False, str(exc)
        except CapsuledError as exc:
            return False, exc.message
