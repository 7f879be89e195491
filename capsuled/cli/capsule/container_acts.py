"""Container commands that remake a container or make an image of it: rebuild, commit."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from capsuled.cli.capsule.client import CliError, ContainerClient
from capsuled.cli.capsule.container_common import IdentArg, container_client
from capsuled.cli.capsule.output import Format, FormatOpt, echo_data
from capsuled.cli.capsule.shared import Runtime, TimeoutOpt, report, reporting, runtime_of


def rebuild(
    ctx: typer.Context,
    ident: IdentArg,
    image: Annotated[str | None, typer.Option(
        "--image", metavar="IMAGE", show_default=False,
        help="The image to rebuild from (default: the container's own).")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until the rebuild is done; fail with the reason if it fails.")] = False,
    timeout: TimeoutOpt = 120.0,
    output: FormatOpt = Format.table,
) -> None:
    """Replace a bare container with a new one from the same or another image.

    It keeps its uuid, name, hostname, labels, volumes (their data too) and network name;
    it runs again if it was running, otherwise it is left created.

    Example:

      capsule rebuild --image busybox:1.36 --wait web
    """
    rt = runtime_of(ctx)
    problem: CliError | None = None
    body: dict[str, Any] = {}
    with reporting(rt), container_client(rt) as client:
        client.rebuild(ident, image)
        if not output.machine:
            typer.echo(f"container/{ident} rebuilding" + (f" from {image}" if image else ""))
        if wait:
            body, problem = _wait_rebuilt(rt, client, ident, timeout)
            if problem is None and not output.machine:
                typer.echo(f"container/{ident} rebuilt ({body.get('status')})")
        elif output.machine:
            body = client.get(ident)
    if output.machine:
        echo_data(output, body)
    if problem is not None:
        report(rt, problem)
        raise typer.Exit(1)


def _wait_rebuilt(rt: Runtime, client: ContainerClient, ident: str,
                  timeout: float) -> tuple[dict[str, Any], CliError | None]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(ident)
        status = str(body.get("status"))
        if status == "Error":
            return body, CliError(f"rebuild of container {ident} failed: "
                                  f"{body.get('status_reason') or 'no reason given'}")
        if status not in ("Rebuilding", "Creating"):
            return body, None
        if time.monotonic() >= deadline:
            return body, CliError(f"timed out after {timeout:g}s; container {ident} is still {status}")
        rt.sleep(rt.poll_interval)


def commit(
    ctx: typer.Context,
    ident: IdentArg,
    repository: Annotated[str, typer.Argument(
        metavar="REPO[:TAG]", show_default=False,
        help="The image's name, e.g. myapp or team/myapp:v1 (tag default: latest).")],
    output: FormatOpt = Format.table,
) -> None:
    """Make an image of a container's current filesystem, in its host's engine.

    The image belongs to your project: only it can run it or commit over it, and a name
    that exists already as another image (busybox, another project's) is refused. The
    container is paused while the image is made.

    Example:

      capsule commit web myapp:v1
    """
    rt = runtime_of(ctx)
    with reporting(rt), container_client(rt) as client:
        body = client.commit(ident, repository)
    if output.machine:
        echo_data(output, body)
    else:
        typer.echo(f"container/{ident} committed as {body.get('repository')}:{body.get('tag')} "
                   f"(image {body.get('uuid')})")
