"""Administration commands: `capsule token`, `capsule quota`, `capsule host` and
`capsule service`. Most need an admin token; `quota show` works for a project's own
members too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer

from capsuled.cli.capsule import render
from capsuled.cli.capsule.client import AdminClient
from capsuled.cli.capsule.shared import (Format, FormatOpt, each_or_exit, echo_json,
                                         reporting, runtime_of)

_SETTINGS: dict[str, Any] = {"no_args_is_help": True, "add_completion": False, "rich_markup_mode": "rich",
             "context_settings": {"help_option_names": ["-h", "--help"]}}

token_app = typer.Typer(help="""Issue, list and revoke the server's own tokens (admin).

    A token stands for a user in a project with roles: admin (everything, every project),
    member (creates and acts within its project), reader (reads within its project),
    metrics (scrapes GET /metrics and nothing else). The plain token is printed once, at creation; the server keeps only its digest.

    Example:

      capsule token create --project team-a --user alice --role member --expires 30d
    """, **_SETTINGS)
quota_app = typer.Typer(help="""Show and change a project's quotas.

    Resources: capsules, containers, cpu, memory (MiB), disk (GiB); -1 is unlimited.
    A capsule counts with its containers' CPU and memory and its volumes' sizes.
    """, **_SETTINGS)
host_app = typer.Typer(help="The compute hosts and what is placed on them (admin).", **_SETTINGS)
service_app = typer.Typer(help="""The agent service on each host (admin).

    A disabled or forced-down host gets no new capsules or containers; what runs there
    keeps running.
    """, **_SETTINGS)


def _client(ctx: typer.Context) -> tuple[Any, AdminClient]:
    rt = runtime_of(ctx)
    return rt, AdminClient(rt.url, rt.token, transport=rt.transport)


def _table(rows: Sequence[Mapping[str, Any]], columns: list[tuple[str, str]]) -> None:
    table = render._table(*(title for title, _ in columns))
    for row in rows:
        table.add_row(*(render.text(_cell(row.get(key))) for _, key in columns))
    render.emit(render.make_console(), table)


def _fields(row: Mapping[str, Any]) -> None:
    table = render._table("FIELD", "VALUE")
    for key, value in row.items():
        if key != "links":
            table.add_row(key, render.text(_cell(value)))
    render.emit(render.make_console(), table)


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return render.pairs(value) or None
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or None
    return value


# --- tokens ---------------------------------------------------------------------------------

@token_app.command("create")
def token_create(
    ctx: typer.Context,
    project: Annotated[str, typer.Option("--project", "-p", help="Project the token acts in.")],
    user: Annotated[str, typer.Option("--user", "-u", help="User the token stands for.")],
    role: Annotated[list[str] | None, typer.Option(
        "--role", "-r", help="admin, member, reader, agent or metrics; repeat for several "
        "(default member).")] = None,
    expires: Annotated[str | None, typer.Option(
        help="Lifetime: seconds, or 90m, 12h, 30d, 2w. Default: no expiry.")] = None,
    description: Annotated[str | None, typer.Option(help="A note for `token list`.")] = None,
    host: Annotated[str | None, typer.Option(
        help="With --role agent: the one host whose agent channel the token may use.")] = None,
    output: FormatOpt = Format.table,
) -> None:
    """Issue a token and print it (once: only its digest is kept).

    An agent token (--role agent --host NAME) lets `capsuled agent` on that host reach its
    own assignments and nothing else; a metrics token (--role metrics) lets Prometheus
    scrape GET /metrics and nothing else.
    """
    rt, client = _client(ctx)
    body: dict[str, Any] = {"project_id": project, "user_id": user, "roles": role or ["member"]}
    if expires is not None:
        body["expires_in"] = expires
    if description is not None:
        body["description"] = description
    if host is not None:
        body["host"] = host
    with reporting(rt), client:
        made = client.create_token(body)
    if output is Format.json:
        echo_json(made)
        return
    typer.echo(made["token"])
    typer.echo(f"(uuid {made['uuid']}; {made['user_id']} in {made['project_id']} as "
               f"{', '.join(made['roles'])}; expires {made['expires_at'] or 'never'}. "
               "This is the only time the token is shown.)", err=True)


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project's.")] = None,
    output: FormatOpt = Format.table,
) -> None:
    """List tokens (never their values)."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        found = client.tokens(project)
    if output is Format.json:
        echo_json(found)
    else:
        _table(found, [("UUID", "uuid"), ("PROJECT", "project_id"), ("USER", "user_id"),
                       ("ROLES", "roles"), ("HOST", "host"), ("EXPIRES", "expires_at"),
                       ("REVOKED", "revoked"),
                       ("DESCRIPTION", "description")])


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, uuids: Annotated[list[str], typer.Argument(
        metavar="UUID...", help="Tokens to revoke (see `token list`).")]) -> None:
    """Revoke tokens: they stop working at once."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        each_or_exit(rt, uuids, client.revoke_token, lambda uuid: f"revoked {uuid}")


# --- quotas ---------------------------------------------------------------------------------

ProjectArg = Annotated[str, typer.Argument(metavar="PROJECT", help="A project id.")]


@quota_app.command("show")
def quota_show(ctx: typer.Context, project: ProjectArg, output: FormatOpt = Format.table) -> None:
    """A project's limits and what it uses now."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.quota(project, usages=True)
    if output is Format.json:
        echo_json(got)
        return
    rows = [{"resource": r, "limit": "unlimited" if v["limit"] == -1 else v["limit"],
             "in_use": v["in_use"]} for r, v in got.items()]
    _table(rows, [("RESOURCE", "resource"), ("LIMIT", "limit"), ("IN USE", "in_use")])


