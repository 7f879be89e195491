"""Administration commands: `capsule token`, `capsule quota`, `capsule host` and
`capsule service`. Most need an admin token; `quota show` works for a project's own
members too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import quote

import typer

from capsuled.cli.capsule.client import _Api, only
from capsuled.cli.capsule.output import (Format, FormatOpt, column, echo_data, emit_fields,
                                         emit_list)
from capsuled.cli.capsule.shared import each_or_exit, reporting, runtime_of, sub_app

token_app = sub_app("""Issue, list and revoke the server's own tokens (admin).

    A token stands for a user in a project with roles: admin (everything, every project),
    member (creates and acts within its project), reader (reads within its project),
    metrics (scrapes GET /metrics and nothing else). The plain token is printed once, at creation; the server keeps only its digest.

    Example:

      capsule token create --project team-a --user alice --role member --expires 30d
    """)
quota_app = sub_app("""Show and change a project's quotas.

    Resources: capsules, containers, cpu, memory (MiB), disk (GiB); -1 is unlimited.
    A capsule counts with its containers' CPU and memory and its volumes' sizes.
    """)
host_app = sub_app("The compute hosts and what is placed on them (admin).")
service_app = sub_app("""The agent service on each host (admin).

    A disabled or forced-down host gets no new capsules or containers; what runs there
    keeps running.
    """)


AGENT_BINARY = "capsuled-agent"


class AdminClient(_Api):
    """Administration: tokens (extension), quotas, hosts and their agent services."""

    def create_token(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/tokens", json=dict(body))

    def tokens(self, project: str | None = None) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/tokens", params=only(project_id=project))
                    .get("tokens") or [])

    def revoke_token(self, uuid: str) -> None:
        self._request("DELETE", f"/v1/tokens/{quote(uuid, safe='')}")

    def quota(self, project: str, usages: bool = True) -> dict[str, Any]:
        return self._json("GET", f"/v1/quotas/{quote(project, safe='')}",
                          params={"usages": "true"} if usages else None)

    def update_quota(self, project: str, limits: Mapping[str, float]) -> dict[str, Any]:
        return self._json("PUT", f"/v1/quotas/{quote(project, safe='')}", json=dict(limits))

    def reset_quota(self, project: str) -> None:
        self._request("DELETE", f"/v1/quotas/{quote(project, safe='')}")

    def hosts(self) -> list[dict[str, Any]]:
        return self._pages("/v1/hosts", "hosts", {})

    def host(self, ident: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/hosts/{quote(ident, safe='')}")

    def services(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/services").get("services") or [])

    def service_action(self, action: str, host: str, **extra: str | None) -> dict[str, Any]:
        """enable, disable (disabled_reason) or force_down (forced_down) a host's agent."""
        body = {"host": host, "binary": AGENT_BINARY, **{k: v for k, v in extra.items() if v is not None}}
        return self._json("PUT", f"/v1/services/{action}", json=body)


def _client(ctx: typer.Context) -> tuple[Any, AdminClient]:
    rt = runtime_of(ctx)
    return rt, AdminClient(rt.url, rt.token, transport=rt.transport)


TOKEN_COLUMNS = [column("UUID", "uuid"), column("PROJECT", "project_id"),
                 column("USER", "user_id"), column("ROLES", "roles"), column("HOST", "host"),
                 column("EXPIRES", "expires_at"), column("REVOKED", "revoked"),
                 column("DESCRIPTION", "description"), column("CREATED", "created_at", wide=True)]
QUOTA_COLUMNS = [column("RESOURCE", "resource"), column("LIMIT", "limit"),
                 column("IN USE", "in_use")]
HOST_COLUMNS = [column("HOSTNAME", "hostname"), column("STATE", "state"),
                column("ENABLED", "enabled"), column("ZONE", "availability_zone"),
                column("CPUS", "cpus"), column("CPU USED", "cpu_used"),
                column("MEM MiB", "mem_total"), column("MEM USED", "mem_used"),
                column("CONTAINERS", "total_containers"), column("LABELS", "labels"),
                column("UUID", "uuid", wide=True), column("DISK GiB", "disk_total", wide=True),
                column("DISK USED", "disk_used", wide=True), column("OS", "os", wide=True),
                column("KERNEL", "kernel_version", wide=True),
                column("RUNTIMES", "runtimes", wide=True)]
SERVICE_COLUMNS = [column("HOST", "host"), column("BINARY", "binary"), column("STATE", "state"),
                   column("DISABLED", "disabled"), column("REASON", "disabled_reason"),
                   column("FORCED DOWN", "forced_down"), column("LAST SEEN", "last_seen_up"),
                   column("ZONE", "availability_zone"), column("ID", "id", wide=True),
                   column("REPORTS", "report_count", wide=True)]


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
    if output.machine:
        echo_data(output, made)
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
    emit_list(output, found, "tokens", TOKEN_COLUMNS)


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
    if output.machine:
        echo_data(output, got)
        return
    rows = [{"resource": r, "limit": "unlimited" if v["limit"] == -1 else v["limit"],
             "in_use": v["in_use"]} for r, v in got.items()]
    emit_list(output, rows, "quotas", QUOTA_COLUMNS)


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
    if output.machine:
        echo_data(output, got)
    else:
        emit_list(output, [{"resource": r, "limit": v} for r, v in got.items()], "quotas",
                  QUOTA_COLUMNS[:2])


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
    emit_list(output, found, "hosts", HOST_COLUMNS)


@host_app.command("show")
def host_show(ctx: typer.Context, ident: Annotated[str, typer.Argument(
        metavar="HOST", help="Host name or uuid.")], output: FormatOpt = Format.table) -> None:
    """One host in detail."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.host(ident)
    emit_fields(output, got)


@service_app.command("list")
def service_list(ctx: typer.Context, output: FormatOpt = Format.table) -> None:
    """Each host's agent: up or down, enabled or not, last heartbeat."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        found = client.services()
    emit_list(output, found, "services", SERVICE_COLUMNS)


HostArg = Annotated[str, typer.Argument(metavar="HOST", help="The host's name.")]


def _service_change(ctx: typer.Context, action: str, host: str, output: Format,
                    **extra: str | None) -> None:
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.service_action(action, host, **extra)
    emit_fields(output, got["service"])


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
