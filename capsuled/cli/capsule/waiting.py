"""Progress while the CLI waits for capsules or containers to reach a status."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.status import Status
from rich.text import Text

from capsuled.cli.capsule.render import status_text


class WaitDisplay:
    """Progress while polling: a live spinner line on a terminal, a line per change otherwise
    (so CI logs still show what happened without control codes)."""

    def __init__(self, console: Console, goal: str, kind: str = "capsule") -> None:
        self.console = console
        self.goal = goal
        self.kind = kind  # what is waited for: "capsule" or "container"
        self._last: dict[int, str] = {}  # by position: two capsules may share a name
        self._status: Status | None = None

    def __enter__(self) -> WaitDisplay:
        if self.console.is_terminal:
            self._status = self.console.status(f"waiting for {self.kind}s to be {self.goal}…")
            self._status.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._status is not None:
            self._status.stop()

    def update(self, states: Sequence[tuple[str, str]]) -> None:
        """`states` lists each capsule's (or container's) display name with its current status."""
        if self._status is not None:
            line = Text(f"waiting for {self.goal}: ")
            for i, (name, status) in enumerate(states):
                line.append(", " if i else "").append(f"{name} ").append(status_text(status))
            self._status.update(line)
            return
        for key, (name, status) in enumerate(states):
            if self._last.get(key) != status:
                self.console.print(Text(f"{self.kind}/{name}: {status}"))
        self._last = {key: status for key, (_, status) in enumerate(states)}
