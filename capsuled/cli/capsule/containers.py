"""`capsule run` and `capsule container …`: single containers, bare or inside a capsule.

A bare container lives on its own, as with `docker run`. `run --capsule NAME` adds one to
a running capsule instead: it joins the capsule's sandbox (network, IPC, PID and UTS
namespaces) and can mount its volumes, and its lifecycle is then the capsule's, so
start/stop/kill/delete of it are refused by the server. Reads work on every container:
show, logs, exec, attach, cp, top, stats.

Everything goes through the server's /v1/containers API (client.ContainerClient); the
interactive commands (exec -it, attach) bridge the local terminal to the server's
websocket, which carries raw terminal bytes both ways.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import posixpath
import re
import shlex
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Annotated, Any, Protocol

import typer

from capsuled.cli.capsule import render
from capsuled.cli.capsule.client import (
    TIMEOUT,
    ApiError,
    CliError,
    ConnectionFailed,
    ContainerClient,
    _reason,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from capsuled.cli.capsule.main import Runtime

STDIO = "-"
CHUNK = 65536
EOT = b"\x04"  # ^D: end of input for the program behind the remote TTY
EOT_REPEAT = 0.5  # seconds between ^Ds once stdin has ended
DETACH = b"\x10\x11"  # ^P ^Q, as in docker: leave a terminal session without ending it
GO_MODE_DIR = 1 << 31  # Docker's path stat has Go's os.FileMode bits
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
RESTART_NAMES = ("no", "always", "on-failure", "unless-stopped")
MEMORY_RE = re.compile(r"^\s*(\d+)\s*(m|mb|mi|mib|g|gb|gi|gib)?\s*$", re.IGNORECASE)
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")

container_app = typer.Typer(
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="""Manage single containers: bare ones, and (read-only, mostly) a capsule's.

    Bare containers are made with `capsule run`. A capsule's containers are listed with
    --capsule NAME; by uuid every command finds them, by name only with --capsule. Their
    lifecycle (start, stop, kill, delete, rename) follows the capsule and is refused.

    Example:

      capsule run --name web -l app=web busybox httpd -f -p 8080
      capsule container logs -f web
      capsule container exec -it web sh
    """)

# Commands whose trailing words go to the container unparsed (docker's `run IMAGE CMD...`).
PASS_THROUGH = {"allow_interspersed_args": False}


# --- what main.py has too --------------------------------------------------------------------
# main.py imports this module to register its commands, so main's plumbing is reached when
# a command runs, never at import time: either module may then be imported first, and
# `python -m capsuled.cli.capsule.main` works as well.

def _main() -> ModuleType:
    from capsuled.cli.capsule import main
    return main


def _runtime(ctx: typer.Context) -> Runtime:
    # The root callback (main.connect) leaves the Runtime, with url and token, on the root.
    obj = ctx.find_root().obj
    return obj if obj is not None and hasattr(obj, "poll_interval") else _main().Runtime()  # type: ignore[no-any-return]


def _reporting(rt: Runtime) -> AbstractContextManager[None]:
    """Any CliError that escapes is one `error:` line and exit status 1 (main._reporting)."""
    return _main()._reporting(rt)  # type: ignore[no-any-return]


def _report(rt: Runtime, exc: CliError, context: str | None = None) -> None:
    _main()._report(rt, exc, context)


def _usage(message: str, ctx: typer.Context) -> typer.BadParameter:
    """A usage error (exit 2) whose message says it all (main.UsageProblem)."""
    return _main().UsageProblem(message, ctx=ctx)  # type: ignore[no-any-return]


def _echo_json(value: Any) -> None:
    typer.echo(render.dump_json(value))


class Format(str, Enum):  # the same choices as main.Format
    table = "table"
    json = "json"


FormatOpt = Annotated[Format, typer.Option("--format", "-o", case_sensitive=False,
                                           help="table for people, json for programs.")]
TimeoutOpt = Annotated[float, typer.Option(min=0, help="With --wait: give up after SECONDS.",
                                           metavar="SECONDS")]


# --- option parsing -------------------------------------------------------------------------

def _key_values(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r} is not {what} (a non-empty key, then =)")
        out[key] = rest
    return out


def _parse_env(values: list[str] | None) -> dict[str, str]:
    """KEY=VALUE, or KEY alone for the value it has here (as docker does)."""
    out: dict[str, str] = {}
    for value in values or []:
        if "=" in value:
            out.update(_key_values([value], "KEY=VALUE"))
            continue
        if not value.strip():
            raise typer.BadParameter("an empty variable name")
        if value not in os.environ:
            raise typer.BadParameter(f"{value} is not set here; give it as {value}=VALUE")
        out[value] = os.environ[value]
    return out


def _parse_labels(values: list[str] | None) -> dict[str, str]:
    return _key_values(values, "KEY=VALUE")


def _parse_memory(value: str | None) -> int | None:
    """MiB: 64, 64m, 64MiB, 1g; what `docker run -m` takes, in whole mebibytes."""
    if value is None:
        return None
    match = MEMORY_RE.match(value)
    if not match:
        raise typer.BadParameter(f"{value!r} is not a size in MiB (e.g. 64, 64m, 1g)")
    number, unit = int(match.group(1)), (match.group(2) or "m").lower()
    return number * 1024 if unit.startswith("g") else number


def _parse_restart(value: str | None) -> dict[str, str] | None:
    if value is None:
        return None
    name, sep, count = value.partition(":")
    if name not in RESTART_NAMES:
        raise typer.BadParameter(f"{value!r}: use one of no, always, unless-stopped, "
                                 "on-failure or on-failure:N")
    if sep and (name != "on-failure" or not count.isdigit()):
        raise typer.BadParameter(f"{value!r}: only on-failure takes a retry count (on-failure:3)")
    return {"Name": name, "MaximumRetryCount": count if sep else "0"}


def _parse_mounts(values: list[str] | None) -> list[dict[str, Any]]:
    """`--mount` as the zun CLI takes it: size=GiB,destination=/path (a new volume of the
    container's own), source=VOLUME,destination=/path (a volume of the capsule, with
    --capsule) or type=bind,source=FILE,destination=/path (FILE's bytes put there)."""
    out = []
    for value in values or []:
        fields: dict[str, str] = {}
        for part in value.split(","):
            key, sep, val = part.partition("=")
            if not sep or key.strip() not in ("size", "source", "destination", "type"):
                raise typer.BadParameter(
                    f"{value!r}: use size=GiB,destination=/path, source=VOLUME,destination=/path "
                    "or type=bind,source=FILE,destination=/path")
            fields[key.strip()] = val.strip()
        if not fields.get("destination"):
            raise typer.BadParameter(f"{value!r}: destination=/path is required")
        mount: dict[str, Any] = dict(fields)
        if fields.get("type") == "bind":
            try:
                data = Path(fields.get("source", "")).read_bytes()
            except OSError as exc:
                raise typer.BadParameter(f"{value!r}: cannot read {fields.get('source')!r} "
                                         f"({exc.strerror})") from None
            mount["source"] = base64.b64encode(data).decode()
        out.append(mount)
    return out


def _checked(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An option callback that only validates with `parse` (the command parses again), so
    that a bad value is a usage error naming the option."""
    def check(value: Any) -> Any:
        parse(value)
        return value
    return check


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value:g} is not above 0")
    return value


def _parse_tail(value: str | None) -> str | None:
    if value is None or value == "all" or value.isdigit():
        return value
    raise typer.BadParameter(f"{value!r}: a number of lines, or all")


def since_epoch(value: str | None, now: float | None = None) -> str | None:
    """docker-style relative times (30s, 10m, 1h30m, 2d) become epoch seconds; anything
    else (epoch seconds, 'YYYY-MM-DD HH:MM:SS') goes to the server as it is."""
    if value is None or value.isdigit():
        return value
    match = DURATION_RE.match(value.strip())
    if not match or not any(match.groups()):
        return value
    d, h, m, s = (int(g or 0) for g in match.groups())
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    return str(int((time.time() if now is None else now) - seconds))


CapsuleOpt = Annotated[str | None, typer.Option(
    "--capsule", metavar="NAME|UUID", show_default=False,
    help="The capsule the container belongs to: needed to find a capsule's container by name.")]
IdentArg = Annotated[str, typer.Argument(metavar="CONTAINER", show_default=False,
                                         help="Container name or uuid.")]
IdentsArg = Annotated[list[str], typer.Argument(metavar="CONTAINER...", show_default=False,
                                                help="Container names or uuids.")]
WaitSecondsOpt = Annotated[int | None, typer.Option(
    "--timeout", "-t", min=0, metavar="SECONDS", show_default=False,
    help="Seconds to wait for a clean exit before SIGKILL (server default 10).")]


# --- plumbing -------------------------------------------------------------------------------

def _client(rt: Runtime) -> ContainerClient:
    return ContainerClient(rt.url, rt.token, transport=rt.transport)


def _binary_stdout() -> IO[bytes]:
    sys.stdout.flush()  # anything printed as text goes first
    return sys.stdout.buffer


def _binary_stdin() -> IO[bytes]:
    return sys.stdin.buffer


def _words(args: list[str] | None) -> list[str]:
    """Trailing arguments, without a leading `--` (`exec web -- ls -l`, as kubectl writes it)."""
    words = list(args or [])
    return words[1:] if words[:1] == ["--"] else words


def _exit_status(code: Any) -> int:
    """The exit status to leave with for a command's exit code (-1/None: unknown → 1)."""
    try:
        value = int(code)
    except (TypeError, ValueError):
        return 1
    return value if 0 <= value <= 255 else 1


def _each(rt: Runtime, idents: list[str], output: Format, done: str,
          call: Callable[[ContainerClient, str], Any]) -> None:
    """Apply `call` to every container; report each failure and carry on (exit 1 at the end)."""
    ok: list[str] = []
    failed = False
    with _reporting(rt), _client(rt) as client:
        for ident in dict.fromkeys(idents):
            try:
                call(client, ident)
            except ApiError as exc:
                _report(rt, exc, f"container/{ident}")
                failed = True
                continue
            ok.append(ident)
            if output is Format.table:
                typer.echo(f"container/{ident} {done}")
    if output is Format.json:
        _echo_json(ok)
    if failed:
        raise typer.Exit(1)


# --- run ------------------------------------------------------------------------------------

def run(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(metavar="IMAGE", show_default=False,
                                         help="Image to run, e.g. busybox or registry/repo:tag.")],
    command: Annotated[list[str] | None, typer.Argument(
        metavar="[COMMAND [ARG...]]", show_default=False,
        help="Replaces the image's command (its entrypoint stays). Everything after IMAGE "
             "is passed on, options included.")] = None,
    capsule: Annotated[str | None, typer.Option(
        "--capsule", metavar="NAME|UUID", show_default=False,
        help="Add the container to this running capsule: it shares the capsule's network, "
             "IPC, PID and UTS namespaces and is deleted with it.")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", show_default=False,
        help="Container name (unique among your bare containers, or within the capsule).")] = None,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", metavar="KEY=VALUE", show_default=False, callback=_checked(_parse_env),
        help="Environment variable; KEY alone passes this shell's value. Repeatable.")] = None,
    workdir: Annotated[str | None, typer.Option(
        "--workdir", "-w", metavar="DIR", show_default=False,
        help="Working directory inside the container.")] = None,
    cpu: Annotated[float | None, typer.Option(
        "--cpu", callback=_positive, show_default=False,
        help="CPU limit in cores (0.5 = half a core); also what the scheduler reserves.")] = None,
    memory: Annotated[str | None, typer.Option(
        "--memory", "-m", metavar="MiB", show_default=False, callback=_checked(_parse_memory),
        help="Memory limit in MiB (64, 64m or 1g); also what the scheduler reserves.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="KEY=VALUE", show_default=False, callback=_checked(_parse_labels),
        help="Label on the container. Repeatable.")] = None,
    restart: Annotated[str | None, typer.Option(
        "--restart", metavar="POLICY", show_default=False, callback=_checked(_parse_restart),
        help="no (default), always, unless-stopped, on-failure or on-failure:N retries.")] = None,
    rm: Annotated[bool, typer.Option(
        "--rm", help="Delete the container once it exits.")] = False,
    mount: Annotated[list[str] | None, typer.Option(
        "--mount", metavar="SPEC", show_default=False, callback=_checked(_parse_mounts),
        help="size=GiB,destination=/path: a new volume of the container's own, deleted with "
             "it; type=bind,source=FILE,destination=/path: put FILE there before it starts; "
             "with --capsule, source=VOLUME,destination=/path mounts a capsule volume. "
             "Repeatable.")] = None,
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Keep stdin open, so that `container attach` can type into it.")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="Give the container a terminal.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the container runs; fail with the reason if it cannot.")] = False,
    timeout: TimeoutOpt = 120.0,
    output: FormatOpt = Format.table,
) -> None:
    """Run a command in a new container, in the background.

    Without --capsule the container is bare: on its own network, restarted per --restart.
    With --capsule it joins that capsule (which must be running): it shares the
    capsule's namespaces, so it reaches the other containers on 127.0.0.1, and it is
    deleted with the capsule. --restart and --rm come from the capsule then.

    Options go before IMAGE: everything after it is the container's command (a -- in
    front of it is dropped).

    Example:

      capsule run --name hello busybox echo hello
      capsule run --wait --name web -m 64 -e GREETING=hi busybox httpd -f -p 8080
      capsule run --capsule web-demo --name debug busybox sleep 3600
      capsule run --mount size=1,destination=/data --mount type=bind,source=app.conf,destination=/etc/app.conf busybox sleep 3600
    """
    clash = [opt for opt, given in (("--restart", restart), ("--rm", rm)) if given]
    if capsule and clash:
        raise _usage(f"{' and '.join(clash)} cannot be combined with --capsule: "
                     "a capsule's containers follow the capsule's restart policy", ctx=ctx)
    mem = _parse_memory(memory)
    optional = {
        "command": _words(command) or None, "name": name,
        "environment": _parse_env(env) or None, "workdir": workdir, "cpu": cpu,
        "memory": None if mem is None else str(mem), "labels": _parse_labels(label) or None,
        "restart_policy": _parse_restart(restart), "auto_remove": rm or None,
        "interactive": interactive or None, "tty": tty or None, "capsule": capsule,
        "mounts": _parse_mounts(mount) or None}
    # Only what was asked for: the server's defaults are the rest.
    body: dict[str, Any] = {"image": image, **{k: v for k, v in optional.items() if v is not None}}
    rt = _runtime(ctx)
    problem: CliError | None = None
    with _reporting(rt), _client(rt) as client:
        created = client.create(body)
        name_ = render.display_name(created)
        if output is Format.table:
            where = f" in capsule {capsule}" if capsule else ""
            typer.echo(f"container/{name_} created{where} ({created.get('uuid')})")
        if wait:
            created, problem = _wait_started(rt, client, created, timeout)
    if output is Format.json:
        _echo_json(created)
    if problem is not None:
        _report(rt, problem)
        raise typer.Exit(1)


