"""`capsule run` and `capsule container …`: single containers, bare or inside a capsule.

A bare container lives on its own, as with `docker run`. `run --capsule NAME` adds one to
a running capsule instead: it joins the capsule's sandbox (network, IPC, PID and UTS
namespaces) and can mount its volumes, and its lifecycle is then the capsule's, so
start/stop/kill/delete of it are refused by the server. Reads work on every container:
show, logs, exec, attach, cp, top, stats.

Everything goes through the server's /v1/containers API (client.ContainerClient). This
module holds the `capsule container` sub-app and the commands that read (list, show,
logs, top, stats, actions); `run` is in container_run, the changing commands in
container_lifecycle, exec and attach in terminal, cp in archives; main registers them all.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from capsuled.cli.capsule import render, suggest
from capsuled.cli.capsule.client import ApiError, CapsuleClient, CliError, ContainerClient
from capsuled.cli.capsule.container_common import (
    INTERRUPTED,
    CapsuleOpt,
    IdentArg,
    IdentsArg,
    binary_stdout,
    container_client,
    parse_tail,
    since_epoch,
    trailing_words,
)
from capsuled.cli.capsule.output import Format, FormatOpt, column, echo_data, emit_list
from capsuled.cli.capsule.shared import (
    UsageProblem,
    reporting,
    runtime_of,
    show_each,
    sub_app,
)

container_app = sub_app(
    """Manage single containers: bare ones, and (read-only, mostly) a capsule's.

    Bare containers are made with `capsule run`. A capsule's containers are listed with
    --capsule NAME; by uuid every command finds them, by name only with --capsule. Their
    lifecycle (start, stop, kill, delete, rename) follows the capsule and is refused.

    Example:

      capsule run --name web -l app=web busybox httpd -f -p 8080
      capsule container logs -f web
      capsule container exec -it web sh
    """)

COLUMNS = [
    column("UUID", "uuid"), column("NAME", "name"), column("IMAGE", "image"),
    column("COMMAND", lambda c: render.command_line(c.get("command"))),
    column("STATUS", render.container_status),
    column("RESTARTS", lambda c: c.get("restart_count", 0)),
    column("AGE", lambda c: render.age(c.get("created_at"))),
    column("CAPSULE", "capsule_id", wide=True),
    column("HOST", "host", wide=True),  # admins only: others see `-`
    column("ADDRESSES", lambda c: render.addresses(c.get("addresses")), wide=True),
    column("PORTS", render.published, wide=True), column("LABELS", "labels", wide=True),
    column("CREATED", lambda c: render.clock(c.get("created_at")), wide=True),
]


def _result(action: dict[str, Any]) -> Text:
    if not action.get("finish_time"):
        return Text(render.NONE)
    failed = bool(action.get("message"))
    return Text("Error" if failed else "Success", style="red" if failed else "")


ACTION_COLUMNS = [
    column("ACTION", "action"), column("REQUEST ID", "request_id"),
    column("STARTED", lambda a: render.clock(a.get("start_time"))),
    column("FINISHED", lambda a: render.clock(a.get("finish_time"))),
    column("RESULT", _result), column("MESSAGE", "message"),
    column("USER", "user_id", wide=True), column("PROJECT", "project_id", wide=True),
]


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
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        found = client.list(capsule, all_projects)
    emit_list(output, found, "containers", COLUMNS)


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
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        def fetch(ident: str) -> tuple[dict[str, Any], Any]:
            body = client.get(ident, capsule)
            return body, render.show_container(body)
        show_each(rt, output, idents, fetch)


def logs(
    ctx: typer.Context,
    ident: IdentArg,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing new output until the container "
                                              "stops or Ctrl-C.")] = False,
    timestamps: Annotated[bool, typer.Option("--timestamps", "-t",
                                             help="Prefix each line with its RFC 3339 time.")] = False,
    tail: Annotated[str | None, typer.Option(
        "--tail", "-n", metavar="N", show_default=False, callback=parse_tail,
        help="Only the last N lines (or all).")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="WHEN", show_default=False,
        help="Only output since WHEN: epoch seconds, 'YYYY-MM-DD HH:MM:SS', or a duration "
             "ago (30s, 10m, 1h30m, 2d).")] = None,
    stdout: Annotated[bool, typer.Option("--stdout/--no-stdout", help="Include stdout.")] = True,
    stderr: Annotated[bool, typer.Option("--stderr/--no-stderr", help="Include stderr.")] = True,
    capsule: CapsuleOpt = None,
    output: Annotated[Format, typer.Option(
        "--output", "-o", "--format", case_sensitive=False,
        help="table: the bytes as written (default); json or yaml: one string (not with -f).")] = Format.table,
) -> None:
    """Print a container's output (stdout and stderr), byte for byte.

    The bytes go to stdout exactly as the container wrote them (binary output included),
    with both of its streams interleaved.

    Example:

      capsule container logs --tail 20 web
      capsule container logs -f --since 10m web
    """
    if follow and output.machine:
        raise UsageProblem("--follow streams raw output; it cannot be combined with --format json",
                           ctx=ctx)
    if not stdout and not stderr:
        raise UsageProblem("--no-stdout and --no-stderr together leave nothing to print", ctx=ctx)
    params: dict[str, str | None] = {
        "stdout": None if stdout else "false", "stderr": None if stderr else "false",
        "timestamps": "true" if timestamps else None, "tail": tail,
        "since": since_epoch(since)}
    rt = runtime_of(ctx)
    out = binary_stdout()
    with reporting(rt), container_client(rt) as client:
        if not follow:
            data = client.logs(ident, capsule, **params)
            if output.machine:
                echo_data(output, data.decode("utf-8", "replace"))
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



def pod_logs(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False,
                                        help="A capsule (or a bare container), by name or uuid.")],
    container: Annotated[str | None, typer.Option(
        "--container", "-c", metavar="CONTAINER", show_default=False,
        help="Which of the capsule's containers (needed when it has more than one).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output until "
                                         "the container stops or Ctrl-C.")] = False,
    timestamps: Annotated[bool, typer.Option("--timestamps", "-t",
                                             help="Prefix each line with its RFC 3339 time.")] = False,
    tail: Annotated[str | None, typer.Option(
        "--tail", "-n", metavar="N", show_default=False, callback=parse_tail,
        help="Only the last N lines (or all).")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="WHEN", show_default=False,
        help="Only output since WHEN: epoch seconds, 'YYYY-MM-DD HH:MM:SS', or a duration "
             "ago (30s, 10m, 1h30m, 2d).")] = None,
) -> None:
    """Print the output of a capsule's container, as `kubectl logs POD -c CONTAINER` does.

    Without -c a capsule with one container shows that one; with several, the error lists
    their names. A NAME that is no capsule is taken as a bare container's.

    Example:

      capsule logs web-demo
      capsule logs web-demo -c sidecar -f --tail 20
    """
    rt = runtime_of(ctx)
    capsule: str | None = name
    ident = container
    if ident is None:
        with reporting(rt), rt.client() as client:
            try:
                members = [c.get("name") for c in client.get(name).get("containers", [])]
            except ApiError as exc:
                if exc.status != 404:
                    raise
                members, capsule, ident = [], None, name  # a bare container, as docker logs
                with container_client(rt) as bare:
                    try:
                        bare.get(name)
                    except ApiError as missing:
                        if missing.status != 404:
                            raise
                        raise CliError(f"no capsule or bare container is named {name}",
                                       hints=_logs_hints(client, bare, name)) from None
        if capsule is not None:
            if len(members) != 1:
                raise UsageProblem(f"capsule {name} has containers {', '.join(map(str, members))}:"
                                   " say which with -c CONTAINER", ctx=ctx)
            ident = str(members[0])
    assert ident is not None
    logs(ctx, ident, follow=follow, timestamps=timestamps, tail=tail, since=since, stdout=True,
         stderr=True, capsule=capsule, output=Format.table)

def _logs_hints(capsules: CapsuleClient, bare: ContainerClient, name: str) -> list[str]:
    """For `capsule logs NAME` where NAME is neither: the capsules that have a container of
    that name (then -c), or names like it."""
    try:
        found, lone = capsules.first_page(), bare.first_page()
    except CliError:
        return []
    mine = suggest.owners(name, found)
    if mine:
        return [f"{name} is a container of capsule {', '.join(mine)}: "
                f"capsule logs {mine[0]} -c {name}"]
    names = [str(c.get("name")) for c in [*found, *lone] if c.get("name")]
    return suggest.did_you_mean(name, names) + ["`capsule list` shows capsules, "
                                                "`capsule container list` bare containers"]


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
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        found = client.top(ident, " ".join(trailing_words(ps_args)) or None, capsule)
    if output.machine:
        echo_data(output, found)
    else:
        render.emit(render.make_console(), render.top_table(found))


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
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        found = client.stats(ident, capsule)
    if output.machine:
        echo_data(output, found)
    else:
        render.emit(render.make_console(), render.stats_table(found))


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
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        found = client.actions(ident)
    emit_list(output, found, "actions", ACTION_COLUMNS)
