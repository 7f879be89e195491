"""`capsule update -l KEY=VALUE …`: a change rolled across every capsule a label selector
matches, batch by batch, driven by this client over the ordinary update API.

Each batch of `--max-unavailable` capsules is updated at once and waited for: the server
gates each capsule's update on its health (readiness, minReadySeconds) and rolls a
failed one back by itself. At the first failure the rollout stops: the batch's capsules
that did become ready are rolled back too (to the revision they had), and the capsules of
later batches are never touched. With `--max-surge 1` a capsule of the new version is
made first (same labels, so whatever selects the fleet by label sees it) and must become
ready before any old capsule is taken down; it is deleted at the end.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import typer

from capsuled.cli.capsule import render
from capsuled.cli.capsule.client import ApiError, CliError
from capsuled.cli.capsule.rollout_client import Ended, RolloutClient, await_rollout
from capsuled.cli.capsule.shared import Runtime
from capsuled.cli.capsule.waiting import Progress, WaitDisplay

BodyFor = Callable[[Mapping[str, Any]], dict[str, Any]]  # capsule → its PATCH body


@dataclass(frozen=True)
class Fleet:
    targets: list[dict[str, Any]]  # the matching capsules, in name order
    body_for: BodyFor
    max_unavailable: int
    surge: dict[str, Any] | None  # the template of a capsule made before the first batch
    timeout: float  # per batch


def batches(targets: Sequence[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [list(targets[i:i + size]) for i in range(0, len(targets), size)]


def roll(rt: Runtime, client: RolloutClient, fleet: Fleet) -> bool:
    """Roll the change across the fleet; True when every capsule got it and is ready."""
    groups = batches(fleet.targets, fleet.max_unavailable)
    say(f"fleet: {len(fleet.targets)} capsule(s) in {len(groups)} batch(es) of at most "
        f"{fleet.max_unavailable}" + (", one surge capsule first" if fleet.surge else ""))
    surge = _make_surge(rt, client, fleet) if fleet.surge is not None else None
    if fleet.surge is not None and surge is None:
        return False
    try:
        for i, batch in enumerate(groups, start=1):
            say(f"batch {i}/{len(groups)}: " + ", ".join(render.display_name(c) for c in batch))
            if not _batch(rt, client, fleet, batch):
                left = [render.display_name(c) for g in groups[i:] for c in g]
                say(f"fleet: stopped at batch {i}/{len(groups)}; "
                    + (f"not touched: {', '.join(left)}" if left else "no batch left"))
                return False
        say(f"fleet: {len(fleet.targets)} of {len(fleet.targets)} capsule(s) on the new revision")
        return True
    finally:
        if surge is not None:
            _remove_surge(client, surge)


def _batch(rt: Runtime, client: RolloutClient, fleet: Fleet, batch: list[dict[str, Any]]) -> bool:
    started: list[tuple[dict[str, Any], int, int]] = []  # (capsule, revision before, new revision)
    failed = False
    for capsule in batch:
        name = render.display_name(capsule)
        try:
            body = client.update(str(capsule["uuid"]), fleet.body_for(capsule))
        except ApiError as exc:
            typer.echo(f"error: capsule/{name}: {exc.title}", err=True)
            failed = True
            break
        if body.get("rollout") is None:
            say(f"capsule/{name} unchanged (revision {body.get('revision')})")
            continue
        say(f"capsule/{name} updating to revision {body['revision']}")
        started.append((body, int(body["revision"]) - 1, int(body["revision"])))
    ended = _await(rt, client, [(c, new) for c, _, new in started], fleet.timeout)
    for e in ended:
        if e.ok:
            say(f"capsule/{e.name} {e.message}")
        else:
            typer.echo(f"error: capsule/{e.name}: {e.message}", err=True)
    if not failed and all(e.ok for e in ended):
        return True
    # Stop: what of this batch did get the new revision goes back to what it had.
    undo = [(c, before) for (c, before, _), e in zip(started, ended, strict=True) if e.ok]
    back: list[tuple[dict[str, Any], int]] = []
    for capsule, before in undo:
        body = client.rollback(str(capsule["uuid"]), before, "fleet update stopped: "
                               "a capsule of its batch failed")
        say(f"capsule/{render.display_name(capsule)} rolling back to revision {before}")
        back.append((body, int(body["revision"])))
    for e in _await(rt, client, back, fleet.timeout):
        say(f"capsule/{e.name} rolled back" if e.ok else f"capsule/{e.name}: rollback: {e.message}")
    return False


def _await(rt: Runtime, client: RolloutClient, pending: list[tuple[dict[str, Any], int]],
           timeout: float) -> list[Ended]:
    """Wait for each capsule's rollout (they run at once on the server), showing progress."""
    states = {render.display_name(c): Progress(render.display_name(c), "updating")
              for c, _ in pending}
    out = []
    with WaitDisplay(render.make_console(stderr=True), "ready") as display:
        def progress(name: str, doing: str, body: Mapping[str, Any]) -> None:
            states[name] = Progress(name, doing, render.member_states(body))
            display.update(list(states.values()))
        for capsule, revision in pending:
            e = await_rollout(client, capsule, revision, timeout, rt.sleep, rt.poll_interval,
                              progress)
            states[e.name] = Progress(e.name, "ready" if e.ok else "failed",
                                      render.member_states(e.capsule))
            display.update(list(states.values()))
            out.append(e)
    return out


def _make_surge(rt: Runtime, client: RolloutClient, fleet: Fleet) -> dict[str, Any] | None:
    assert fleet.surge is not None
    first = render.display_name(fleet.targets[0])
    template = copy.deepcopy(fleet.surge)
    template.setdefault("metadata", {})["name"] = f"{first}-surge-{secrets.token_hex(2)}"
    try:
        body = client.create(template)
    except ApiError as exc:
        typer.echo(f"error: surge capsule: {exc.title}", err=True)
        return None
    name = render.display_name(body)
    say(f"capsule/{name} created (surge, new version)")
    if _wait_ready(rt, client, body, fleet.timeout):
        return body
    typer.echo(f"error: surge capsule {name} did not become ready: nothing was updated",
               err=True)
    _remove_surge(client, body)
    return None


def _wait_ready(rt: Runtime, client: RolloutClient, capsule: Mapping[str, Any],
                timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    name = render.display_name(capsule)
    with WaitDisplay(render.make_console(stderr=True), "ready") as display:
        while True:
            body = client.get(str(capsule["uuid"]))
            display.update([(name, f"{body.get('status')}, {body.get('ready', '?')} ready")])
            if body.get("status") == "Running" and body.get("all_ready"):
                return True
            if body.get("status") == "Error" or time.monotonic() >= deadline:
                return False
            rt.sleep(rt.poll_interval)


def _remove_surge(client: RolloutClient, capsule: Mapping[str, Any]) -> None:
    try:
        client.delete(str(capsule["uuid"]))
        say(f"capsule/{render.display_name(capsule)} deleted (surge)")
    except CliError as exc:
        typer.echo(f"error: deleting the surge capsule {render.display_name(capsule)}: "
                   f"{exc.title}", err=True)


def say(line: str) -> None:
    typer.echo(line)