def _wait_started(rt: Runtime, client: ContainerClient, body: dict[str, Any],
                  timeout: float) -> tuple[dict[str, Any], CliError | None]:
    """Poll until the container runs (or ran and exited 0); the newest body and any failure."""
    name, uuid = render.display_name(body), str(body.get("uuid"))
    deadline = time.monotonic() + timeout
    with render.WaitDisplay(render.make_console(stderr=True), "Running", kind="container") as display:
        while True:
            try:
                body = client.get(uuid)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                if body.get("auto_remove"):  # --rm: it ran, exited and was removed
                    return body, None
                return body, CliError(f"container {name} disappeared while waiting for it to run")
            status = str(body.get("status"))
            display.update([(name, status)])
            if status == "Running":
                return body, None
            if status == "Error":
                return body, CliError(f"container {name} failed: "
                                      f"{body.get('status_reason') or 'no reason given'}")
            if status == "Stopped":
                code = body.get("exit_code")
                if code == 0:
                    return body, None
                reason = body.get("status_reason")
                return body, CliError(f"container {name} exited with code {code}"
                                      + (f": {reason}" if reason else ""))
            if time.monotonic() >= deadline:
                return body, CliError(f"timed out after {timeout:g}s; not Running yet: {name} ({status})")
            rt.sleep(rt.poll_interval)


