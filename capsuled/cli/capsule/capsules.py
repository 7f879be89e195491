"""The capsule commands: `capsule create`, `list`, `describe` and `delete`, and waiting
for capsules to run or to be gone."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer

from capsuled.cli.capsule import render
from capsuled.cli.capsule.client import ApiError, CapsuleClient, CliError
from capsuled.cli.capsule.event_stream import EventClient, Query, Waker, echo_event
from capsuled.cli.capsule.output import Format, FormatOpt, column, echo_data, emit_list
from capsuled.cli.capsule.shared import (
    Runtime,
    TimeoutOpt,
    UsageProblem,
    check_labels,
    labels_of,
    report,
    reporting,
    runtime_of,
    show_each,
)
from capsuled.cli.capsule.templates import load_templates
from capsuled.cli.capsule.waiting import Progress, WaitDisplay


class CapsuleFailed(CliError):
    """A capsule, not the server, went wrong while we waited for it."""

    def __init__(self, title: str, progress: Progress | None = None) -> None:
        super().__init__(title)
        self.progress = progress  # how it stood: shown before the error


LabelOpt = Annotated[list[str] | None, typer.Option(
    "--label", "-l", metavar="KEY=VALUE", callback=check_labels,
    help="Only capsules with this label; repeat to require several.")]
AllProjectsOpt = Annotated[bool, typer.Option(
    "--all-projects", help="Include other projects' capsules (admins only).")]


COLUMNS = [
    column("UUID", "uuid"), column("NAME", "name"),
    column("STATUS", lambda c: render.status_text(c.get("status"))),
    column("CONTAINERS", render.ready), column("READY", "ready"),
    column("RESTARTS", render.restarts), column("LABELS", "labels"),
    column("AGE", lambda c: render.age(c.get("created_at"))),
    column("HOST", "host", wide=True),  # admins only: others see `-`
    column("ADDRESSES", lambda c: render.addresses(c.get("addresses")), wide=True),
    column("IMAGES", render.images, wide=True),
    column("CPU", "cpu", wide=True), column("MEMORY", "memory", wide=True),
    column("CREATED", lambda c: render.clock(c.get("created_at")), wide=True),
]

# A hold asks the server to answer once a target leaves a status, for at most this many
# seconds per request, so that the progress display stays fresh.
_HOLD_SECONDS = 10.0

Probe = Callable[[str], tuple[bool, Progress]]
Hold = Callable[[str, str, float], tuple[bool, Progress]]


def _poll(rt: Runtime, goal: str, targets: Mapping[str, str], probe: Probe, timeout: float,
          hold: Hold | None = None, waker: Waker | None = None) -> list[Progress]:
    """Probe every target until all are done or `timeout` passes.

    `targets` maps what to probe (a uuid or name) to how to call it; `probe` returns
    (done, its progress) and may raise CliError to give up at once. Returns the
    progress of the targets not done in time. Between rounds the loop waits for the
    `waker` (the watch stream saw a change), or else `hold` (a probe that the server
    answers only once the first pending target has left its last status), or else
    sleeps: either way a change is seen at once rather than at the next poll.
    """
    pending = dict(targets)
    states = {ident: Progress(name, "?") for ident, name in targets.items()}
    fresh: dict[str, tuple[bool, Progress]] = {}  # answered by the hold: not probed again
    deadline = time.monotonic() + timeout
    with WaitDisplay(render.make_console(stderr=True), goal) as display:
        while True:
            for ident in list(pending):
                try:
                    done, states[ident] = fresh.pop(ident) if ident in fresh else probe(ident)
                except CapsuleFailed as exc:
                    if exc.progress is not None:
                        states[ident] = exc.progress
                        display.update([states[i] for i in targets])
                    raise
                if done:
                    del pending[ident]
            display.update([states[i] for i in targets])
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return [states[ident] for ident in pending]
            if waker is not None and waker.alive:
                waker.wait(min(_HOLD_SECONDS, left))
                continue
            first = next(iter(pending))
            if hold is None:
                rt.sleep(rt.poll_interval)
                continue
            seconds = max(0.0, min(_HOLD_SECONDS, left))
            started = time.monotonic()
            fresh[first] = hold(first, states[first].status, seconds)
            if fresh[first][1].status == states[first].status \
                    and time.monotonic() - started < seconds / 2:
                rt.sleep(rt.poll_interval)  # answered at once: a server without the extension


def _late(goal: str, timeout: float, late: list[Progress]) -> CliError:
    which = ", ".join(f"{p.name} ({p.status})" for p in late)
    return CliError(f"timed out after {timeout:g}s; not {goal} yet: {which}")


def create(
    ctx: typer.Context,
    filename: Annotated[list[str], typer.Option(
        "--filename", "-f", metavar="PATH",
        help="Template file (YAML or JSON, - for stdin) or directory of them. Repeatable.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every capsule is Running.")] = False,
    timeout: TimeoutOpt = 120.0,
    output: FormatOpt = Format.table,
) -> None:
    """Create capsules from template files.

    A YAML file may hold several templates separated by ---; a directory means each of its
    *.yaml, *.yml and *.json files, in name order. Every file is parsed before anything is
    sent, so a broken file creates nothing.

    Example:

      capsule create -f examples/web.yaml --wait --timeout 60
    """
    rt = runtime_of(ctx)
    failed = False
    latest: dict[str, dict[str, Any]] = {}  # uuid -> newest body, for -o json/yaml
    problem: CliError | None = None
    with reporting(rt):
        templates = load_templates(filename)
        with rt.client() as client:
            for template in templates:
                try:
                    body = client.create(template.body)
                except ApiError as exc:
                    report(rt, exc, template.source)
                    failed = True
                    continue
                latest[body["uuid"]] = body
                if not output.machine:
                    typer.echo(f"capsule/{render.display_name(body)} created ({body['uuid']})")
            if wait and latest:
                problem = wait_running(rt, client, latest, timeout)
    if output.machine:
        echo_data(output, list(latest.values()))
    if problem is not None:
        report(rt, problem)
    if failed or problem is not None:
        raise typer.Exit(1)


def wait_running(rt: Runtime, client: CapsuleClient, latest: dict[str, dict[str, Any]],
                  timeout: float) -> CliError | None:
    """Poll until every capsule in `latest` (refreshed in place) runs; the failure, if any."""

    def check(uuid: str, fetch: Callable[[], dict[str, Any]]) -> tuple[bool, Progress]:
        name = render.display_name(latest[uuid])
        try:
            body = fetch()
        except ApiError as exc:
            if exc.status == 404:
                raise CapsuleFailed(f"capsule {name} disappeared while waiting for it to run") from None
            raise
        latest[uuid] = body
        status = str(body.get("status"))
        progress = Progress(name, status, render.member_states(body))
        if status == "Error":
            raise CapsuleFailed(f"capsule {name} failed: "
                                f"{body.get('status_reason') or 'no reason given'}", progress)
        return status == "Running", progress

    def probe(uuid: str) -> tuple[bool, Progress]:
        return check(uuid, lambda: client.get(uuid))

    def hold(uuid: str, status: str, seconds: float) -> tuple[bool, Progress]:
        return check(uuid, lambda: client.get_when_not(uuid, status, seconds))

    targets = {uuid: render.display_name(body) for uuid, body in latest.items()}
    waker = Waker(EventClient(rt.url, rt.token, transport=rt.transport), targets)
    try:
        late = _poll(rt, "Running", targets, probe, timeout, hold, waker)
    except CapsuleFailed as exc:
        return exc
    finally:
        waker.close()
    return _late("Running", timeout, late) if late else None


def list_(
    ctx: typer.Context,
    label: LabelOpt = None,
    all_projects: AllProjectsOpt = False,
    output: FormatOpt = Format.table,
    watch: Annotated[bool, typer.Option(
        "--watch", "-w", help="Then print each change to these capsules as it happens.")] = False,
) -> None:
    """List capsules, optionally only those with given labels.

    CONTAINERS counts running/total app containers; RESTARTS adds sandbox re-creations to
    the containers' restarts. With --watch the command keeps running and prints a line
    (with -o json: a JSON object; -o yaml: a YAML document) for every change to a listed or new capsule.

    Example:

      capsule list -l app=web -l tier=front
      capsule list --watch
    """
    rt = runtime_of(ctx)
    query = Query(labels=labels_of(label), all_projects=all_projects)
    with reporting(rt), rt.client() as client, \
            EventClient(rt.url, rt.token, transport=rt.transport) as changes:
        # The newest seq before the list: a change made meanwhile is shown (perhaps
        # twice, in the list and as a change), never lost.
        since = changes.head() if watch else 0
        capsules = client.list(query.labels, all_projects)
        emit_list(output, capsules, "capsules", COLUMNS)
        if watch:
            _watch_capsules(changes, query, since, output, rt.sleep)


def _watch_capsules(changes: EventClient, query: Query, since: int, output: Format,
                    sleep: Callable[[float], None]) -> None:
    try:
        for record in changes.watch(query, since, sleep=sleep):
            if record.get("kind") != "capsule":
                continue
            echo_event(output, record)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def describe(
    ctx: typer.Context,
    idents: Annotated[list[str], typer.Argument(metavar="NAME|UUID", show_default=False)],
    output: FormatOpt = Format.table,
) -> None:
    """Show capsules in detail: settings, containers, volumes and recent events.

    A capsule that cannot be shown is reported and the others are still shown (exit 1).
    With -o json (or yaml) the output is the list of capsule bodies, without events.

    Example:

      capsule describe web-demo
    """
    rt = runtime_of(ctx)
    with reporting(rt), rt.client() as client:
        def fetch(ident: str) -> tuple[dict[str, Any], Any]:
            capsule = client.get(ident)
            if output.machine:
                return capsule, None
            return capsule, render.describe(capsule, client.events(capsule["uuid"]))
        show_each(rt, output, idents, fetch)


def delete(
    ctx: typer.Context,
    idents: Annotated[list[str] | None, typer.Argument(
        metavar="NAME|UUID", show_default=False, help="Capsules to delete.")] = None,
    label: LabelOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every capsule you can see.")] = False,
    all_projects: AllProjectsOpt = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until they are gone.")] = False,
    timeout: TimeoutOpt = 120.0,
    output: FormatOpt = Format.table,
) -> None:
    """Delete capsules by name or uuid, by label, or all of them.

    Choose exactly one of: names/uuids, -l KEY=VALUE, --all. Deletion is asynchronous:
    a capsule shows Deleting until its containers and volumes are gone; --wait waits for that.

    Example:

      capsule delete web-demo
      capsule delete -l app=web --wait
    """
    chosen = [mode for mode, given in (("NAME|UUID", idents), ("-l", label), ("--all", all_)) if given]
    if len(chosen) != 1:
        clash = " and ".join(chosen) if chosen else "nothing"
        raise UsageProblem(f"choose capsules with exactly one of NAME|UUID..., -l KEY=VALUE or "
                           f"--all (got {clash})", ctx=ctx)
    rt = runtime_of(ctx)
    failed = False
    with reporting(rt), rt.client() as client:
        targets = _delete_targets(client, idents, label, all_projects)
        if targets is None:
            typer.echo("No capsules matched.", err=True)
            targets = {}
        deleted: dict[str, str] = {}
        for ident, name in targets.items():
            try:
                client.delete(ident, all_projects)
            except ApiError as exc:
                report(rt, exc, f"capsule/{name}")
                failed = True
                continue
            deleted[ident] = name
            if not output.machine:
                typer.echo(f"capsule/{name} deleted")
        if wait and deleted:
            probe, hold = _gone_probes(client, deleted)
            late = _poll(rt, "gone", deleted, probe, timeout, hold)
            if late:
                report(rt, _late("gone", timeout, late))
                failed = True
    if output.machine:
        echo_data(output, list(deleted.values()))
    if failed:
        raise typer.Exit(1)


def _delete_targets(client: CapsuleClient, idents: list[str] | None, label: list[str] | None,
                    all_projects: bool) -> dict[str, str] | None:
    """What to delete, as {what to send: how to name it}; None when a selector matched nothing."""
    if idents:
        return {ident: ident for ident in dict.fromkeys(idents)}
    # By uuid: a name may be shared across projects (with --all-projects) or be reused.
    found = client.list(labels_of(label), all_projects)
    return {c["uuid"]: render.display_name(c) for c in found} or None


def _gone_probes(client: CapsuleClient, names: Mapping[str, str]) -> tuple[Probe, Hold]:
    def check(ident: str, fetch: Callable[[], dict[str, Any]]) -> tuple[bool, Progress]:
        try:
            body = fetch()
        except ApiError as exc:
            if exc.status == 404:
                return True, Progress(names[ident], "gone")
            raise
        return False, Progress(names[ident], str(body.get("status")))

    def probe(ident: str) -> tuple[bool, Progress]:
        return check(ident, lambda: client.get(ident))

    def hold(ident: str, status: str, seconds: float) -> tuple[bool, Progress]:
        return check(ident, lambda: client.get_when_not(ident, status, seconds))

    return probe, hold
