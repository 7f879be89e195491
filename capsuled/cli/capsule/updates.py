"""`capsule update`, `capsule rollback` and `capsule history`: new revisions of running
capsules (capsuled extensions; the server gates each on health and rolls back by itself)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from capsuled.cli.capsule import fleet, render
from capsuled.cli.capsule.client import ApiError, CliError
from capsuled.cli.capsule.rollout_client import (Ended, RolloutClient, await_rollout, is_busy,
                                                 wait_until_idle)
from capsuled.cli.capsule.output import Format, FormatOpt, echo_data
from capsuled.cli.capsule.shared import (Runtime, UsageProblem, check_labels, labels_of,
                                         reporting, runtime_of)
from capsuled.cli.capsule.templates import load_templates
from capsuled.cli.helptext import ReflowCommand
from capsuled.cli.capsule.waiting import Progress, WaitDisplay

WaitOpt = Annotated[bool, typer.Option(
    "--wait", help="Wait until the new revision is ready (or rolled back); on a 409 because "
    "another update is under way, wait for that one first, then update.")]
TimeoutOpt = Annotated[float, typer.Option(min=0, metavar="SECONDS",
                                           help="With --wait: give up waiting after SECONDS.")]
CauseOpt = Annotated[str | None, typer.Option("--cause", metavar="TEXT",
                                              help="Why: shown by `capsule history`.")]
_PAIR = "\x1f"  # joins --env's two words (see UpdateCommand)


class UpdateCommand(ReflowCommand):
    """`--env CONTAINER KEY=VALUE` takes two words, which Typer cannot repeat: they are
    joined into one before the options are parsed."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # a click Context
        out: list[str] = []
        i = 0
        while i < len(args):
            if args[i] == "--env" and i + 2 < len(args):
                out += ["--env", f"{args[i + 1]}{_PAIR}{args[i + 2]}"]
                i += 3
            else:
                out.append(args[i])
                i += 1
        return super().parse_args(ctx, out)


def client_of(rt: Runtime) -> RolloutClient:
    return RolloutClient(rt.url, rt.token, transport=rt.transport)


def quick_changes(images: list[str], envs: list[str]) -> list[dict[str, Any]]:
    """--image CONTAINER=IMAGE and --env CONTAINER KEY=VALUE (KEY- removes KEY) as the
    server's `containers` changes, one entry per container."""
    by_name: dict[str, dict[str, Any]] = {}
    for item in images:
        name, sep, image = item.partition("=")
        if not sep or not name or not image:
            raise typer.BadParameter(f"{item!r} is not CONTAINER=IMAGE", param_hint="--image")
        by_name.setdefault(name, {"name": name})["image"] = image
    for item in envs:
        name, sep, pair = item.partition(_PAIR)
        key, eq, value = pair.partition("=")
        if not sep or not name or not key:
            raise typer.BadParameter(f"{item.replace(_PAIR, ' ')!r}: give CONTAINER KEY=VALUE "
                                     "(or CONTAINER KEY- to remove KEY)", param_hint="--env")
        env = by_name.setdefault(name, {"name": name}).setdefault("env", {})
        if not eq and key.endswith("-"):
            env[key[:-1]] = None
        elif eq:
            env[key] = value
        else:
            raise typer.BadParameter(f"{key!r} is not KEY=VALUE or KEY-", param_hint="--env")
    return list(by_name.values())