# --- reading --------------------------------------------------------------------------------

@container_app.command("list")
def list_(
    ctx: typer.Context,
    capsule: Annotated[str | None, typer.Option(
        "--capsule", metavar="NAME|UUID", show_default=False,
        help="List this capsule's containers (init containers included) instead.")] = None,
    all_projects: Annotated[bool, typer.Option(
        "--all-projects", help="Include other projects' containers (admins only).")] = False,
    output: FormatOpt = Format.table,
) -> None:
    """List bare containers, or the containers of one capsule.

    Bare containers are those made by `capsule run` without --capsule; a capsule's
    containers (its template's, and those added with run --capsule) are listed with
    --capsule.

    Example:

      capsule container list
      capsule container list --capsule web-demo --format json
    """
    rt = _runtime(ctx)
    with _reporting(rt), _client(rt) as client:
        found = client.list(capsule, all_projects)
    if output is Format.json:
        _echo_json(found)
    elif not found:
        typer.echo("No containers found.", err=True)
    else:
        render.emit(render.make_console(), render.container_table(found))


container_app.command("ls", hidden=True)(list_)


@container_app.command()
def show(
    ctx: typer.Context,
    idents: IdentsArg,
    capsule: CapsuleOpt = None,
    output: FormatOpt = Format.table,
) -> None:
    """Show containers in detail: image, command, status and its reason, limits, settings.

    A container that cannot be shown is reported and the others are still shown (exit 1).
    With --format json the output is the list of container bodies.

    Example:

      capsule container show web
      capsule container show --capsule web-demo probe
    """
    rt = _runtime(ctx)
    console = render.make_console()
    found: list[dict[str, Any]] = []
    failed = False
    with _reporting(rt), _client(rt) as client:
        for ident in idents:
            try:
                body = client.get(ident, capsule)
            except ApiError as exc:
                _report(rt, exc)
                failed = True
                continue
            if output is Format.table:
                if found:
                    console.print()
                render.emit(console, render.show_container(body))
            found.append(body)
    if output is Format.json:
        _echo_json(found)
    if failed:
        raise typer.Exit(1)


