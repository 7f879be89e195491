"""How a command's answer is printed: `-o table|wide|json|yaml`.

`table` and `wide` are for people (`wide` adds columns); `json` and `yaml` are the API's
bodies as they came, for programs. A list is declared once as its columns (`Column`: a
title, how a row's cell is read, wide-only or not) and every list command prints through
`emit_list`; one object's fields print through `emit_fields`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table
from rich.text import Text

from capsuled.cli.capsule import render


class Format(str, Enum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"

    @property
    def machine(self) -> bool:
        """json or yaml: the bodies themselves, and nothing else on stdout."""
        return self in (Format.json, Format.yaml)


# `--format` is the name this option had first; scripts that use it keep working.
FormatOpt = Annotated[Format, typer.Option(
    "--output", "-o", "--format", case_sensitive=False, metavar="FORMAT",
    help="table or wide (more columns) for people; json or yaml for programs.")]


def dump(output: Format, value: Any) -> str:
    """`value` as JSON or YAML text, ending in a newline."""
    if output is Format.yaml:
        return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)
    return render.dump_json(value) + "\n"


def echo_data(output: Format, value: Any) -> None:
    typer.echo(dump(output, value), nl=False)


def echo_record(output: Format, value: Any) -> None:
    """One item of a stream (a watch): a JSON object per line, or a YAML document each."""
    if output is Format.yaml:
        typer.echo(yaml.safe_dump(value, sort_keys=False, allow_unicode=True,
                                  explicit_start=True), nl=False)
    else:
        typer.echo(render.json_line(value))


Getter = Callable[[Any], Any]  # a row (an API body) → what its cell shows


@dataclass(frozen=True)
class Column:
    title: str
    get: Getter
    wide: bool = False  # shown with -o wide only


def column(title: str, get: str | Getter, wide: bool = False) -> Column:
    """A column that shows a row's `get` field, or what `get(row)` returns."""
    if isinstance(get, str):
        key = get
        return Column(title, lambda row: row.get(key), wide)
    return Column(title, get, wide)


def cell(value: Any) -> Text:
    """One cell: Text as it is; mappings as k=v pairs, lists joined; nothing as `-`."""
    if isinstance(value, Text):
        return value
    if isinstance(value, Mapping):
        return render.text(render.pairs(value) if value else None)
    if isinstance(value, list | tuple):
        return render.text(", ".join(str(v) for v in value) or None)
    return render.text(value)


def table_of(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column], wide: bool) -> Table:
    shown = [c for c in columns if wide or not c.wide]
    table = render.plain_table(*(c.title for c in shown))
    for row in rows:
        table.add_row(*(cell(c.get(row)) for c in shown))
    return table


def emit_list(output: Format, rows: list[dict[str, Any]], what: str,
              columns: Sequence[Column]) -> None:
    """A list command's answer: the bodies for programs, else a table, or "No <what>
    found." on stderr when there is nothing (so a pipe reading stdout gets nothing)."""
    if output.machine:
        echo_data(output, rows)
    elif not rows:
        typer.echo(f"No {what} found.", err=True)
    else:
        render.emit(render.make_console(), table_of(rows, columns, output is Format.wide))


def fields_table(body: Mapping[str, Any], fields: Sequence[Column]) -> Table:
    """One object as FIELD/VALUE lines (each column's title is the field's name)."""
    table = render.plain_table("FIELD", "VALUE")
    for field in fields:
        table.add_row(field.title, cell(field.get(body)))
    return table


def emit_fields(output: Format, body: Mapping[str, Any],
                cells: Mapping[str, Getter] | None = None) -> None:
    """One object: its body for programs, else each of its fields (links left out) as
    FIELD/VALUE lines; `cells` reads the fields that need more than `cell`."""
    if output.machine:
        echo_data(output, body)
        return
    fields = [column(key, (cells or {}).get(key, key)) for key in body if key != "links"]
    render.emit(render.make_console(), fields_table(body, fields))
