"""`capsule security-group`: your project's security groups (create, list, show, set,
delete). A rule is written PROTOCOL[:PORT[-PORT]][@SOURCE], SOURCE a network (CIDR) or
another group's name (`default`: the whole project); no @SOURCE: any source. The server
checks everything; this module only spells the rules as JSON."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import quote

import typer

from capsuled.cli.capsule.client import Bodies, _Api
from capsuled.cli.capsule.output import Format, FormatOpt, column, emit_fields, emit_list
from capsuled.cli.capsule.shared import each_or_exit, reporting, runtime_of, sub_app

security_group_app = sub_app("""Your project's security groups.

    A capsule (template spec.securityGroups) or container (run --security-group) is in
    one or more groups, `default` unless it says otherwise; what reaches it is what a
    rule of one of its groups admits; the rest is dropped. `default` admits the whole
    project.

    Example:

      capsule security-group create web --rule tcp:8080@default --rule icmp
      capsule security-group set web --rule tcp:8080-8090@10.0.0.0/8
    """)

_RULE = re.compile(r"^(?P<proto>[a-zA-Z]+)(?::(?P<low>\d{1,5})(?:-(?P<high>\d{1,5}))?)?"
                   r"(?:@(?P<source>\S+))?\Z")
IdentArg = Annotated[str, typer.Argument(metavar="NAME|UUID", help="The security group.")]
RuleOpt = Annotated[list[str] | None, typer.Option(
    "--rule", "-r", metavar="PROTO[:PORT[-PORT]][@SOURCE]",
    help="An ingress rule (repeatable): PROTO tcp, udp, icmp or any; SOURCE a CIDR or a "
         "group (default: the whole project); e.g. tcp:8080@default, udp:53@10.0.0.0/8.")]


def parse_rule(text: str) -> dict[str, Any]:
    """tcp:8080-8090@default → Neutron's rule fields (the server validates them)."""
    m = _RULE.match(text.strip())
    if m is None:
        raise typer.BadParameter(f"{text!r}: write PROTO[:PORT[-PORT]][@SOURCE], e.g. "
                                 "tcp:8080@default", param_hint="--rule")
    rule: dict[str, Any] = {"protocol": m["proto"].lower()}
    if m["low"] is not None:
        rule["port_range_min"] = int(m["low"])
        rule["port_range_max"] = int(m["high"] or m["low"])
    source = m["source"]
    if source is not None:
        looks_like_network = re.fullmatch(r"[0-9.]+(/\d{1,2})?", source) is not None
        rule["remote_ip_prefix" if looks_like_network else "remote_group"] = source
    return rule


def describe_rule(rule: dict[str, Any]) -> str:
    """The rule as --rule spells it."""
    text = str(rule.get("protocol", "any"))
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    if low is not None:
        text += f":{low}" + (f"-{high}" if high not in (None, low) else "")
    source = rule.get("remote_group") or rule.get("remote_ip_prefix")
    return text + (f"@{source}" if source else "")


class SecurityGroupClient(_Api):
    def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/security_groups", json=fields)

    def list(self, all_projects: bool) -> Bodies:
        params = {"all_projects": "true"} if all_projects else {}
        return list(self._json("GET", "/v1/security_groups", params=params)["security_groups"])

    def get(self, ident: str) -> dict[str, Any]:
        return self._json("GET", self._path(ident))

    def update(self, ident: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self._json("PATCH", self._path(ident), json=fields)

    def delete(self, ident: str) -> None:
        self._request("DELETE", self._path(ident))

    @staticmethod
    def _path(ident: str) -> str:
        return f"/v1/security_groups/{quote(ident, safe='')}"


def _client(ctx: typer.Context) -> tuple[Any, SecurityGroupClient]:
    rt = runtime_of(ctx)
    return rt, SecurityGroupClient(rt.url, rt.token, transport=rt.transport)


def rules_text(group: Mapping[str, Any]) -> str:
    return ", ".join(describe_rule(r) for r in group.get("rules") or [])


COLUMNS = [column("UUID", "uuid"), column("NAME", "name"), column("RULES", rules_text),
           column("DESCRIPTION", "description"), column("PROJECT", "project_id", wide=True),
           column("CREATED", "created_at", wide=True)]
CELLS = {"rules": rules_text}


@security_group_app.command("create")
def create(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Unique in the project.")],
           rule: RuleOpt = None,
           description: Annotated[str | None, typer.Option("--description", "-d")] = None,
           output: FormatOpt = Format.table) -> None:
    """Make a group of ingress rules (none: nothing reaches its members)."""
    fields: dict[str, Any] = {"name": name, "rules": [parse_rule(r) for r in rule or []]}
    if description is not None:
        fields["description"] = description
    rt, client = _client(ctx)
    with reporting(rt), client:
        made = client.create(fields)
    emit_fields(output, made, CELLS)


@security_group_app.command("list")
def list_(ctx: typer.Context, all_projects: Annotated[bool, typer.Option(
        "--all-projects", help="Every project's (admin).")] = False,
        output: FormatOpt = Format.table) -> None:
    """List your project's groups, `default` first."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        rows = client.list(all_projects)
    emit_list(output, rows, "security groups", COLUMNS)


@security_group_app.command("show")
def show(ctx: typer.Context, ident: IdentArg, output: FormatOpt = Format.table) -> None:
    """Show one group and its rules."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.get(ident)
    emit_fields(output, got, CELLS)


@security_group_app.command("set")
def set_(ctx: typer.Context, ident: IdentArg, rule: RuleOpt = None,
         no_rules: Annotated[bool, typer.Option("--no-rules", help="Remove every rule.")] = False,
         description: Annotated[str | None, typer.Option("--description", "-d")] = None,
         output: FormatOpt = Format.table) -> None:
    """Replace a group's rules (all of them) and/or its description; its members' firewalls
    follow at once."""
    if rule and no_rules:
        raise typer.BadParameter("give --rule or --no-rules, not both")
    fields: dict[str, Any] = {}
    if rule or no_rules:
        fields["rules"] = [parse_rule(r) for r in rule or []]
    if description is not None:
        fields["description"] = description
    if not fields:
        raise typer.BadParameter("give --rule, --no-rules or --description")
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.update(ident, fields)
    emit_fields(output, got, CELLS)


@security_group_app.command("delete")
def delete(ctx: typer.Context, idents: Annotated[list[str], typer.Argument(
        metavar="NAME|UUID...", help="Groups to delete (none may be in use).")]) -> None:
    """Delete groups no capsule or container is in and no rule names."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        each_or_exit(rt, idents, client.delete, lambda ident: f"security-group/{ident} deleted")