container_app.command("inspect", hidden=True)(show)


@container_app.command()
def logs(
    ctx: typer.Context,
    ident: IdentArg,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing new output until the container "
                                              "stops or Ctrl-C.")] = False,
    timestamps: Annotated[bool, typer.Option("--timestamps", "-t",
                                             help="Prefix each line with its RFC 3339 time.")] = False,
    tail: Annotated[str | None, typer.Option(
        "--tail", "-n", metavar="N", show_default=False, callback=_parse_tail,
        help="Only the last N lines (or all).")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="WHEN", show_default=False,
        help="Only output since WHEN: epoch seconds, 'YYYY-MM-DD HH:MM:SS', or a duration "
             "ago (30s, 10m, 1h30m, 2d).")] = None,
    stdout: Annotated[bool, typer.Option("--stdout/--no-stdout", help="Include stdout.")] = True,
    stderr: Annotated[bool, typer.Option("--stderr/--no-stderr", help="Include stderr.")] = True,
    capsule: CapsuleOpt = None,
    output: Annotated[Format, typer.Option(
        "--format", "-o", case_sensitive=False,
        help="table: the bytes as written (default); json: one JSON string (not with -f).")] = Format.table,
) -> None:
    """Print a container's output (stdout and stderr), byte for byte.

    The bytes go to stdout exactly as the container wrote them (binary output included),
    with both of its streams interleaved.

    Example:

      capsule container logs --tail 20 web
      capsule container logs -f --since 10m web
    """
    if follow and output is Format.json:
        raise _usage("--follow streams raw output; it cannot be combined with --format json",
                     ctx=ctx)
    if not stdout and not stderr:
        raise _usage("--no-stdout and --no-stderr together leave nothing to print", ctx=ctx)
    params: dict[str, str | None] = {
        "stdout": None if stdout else "false", "stderr": None if stderr else "false",
        "timestamps": "true" if timestamps else None, "tail": tail,
        "since": since_epoch(since)}
    rt = _runtime(ctx)
    out = _binary_stdout()
    with _reporting(rt), _client(rt) as client:
        if not follow:
            data = client.logs(ident, capsule, **params)
            if output is Format.json:
                _echo_json(data.decode("utf-8", "replace"))
            else:
                out.write(data)
                out.flush()
            return
        try:
            for chunk in client.follow_logs(ident, capsule, **params):
                out.write(chunk)
                out.flush()
        except KeyboardInterrupt:
            raise typer.Exit(INTERRUPTED) from None


@container_app.command(context_settings=PASS_THROUGH)
def top(
    ctx: typer.Context,
    ident: IdentArg,
    ps_args: Annotated[list[str] | None, typer.Argument(
        metavar="[PS OPTIONS]", show_default=False,
        help="Options for ps, e.g. -o pid,comm (default: -ef).")] = None,
    capsule: CapsuleOpt = None,
    output: FormatOpt = Format.table,
) -> None:
    """Show the processes running in a container (ps, run on its host).

    Example:

      capsule container top web
      capsule container top web -o pid,args
    """
    rt = _runtime(ctx)
    with _reporting(rt), _client(rt) as client:
        found = client.top(ident, " ".join(_words(ps_args)) or None, capsule)
    if output is Format.json:
        _echo_json(found)
    else:
        render.emit(render.make_console(), render.top_table(found))


@container_app.command()
def stats(
    ctx: typer.Context,
    ident: IdentArg,
    capsule: CapsuleOpt = None,
    output: FormatOpt = Format.table,
) -> None:
    """Show a container's resource use now: CPU, memory, block and network I/O.

    Example:

      capsule container stats web
    """
    rt = _runtime(ctx)
    with _reporting(rt), _client(rt) as client:
        found = client.stats(ident, capsule)
    if output is Format.json:
        _echo_json(found)
    else:
        render.emit(render.make_console(), render.stats_table(found))


@container_app.command()
def actions(
    ctx: typer.Context,
    ident: IdentArg,
    output: FormatOpt = Format.table,
) -> None:
    """List the actions taken on a container and how each ended.

    Oldest first: create, start, stop, kill, ... with their request ids (which the
    server's log names too) and any error message.

    Example:

      capsule container actions web
    """
    rt = _runtime(ctx)
    with _reporting(rt), _client(rt) as client:
        found = client.actions(ident)
    if output is Format.json:
        _echo_json(found)
    else:
        render.emit(render.make_console(), render.actions_table(found))


# --- changing -------------------------------------------------------------------------------