@quota_app.command("update")
def quota_update(
    ctx: typer.Context, project: ProjectArg,
    capsules: Annotated[int | None, typer.Option(min=-1, help="Capsules.")] = None,
    containers: Annotated[int | None, typer.Option(min=-1, help="Containers, capsules' included.")] = None,
    cpu: Annotated[float | None, typer.Option(min=-1, help="CPUs.")] = None,
    memory: Annotated[int | None, typer.Option(min=-1, help="MiB.")] = None,
    disk: Annotated[int | None, typer.Option(min=-1, help="GiB.")] = None,
    output: FormatOpt = Format.table,
) -> None:
    """Set some of a project's limits (admin); -1 is unlimited."""
    limits = {k: v for k, v in (("capsules", capsules), ("containers", containers), ("cpu", cpu),
                                ("memory", memory), ("disk", disk)) if v is not None}
    if not limits:
        raise typer.BadParameter("give at least one of --capsules, --containers, --cpu, "
                                 "--memory, --disk")
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.update_quota(project, limits)
    if output is Format.json:
        echo_json(got)
    else:
        _table([{"resource": r, "limit": v} for r, v in got.items()],
               [("RESOURCE", "resource"), ("LIMIT", "limit")])


@quota_app.command("reset")
def quota_reset(ctx: typer.Context, project: ProjectArg) -> None:
    """Put a project back on the default limits (admin)."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        client.reset_quota(project)
    typer.echo(f"{project}: back to the default quotas")


# --- hosts and services -----------------------------------------------------------------------

@host_app.command("list")
def host_list(ctx: typer.Context, output: FormatOpt = Format.table) -> None:
    """Hosts with their capacity and what is claimed on them."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        found = client.hosts()
    if output is Format.json:
        echo_json(found)
    else:
        _table(found, [("HOSTNAME", "hostname"), ("STATE", "state"), ("ENABLED", "enabled"),
                       ("ZONE", "availability_zone"), ("CPUS", "cpus"), ("CPU USED", "cpu_used"),
                       ("MEM MiB", "mem_total"), ("MEM USED", "mem_used"),
                       ("CONTAINERS", "total_containers"), ("LABELS", "labels")])


@host_app.command("show")
def host_show(ctx: typer.Context, ident: Annotated[str, typer.Argument(
        metavar="HOST", help="Host name or uuid.")], output: FormatOpt = Format.table) -> None:
    """One host in detail."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.host(ident)
    if output is Format.json:
        echo_json(got)
    else:
        _fields(got)


@service_app.command("list")
def service_list(ctx: typer.Context, output: FormatOpt = Format.table) -> None:
    """Each host's agent: up or down, enabled or not, last heartbeat."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        found = client.services()
    if output is Format.json:
        echo_json(found)
    else:
        _table(found, [("HOST", "host"), ("BINARY", "binary"), ("STATE", "state"),
                       ("DISABLED", "disabled"), ("REASON", "disabled_reason"),
                       ("FORCED DOWN", "forced_down"), ("LAST SEEN", "last_seen_up"),
                       ("ZONE", "availability_zone")])


HostArg = Annotated[str, typer.Argument(metavar="HOST", help="The host's name.")]


def _service_change(ctx: typer.Context, action: str, host: str, output: Format,
                    **extra: str | None) -> None:
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.service_action(action, host, **extra)
    if output is Format.json:
        echo_json(got["service"])
    else:
        _fields(got["service"])


@service_app.command("disable")
def service_disable(ctx: typer.Context, host: HostArg, reason: Annotated[str | None, typer.Option(
        help="Why, shown in `service list`.")] = None, output: FormatOpt = Format.table) -> None:
    """Stop scheduling onto a host (for maintenance); what runs there keeps running."""
    _service_change(ctx, "disable", host, output, disabled_reason=reason)


@service_app.command("enable")
def service_enable(ctx: typer.Context, host: HostArg, output: FormatOpt = Format.table) -> None:
    """Schedule onto a host again."""
    _service_change(ctx, "enable", host, output)


@service_app.command("force-down")
def service_force_down(ctx: typer.Context, host: HostArg, unset: Annotated[bool, typer.Option(
        "--unset", help="Clear the mark instead.")] = False,
        output: FormatOpt = Format.table) -> None:
    """Mark a host down now, without waiting for its heartbeats to stop."""
    _service_change(ctx, "force_down", host, output, forced_down="false" if unset else "true")
