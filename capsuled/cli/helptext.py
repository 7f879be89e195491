"""Help text of both command-line tools (`capsule`, `capsuled`), shown reflowed.

Help is written once, as docstrings and `help=` strings wrapped at the source's width.
Rich wraps it again at the terminal's width, so a hard line break left inside a sentence
shows up mid-line in the help boxes. `reflow` joins the lines of each prose paragraph and
keeps what is laid out on purpose: indented blocks (examples, synopses), bullet items and
paragraphs that start with click's `\\b` marker. `App` is a Typer app whose commands and
groups apply it when they are registered, so no docstring has to be written on one line.

A leaf: it imports nothing of ours (the `capsule` client may use it; see pyproject.toml).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_BULLET = re.compile(r"^([-*•]|\d+[.)])\s")
NO_REWRAP = "\b"  # click's marker: a paragraph that starts with it is shown as written


def reflow(text: str | None) -> str | None:
    """`text` with each prose paragraph on one line (see the module docstring)."""
    if not text:
        return text
    first, *rest = (_paragraph(p) for p in _PARAGRAPH_BREAK.split(inspect.cleandoc(text)))
    if not rest:
        return first
    # Typer shows the first paragraph apart and dedents the rest as a docstring, whose
    # first line does not count: were that line "Example:", the examples under it would
    # lose their indentation. A third newline makes that first line an empty one.
    return first + "\n\n\n" + "\n\n".join(rest)


def _paragraph(paragraph: str) -> str:
    if paragraph.startswith(NO_REWRAP):
        return paragraph
    lines: list[str] = []
    for line in paragraph.splitlines():
        if lines and _continues(lines[-1], line):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.rstrip())
    return "\n".join(lines)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _continues(previous: str, line: str) -> bool:
    """Is `line` the rest of the sentence on `previous` (rather than a line of its own)?"""
    if not line.strip() or _BULLET.match(line.lstrip()):
        return False
    if _BULLET.match(previous.lstrip()):  # an item's wrapped text is indented under it
        return _indent(line) > _indent(previous)
    return _indent(line) == 0 and _indent(previous) == 0


def reflow_command(command: TyperCommand | TyperGroup) -> None:
    """Reflow a command's (or group's) help and its parameters' help, in place."""
    command.help = reflow(command.help)
    command.short_help = reflow(command.short_help)
    for param in command.params:
        if isinstance(param, TyperOption | TyperArgument) and param.help:
            param.help = reflow(param.help)


class ReflowCommand(TyperCommand):
    """A Typer command whose help is reflowed (see `reflow`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reflow_command(self)


class ReflowGroup(TyperGroup):
    """A Typer group whose help is reflowed (see `reflow`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reflow_command(self)


class App(typer.Typer):
    """A Typer app whose groups and commands show their help reflowed."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", ReflowGroup)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None,
                **kwargs: Any) -> Callable[[Any], Any]:
        return super().command(name, cls=cls or ReflowCommand, **kwargs)
