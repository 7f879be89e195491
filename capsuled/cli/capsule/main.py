"""`capsule`: the command-line client of a capsuled server (create, list, describe, delete).

It talks to the server over HTTP only, so it works the same against a local all-in-one
server and a remote one; see client.py for the wire details and render.py for output.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

from capsuled import paths
from capsuled.domain import documents
from capsuled.errors import InvalidInput
from capsuled.cli.capsule import render
from capsuled.cli.capsule.client import (
    ApiError,
    CapsuleClient,
    CliError,
    is_default_local,
    local_token_path,
    resolve_token,
)

TEMPLATE_SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 16 * 1024 * 1024  # one file of templates; each template has its own budget
STDIN = "-"

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]})


class Format(str, Enum):
    table = "table"
    json = "json"


@dataclass
class Runtime:
    """What every command needs to reach the server.

    The root callback fills in url and token. Tests pass a Runtime as `obj=` to
    `CliRunner.invoke` to plug in an `httpx.MockTransport` and a zero poll interval.
    """

    url: str = paths.DEFAULT_URL
    token: str | None = None
    transport: httpx.BaseTransport | None = None
    poll_interval: float = 0.5
    sleep: Callable[[float], None] = time.sleep

    def client(self) -> CapsuleClient:
        return CapsuleClient(self.url, self.token, transport=self.transport)


class CapsuleFailed(CliError):
    """A capsule, not the server, went wrong while we waited for it."""


class UsageProblem(typer.BadParameter):
    """A usage error (exit 2) whose message already says which parameters clash."""

    def format_message(self) -> str:
        return self.message


# --- shared options -----------------------------------------------------------------------

def _check_labels(values: list[str] | None) -> list[str]:
    # Checked here rather than by the server so that a typo is a usage error (exit 2),
    # and because a comma would silently split one pair into two in the `labels` parameter.
    for value in values or []:
        key, sep, _ = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r} is not key=value (a non-empty key, then =)")
        if "," in value:
            raise typer.BadParameter(f"{value!r} contains a comma; give one -l per label")
    return values or []


FormatOpt = Annotated[Format, typer.Option("--format", "-o", case_sensitive=False,
                                           help="table for people, json for programs.")]
LabelOpt = Annotated[list[str] | None, typer.Option(
    "--label", "-l", metavar="KEY=VALUE", callback=_check_labels,
    help="Only capsules with this label; repeat to require several.")]
AllProjectsOpt = Annotated[bool, typer.Option(
    "--all-projects", help="Include other projects' capsules (admins only).")]
TimeoutOpt = Annotated[float, typer.Option(min=0, help="With --wait: give up after SECONDS.",
                                           metavar="SECONDS")]


def _labels(values: Sequence[str] | None) -> dict[str, str]:
    return {key: value for key, _, value in (v.partition("=") for v in values or [])}


# --- plumbing --------------------------------------------------------------------------------

def _runtime(ctx: typer.Context) -> Runtime:
    obj = ctx.find_object(Runtime)
    return obj if obj is not None else Runtime()


def _no_token_message(url: str) -> str:
    hint = "pass --token or set CAPSULE_TOKEN"
    if is_default_local(url):
        hint += f" (no readable admin token at {local_token_path()})"
    return f"the server wants a token and none was given: {hint}"


def _report(rt: Runtime, exc: CliError, context: str | None = None) -> None:
    if isinstance(exc, ApiError) and exc.status == 401 and not rt.token:
        exc = CliError(_no_token_message(rt.url))
    lines = exc.lines()
    if context:
        lines[0] += f" ({context})"
    for line in lines:
        typer.echo(line, err=True)


@contextmanager
def _reporting(rt: Runtime) -> Iterator[None]:
    """Any CliError that escapes a command is one `error:` line and exit status 1."""
    try:
        yield
    except CliError as exc:
        _report(rt, exc)
        raise typer.Exit(1) from None


def _echo_json(value: Any) -> None:
    typer.echo(render.dump_json(value))


# A hold asks the server to answer once a target leaves a status, for at most this many
# seconds per request, so that the progress display stays fresh.
_HOLD_SECONDS = 10.0

Probe = Callable[[str], tuple[bool, str]]
Hold = Callable[[str, str, float], tuple[bool, str]]


def _poll(rt: Runtime, goal: str, targets: Mapping[str, str], probe: Probe, timeout: float,
          hold: Hold | None = None) -> list[tuple[str, str]]:
    """Probe every target until all are done or `timeout` passes.

    `targets` maps what to probe (a uuid or name) to how to call it; `probe` returns
    (done, current status) and may raise CliError to give up at once. Returns the
    targets not done in time, as (display name, last status). Between rounds, `hold`
    (when given) is a probe that the server answers only once the first pending target
    has left its last status, so a change is seen at once rather than at the next poll.
    """
    pending = dict(targets)
    states = {ident: "?" for ident in targets}
    fresh: dict[str, tuple[bool, str]] = {}  # answered by the hold: not probed again
    deadline = time.monotonic() + timeout
    with render.WaitDisplay(render.make_console(stderr=True), goal) as display:
        while True:
            for ident in list(pending):
                done, states[ident] = fresh.pop(ident) if ident in fresh else probe(ident)
                if done:
                    del pending[ident]
            display.update([(targets[i], states[i]) for i in targets])
            if not pending or time.monotonic() >= deadline:
                return [(name, states[ident]) for ident, name in pending.items()]
            first = next(iter(pending))
            if hold is None:
                rt.sleep(rt.poll_interval)
                continue
            seconds = max(0.0, min(_HOLD_SECONDS, deadline - time.monotonic()))
            started = time.monotonic()
            fresh[first] = hold(first, states[first], seconds)
            if fresh[first][1] == states[first] and time.monotonic() - started < seconds / 2:
                rt.sleep(rt.poll_interval)  # answered at once: a server without the extension


def _late(goal: str, timeout: float, late: list[tuple[str, str]]) -> CliError:
    which = ", ".join(f"{name} ({status})" for name, status in late)
    return CliError(f"timed out after {timeout:g}s; not {goal} yet: {which}")


# --- templates -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Template:
    source: str  # the file, and which document in it when it holds several
    body: dict[str, Any]


def load_templates(sources: Sequence[str]) -> list[Template]:
    """Read and parse every template up front, so a bad file means nothing is created."""
    templates: list[Template] = []
    for source in sources:
        for path in _template_files(source):
            templates += _parse_file(path)
    return templates


def _template_files(source: str) -> list[str]:
    if source == STDIN:
        return [source]
    path = Path(source)
    if not path.is_dir():
        return [source]
    files = sorted(str(p) for p in path.iterdir()
                   if p.suffix.lower() in TEMPLATE_SUFFIXES and p.is_file())
    if not files:
        raise CliError(f"{source}: no *.yaml, *.yml or *.json file in this directory")
    return files


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == STDIN else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {path}: not UTF-8 text") from None


def _parse_file(path: str) -> list[Template]:
    name = "<stdin>" if path == STDIN else path
    text = _read(path)
    try:
        docs = [d for d in _parse_text(text, name) if d is not None]  # `---` at the end yields None
    except json.JSONDecodeError as exc:
        raise CliError(f"{name}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{name}: not valid YAML: {_yaml_problem(exc)}") from None
    except InvalidInput as exc:  # over a budget: alias bombs, deep nesting, huge files
        raise CliError(exc.message) from None
    if not docs:
        raise CliError(f"{name}: no template in this file")
    templates = []
    for number, doc in enumerate(docs, 1):
        source = name if len(docs) == 1 else f"{name}, document {number}"
        if not isinstance(doc, dict):
            raise CliError(f"{source}: a template is a mapping, not {type(doc).__name__}")
        # YAML has dates and non-string keys that JSON has not: make them plain strings now.
        templates.append(Template(source, json.loads(json.dumps(doc, default=str))))
    return templates


def _parse_text(text: str, name: str) -> list[Any]:
    """Decoded with the server's budgets (size, depth, alias expansion), so a hostile file
    cannot hang or exhaust the client either; the server decides on what it parses itself."""
    if text.lstrip().startswith("{"):
        if not documents.json_depth_ok(text):
            raise InvalidInput(f"{name}: nested deeper than {documents.MAX_DEPTH} levels")
        return [json.loads(text)]
    for _ in yaml.parse(text):  # syntax first (not recursive), for a file-line-column message
        pass
    return documents.load_yaml_all(text, name, max_bytes=MAX_FILE_BYTES)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # The default str() spans several lines with a source excerpt; one line is enough.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


# --- commands ----------------------------------------------------------------------------------

@app.callback()
def connect(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="CAPSULE_URL", help="The capsuled API.")] = paths.DEFAULT_URL,
    token: Annotated[str | None, typer.Option(
        envvar="CAPSULE_TOKEN", show_default=False,
        help="Keystone-style token. Default for the local server: its admin token file.")] = None,
) -> None:
    """Manage capsules (pods of containers) on a capsuled server.

    For the local server (127.0.0.1:9517) no options are needed: the admin token is read
    from its state directory (CAPSULED_STATE_DIR, or the default one).

    Example:

      capsule create -f examples/web.yaml --wait
      capsule list -l app=web
      capsule describe web-demo
      capsule delete web-demo --wait
    """
    rt = ctx.obj if isinstance(ctx.obj, Runtime) else Runtime()
    rt.url = (url if "://" in url else f"http://{url}").rstrip("/")
    rt.token = resolve_token(rt.url, token)
    ctx.obj = rt


@app.command()
def create(
    ctx: typer.Context,
    filename: Annotated[list[str], typer.Option(
        "--filename", "-f", metavar="PATH",
        help="Template file (YAML or JSON, - for stdin) or directory of them. Repeatable.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every capsule is Running.")] = False,
    timeout: TimeoutOpt = 120.0,
    output: FormatOpt = Format.table,
) -> None:
    """Create capsules from template files.

    A YAML file may hold several templates separated by ---; a directory means each of its
    *.yaml, *.yml and *.json files, in name order. Every file is parsed before anything is
    sent, so a broken file creates nothing.

    Example:

      capsule create -f examples/web.yaml --wait --timeout 60
    """
    rt = _runtime(ctx)
    failed = False
    latest: dict[str, dict[str, Any]] = {}  # uuid -> newest body, for --format json
    problem: CliError | None = None
    with _reporting(rt):
        templates = load_templates(filename)
        with rt.client() as client:
            for template in templates:
                try:
                    body = client.create(template.body)
                except ApiError as exc:
                    _report(rt, exc, template.source)
                    failed = True
                    continue
                latest[body["uuid"]] = body
                if output is Format.table:
                    typer.echo(f"capsule/{render.display_name(body)} created ({body['uuid']})")
            if wait and latest:
                problem = _wait_running(rt, client, latest, timeout)
    if output is Format.json:
        _echo_json(list(latest.values()))
    if problem is not None:
        _report(rt, problem)
    if failed or problem is not None:
        raise typer.Exit(1)


def _wait_running(rt: Runtime, client: CapsuleClient, latest: dict[str, dict[str, Any]],
                  timeout: float) -> CliError | None:
    """Poll until every capsule in `latest` (refreshed in place) runs; the failure, if any."""

    def check(uuid: str, fetch: Callable[[], dict[str, Any]]) -> tuple[bool, str]:
        name = render.display_name(latest[uuid])
        try:
            body = fetch()
        except ApiError as exc:
            if exc.status == 404:
                raise CapsuleFailed(f"capsule {name} disappeared while waiting for it to run") from None
            raise
        latest[uuid] = body
        status = str(body.get("status"))
        if status == "Error":
            raise CapsuleFailed(f"capsule {name} failed: {body.get('status_reason') or 'no reason given'}")
        return status == "Running", status

    def probe(uuid: str) -> tuple[bool, str]:
        return check(uuid, lambda: client.get(uuid))

    def hold(uuid: str, status: str, seconds: float) -> tuple[bool, str]:
        return check(uuid, lambda: client.get_when_not(uuid, status, seconds))

    targets = {uuid: render.display_name(body) for uuid, body in latest.items()}
    try:
        late = _poll(rt, "Running", targets, probe, timeout, hold)
    except CapsuleFailed as exc:
        return exc
    return _late("Running", timeout, late) if late else None


@app.command("list")
def list_(
    ctx: typer.Context,
    label: LabelOpt = None,
    all_projects: AllProjectsOpt = False,
    output: FormatOpt = Format.table,
) -> None:
    """List capsules, optionally only those with given labels.

    CONTAINERS counts running/total app containers; RESTARTS adds sandbox re-creations to
    the containers' restarts.

    Example:

      capsule list -l app=web -l tier=front
    """
    rt = _runtime(ctx)
    with _reporting(rt), rt.client() as client:
        capsules = client.list(_labels(label), all_projects)
    if output is Format.json:
        _echo_json(capsules)
    elif not capsules:
        typer.echo("No capsules found.", err=True)
    else:
        render.emit(render.make_console(), render.capsule_table(capsules))


@app.command()
def describe(
    ctx: typer.Context,
    idents: Annotated[list[str], typer.Argument(metavar="NAME|UUID", show_default=False)],
    output: FormatOpt = Format.table,
) -> None:
    """Show capsules in detail: settings, containers, volumes and recent events.

    A capsule that cannot be shown is reported and the others are still shown (exit 1).
    With --format json the output is the list of capsule bodies, without events.

    Example:

      capsule describe web-demo
    """
    rt = _runtime(ctx)
    console = render.make_console()
    found: list[dict[str, Any]] = []
    failed = False
    with _reporting(rt), rt.client() as client:
        for ident in idents:
            try:
                capsule = client.get(ident)
                events = client.events(capsule["uuid"]) if output is Format.table else []
            except ApiError as exc:
                _report(rt, exc)
                failed = True
                continue
            if output is Format.table:
                if found:
                    console.print()
                render.emit(console, render.describe(capsule, events))
            found.append(capsule)
    if output is Format.json:
        _echo_json(found)
    if failed:
        raise typer.Exit(1)


@app.command()
def delete(
    ctx: typer.Context,
    idents: Annotated[list[str] | None, typer.Argument(
        metavar="NAME|UUID", show_default=False, help="Capsules to delete.")] = None,
    label: LabelOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every capsule you can see.")] = False,
    all_projects: AllProjectsOpt = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until they are gone.")] = False,
    timeout: TimeoutOpt = 120.0,
    output: FormatOpt = Format.table,
) -> None:
    """Delete capsules by name or uuid, by label, or all of them.

    Choose exactly one of: names/uuids, -l KEY=VALUE, --all. Deletion is asynchronous:
    a capsule shows Deleting until its containers and volumes are gone; --wait waits for that.

    Example:

      capsule delete web-demo
      capsule delete -l app=web --wait
    """
    chosen = [mode for mode, given in (("NAME|UUID", idents), ("-l", label), ("--all", all_)) if given]
    if len(chosen) != 1:
        clash = " and ".join(chosen) if chosen else "nothing"
        raise UsageProblem(f"choose capsules with exactly one of NAME|UUID..., -l KEY=VALUE or "
                           f"--all (got {clash})", ctx=ctx)
    rt = _runtime(ctx)
    failed = False
    with _reporting(rt), rt.client() as client:
        targets = _delete_targets(client, idents, label, all_projects)
        if targets is None:
            typer.echo("No capsules matched.", err=True)
            targets = {}
        deleted: dict[str, str] = {}
        for ident, name in targets.items():
            try:
                client.delete(ident, all_projects)
            except ApiError as exc:
                _report(rt, exc, f"capsule/{name}")
                failed = True
                continue
            deleted[ident] = name
            if output is Format.table:
                typer.echo(f"capsule/{name} deleted")
        if wait and deleted:
            probe, hold = _gone_probes(client)
            late = _poll(rt, "gone", deleted, probe, timeout, hold)
            if late:
                _report(rt, _late("gone", timeout, late))
                failed = True
    if output is Format.json:
        _echo_json(list(deleted.values()))
    if failed:
        raise typer.Exit(1)


def _delete_targets(client: CapsuleClient, idents: list[str] | None, label: list[str] | None,
                    all_projects: bool) -> dict[str, str] | None:
    """What to delete, as {what to send: how to name it}; None when a selector matched nothing."""
    if idents:
        return {ident: ident for ident in dict.fromkeys(idents)}
    # By uuid: a name may be shared across projects (with --all-projects) or be reused.
    found = client.list(_labels(label), all_projects)
    return {c["uuid"]: render.display_name(c) for c in found} or None


def _gone_probes(client: CapsuleClient) -> tuple[Probe, Hold]:
    def check(fetch: Callable[[], dict[str, Any]]) -> tuple[bool, str]:
        try:
            body = fetch()
        except ApiError as exc:
            if exc.status == 404:
                return True, "gone"
            raise
        return False, str(body.get("status"))

    def probe(ident: str) -> tuple[bool, str]:
        return check(lambda: client.get(ident))

    def hold(ident: str, status: str, seconds: float) -> tuple[bool, str]:
        return check(lambda: client.get_when_not(ident, status, seconds))

    return probe, hold


# The container commands are built on this module's plumbing (Runtime, _reporting, …), so
# they are imported once it is all defined.
from capsuled.cli.capsule.containers import PASS_THROUGH, container_app, run  # noqa: E402

app.add_typer(container_app, name="container")
app.command("run", context_settings=PASS_THROUGH)(run)

from capsuled.cli.capsule.admin import host_app, quota_app, service_app, token_app  # noqa: E402

app.add_typer(token_app, name="token")
app.add_typer(quota_app, name="quota")
app.add_typer(host_app, name="host")
app.add_typer(service_app, name="service")


def main() -> None:
    app(prog_name="capsule")


if __name__ == "__main__":
    main()