@container_app.command()
def delete(
    ctx: typer.Context,
    idents: IdentsArg,
    stop: Annotated[bool, typer.Option("--stop", help="Stop it first if it runs.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Delete whatever its state, without stopping it cleanly (admins only).")] = False,
    output: FormatOpt = Format.table,
) -> None:
    """Delete bare containers.

    A running container is refused unless --stop (stop, then delete) or --force is given.
    Deletion is asynchronous: the container shows Deleting until it is gone. A capsule's
    container goes with its capsule (`capsule delete`).

    Example:

      capsule container delete --stop web
    """
    rt = _runtime(ctx)
    _each(rt, idents, output, "deleted",
          lambda client, ident: client.delete(ident, force=force, stop=stop))


container_app.command("rm", hidden=True)(delete)


@container_app.command()
def start(ctx: typer.Context, idents: IdentsArg, output: FormatOpt = Format.table) -> None:
    """Start stopped (or created) bare containers.

    Example:

      capsule container start web
    """
    _each(_runtime(ctx), idents, output, "started",
          lambda client, ident: client.action(ident, "start"))


@container_app.command()
def stop(ctx: typer.Context, idents: IdentsArg, timeout: WaitSecondsOpt = None,
         output: FormatOpt = Format.table) -> None:
    """Stop running bare containers: SIGTERM, then SIGKILL after the timeout.

    A stopped container stays stopped (its restart policy does not bring it back) until
    `container start`.

    Example:

      capsule container stop --timeout 2 web
    """
    _each(_runtime(ctx), idents, output, "stopped",
          lambda client, ident: client.action(ident, "stop", timeout=timeout))


@container_app.command()
def restart(ctx: typer.Context, idents: IdentsArg, timeout: WaitSecondsOpt = None,
            output: FormatOpt = Format.table) -> None:
    """Restart bare containers (stop as `container stop` does, then start again).

    Example:

      capsule container restart web
    """
    _each(_runtime(ctx), idents, output, "restarted",
          lambda client, ident: client.action(ident, "reboot", timeout=timeout))


@container_app.command()
def pause(ctx: typer.Context, idents: IdentsArg, output: FormatOpt = Format.table) -> None:
    """Freeze every process of running bare containers (cgroup freezer) until unpause.

    Example:

      capsule container pause web
    """
    _each(_runtime(ctx), idents, output, "paused",
          lambda client, ident: client.action(ident, "pause"))


@container_app.command()
def unpause(ctx: typer.Context, idents: IdentsArg, output: FormatOpt = Format.table) -> None:
    """Let paused bare containers run again.

    Example:

      capsule container unpause web
    """
    _each(_runtime(ctx), idents, output, "unpaused",
          lambda client, ident: client.action(ident, "unpause"))


@container_app.command()
def kill(
    ctx: typer.Context,
    idents: IdentsArg,
    signal_: Annotated[str | None, typer.Option(
        "--signal", "-s", metavar="SIGNAL", show_default=False,
        help="Signal name or number: KILL (default), TERM, HUP, USR1, 9, ...")] = None,
    output: FormatOpt = Format.table,
) -> None:
    """Send a signal to the main process of running bare containers.

    Example:

      capsule container kill --signal HUP web
    """
    _each(_runtime(ctx), idents, output, "killed" if signal_ is None else f"sent {signal_}",
          lambda client, ident: client.action(ident, "kill", signal=signal_))


@container_app.command()
def rename(
    ctx: typer.Context,
    ident: IdentArg,
    new_name: Annotated[str, typer.Argument(metavar="NEW_NAME", show_default=False)],
    output: FormatOpt = Format.table,
) -> None:
    """Rename a bare container; it keeps running, under the new name.

    Example:

      capsule container rename web web-old
    """
    rt = _runtime(ctx)
    with _reporting(rt), _client(rt) as client:
        body = client.rename(ident, new_name)
    if output is Format.json:
        _echo_json(body)
    else:
        typer.echo(f"container/{ident} renamed to {body.get('name') or new_name}")


@container_app.command()
def update(
    ctx: typer.Context,
    ident: IdentArg,
    cpu: Annotated[float | None, typer.Option(
        "--cpu", callback=_positive, show_default=False, help="New CPU limit in cores.")] = None,
    memory: Annotated[str | None, typer.Option(
        "--memory", "-m", metavar="MiB", show_default=False, callback=_checked(_parse_memory),
        help="New memory limit in MiB (64, 64m or 1g).")] = None,
    capsule: Annotated[str | None, typer.Option(
        "--capsule", metavar="NAME|UUID", show_default=False,
        help="Required for a capsule's container: the capsule it belongs to.")] = None,
    output: FormatOpt = Format.table,
) -> None:
    """Change a container's CPU and memory limits, live (the container is not restarted).

    This works for a capsule's containers too, given --capsule: the capsule's total, which
    the scheduler reserves, changes with it.

    Example:

      capsule container update --cpu 1 --memory 256 web
      capsule container update --capsule web-demo --memory 32 probe
    """
    changes: dict[str, Any] = {}
    if cpu is not None:
        changes["cpu"] = cpu
    mem = _parse_memory(memory)
    if mem is not None:
        changes["memory"] = str(mem)
    if not changes:
        raise _usage("nothing to change: give --cpu and/or --memory", ctx=ctx)
    rt = _runtime(ctx)
    with _reporting(rt), _client(rt) as client:
        # The server finds a capsule's container for an update by uuid only; --capsule
        # lets it be named, so look the uuid up first.
        target = str(client.get(ident, capsule)["uuid"]) if capsule else ident
        body = client.update(target, changes, capsule)
    if output is Format.json:
        _echo_json(body)
    else:
        what = ", ".join(f"{k} {v}" + (" MiB" if k == "memory" else "") for k, v in changes.items())
        typer.echo(f"container/{ident} updated ({what})")


# --- exec and attach ------------------------------------------------------------------------

