"""The killer: at random moments, `kill -9` one of the rig's processes (the agent, an API
replica, the rig's own dockerd, the rig's own PostgreSQL), and start it again after a short
pause. Each kind is killed `per_kind` times, in a shuffled order, spread over the churn."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .rig import Rig

KINDS = ("agent", "api0", "api1", "dockerd", "postgres")


@dataclass
class Kill:
    kind: str
    at: float  # monotonic
    down: float  # seconds until it was started again and answered
    error: str = ""


@dataclass
class Killer:
    rig: Rig
    per_kind: int
    spread: float  # seconds over which the kills are spread
    seed: int = 0
    log: Callable[[str], None] = print
    kills: list[Kill] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Until every planned kill has been made (or `timeout`: then no new one)."""
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def wait_all_up(self, timeout: float = 300) -> None:
        for proc in self.rig.apis:
            proc.wait_ready(timeout)

    def _run(self) -> None:
        rnd = random.Random(self.seed)
        plan = [k for k in KINDS for _ in range(self.per_kind)]
        rnd.shuffle(plan)
        gap = self.spread / max(1, len(plan))
        start = time.monotonic()
        for i, kind in enumerate(plan):
            # Somewhere in its own slot of the spread: kills never bunch up at the start
            # because the restarts before them were slow.
            at = start + (i + rnd.uniform(0.2, 1.0)) * gap
            if self._stop.wait(max(0.0, at - time.monotonic())):
                return
            self._kill_and_restart(kind, rnd.uniform(0.5, 3.0))

    def _kill_and_restart(self, kind: str, pause: float) -> None:
        t = time.monotonic()
        self.log(f"kill -9 {kind}")
        error = ""
        try:
            self._kill(kind)
            time.sleep(pause)
            self._restart(kind)
        except Exception as exc:  # noqa: BLE001 - recorded: a restart that fails fails the run
            error = f"{type(exc).__name__}: {exc}"
            self.log(f"restarting {kind} failed: {error}")
        self.kills.append(Kill(kind, t, time.monotonic() - t, error))

    def _kill(self, kind: str) -> None:
        if kind == "agent":
            assert self.rig.agent is not None
            self.rig.agent.kill9()
        elif kind.startswith("api"):
            self.rig.apis[int(kind[3:])].kill9()
        elif kind == "dockerd":
            self.rig.engine.kill9()
        else:
            self.rig.pg.kill9()

    def _restart(self, kind: str) -> None:
        if kind == "agent":
            assert self.rig.agent is not None
            self.rig.agent.start()
        elif kind.startswith("api"):
            # Not waited for: a replica takes up to a minute to start on a loaded machine,
            # and the other kills go on meanwhile (stop() waits for every replica).
            self.rig.apis[int(kind[3:])].start()
        elif kind == "dockerd":
            self.rig.engine.start()
        else:
            self.rig.pg.start()
