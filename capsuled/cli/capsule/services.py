"""`capsule svc`: your project's capsule services (create, list, show, delete): a virtual
address and name in the project's network over its ready capsules that carry the
selector's labels. (`capsule service` is Zun's: the compute hosts.)"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import quote

import typer

from capsuled.cli.capsule import render
from capsuled.cli.capsule.client import Bodies, _Api
from capsuled.cli.capsule.output import (Format, FormatOpt, column, echo_data, emit_list,
                                         fields_table, table_of)
from capsuled.cli.capsule.shared import Runtime, each_or_exit, reporting, runtime_of, sub_app

svc_app = sub_app("""Your project's capsule services: a stable virtual address
    (VIP) and name inside the project's network that spreads connections over its ready
    capsules whose labels match the selector, on every host. A capsule that is not ready
    (its readiness probe), or is being deleted, gets no new connections.

    Example:

      capsule svc create web -l app=web -p 80:8080
      capsule svc create dns -l app=dns -p 53/udp --publish 53=30053
      capsule svc show web
    """)

IdentArg = Annotated[str, typer.Argument(metavar="NAME|UUID", help="The service.")]
_PORT = re.compile(r"^(\d+)(?::(\d+))?(?:/(tcp|udp))?\Z", re.I)
_PUBLISH = re.compile(r"^(\d+)(?:/(tcp|udp))?=(\d+)\Z", re.I)


class ServiceClient(_Api):
    def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/capsule_services", json=fields)

    def list(self, all_projects: bool) -> Bodies:
        params = {"all_projects": "true"} if all_projects else {}
        return list(self._json("GET", "/v1/capsule_services", params=params)["capsule_services"])

    def get(self, ident: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/capsule_services/{quote(ident, safe='')}")

    def delete(self, ident: str) -> None:
        self._request("DELETE", f"/v1/capsule_services/{quote(ident, safe='')}")


def _client(ctx: typer.Context) -> tuple[Runtime, ServiceClient]:
    rt = runtime_of(ctx)
    return rt, ServiceClient(rt.url, rt.token, transport=rt.transport)


def parse_ports(ports: list[str], publish: list[str]) -> list[dict[str, Any]]:
    """-p PORT[:TARGET][/tcp|udp] and --publish PORT[/PROTO]=HOSTPORT as the API's ports."""
    out: list[dict[str, Any]] = []
    for spec in ports:
        m = _PORT.match(spec.strip())
        if m is None:
            raise typer.BadParameter(f"{spec!r}: expected PORT[:TARGET_PORT][/tcp|udp], "
                                     "e.g. 80:8080", param_hint="'--port'")
        port = int(m.group(1))
        out.append({"port": port, "targetPort": int(m.group(2) or port),
                    "protocol": (m.group(3) or "tcp").upper()})
    for spec in publish:
        m = _PUBLISH.match(spec.strip())
        if m is None:
            raise typer.BadParameter(f"{spec!r}: expected PORT[/tcp|udp]=HOST_PORT, e.g. "
                                     "80=30080", param_hint="'--publish'")
        port, proto = int(m.group(1)), (m.group(2) or "tcp").upper()
        found = next((p for p in out if p["port"] == port and p["protocol"] == proto), None)
        if found is None:
            raise typer.BadParameter(f"{spec!r}: {proto} port {port} is not one of the "
                                     "service's --port", param_hint="'--publish'")
        found["publish"] = int(m.group(3))
    return out


def _selector(labels: list[str]) -> dict[str, str]:
    out = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. -l app=web",
                                     param_hint="'--selector'")
        out[key] = value
    return out


def ports_text(svc: dict[str, Any]) -> str:
    parts = []
    for p in svc.get("ports") or []:
        text = f"{p['port']}→{p['targetPort']}/{p['protocol']}"
        if p.get("publish"):
            text += f" (host {p['publish']})"
        parts.append(text)
    return ", ".join(parts)


def backends_text(svc: dict[str, Any]) -> str:
    backends = svc.get("backends") or []
    return f"{sum(1 for b in backends if b.get('serving'))}/{len(backends)}"


COLUMNS = [column("NAME", "name"), column("VIP", "vip"), column("PORTS", ports_text),
           column("SELECTOR", "selector"), column("SERVING", backends_text),
           column("AGE", lambda s: render.age(s.get("created_at"))),
           column("UUID", "uuid", wide=True), column("DNS NAME", "dns_name", wide=True),
           column("PROJECT", "project_id", wide=True)]
FIELDS = [column("name", "name"), column("uuid", "uuid"), column("vip", "vip"),
          column("dns name", "dns_name"), column("ports", ports_text),
          column("selector", "selector"), column("project", "project_id"),
          column("created", "created_at")]
BACKENDS = [column("BACKEND", "name"), column("UUID", "uuid"), column("ADDRESS", "addr"),
            column("SERVING", lambda b: "yes" if b.get("serving") else "no")]


def _show(svc: dict[str, Any], output: Format) -> None:
    if output.machine:
        echo_data(output, svc)
        return
    console = render.make_console()
    render.emit(console, fields_table(svc, FIELDS))
    console.print()
    render.emit(console, table_of(svc.get("backends") or [], BACKENDS, output is Format.wide))


@svc_app.command("create")
def create(ctx: typer.Context, name: Annotated[str, typer.Argument(
               help="Its name: what the project's capsules resolve to its address.")],
           selector: Annotated[list[str], typer.Option(
               "--selector", "-l", metavar="KEY=VALUE",
               help="Capsule label a backend must carry (repeatable; all must match).")],
           port: Annotated[list[str], typer.Option(
               "--port", "-p", metavar="PORT[:TARGET][/tcp|udp]",
               help="A port of the service and the capsules' port it goes to (repeatable).")],
           publish: Annotated[list[str] | None, typer.Option(
               "--publish", metavar="PORT[/PROTO]=HOST_PORT",
               help="Also open a service port on this port of every host.")] = None,
           output: FormatOpt = Format.table) -> None:
    """Create a service over your capsules whose labels match the selector."""
    fields = {"name": name, "selector": _selector(selector),
              "ports": parse_ports(port, publish or [])}
    rt, client = _client(ctx)
    with reporting(rt), client:
        made = client.create(fields)
    _show(made, output)


@svc_app.command("list")
def list_(ctx: typer.Context, all_projects: Annotated[bool, typer.Option(
        "--all-projects", help="Every project's (admin).")] = False,
        output: FormatOpt = Format.table) -> None:
    """List your project's services: address, ports, selector, serving backends."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        rows = client.list(all_projects)
    emit_list(output, rows, "services", COLUMNS)


@svc_app.command("show")
def show(ctx: typer.Context, ident: IdentArg, output: FormatOpt = Format.table) -> None:
    """Show one service and its backends (which capsules it picks, which serve now)."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.get(ident)
    _show(got, output)


@svc_app.command("delete")
def delete(ctx: typer.Context, idents: Annotated[list[str], typer.Argument(
        metavar="NAME|UUID...", help="Services to delete.")]) -> None:
    """Delete services (their address and published ports are free again at once)."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        each_or_exit(rt, idents, client.delete, lambda ident: f"svc/{ident} deleted")