def apply_to_template(template: Mapping[str, Any], changes: list[dict[str, Any]]) -> dict[str, Any]:
    """The quick changes applied to a template document (for a surge capsule)."""
    out = copy.deepcopy(dict(template))
    spec = out.get("spec") or {}
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        change = next((x for x in changes if x["name"] == c.get("name")), None)
        if change is None:
            continue
        if "image" in change:
            c["image"] = change["image"]
        env = dict(c.get("env") or {})
        for k, v in (change.get("env") or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        if env or "env" in c:
            c["env"] = env
    return out


def update(
    ctx: typer.Context,
    ident: Annotated[str | None, typer.Argument(metavar="[NAME|UUID]", show_default=False)] = None,
    filename: Annotated[str | None, typer.Option(
        "--filename", "-f", metavar="PATH", help="The new template (YAML or JSON, - for stdin); "
        "its name may be left out.")] = None,
    image: Annotated[list[str] | None, typer.Option(
        "--image", metavar="CONTAINER=IMAGE", help="A container's new image. Repeatable.")] = None,
    env: Annotated[list[str] | None, typer.Option(
        "--env", metavar="CONTAINER KEY=VALUE", help="Set (KEY=VALUE) or remove (KEY-) a "
        "container's environment variable. Repeatable.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="KEY=VALUE", callback=check_labels, help="Every capsule with "
        "these labels, batch by batch (a fleet update; implies --wait).")] = None,
    max_unavailable: Annotated[int, typer.Option(
        min=1, help="With -l: capsules updated at once (a batch).")] = 1,
    max_surge: Annotated[int, typer.Option(
        min=0, max=1, help="With -l: 1 makes a capsule of the new version first.")] = 0,
    cause: CauseOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 300.0,
    output: FormatOpt = Format.table,
) -> None:
    """Update capsules to a new revision: a new template, or new images and environment.

    Containers whose spec did not change keep running; changed ones are replaced one at a
    time in the same sandbox; a change of volumes, ports or init containers remakes the
    capsule in place (same name and uuid). The update is done once the new containers are
    ready (readiness/startup probes, minReadySeconds); if that takes longer than
    progressDeadlineSeconds (120 by default), or an init container fails, the capsule rolls
    back by itself.

    Example:

      capsule update web -f web-v2.yaml --wait
      capsule update web --image front=nginx:1.27 --env front MODE=fast --wait
      capsule update -l app=web -f web-v2.yaml --max-unavailable 1 --max-surge 1
    """
    rt = runtime_of(ctx)
    if (ident is None) == (not label):
        raise UsageProblem("choose capsules with exactly one of NAME|UUID or -l KEY=VALUE", ctx=ctx)
    if (filename is None) == (not image and not env):
        raise UsageProblem("give either -f FILE or --image/--env changes", ctx=ctx)
    changes = quick_changes(image or [], env or [])
    with reporting(rt):
        template = _one_template(filename) if filename is not None else None
        with client_of(rt) as client:
            if label:
                _fleet(rt, client, label, template, changes, max_unavailable, max_surge,
                       timeout, cause)
                return
            assert ident is not None
            body: dict[str, Any] = {"template": template} if template is not None else {
                "containers": changes}
            body["change_cause"] = cause or (f"update from {filename}" if filename else None)
            _single(rt, client, ident, {k: v for k, v in body.items() if v is not None},
                    wait, timeout, output)


def _one_template(filename: str) -> dict[str, Any]:
    found = load_templates([filename])
    if len(found) != 1:
        raise CliError(f"{filename}: holds {len(found)} templates; an update takes one")
    return found[0].body


def _single(rt: Runtime, client: RolloutClient, ident: str, body: dict[str, Any], wait: bool,
            timeout: float, output: Format) -> None:
    try:
        capsule = client.update(ident, body)
    except ApiError as exc:
        if not (wait and is_busy(exc)):
            raise
        wait_until_idle(client, ident, timeout, rt.sleep, rt.poll_interval, _progress_line)
        capsule = client.update(ident, body)
    _started(capsule, output)
    if wait and capsule.get("rollout") is not None:
        _finish(rt, client, capsule, timeout, output)
    elif output.machine:
        echo_data(output, capsule)


def _started(capsule: Mapping[str, Any], output: Format) -> None:
    if output.machine:
        return
    name, revision = render.display_name(capsule), capsule.get("revision")
    rollout = capsule.get("rollout")
    if rollout is None:
        typer.echo(f"capsule/{name} unchanged (revision {revision})")
    elif rollout.get("kind") == "rollback":
        typer.echo(f"capsule/{name} rolling back to revision {rollout.get('restores')} "
                   f"(as revision {revision})")
    else:
        typer.echo(f"capsule/{name} updating to revision {revision}")


def _finish(rt: Runtime, client: RolloutClient, capsule: Mapping[str, Any], timeout: float,
            output: Format) -> None:
    with WaitDisplay(render.make_console(stderr=True), "ready") as display:
        ended: Ended = await_rollout(client, capsule, int(capsule["revision"]), timeout,
                                     rt.sleep, rt.poll_interval,
                                     lambda name, doing, body: display.update(
                                         [Progress(name, doing, render.member_states(body))]))
    if output.machine:
        echo_data(output, ended.capsule)
    if not ended.ok:
        raise CliError(f"capsule/{ended.name}: {ended.message}")
    if not output.machine:
        typer.echo(f"capsule/{ended.name} {ended.message}")


def _progress_line(name: str, doing: str, body: Mapping[str, Any]) -> None:
    typer.echo(f"capsule/{name}: {doing}", err=True)


def _fleet(rt: Runtime, client: RolloutClient, label: list[str], template: dict[str, Any] | None,
           changes: list[dict[str, Any]], max_unavailable: int, max_surge: int, timeout: float,
           cause: str | None) -> None:
    labels = labels_of(label)
    targets = sorted(client.list(labels), key=lambda c: (render.display_name(c), str(c["uuid"])))
    if not targets:
        raise CliError("no capsule matches " + ", ".join(label))
    why = cause or f"fleet update of {','.join(label)}"

    def body_for(capsule: Mapping[str, Any]) -> dict[str, Any]:
        if template is None:
            return {"containers": changes, "change_cause": why}
        mine = copy.deepcopy(template)
        mine.setdefault("metadata", {})["name"] = capsule.get("name")
        return {"template": mine, "change_cause": why}

    surge = None
    if max_surge:
        surge = template if template is not None else apply_to_template(
            _current_template(client, targets[0]), changes)
    ok = fleet.roll(rt, client, fleet.Fleet(targets, body_for, max_unavailable, surge, timeout))
    if not ok:
        raise typer.Exit(1)


def _current_template(client: RolloutClient, capsule: Mapping[str, Any]) -> dict[str, Any]:
    found = client.revisions(str(capsule["uuid"]))
    current = next((r for r in found.get("revisions") or [] if r.get("current")), None)
    if current is None:
        raise CliError(f"capsule/{render.display_name(capsule)}: its current revision is not kept")
    return dict(current["template"])


def rollback(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="NAME|UUID", show_default=False)],
    to_revision: Annotated[int | None, typer.Option(
        "--to-revision", min=1, metavar="N", help="Default: the revision before the current.")] = None,
    cause: CauseOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the rollback is ready.")] = False,
    timeout: TimeoutOpt = 300.0,
    output: FormatOpt = Format.table,
) -> None:
    """Roll a capsule back to an earlier revision (it becomes a new revision).

    A rollback supersedes an update under way.

    Example:

      capsule rollback web --wait
      capsule rollback web --to-revision 2
    """
    rt = runtime_of(ctx)
    with reporting(rt), client_of(rt) as client:
        capsule = client.rollback(ident, to_revision, cause)
        _started(capsule, output)
        if wait:
            _finish(rt, client, capsule, timeout, output)
        elif output.machine:
            echo_data(output, capsule)


