"""What every `capsule` command shares: the runtime (how to reach the server), command
groups, the timeout option, showing several objects, and how errors are reported (one
`error:` line, exit status 1; usage errors exit 2). Output formats are in output.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer

from capsuled.cli.capsule import render, suggest
from capsuled.cli.capsule.client import (ApiError, CapsuleClient, CliError, ContainerClient,
                                         is_default_local)
from capsuled.cli.capsule.output import Format, echo_data
from capsuled.cli.capsule.settings import DEFAULT_URL, local_token_path
from capsuled.cli.helptext import App

# How every `capsule` command group behaves: bare it shows its help; -h is --help.
APP_SETTINGS: dict[str, Any] = {
    "no_args_is_help": True, "rich_markup_mode": "rich",
    "context_settings": {"help_option_names": ["-h", "--help"]}}


def sub_app(help: str) -> App:
    """A `capsule` command group (shell completion is offered by the root app only)."""
    return App(help=help, add_completion=False, **APP_SETTINGS)


@dataclass
class Runtime:
    """What every command needs to reach the server.

    The root callback fills in url and token. Tests pass a Runtime as `obj=` to
    `CliRunner.invoke` to plug in an `httpx.MockTransport` and a zero poll interval.
    """

    url: str = DEFAULT_URL
    token: str | None = None
    transport: httpx.BaseTransport | None = None
    poll_interval: float = 0.5
    sleep: Callable[[float], None] = time.sleep

    def client(self) -> CapsuleClient:
        return CapsuleClient(self.url, self.token, transport=self.transport)


class UsageProblem(typer.BadParameter):
    """A usage error (exit 2) whose message already says which parameters clash."""

    def format_message(self) -> str:
        return self.message


LABEL_EXAMPLE = "e.g. -l app=web -l tier=front"


def check_labels(values: list[str] | None) -> list[str]:
    """A -l KEY=VALUE option's callback: a typo is a usage error (exit 2) with an example;
    a comma would silently split one pair into two in the API's `labels` parameter."""
    for value in values or []:
        key, sep, _ = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r} is not key=value (a non-empty key, then =); "
                                     f"{LABEL_EXAMPLE}")
        if "," in value:
            raise typer.BadParameter(f"{value!r} contains a comma; give one -l per label, "
                                     f"{LABEL_EXAMPLE}")
    return values or []


def labels_of(values: list[str] | None) -> dict[str, str]:
    """Checked -l values as a mapping."""
    return {key: value for key, _, value in (v.partition("=") for v in values or [])}


TimeoutOpt = Annotated[float, typer.Option(min=0, help="With --wait: give up after SECONDS.",
                                           metavar="SECONDS")]


def runtime_of(ctx: typer.Context) -> Runtime:
    # The root callback (main.connect) leaves the Runtime, with url and token, on the root.
    obj = ctx.find_object(Runtime)
    return obj if obj is not None else Runtime()


def _no_token_message(url: str) -> str:
    hint = "pass --token or set CAPSULE_TOKEN"
    if is_default_local(url):
        hint += f" (no readable admin token at {local_token_path()})"
    return f"the server wants a token and none was given: {hint}"


def report(rt: Runtime, exc: CliError, context: str | None = None) -> None:
    if isinstance(exc, ApiError) and exc.status == 401 and not rt.token:
        exc = CliError(_no_token_message(rt.url))
    elif isinstance(exc, ApiError):
        with rt.client() as capsules, \
                ContainerClient(rt.url, rt.token, transport=rt.transport) as containers:
            exc.hints += suggest.hints(capsules, containers, exc)
    lines = exc.lines()
    if context:
        lines[0] += f" ({context})"
    for line in lines:
        typer.echo(line, err=True)


@contextmanager
def reporting(rt: Runtime) -> Iterator[None]:
    """Any CliError that escapes a command is one `error:` line and exit status 1."""
    try:
        yield
    except CliError as exc:
        report(rt, exc)
        raise typer.Exit(1) from None


def show_each(rt: Runtime, output: Format, idents: list[str],
              fetch: Callable[[str], tuple[dict[str, Any], Any]]) -> None:
    """Show each ident in turn: `fetch` gives its body and what a table draws. One that
    cannot be shown is reported and the others are still shown (exit 1); JSON output is
    the list of bodies (so is YAML)."""
    console = render.make_console()
    found: list[dict[str, Any]] = []
    failed = False
    for ident in idents:
        try:
            body, drawing = fetch(ident)
        except ApiError as exc:
            report(rt, exc)
            failed = True
            continue
        if not output.machine:
            if found:
                console.print()
            render.emit(console, drawing)
        found.append(body)
    if output.machine:
        echo_data(output, found)
    if failed:
        raise typer.Exit(1)


def each_or_exit(rt: Runtime, idents: list[str], call: Callable[[str], Any],
                 done: Callable[[str], str]) -> None:
    """`call` each ident in turn, echoing `done(ident)` after each that worked; one that
    fails is reported and the others still run (exit 1 at the end)."""
    failed = False
    for ident in idents:
        try:
            call(ident)
        except ApiError as exc:
            report(rt, exc)
            failed = True
            continue
        typer.echo(done(ident))
    if failed:
        raise typer.Exit(1)
