"""Container commands that change a container: delete, start, stop, restart, pause,
unpause, kill, rename and update."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from capsuled.cli.capsule.container_common import (
    IdentArg,
    IdentsArg,
    WaitSecondsOpt,
    checked,
    container_client,
    for_each,
    parse_memory,
    positive,
)
from capsuled.cli.capsule.output import Format, FormatOpt, echo_data
from capsuled.cli.capsule.shared import UsageProblem, reporting, runtime_of


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
    rt = runtime_of(ctx)
    for_each(rt, idents, output, "deleted",
             lambda client, ident: client.delete(ident, force=force, stop=stop))


def start(ctx: typer.Context, idents: IdentsArg, output: FormatOpt = Format.table) -> None:
    """Start stopped (or created) bare containers.

    Example:

      capsule container start web
    """
    for_each(runtime_of(ctx), idents, output, "started",
             lambda client, ident: client.action(ident, "start"))


def stop(ctx: typer.Context, idents: IdentsArg, timeout: WaitSecondsOpt = None,
         output: FormatOpt = Format.table) -> None:
    """Stop running bare containers: SIGTERM, then SIGKILL after the timeout.

    A stopped container stays stopped (its restart policy does not bring it back) until
    `container start`.

    Example:

      capsule container stop --timeout 2 web
    """
    for_each(runtime_of(ctx), idents, output, "stopped",
             lambda client, ident: client.action(ident, "stop", timeout=timeout))


def restart(ctx: typer.Context, idents: IdentsArg, timeout: WaitSecondsOpt = None,
            output: FormatOpt = Format.table) -> None:
    """Restart bare containers (stop as `container stop` does, then start again).

    Example:

      capsule container restart web
    """
    for_each(runtime_of(ctx), idents, output, "restarted",
             lambda client, ident: client.action(ident, "reboot", timeout=timeout))


def pause(ctx: typer.Context, idents: IdentsArg, output: FormatOpt = Format.table) -> None:
    """Freeze every process of running bare containers (cgroup freezer) until unpause.

    Example:

      capsule container pause web
    """
    for_each(runtime_of(ctx), idents, output, "paused",
             lambda client, ident: client.action(ident, "pause"))


def unpause(ctx: typer.Context, idents: IdentsArg, output: FormatOpt = Format.table) -> None:
    """Let paused bare containers run again.

    Example:

      capsule container unpause web
    """
    for_each(runtime_of(ctx), idents, output, "unpaused",
             lambda client, ident: client.action(ident, "unpause"))


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
    for_each(runtime_of(ctx), idents, output, "killed" if signal_ is None else f"sent {signal_}",
             lambda client, ident: client.action(ident, "kill", signal=signal_))


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
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        body = client.rename(ident, new_name)
    if output.machine:
        echo_data(output, body)
    else:
        typer.echo(f"container/{ident} renamed to {body.get('name') or new_name}")


def update(
    ctx: typer.Context,
    ident: IdentArg,
    cpu: Annotated[float | None, typer.Option(
        "--cpu", callback=positive, show_default=False, help="New CPU limit in cores.")] = None,
    memory: Annotated[str | None, typer.Option(
        "--memory", "-m", metavar="MiB", show_default=False, callback=checked(parse_memory),
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
    mem = parse_memory(memory)
    if mem is not None:
        changes["memory"] = str(mem)
    if not changes:
        raise UsageProblem("nothing to change: give --cpu and/or --memory", ctx=ctx)
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        # The server finds a capsule's container for an update by uuid only; --capsule
        # lets it be named, so look the uuid up first.
        target = str(client.get(ident, capsule)["uuid"]) if capsule else ident
        body = client.update(target, changes, capsule)
    if output.machine:
        echo_data(output, body)
    else:
        what = ", ".join(f"{k} {v}" + (" MiB" if k == "memory" else "") for k, v in changes.items())
        typer.echo(f"container/{ident} updated ({what})")