def history(
    ctx: typer.Context,
    ident: Annotated[str, typer.Argument(metavar="NAME|UUID", show_default=False)],
    revision: Annotated[int | None, typer.Option(
        "--revision", min=1, metavar="N", help="Show revision N's template (YAML).")] = None,
    output: FormatOpt = Format.table,
) -> None:
    """Show a capsule's revisions: who made each, when, why, and how its rollout ended.

    Example:

      capsule history web
      capsule history web --revision 2 > web-v2.yaml
    """
    rt = runtime_of(ctx)
    with reporting(rt), client_of(rt) as client:
        found = client.revisions(ident)
        revisions = list(found.get("revisions") or [])
        if revision is not None:
            one = next((r for r in revisions if r.get("revision") == revision), None)
            if one is None:
                raise CliError(f"capsule {ident} has no revision {revision} (or it is no "
                               "longer kept)")
            if output.machine:
                echo_data(output, one)
            else:
                typer.echo(yaml.safe_dump(one.get("template"), sort_keys=False), nl=False)
            return
        if output.machine:
            echo_data(output, found)
            return
        render.emit(render.make_console(), history_table(revisions))
        rollout = found.get("rollout")
        if rollout:
            typer.echo(f"\n{rollout.get('kind')} to revision {rollout.get('to_revision')} "
                       "under way")


def history_table(revisions: list[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("REVISION", "CREATED", "USER", "OUTCOME", "CHANGE-CAUSE"):
        table.add_column(column)
    for r in revisions:
        outcome = str(r.get("outcome") or ("current" if r.get("current") else "-"))
        if r.get("outcome_reason"):
            outcome += f": {r['outcome_reason']}"
        table.add_row(f"{r.get('revision')}{' *' if r.get('current') else ''}",
                      render.age(r.get("created_at")), str(r.get("user_id") or "-"),
                      render.text(outcome), render.text(r.get("change_cause") or "-"))
    return table
