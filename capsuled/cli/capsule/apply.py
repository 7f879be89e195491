"""`capsule apply` and `capsule diff`: make the capsules named in files what the files say,
as `kubectl apply` and `kubectl diff` do, for capsule templates and Kubernetes Pods alike.

Each object is found by its `metadata.name`. What is missing is created; what exists is
updated through the ordinary update (`PATCH`, health gated and rolled back by the
server), which changes nothing when the file says what already runs ("unchanged"). The
file is the whole desired spec: there is no three-way merge with fields set elsewhere.
With `--prune -l KEY=VALUE`, capsules with those labels that no file names are deleted.

`diff` asks the server for a dry run of the same requests (`?dry_run=true`: every check,
nothing kept) and shows, per object, the capsule as it runs and as it would run, both
written as capsule templates by the server, so that a Pod and its template compare
equal and nothing the server would fill in shows as a change. Exit status as kubectl's:
0 no differences, 1 differences, 2 an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer
import yaml

from capsuled.cli.capsule import render
from capsuled.cli.capsule.capsules import LabelOpt, wait_running
from capsuled.cli.capsule.client import ApiError, CliError
from capsuled.cli.capsule.rollout_client import (RolloutClient, await_rollout, is_busy,
                                                 wait_until_idle)
from capsuled.cli.capsule.output import Format, FormatOpt, echo_data
from capsuled.cli.capsule.shared import (Runtime, TimeoutOpt, UsageProblem, report, reporting,
                                         runtime_of)
from capsuled.cli.capsule.templates import Template, load_templates

FilesOpt = Annotated[list[str], typer.Option(
    "--filename", "-f", metavar="PATH",
    help="Capsule template or Kubernetes Pod manifest (YAML or JSON, - for stdin), or a "
    "directory of them (*.yaml, *.yml, *.json). Repeatable.")]
PruneOpt = Annotated[bool, typer.Option(
    "--prune", help="Also delete capsules with the -l labels that no file names.")]
DIFF_ERROR = 2  # kubectl diff's convention: 1 means "differences"


@dataclass(frozen=True)
class Named:
    name: str
    template: Template


def _named(templates: list[Template]) -> list[Named]:
    """Every object with its capsule's name; a missing or repeated name is an error
    before anything is sent."""
    out: list[Named] = []
    seen: dict[str, str] = {}
    for t in templates:
        meta = t.body.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise CliError(f"{t.source}: metadata.name is required: it says which capsule "
                           "the file describes")
        if name in seen:
            raise CliError(f"{t.source}: capsule {name} is also described in {seen[name]}")
        seen[name] = t.source
        out.append(Named(name, t))
    return out


def _prune_selector(ctx: typer.Context, prune: bool, label: list[str] | None) -> dict[str, str]:
    if prune and not label:
        raise UsageProblem("--prune needs -l KEY=VALUE: only capsules with those labels are "
                           "deleted", ctx=ctx)
    if label and not prune:
        raise UsageProblem("-l selects what --prune deletes; give --prune too", ctx=ctx)
    return {k: v for k, _, v in (item.partition("=") for item in label or [])}


def _prunable(client: RolloutClient, labels: dict[str, str], keep: set[str]) -> list[dict[str, Any]]:
    found = client.list(labels) if labels else []
    return sorted((c for c in found if c.get("name") not in keep and c.get("status") != "Deleting"),
                  key=lambda c: (render.display_name(c), str(c["uuid"])))


def apply(
    ctx: typer.Context,
    filename: FilesOpt,
    prune: PruneOpt = False,
    label: LabelOpt = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until created capsules run and updated ones are ready (or "
        "rolled back); an update under way is waited for first.")] = False,
    timeout: TimeoutOpt = 300.0,
    output: FormatOpt = Format.table,
) -> None:
    """Create or update capsules to match files, as kubectl apply does.

    Each capsule template or Kubernetes Pod (one per document, or the items of a
    `kind: List`) names its capsule in metadata.name: a missing capsule is created, an
    existing one is updated (health gated; the server rolls a failed update back), one
    that already matches is left alone. Prints one line per capsule: created,
    configured, unchanged or pruned.

    Example:

      capsule apply -f web.yaml --wait
      capsule apply -f manifests/ --prune -l app=shop
    """
    rt = runtime_of(ctx)
    selector = _prune_selector(ctx, prune, label)
    results: list[dict[str, Any]] = []
    failed = False
    with reporting(rt):
        objects = _named(load_templates(filename))
        with RolloutClient(rt.url, rt.token, transport=rt.transport) as client:
            for obj in objects:
                try:
                    results.append(_apply_one(rt, client, obj, wait, timeout))
                except ApiError as exc:
                    report(rt, exc, f"capsule/{obj.name}, {obj.template.source}")
                    failed = True
                    continue
                _say(output, results[-1])
            for capsule in _prunable(client, selector, {o.name for o in objects}):
                try:
                    client.delete(str(capsule["uuid"]))
                except ApiError as exc:
                    report(rt, exc, f"capsule/{render.display_name(capsule)}")
                    failed = True
                    continue
                results.append({"name": render.display_name(capsule), "action": "pruned",
                                "capsule": capsule})
                _say(output, results[-1])
            if wait:
                failed = _wait(rt, client, results, timeout, output) or failed
    if output.machine:
        echo_data(output, results)
    if failed:
        raise typer.Exit(1)


def _apply_one(rt: Runtime, client: RolloutClient, obj: Named, wait: bool,
               timeout: float) -> dict[str, Any]:
    current = client.find(obj.name)
    if current is None:
        return {"name": obj.name, "action": "created", "capsule": client.create(obj.template.body)}
    body = {"template": obj.template.body, "change_cause": f"apply from {obj.template.source}"}
    try:
        capsule = client.update(str(current["uuid"]), body)
    except ApiError as exc:
        if not (wait and is_busy(exc)):
            raise
        wait_until_idle(client, str(current["uuid"]), timeout, rt.sleep, rt.poll_interval)
        capsule = client.update(str(current["uuid"]), body)
    action = "unchanged" if capsule.get("rollout") is None else "configured"
    return {"name": obj.name, "action": action, "capsule": capsule}


def _say(output: Format, result: Mapping[str, Any]) -> None:
    if not output.machine:
        typer.echo(f"capsule/{result['name']} {result['action']}")


def _wait(rt: Runtime, client: RolloutClient, results: list[dict[str, Any]], timeout: float,
          output: Format) -> bool:
    """Wait for what was created and configured; True when one of them failed."""
    failed = False
    created = {str(r["capsule"]["uuid"]): r["capsule"] for r in results if r["action"] == "created"}
    if created:
        problem = wait_running(rt, client, created, timeout)
        if problem is not None:
            report(rt, problem)
            failed = True
    for r in results:
        if r["action"] != "configured":
            continue
        ended = await_rollout(client, r["capsule"], int(r["capsule"]["revision"]), timeout,
                              rt.sleep, rt.poll_interval)
        r["capsule"] = ended.capsule
        if not ended.ok:
            report(rt, CliError(f"capsule/{ended.name}: {ended.message}"))
            failed = True
        elif not output.machine:
            typer.echo(f"capsule/{ended.name} {ended.message}")
    return failed


def diff(
    ctx: typer.Context,
    filename: FilesOpt,
    prune: PruneOpt = False,
    label: LabelOpt = None,
) -> None:
    """Show what `capsule apply` would change, as a unified diff per capsule.

    The server runs every check of the create or update (validation, quotas, room on the
    host) without keeping anything, and returns the capsule as it runs and as it would
    run, written as capsule templates. Exit status: 0 when nothing would change, 1 when
    something would, 2 on an error (as kubectl diff).

    Example:

      capsule diff -f web.yaml && echo "up to date"
      capsule diff -f manifests/ --prune -l app=shop
    """
    rt = runtime_of(ctx)
    selector = _prune_selector(ctx, prune, label)
    changed = errors = False
    try:
        objects = _named(load_templates(filename))
        with RolloutClient(rt.url, rt.token, transport=rt.transport) as client:
            for obj in objects:
                try:
                    before, after, live = _rehearse(client, obj)
                except ApiError as exc:
                    report(rt, exc, f"capsule/{obj.name}, {obj.template.source}")
                    errors = True
                    continue
                changed = _show(obj.name, before, after, live, obj.template.source) or changed
            for capsule in _prunable(client, selector, {o.name for o in objects}):
                name = render.display_name(capsule)
                template = _current_template(client, capsule)
                changed = _show(name, template, None, f"live, revision {capsule.get('revision')}",
                                "pruned") or changed
    except CliError as exc:
        report(rt, exc)
        raise typer.Exit(DIFF_ERROR) from None
    raise typer.Exit(DIFF_ERROR if errors else 1 if changed else 0)


def _rehearse(client: RolloutClient, obj: Named) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
    """(the capsule as it runs, as it would run, what the first is) from a dry run."""
    current = client.find(obj.name)
    if current is None:
        answer = client.rehearse_create(obj.template.body)
        return None, dict(answer["new"]), "absent"
    answer = client.rehearse_update(str(current["uuid"]), {"template": obj.template.body})
    return dict(answer["current"]), dict(answer["new"]), f"live, revision {answer.get('revision')}"


def _current_template(client: RolloutClient, capsule: Mapping[str, Any]) -> dict[str, Any]:
    found = client.revisions(str(capsule["uuid"]))
    current = next((r for r in found.get("revisions") or [] if r.get("current")), None)
    return dict(current["template"]) if current is not None else {}


def _show(name: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
          before_label: str, after_label: str) -> bool:
    """Print the unified diff of two templates; True when they differ."""
    a, b = _lines(before), _lines(after)
    lines = list(difflib.unified_diff(a, b, f"capsule/{name} ({before_label})",
                                      f"capsule/{name} ({after_label})", lineterm=""))
    for line in lines:
        typer.echo(line)
    return bool(lines)


def _lines(template: dict[str, Any] | None) -> list[str]:
    if template is None:
        return []
    return yaml.safe_dump(template, sort_keys=False, default_flow_style=False).splitlines()
