"""`capsuled db`, `capsuled config` and `capsuled sweep`: the operator's maintenance
commands, which run beside a deployment rather than as part of it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from capsuled.cli.helptext import App
from capsuled.config import Settings
from capsuled.errors import CapsuledError

db_app = App(help="The database.")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, database_url: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL (postgresql+psycopg://…, mysql+pymysql://…, sqlite:///PATH). "
             "Default: the server's, from capsuled's --database-url or $CAPSULED_DATABASE_URL, "
             "else SQLite in the state directory.")] = None) -> None:
    """Create the schema on an empty database or migrate it to this version (idempotent)."""
    from capsuled.store.engine import make_engine, safe_url, upgrade

    settings: Settings = ctx.obj
    url = database_url or settings.effective_database_url()
    if url.startswith("sqlite:///"):
        # Private, like the state directory the server makes (make_engine makes the file 0600).
        Path(url.removeprefix("sqlite:///")).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        engine = make_engine(url)
        try:
            done = upgrade(engine)
        finally:
            engine.dispose()
    except CapsuledError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    where = safe_url(url)
    if done.before is None:
        typer.echo(f"{where}: created the schema at revision {done.after}")
    elif done.changed:
        typer.echo(f"{where}: migrated from revision {done.before} to {done.after}")
    else:
        typer.echo(f"{where}: already at revision {done.after}, nothing to do")


@db_app.command("recount")
def db_recount(ctx: typer.Context, repair: Annotated[bool, typer.Option(
        help="Set the totals that differ to the recount.")] = False,
        database_url: Annotated[str | None, typer.Option(
            help="SQLAlchemy URL; default: the server's (as for db upgrade).")] = None) -> None:
    """Recount what projects and hosts have claimed and compare it with the running totals
    that quotas and the scheduler read; exit 1 if they differ (and --repair was not given)."""
    from capsuled.store import usage
    from capsuled.store.engine import Store, make_engine, upgrade

    settings: Settings = ctx.obj
    try:
        engine = make_engine(database_url or settings.effective_database_url())
        try:
            upgrade(engine)
            with Store(engine).transaction() as s:
                drifts = usage.repair(s) if repair else usage.check(s)
        finally:
            engine.dispose()
    except CapsuledError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    for d in drifts:
        typer.echo(f"{d.kind} {d.key}: total {d.stored} but recount {d.counted}"
                   + (" (repaired)" if repair else ""))
    if not drifts:
        typer.echo("the running totals equal the recount")
    elif not repair:
        raise typer.Exit(1)


INSTANCE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")


def sweep_command(
    instance: Annotated[str, typer.Argument(help=(
        "The dead deployment's instance id (12 hex digits: `capsuled:INSTANCE:…` in its "
        "VXLAN devices' aliases, `ip -d link`; the API's GET /v1/agents/HOST)."))],
    netns: Annotated[Path | None, typer.Option(help=(
        "The network namespace the Docker Engine's bridges live in (agent.host_netns), "
        "e.g. /run/netns/NAME. Default: this one."))] = None,
) -> None:
    """Remove what a deployment whose agents are gone left in this host's kernel: its VXLAN
    devices, its iptables chains (overlay, security groups) and its services' nftables
    tables. Its Docker containers and networks are not touched. A live agent of that
    deployment would put everything back at its next relist: sweep dead ones only."""
    if not INSTANCE_RE.match(instance):
        raise typer.BadParameter("must be 1 to 64 letters, digits, '_', '.' or '-'",
                                 param_hint="INSTANCE")
    if netns is not None and not netns.exists():
        raise typer.BadParameter(f"{netns}: no such network namespace", param_hint="--netns")
    from capsuled.cli.host_networking import sweep

    try:
        gone = sweep(instance, netns)
    except CapsuledError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    for what in gone:
        typer.echo(f"removed {what}")
    if not gone:
        typer.echo(f"nothing of deployment {instance} here")


config_app = App(help="The configuration file.")


@config_app.command("sample")
def config_sample() -> None:
    """Print the documented configuration file: every option, commented out, with its
    default, its description and its environment variable."""
    from capsuled.config_file import render_sample

    typer.echo(render_sample(Settings), nl=False)