@container_app.command("exec", context_settings=PASS_THROUGH)
def exec_(
    ctx: typer.Context,
    ident: IdentArg,
    command: Annotated[list[str], typer.Argument(
        metavar="COMMAND [ARG...]", show_default=False,
        help="The program and its arguments; everything after CONTAINER is passed on.")],
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Send stdin to the command (a terminal session).")] = False,
    tty: Annotated[bool, typer.Option(
        "--tty", "-t", help="A terminal session; with -i, the local terminal goes raw.")] = False,
    capsule: CapsuleOpt = None,
    output: Annotated[Format, typer.Option(
        "--format", "-o", case_sensitive=False,
        help="table: the command's output as is; json: the server's answer (not with -i/-t).")]
        = Format.table,
) -> None:
    """Run a command in a running container.

    Without -i/-t the command runs to its end; its output (stdout and stderr together)
    is printed byte for byte and `capsule` exits with the command's exit code.

    With -i and/or -t the command gets a terminal on the server and this one is joined to
    it over a websocket: with -it on a terminal, keys go through raw (Ctrl-C included);
    Ctrl-P Ctrl-Q detaches. When stdin is not a terminal it is sent as is, then ^D
    (repeated until the session ends). The exit code of a session is not known: exit 0.

    Options go before CONTAINER: everything after it is the command (a -- in front of
    it is dropped).

    Example:

      capsule container exec web cat /etc/hostname
      capsule container exec -it web sh
      echo 'ls /' | capsule container exec -i web sh
    """
    argv = shlex.join(_words(command))
    if not argv:
        raise _usage("missing COMMAND after CONTAINER", ctx=ctx)
    session = interactive or tty
    if session and output is Format.json:
        raise _usage("-i/-t open a terminal session; they cannot be combined with "
                     "--format json", ctx=ctx)
    rt = _runtime(ctx)
    with _reporting(rt), _client(rt) as client:
        if not session:
            result = client.execute(ident, argv, capsule=capsule)
        else:
            uuid = client.get(ident, capsule)["uuid"] if capsule else ident
            started = client.execute(uuid, argv, interactive=True)
            url, exec_id = started.get("proxy_url"), started.get("exec_id")
            if not isinstance(url, str) or not url:
                raise CliError("the server started no terminal session (no proxy_url in its answer)")

            def resize(width: int, height: int) -> None:
                if exec_id:
                    client.execute_resize(uuid, str(exec_id), width, height)
            _terminal_session(url, send_input=interactive, raw=interactive and tty, resize=resize)
            return
    if output is Format.json:
        _echo_json(result)
    else:
        out = _binary_stdout()
        out.write(_exec_output(result))
        out.flush()
    status = _exit_status(result.get("exit_code"))
    if status:
        raise typer.Exit(status)


def _exec_output(result: dict[str, Any]) -> bytes:
    encoded = result.get("output_base64")
    if isinstance(encoded, str):
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            pass
    return str(result.get("output") or "").encode()


@container_app.command()
def attach(
    ctx: typer.Context,
    ident: IdentArg,
    no_stdin: Annotated[bool, typer.Option(
        "--no-stdin", help="Only watch the output: send nothing (Ctrl-C leaves).")] = False,
    capsule: CapsuleOpt = None,
) -> None:
    """Join the terminal of a container made with -i/-t (its main process's stdin and output).

    On a terminal, keys go through raw, Ctrl-C included (which may stop the container's
    main process); Ctrl-P Ctrl-Q detaches and leaves it running. When stdin is not a
    terminal it is sent as is, then ^D (repeated until the session ends), which ends a
    shell: use --no-stdin to watch without typing.

    Example:

      capsule run -it --name shell busybox sh
      capsule container attach shell
    """
    rt = _runtime(ctx)
    with _reporting(rt), _client(rt) as client:
        uuid = client.get(ident, capsule)["uuid"] if capsule else ident
        url = client.attach(uuid)
        _terminal_session(url, send_input=not no_stdin, raw=not no_stdin,
                          resize=lambda w, h: client.resize(uuid, w, h))


class Socket(Protocol):
    """What the terminal bridge needs of a websocket: bytes in, bytes out, b"" at the end."""

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...


class WebSocket:
    """A websocket-backed Socket (the `websockets` package's synchronous client)."""

    def __init__(self, url: str) -> None:
        from websockets.exceptions import (
            ConnectionClosed,
            InvalidStatus,
            WebSocketException,
        )
        from websockets.sync.client import connect
        from websockets.typing import Subprotocol

        self._closed = ConnectionClosed
        host = url.split("://", 1)[-1].split("/", 1)[0]
        try:
            self._ws = connect(url, subprotocols=[Subprotocol("binary")], open_timeout=TIMEOUT,
                               compression=None, max_size=None)
        except InvalidStatus as exc:
            raise CliError(f"the server refused the terminal connection (HTTP "
                           f"{exc.response.status_code}); its URL works once and for a minute: "
                           "try again") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ConnectionFailed(f"cannot open the terminal at {host} ({_reason(exc)})") from None

    def send(self, data: bytes) -> None:
        try:
            self._ws.send(data)
        except self._closed:
            raise EOFError from None

    def recv(self) -> bytes:
        try:
            message = self._ws.recv()
        except self._closed:
            return b""
        return message.encode() if isinstance(message, str) else bytes(message)

    def close(self) -> None:
        self._ws.close()


# Tests put a fake here: all that a terminal session sends and receives goes through it.
connect_terminal: Callable[[str], Socket] = WebSocket


