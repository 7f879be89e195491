"""`capsule run`: create a container (bare, or added to a running capsule), start it, and
optionally attach to it or wait for it."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from capsuled.cli.capsule import render
from capsuled.cli.capsule.client import ApiError, CliError, ContainerClient
from capsuled.cli.capsule.container_common import (
    checked,
    container_client,
    parse_env,
    parse_labels,
    parse_memory,
    parse_mounts,
    parse_restart,
    positive,
    trailing_words,
)
from capsuled.cli.capsule.output import Format, FormatOpt, echo_data
from capsuled.cli.capsule.shared import (
    Runtime,
    TimeoutOpt,
    UsageProblem,
    report,
    reporting,
    runtime_of,
)
from capsuled.cli.capsule.waiting import WaitDisplay


def run(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(metavar="IMAGE", show_default=False,
                                         help="Image to run, e.g. busybox or registry/repo:tag.")],
    command: Annotated[list[str] | None, typer.Argument(
        metavar="[COMMAND [ARG...]]", show_default=False,
        help="Replaces the image's command (its entrypoint stays). Everything after IMAGE "
             "is passed on, options included.")] = None,
    capsule: Annotated[str | None, typer.Option(
        "--capsule", metavar="NAME|UUID", show_default=False,
        help="Add the container to this running capsule: it shares the capsule's network, "
             "IPC, PID and UTS namespaces and is deleted with it.")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", show_default=False,
        help="Container name (unique among your bare containers, or within the capsule).")] = None,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", metavar="KEY=VALUE", show_default=False, callback=checked(parse_env),
        help="Environment variable; KEY alone passes this shell's value. Repeatable.")] = None,
    workdir: Annotated[str | None, typer.Option(
        "--workdir", "-w", metavar="DIR", show_default=False,
        help="Working directory inside the container.")] = None,
    cpu: Annotated[float | None, typer.Option(
        "--cpu", callback=positive, show_default=False,
        help="CPU limit in cores (0.5 = half a core); also what the scheduler reserves.")] = None,
    memory: Annotated[str | None, typer.Option(
        "--memory", "-m", metavar="MiB", show_default=False, callback=checked(parse_memory),
        help="Memory limit in MiB (64, 64m or 1g); also what the scheduler reserves.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="KEY=VALUE", show_default=False, callback=checked(parse_labels),
        help="Label on the container. Repeatable.")] = None,
    restart: Annotated[str | None, typer.Option(
        "--restart", metavar="POLICY", show_default=False, callback=checked(parse_restart),
        help="no (default), always, unless-stopped, on-failure or on-failure:N retries.")] = None,
    rm: Annotated[bool, typer.Option(
        "--rm", help="Delete the container once it exits.")] = False,
    mount: Annotated[list[str] | None, typer.Option(
        "--mount", metavar="SPEC", show_default=False, callback=checked(parse_mounts),
        help="size=GiB,destination=/path: a new volume of the container's own, deleted with "
             "it; type=bind,source=FILE,destination=/path: put FILE there before it starts; "
             "with --capsule, source=VOLUME,destination=/path mounts a capsule volume. "
             "Repeatable.")] = None,
    registry: Annotated[str | None, typer.Option(
        "--registry", metavar="NAME|UUID", show_default=False,
        help="Pull IMAGE through this registry of your project (see `capsule registry`): "
             "an IMAGE without a host is taken from the registry's domain.")] = None,
    expose: Annotated[list[str] | None, typer.Option(
        "--expose-port", "-p", metavar="PORT[/PROTOCOL]", show_default=False,
        help="Publish this container port (tcp or udp) on a host port the server picks, "
             "shown by `container show`, as zun run -p does. Repeatable.")] = None,
    security_group: Annotated[list[str] | None, typer.Option(
        "--security-group", metavar="NAME", show_default=False,
        help="Put the container in this security group of your project (see `capsule "
             "security-group`) instead of default. Repeatable.")] = None,
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Keep stdin open, so that `container attach` can type into it.")] = False,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="Give the container a terminal.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the container runs; fail with the reason if it cannot.")] = False,
    timeout: TimeoutOpt = 120.0,
    output: FormatOpt = Format.table,
) -> None:
    """Run a command in a new container, in the background.

    Without --capsule the container is bare: on its own network, restarted per --restart.
    With --capsule it joins that capsule (which must be running): it shares the
    capsule's namespaces, so it reaches the other containers on 127.0.0.1, and it is
    deleted with the capsule. --restart and --rm come from the capsule then.

    Options go before IMAGE: everything after it is the container's command (a -- in
    front of it is dropped).

    Example:

      capsule run --name hello busybox echo hello
      capsule run --wait --name web -m 64 -p 8080 busybox httpd -f -p 8080
      capsule run --capsule web-demo --name debug busybox sleep 3600
      capsule run --mount size=1,destination=/data --mount type=bind,source=app.conf,destination=/etc/app.conf busybox sleep 3600
    """
    clash = [opt for opt, given in (("--restart", restart), ("--rm", rm)) if given]
    if capsule and clash:
        raise UsageProblem(f"{' and '.join(clash)} cannot be combined with --capsule: "
                           "a capsule's containers follow the capsule's restart policy", ctx=ctx)
    mem = parse_memory(memory)
    optional: dict[str, Any] = {
        "command": trailing_words(command) or None, "name": name,
        "environment": parse_env(env) or None, "workdir": workdir, "cpu": cpu,
        "memory": None if mem is None else str(mem), "labels": parse_labels(label) or None,
        "restart_policy": parse_restart(restart), "auto_remove": rm or None,
        "interactive": interactive or None, "tty": tty or None, "capsule": capsule,
        "mounts": parse_mounts(mount) or None, "registry": registry,
        "exposed_ports": {p: {} for p in expose or []} or None,
        "security_groups": list(security_group or []) or None}
    # Only what was asked for: the server's defaults are the rest.
    body: dict[str, Any] = {"image": image, **{k: v for k, v in optional.items() if v is not None}}
    rt = runtime_of(ctx)
    problem: CliError | None = None
    with reporting(rt), container_client(rt) as client:
        created = client.create(body)
        name_ = render.display_name(created)
        if not output.machine:
            where = f" in capsule {capsule}" if capsule else ""
            typer.echo(f"container/{name_} created{where} ({created.get('uuid')})")
        if wait:
            created, problem = _wait_started(rt, client, created, timeout)
    if output.machine:
        echo_data(output, created)
    if problem is not None:
        report(rt, problem)
        raise typer.Exit(1)


def _wait_started(rt: Runtime, client: ContainerClient, body: dict[str, Any],
                  timeout: float) -> tuple[dict[str, Any], CliError | None]:
    """Poll until the container runs (or ran and exited 0); the newest body and any failure."""
    name, uuid = render.display_name(body), str(body.get("uuid"))
    deadline = time.monotonic() + timeout
    with WaitDisplay(render.make_console(stderr=True), "Running", kind="container") as display:
        while True:
            try:
                body = client.get(uuid)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                if body.get("auto_remove"):  # --rm: it ran, exited and was removed
                    return body, None
                return body, CliError(f"container {name} disappeared while waiting for it to run")
            status = str(body.get("status"))
            display.update([(name, status)])
            if status == "Running":
                return body, None
            if status == "Error":
                return body, CliError(f"container {name} failed: "
                                      f"{body.get('status_reason') or 'no reason given'}")
            if status == "Stopped":
                code = body.get("exit_code")
                if code == 0:
                    return body, None
                reason = body.get("status_reason")
                return body, CliError(f"container {name} exited with code {code}"
                                      + (f": {reason}" if reason else ""))
            if time.monotonic() >= deadline:
                return body, CliError(f"timed out after {timeout:g}s; not Running yet: {name} ({status})")
            rt.sleep(rt.poll_interval)
