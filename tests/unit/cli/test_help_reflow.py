"""`--help` of every command of both CLIs reads as reflowed prose: no line breaks where the
source's docstring wrapped, only where the terminal's width (here 100) forces one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from capsuled.cli import server
from capsuled.cli.capsule import main
from capsuled.cli.helptext import reflow
from cli_env import clean_env  # noqa: F401 - the autouse fixture, by name

WIDTH = 100
BORDER = "│"


def command_paths(app: typer.Typer) -> Iterator[tuple[str, ...]]:
    """Every command and group of `app`, as the words that name it (the root is ())."""
    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, (*path, name))
    yield from walk(typer.main.get_command(app), ())


def fits(line: str, word: str, width: int) -> bool:
    return len(line.rstrip()) + 1 + len(word) <= width


def premature_breaks(rendered: str) -> list[str]:
    """Pairs of lines broken although the next word would have fitted on the first: a hard
    line break of the source showing through. Indented lines (examples) and typer's own
    `[default: …]` lines are laid out on purpose and not counted."""
    bad = []
    lines = rendered.splitlines()
    for above, below in zip(lines, lines[1:], strict=False):
        if above.startswith(BORDER) and below.startswith(BORDER):  # a row of a panel
            inner_above, inner_below = above[1:-1], below[1:-1]
            start = len(inner_below) - len(inner_below.lstrip())
            cell, word = inner_above[start:].rstrip(), inner_below.strip().split(" ")[0]
            # A row starts at column 1 (4 after a `*` of a required option); further right
            # the line goes on with the text of the row above.
            if start <= 4 or not word or word.startswith("[") or not cell.strip() \
                    or inner_above[start - 1] != " ":
                continue
            if fits(cell, word, len(inner_above) - start - 1):
                bad.append(f"{above.strip()} / {below.strip()}")
        elif not above.startswith((BORDER, "╭", "╰")) and above.strip() and below.strip():
            if above.startswith("  ") or below.startswith("  ") or below.startswith((BORDER, "╭")):
                continue  # an example block, or the end of the description
            if fits(above, below.split()[0], WIDTH - 1):
                bad.append(f"{above.strip()} / {below.strip()}")
    return bad


APPS = {"capsule": main.app, "capsuled": server.app}
CASES = [(cli, path) for cli, app in APPS.items() for path in command_paths(app)]


@pytest.mark.parametrize("cli,path", CASES, ids=[" ".join((c, *p)) for c, p in CASES])
def test_help_is_reflowed_at_width_100(cli: str, path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(APPS[cli], [*path, "--help"], env={"COLUMNS": str(WIDTH)},
                                prog_name=cli)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    assert max(map(len, result.stdout.splitlines())) <= WIDTH
    assert premature_breaks(result.stdout) == []


def test_the_check_catches_a_hard_break_in_a_docstring() -> None:
    # The check above must be able to fail: a command whose docstring keeps its breaks.
    app = typer.Typer(rich_markup_mode="rich")

    @app.command()
    def hello() -> None:
        """Say hello.

        This paragraph is wrapped early in the source, as docstrings are, and so its
        second line starts where the first ended."""

    @app.command()
    def other() -> None:
        """Another."""

    result = CliRunner().invoke(app, ["hello", "--help"], env={"COLUMNS": str(WIDTH)})
    assert premature_breaks(result.stdout) != []


def test_reflow_joins_prose_and_keeps_examples_and_bullets() -> None:
    text = """First line
    goes on.

    A paragraph wrapped
    in the source.

    - an item that
      wraps
    - another item

    Example:

      capsule list
      capsule describe web
    """
    assert reflow(text) == ("First line goes on.\n\n\nA paragraph wrapped in the source.\n\n"
                            "- an item that wraps\n- another item\n\nExample:\n\n"
                            "  capsule list\n  capsule describe web")
    assert reflow("Title.\n\n\b\nkeep\nthese lines") == "Title.\n\n\n\b\nkeep\nthese lines"
    assert reflow(None) is None