def _terminal_session(url: str, send_input: bool, raw: bool,
                      resize: Callable[[int, int], None]) -> None:
    """Bridge stdin/stdout to the websocket at `url` until either side ends.

    `raw` asks for a raw local terminal (only honoured when stdin is one); then the remote
    terminal follows this one's size. Ctrl-C without a raw terminal ends the session (130).
    """
    stdin, stdout = _binary_stdin(), _binary_stdout()
    fd = _tty_fd(sys.stdin) if raw else None

    def send_size() -> None:
        size = _terminal_size(fd)
        if size is not None:
            try:
                resize(*size)
            except CliError:
                pass  # cosmetic: the session works at any size

    sock = connect_terminal(url)
    try:
        with _raw_terminal(fd), _on_resize(send_size if fd is not None else None):
            # Only now: the server starts an exec session when the socket opens, and
            # Docker holds a resize of an exec that has not started for ten seconds.
            if fd is not None:
                send_size()
            bridge(sock, stdin, stdout, send_input=send_input, raw=fd is not None)
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None
    finally:
        sock.close()


def bridge(sock: Socket, stdin: IO[bytes], stdout: IO[bytes], send_input: bool, raw: bool) -> None:
    """Pump socket → stdout (and stdin → socket) until the socket ends or the user detaches.

    Both pumps are daemon threads; this thread only waits, so Ctrl-C and SIGWINCH reach
    it at once. Without a raw terminal the end of stdin becomes ^D for the remote TTY,
    repeated until the session ends.
    """
    done = threading.Event()

    def output() -> None:
        try:
            while True:
                data = sock.recv()
                if not data:
                    return
                stdout.write(data)
                stdout.flush()
        except (OSError, ValueError):
            return
        finally:
            done.set()

    def input_() -> None:
        held = b""  # a ^P waiting to see whether ^Q follows
        try:
            while not done.is_set():
                data = _read_chunk(stdin)
                if not data:
                    if not raw:
                        # No more input, ever: every read of the remote TTY should see
                        # its end, also when a ^D sent early was lost as the program
                        # switched the TTY's mode (a shell starting up), so repeat it.
                        sock.send(held + EOT)
                        while not done.wait(EOT_REPEAT):
                            sock.send(EOT)
                    return
                data, held = held + data, b""
                if raw:
                    at = data.find(DETACH)
                    if at >= 0:
                        if at:
                            sock.send(data[:at])
                        done.set()
                        return
                    if data.endswith(DETACH[:1]):
                        data, held = data[:-1], DETACH[:1]
                if data:
                    sock.send(data)
        except (OSError, ValueError, EOFError):
            return

    threading.Thread(target=output, name="terminal-output", daemon=True).start()
    if send_input:
        threading.Thread(target=input_, name="terminal-input", daemon=True).start()
    while not done.wait(0.1):
        pass


def _read_chunk(stream: IO[bytes]) -> bytes:
    """What is there now (up to CHUNK bytes): a keystroke on a raw terminal, a pipe's buffer."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        read1 = getattr(stream, "read1", None)
        return bytes(read1(CHUNK) if read1 is not None else stream.read(CHUNK))
    return os.read(fd, CHUNK)


def _tty_fd(stream: Any) -> int | None:
    try:
        fd = int(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if os.isatty(fd) else None


def _terminal_size(fd: int | None) -> tuple[int, int] | None:
    if fd is None:
        return None
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.columns, size.lines


@contextmanager
def _raw_terminal(fd: int | None) -> Iterator[None]:
    if fd is None:
        yield
        return
    import termios
    import tty
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextmanager
def _on_resize(callback: Callable[[], None] | None) -> Iterator[None]:
    """Call `callback` (off the signal handler, in a thread) whenever the terminal resizes."""
    winch = getattr(signal, "SIGWINCH", None)
    if callback is None or winch is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(winch, lambda *_: threading.Thread(target=callback, daemon=True).start())
    try:
        yield
    finally:
        signal.signal(winch, previous)


# --- cp ---------------------------------------------------------------------------------------

def split_location(arg: str) -> tuple[str | None, str]:
    """`CONTAINER:PATH` → (container, path); a local path → (None, path).

    As with docker cp, a path that starts with / or . is always local, so a local file
    whose name has a colon can be named ./like:this.
    """
    if arg == STDIO or arg.startswith(("/", ".", "~")):
        return None, arg
    ident, sep, path = arg.partition(":")
    if sep and ident:
        return ident, path
    return None, arg


def _remote_path(path: str) -> tuple[str, bool, bool]:
    """(absolute normalised path, copy its contents only (ends in /.), must be a directory)."""
    contents = path == "." or path.endswith("/.")
    must_dir = contents or path.endswith("/")
    return posixpath.normpath(posixpath.join("/", path)), contents, must_dir


@container_app.command()
def cp(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="SOURCE", show_default=False)],
    destination: Annotated[str, typer.Argument(metavar="DEST", show_default=False)],
    capsule: CapsuleOpt = None,
    output: Annotated[Format, typer.Option(
        "--format", "-o", case_sensitive=False,
        help="table: a line on stderr; json: {source, destination, bytes} on stdout.")] = Format.table,
) -> None:
    """Copy files and directories between a container and this machine.

    One of SOURCE and DEST is CONTAINER:PATH (a relative PATH starts at /), the other a
    local path, or - for a tar stream on stdin/stdout. As with docker cp: a file is
    copied into DEST if DEST is a directory, else to DEST itself; a directory is copied
    into DEST if DEST exists, else becomes DEST; a source ending in /. copies the
    directory's contents. Links are copied as links. Files copied in belong to root;
    files copied out to you.

    Example:

      capsule container cp ./site web:/www
      capsule container cp web:/var/log/app.log .
      capsule container cp web:/etc/. ./etc-copy
    """
    src_ctr, src_path = split_location(source)
    dst_ctr, dst_path = split_location(destination)
    if (src_ctr is None) == (dst_ctr is None):
        raise _usage("exactly one of SOURCE and DEST must be CONTAINER:PATH "
                     "(start a local path with ./ if it contains a colon)", ctx=ctx)
    if src_path == STDIO and dst_path == STDIO:
        raise _usage("SOURCE and DEST cannot both be -", ctx=ctx)
    rt = _runtime(ctx)
    with _reporting(rt), _client(rt) as client:
        if src_ctr is not None:
            size = _copy_out(client, src_ctr, src_path, dst_path, capsule)
        else:
            assert dst_ctr is not None
            size = _copy_in(client, src_path, dst_ctr, dst_path, capsule)
    if dst_path == STDIO:
        return  # stdout holds the tar
    if output is Format.json:
        _echo_json({"source": source, "destination": destination, "bytes": size})
    else:
        typer.echo(f"copied {_size(size)} to {destination}", err=True)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1000
    return f"{n}B"


def _copy_out(client: ContainerClient, ident: str, path: str, dest: str, capsule: str | None) -> int:
    rpath, contents, must_dir = _remote_path(path)
    data, stat = client.get_archive(ident, rpath, capsule)
    if dest == STDIO:
        out = _binary_stdout()
        out.write(data)
        out.flush()
        return len(data)
    is_dir = bool(int(stat.get("mode") or 0) & GO_MODE_DIR)
    if must_dir and not is_dir:
        raise CliError(f"{ident}:{path}: not a directory")
    name = str(stat.get("name") or posixpath.basename(rpath))
    local = Path(dest)
    if is_dir:
        if local.exists() and not local.is_dir():
            raise CliError(f"cannot copy a directory to a file: {dest}")
        into = local.is_dir() and not contents and name not in ("/", "")
        target = local / name if into else local
    elif local.is_dir():
        target = local / name
    elif dest.endswith(os.sep):
        raise CliError(f"{dest}: no such directory")
    else:
        target = local
    parent = target.parent
    if not parent.is_dir():
        raise CliError(f"{parent}: no such directory")
    try:
        with tempfile.TemporaryDirectory(dir=parent, prefix=".capsule-cp-") as tmp:
            _extract(data, tmp)
            top = Path(tmp) if name in ("/", "") else Path(tmp) / name
            if not (top.exists() or top.is_symlink()):
                raise CliError(f"the archive of {ident}:{path} does not hold {name}")
            if is_dir and (target.is_dir() or top == Path(tmp)):
                shutil.copytree(top, target, symlinks=True, dirs_exist_ok=True)
            else:
                os.replace(top, target)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
    return len(data)


def _extract(data: bytes, dest: str) -> None:
    """Unpack a tar into `dest`; nothing may land outside it; files become the caller's."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(dest, filter=_as_caller)
                return
            for member in tar.getmembers():  # Python < 3.11.4: no extraction filters
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    raise CliError(f"the archive holds {member.name!r}, outside its directory")
            tar.extractall(dest)
    except tarfile.TarError as exc:
        raise CliError(f"cannot unpack the archive: {exc}") from None


