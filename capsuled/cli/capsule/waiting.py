"""Progress while the CLI waits for capsules or containers to reach a status.

On a terminal: a live display, one line per capsule (or container) and, under each
capsule, one line per container of it (creating, starting, running, ready, restarts,
why it failed); it stays on screen once the wait ends. Off a terminal (CI logs, pipes):
one plain line per change, `capsule/web: Creating`, `capsule/web/db: running, ready`, so
the log tells what happened in order and holds no control codes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import NamedTuple

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from capsuled.cli.capsule.render import status_text

REFRESHES_PER_SECOND = 8


class Progress(NamedTuple):
    """One thing waited for: its name, its status, and its parts (a capsule's containers,
    as (name, state) pairs in the capsule's order)."""

    name: str
    status: str
    parts: tuple[tuple[str, str], ...] = ()


class WaitDisplay:
    """Shows `Progress` rows as they change (see the module docstring)."""

    def __init__(self, console: Console, goal: str, kind: str = "capsule") -> None:
        self.console = console
        self.goal = goal
        self.kind = kind  # what is waited for: "capsule" or "container"
        self._last: dict[tuple[int, str], str] = {}  # by position: two may share a name
        self._rows: list[Progress] = []
        self._started = time.monotonic()
        self._spinner = Spinner("dots")
        self._live: Live | None = None
        self._final = False  # the wait is over: the last frame has no spinner

    def __enter__(self) -> WaitDisplay:
        if self.console.is_terminal:
            self._live = Live(get_renderable=self._render, console=self.console,
                              refresh_per_second=REFRESHES_PER_SECOND, transient=False)
            self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._final = True
            self._live.stop()

    def update(self, rows: Sequence[Progress | tuple[str, str]]) -> None:
        """The current state of everything waited for, in a stable order."""
        self._rows = [row if isinstance(row, Progress) else Progress(*row) for row in rows]
        if self._live is not None:
            self._live.refresh()
            return
        for i, row in enumerate(self._rows):
            # A capsule's containers first: its status follows from theirs.
            for part, state in row.parts:
                self._say((i, part), f"{self.kind}/{row.name}/{part}", state)
            self._say((i, ""), f"{self.kind}/{row.name}", row.status)

    def _say(self, key: tuple[int, str], what: str, state: str) -> None:
        if self._last.get(key) != state:
            self._last[key] = state
            self.console.print(Text(f"{what}: {state}"))

    def _render(self) -> RenderableType:
        seconds = int(time.monotonic() - self._started)
        title = f"waiting for {self.kind}s to be {self.goal} ({seconds}s)"
        head = Text(title) if self._final else self._spinner_line(title)
        table = Table.grid(padding=(0, 2))
        table.add_column()
        table.add_column()
        for row in self._rows:
            table.add_row(Text(f"  {self.kind}/{row.name}"), status_text(row.status))
            for part, state in row.parts:
                table.add_row(Text(f"      {part}"), Text(state))
        return Group(head, table)

    def _spinner_line(self, title: str) -> RenderableType:
        grid = Table.grid(padding=(0, 1))
        grid.add_row(self._spinner, Text(title))
        return grid
