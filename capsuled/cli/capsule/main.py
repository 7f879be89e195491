"""`capsule`: the command-line client of a capsuled server (capsules, containers, admin).

It talks to the server over HTTP only, so it works the same against a local all-in-one
server and a remote one; see client.py for the wire details and render.py for output.
This module only assembles the Typer app: each topic's commands live in their own module
(capsules, containers, container_lifecycle, container_run, terminal, archives, admin).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer._click.exceptions import UsageError

from capsuled.cli.capsule import (
    apply,
    archives,
    container_acts,
    capsules,
    container_lifecycle,
    container_run,
    containers,
    events,
    registries,
    security_groups,
    services,
    subscriptions,
    terminal,
    updates,
)
from capsuled.cli.capsule.admin import host_app, quota_app, service_app, token_app
from capsuled.cli.capsule.client import resolve_token
from capsuled.cli.capsule.container_common import PASS_THROUGH
from capsuled.cli.capsule.containers import container_app
from capsuled.cli.capsule.settings import DEFAULT_URL
from capsuled.cli.capsule.shared import APP_SETTINGS, Runtime
from capsuled.cli.helptext import App, ReflowGroup

__all__ = ["Runtime", "app", "main"]

# Words people bring from docker and kubectl, and what they are called here.
_KNOWN_AS = {"ps": "list", "get": "describe", "show": "describe", "inspect": "describe",
             "status": "describe", "rm": "delete", "remove": "delete", "apply": "update",
             "rollout": "update", "log": "logs", "watch": "list --watch"}


class RootGroup(ReflowGroup):
    """The root `capsule` group: an unknown command also says where it is, when it is a
    command of a group (`exec` → `capsule container exec`) or a docker/kubectl word."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:
            where = _known_as(self, args[0]) if args else None
            if where:
                exc.message = f"{exc.message.rstrip('.')}. Did you mean 'capsule {where}'?"
            raise


def _known_as(root: ReflowGroup, word: str) -> str | None:
    for name, group in sorted(root.commands.items()):
        sub = getattr(group, "commands", {}).get(word)
        if sub is not None and not sub.hidden:
            return f"{name} {word}"
    return _KNOWN_AS.get(word)


app = App(cls=RootGroup, **APP_SETTINGS)


@app.callback()
def connect(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="CAPSULE_URL", help="The capsuled API.")] = DEFAULT_URL,
    token: Annotated[str | None, typer.Option(
        envvar="CAPSULE_TOKEN", show_default=False,
        help="Keystone-style token. Default for the local server: its admin token file.")] = None,
) -> None:
    """Manage capsules (pods of containers) on a capsuled server.

    For the local server (127.0.0.1:9517) no options are needed: the admin token is read
    from its state directory (CAPSULED_STATE_DIR, or the default one).

    Example:

      capsule create -f examples/web.yaml --wait
      capsule apply -f pod.yaml --wait
      capsule list -l app=web
      capsule describe web-demo
      capsule delete web-demo --wait
    """
    rt = ctx.obj if isinstance(ctx.obj, Runtime) else Runtime()
    rt.url = (url if "://" in url else f"http://{url}").rstrip("/")
    rt.token = resolve_token(rt.url, token)
    ctx.obj = rt


# The order of registration is the order of `--help`.
app.command()(capsules.create)
app.command("list")(capsules.list_)
app.command()(capsules.describe)
app.command()(capsules.delete)
app.command(cls=updates.UpdateCommand)(updates.update)
app.command()(updates.rollback)
app.command()(updates.history)
app.command("apply")(apply.apply)
app.command("diff")(apply.diff)
app.command()(events.events)
app.command("logs")(containers.pod_logs)

container_app.command("list")(containers.list_)
container_app.command("ls", hidden=True)(containers.list_)
container_app.command()(containers.show)
container_app.command("inspect", hidden=True)(containers.show)
container_app.command()(containers.logs)
container_app.command(context_settings=PASS_THROUGH)(containers.top)
container_app.command()(containers.stats)
container_app.command()(containers.actions)
container_app.command()(container_lifecycle.delete)
container_app.command("rm", hidden=True)(container_lifecycle.delete)
container_app.command()(container_lifecycle.start)
container_app.command()(container_lifecycle.stop)
container_app.command()(container_lifecycle.restart)
container_app.command()(container_lifecycle.pause)
container_app.command()(container_lifecycle.unpause)
container_app.command()(container_lifecycle.kill)
container_app.command()(container_lifecycle.rename)
container_app.command()(container_lifecycle.update)
container_app.command("exec", context_settings=PASS_THROUGH)(terminal.exec_)
container_app.command()(terminal.attach)
container_app.command()(archives.cp)
container_app.command()(container_acts.rebuild)
container_app.command()(container_acts.commit)

app.add_typer(container_app, name="container")
app.command("run", context_settings=PASS_THROUGH)(container_run.run)
app.command("rebuild")(container_acts.rebuild)
app.command("commit")(container_acts.commit)

app.add_typer(registries.registry_app, name="registry")
app.add_typer(subscriptions.subscription_app, name="subscription")
app.add_typer(security_groups.security_group_app, name="security-group")
app.add_typer(services.svc_app, name="svc")
app.add_typer(token_app, name="token")
app.add_typer(quota_app, name="quota")
app.add_typer(host_app, name="host")
app.add_typer(service_app, name="service")


def main() -> None:
    app(prog_name="capsule")


if __name__ == "__main__":
    main()