def _as_caller(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    # The `tar` filter refuses paths outside `dest`; owner dropped: files copied out are ours.
    checked = tarfile.tar_filter(member, dest)
    return checked.replace(uid=None, gid=None, uname=None, gname=None, deep=False)  # type: ignore[arg-type]


def _copy_in(client: ContainerClient, src: str, ident: str, path: str, capsule: str | None) -> int:
    rpath, _, must_dir = _remote_path(path)
    uuid = str(client.get(ident, capsule)["uuid"])  # a clear 404 for the container itself
    if src == STDIO:
        data = _binary_stdin().read()
        _put(client, uuid, ident, rpath, data)
        return len(data)
    local = Path(src)
    if not (local.exists() or local.is_symlink()):
        raise CliError(f"{src}: no such file or directory")
    is_dir = local.is_dir() and not local.is_symlink()
    contents = src == "." or src.endswith(("/.", os.sep + "."))
    if contents and not is_dir:
        raise CliError(f"{src}: not a directory")
    # 1. DEST is an existing directory: SRC (or its contents) goes into it.
    name = local.resolve().name if local.name in ("", ".", "..") else local.name
    data = _tar(local, None if contents else name)
    try:
        client.put_archive(uuid, rpath, data)
        return len(data)
    except ApiError as exc:
        first = exc
    missing = first.status == 404
    # Docker's "extraction point is not a directory" reaches us as a server error.
    not_dir = first.status >= 500
    if not (missing or not_dir) or rpath == "/":
        raise first
    if must_dir:
        raise CliError(f"{ident}:{path}: " + ("no such directory" if missing else
                                              f"not a directory ({first.title})"))
    if not_dir and is_dir:
        raise CliError(f"cannot copy a directory to {ident}:{path}: not a directory "
                       f"({first.title})")
    # 2. DEST does not exist (a copy of SRC is made under that name in its parent
    #    directory), or 3. DEST is a file, which a file replaces.
    parent, base = posixpath.split(rpath)
    data = _tar(local, base)
    try:
        _put(client, uuid, ident, parent, data)
    except ApiError:
        if not_dir:
            raise first from None
        raise
    return len(data)


def _put(client: ContainerClient, uuid: str, ident: str, directory: str, data: bytes) -> None:
    try:
        client.put_archive(uuid, directory, data)
    except ApiError as exc:
        if exc.status == 404:
            raise CliError(f"{ident}:{directory}: no such directory") from None
        raise


def _tar(local: Path, top: str | None) -> bytes:
    """`local` as a tar: under the name `top`, or (top None) its entries at the top level.
    Owners become root, as docker cp does without -a."""
    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            if top is None:
                for child in sorted(local.iterdir()):
                    tar.add(child, arcname=child.name, filter=as_root)
            else:
                tar.add(local, arcname=top, filter=as_root)
    except OSError as exc:
        raise CliError(f"cannot read {exc.filename or local}: {exc.strerror or exc}") from None
    return buf.getvalue()
