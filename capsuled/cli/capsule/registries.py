"""`capsule registry`: a project's private registries (create, list, show, update, delete).

The password is read from --password or, better, from stdin (--password-stdin), and the
server never shows it back (only ***)."""

from __future__ import annotations

import sys
from typing import Annotated, Any
from urllib.parse import quote

import typer

from capsuled.cli.capsule.client import _Api
from capsuled.cli.capsule.output import Format, FormatOpt, column, emit_fields, emit_list
from capsuled.cli.capsule.shared import each_or_exit, reporting, runtime_of, sub_app

registry_app = sub_app("""Your project's private registries.

    A container (`capsule run --registry NAME`) or a template container (`registry: NAME`)
    pulls its image through one with the registry's credentials; the server stores them
    encrypted and never shows the password.

    Example:

      capsule registry create --name mine --domain registry.example.com:5000 --username bob --password-stdin
      capsule run --registry mine team/app:1.0
    """)

COLUMNS = [column("UUID", "uuid"), column("NAME", "name"), column("DOMAIN", "domain"),
           column("USERNAME", "username"), column("PASSWORD", "password"),
           column("PROJECT", "project_id", wide=True), column("USER", "user_id", wide=True)]
IdentArg = Annotated[str, typer.Argument(metavar="NAME|UUID", help="The registry.")]


class RegistryClient(_Api):
    def create(self, fields: dict[str, str]) -> dict[str, Any]:
        return dict(self._json("POST", "/v1/registries", json={"registry": fields})["registry"])

    def list(self, all_projects: bool) -> list[dict[str, Any]]:
        return self._pages("/v1/registries", "registries",
                           {"all_projects": "true"} if all_projects else {})

    def get(self, ident: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/v1/registries/{quote(ident, safe='')}")["registry"])

    def update(self, ident: str, fields: dict[str, str]) -> dict[str, Any]:
        return dict(self._json("PATCH", f"/v1/registries/{quote(ident, safe='')}",
                               json={"registry": fields})["registry"])

    def delete(self, ident: str) -> None:
        self._request("DELETE", f"/v1/registries/{quote(ident, safe='')}")


def _client(ctx: typer.Context) -> tuple[Any, RegistryClient]:
    rt = runtime_of(ctx)
    return rt, RegistryClient(rt.url, rt.token, transport=rt.transport)


def _fields(name: str | None, domain: str | None, username: str | None, password: str | None,
            password_stdin: bool) -> dict[str, str]:
    if password_stdin:
        if password is not None:
            raise typer.BadParameter("give --password or --password-stdin, not both")
        password = sys.stdin.readline().rstrip("\r\n")
    return {k: v for k, v in (("name", name), ("domain", domain), ("username", username),
                              ("password", password)) if v is not None}


NameOpt = Annotated[str | None, typer.Option("--name", help="A name, unique in the project.")]
UserOpt = Annotated[str | None, typer.Option("--username", help="The registry user.")]
PassOpt = Annotated[str | None, typer.Option("--password", help="The password (visible in "
                                             "the shell's history: prefer --password-stdin).")]
StdinOpt = Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")]


@registry_app.command("create")
def create(ctx: typer.Context,
           domain: Annotated[str, typer.Option("--domain", help="host[:port] of the registry.")],
           name: NameOpt = None, username: UserOpt = None, password: PassOpt = None,
           password_stdin: StdinOpt = False, output: FormatOpt = Format.table) -> None:
    """Add a registry to your project."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        made = client.create(_fields(name, domain, username, password, password_stdin))
    emit_fields(output, made)


@registry_app.command("list")
def list_(ctx: typer.Context, all_projects: Annotated[bool, typer.Option(
        "--all-projects", help="Every project's (admin).")] = False,
        output: FormatOpt = Format.table) -> None:
    """List your project's registries."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        rows = client.list(all_projects)
    emit_list(output, rows, "registries", COLUMNS)


@registry_app.command("show")
def show(ctx: typer.Context, ident: IdentArg, output: FormatOpt = Format.table) -> None:
    """Show one registry (never its password)."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.get(ident)
    emit_fields(output, got)


@registry_app.command("update")
def update(ctx: typer.Context, ident: IdentArg, name: NameOpt = None,
           domain: Annotated[str | None, typer.Option("--domain", help="New host[:port].")] = None,
           username: UserOpt = None, password: PassOpt = None, password_stdin: StdinOpt = False,
           output: FormatOpt = Format.table) -> None:
    """Change a registry's name, domain or credentials."""
    fields = _fields(name, domain, username, password, password_stdin)
    if not fields:
        raise typer.BadParameter("give at least one of --name, --domain, --username, --password")
    rt, client = _client(ctx)
    with reporting(rt), client:
        got = client.update(ident, fields)
    emit_fields(output, got)


@registry_app.command("delete")
def delete(ctx: typer.Context, idents: Annotated[list[str], typer.Argument(
        metavar="NAME|UUID...", help="Registries to delete.")]) -> None:
    """Delete registries (refused while a container pulls through one)."""
    rt, client = _client(ctx)
    with reporting(rt), client:
        each_or_exit(rt, idents, client.delete, lambda ident: f"registry/{ident} deleted")
