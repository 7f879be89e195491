"""`capsule events`: the change records of capsules and containers (GET /v1/events, a
capsuled extension), and following them as they happen."""

from __future__ import annotations

from typing import Annotated

import typer

from capsuled.cli.capsule.event_stream import EventClient, Query, echo_event
from capsuled.cli.capsule.output import Format, FormatOpt, echo_data
from capsuled.cli.capsule.shared import check_labels, labels_of, reporting, runtime_of


def events(
    ctx: typer.Context,
    ident: Annotated[str | None, typer.Argument(metavar="[NAME|UUID]", show_default=False,
                                                help="Only this capsule's records.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing records as they happen.")] = False,
    since: Annotated[int | None, typer.Option(
        min=0, metavar="SEQ", help="Only records after this sequence number (with -f: resume "
        "a watch from the last one you saw).")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="KEY=VALUE", callback=check_labels,
        help="Only objects with this label (repeatable).")] = None,
    all_projects: Annotated[bool, typer.Option("--all-projects",
                                               help="Every project's records (admins).")] = False,
    output: FormatOpt = Format.table,
) -> None:
    """Show what happened to capsules and containers, oldest first.

    With -f the command keeps running and prints each change as it is committed; a
    dropped connection is resumed without losing any. With -o json the records are a
    JSON list, or with -f one JSON object per line.

    Example:

      capsule events web-demo
      capsule events -f -o json
    """
    rt = runtime_of(ctx)
    query = Query(capsule=ident, labels=labels_of(label), all_projects=all_projects)
    with reporting(rt), EventClient(rt.url, rt.token, transport=rt.transport) as client:
        records, resume = client.since(query, since or 0)
        if output.machine and not follow:
            echo_data(output, records)
            return
        for record in records:
            echo_event(output, record)
        if not follow:
            if not records:
                typer.echo("No events found.", err=True)
            return
        try:
            for record in client.watch(query, resume, sleep=rt.sleep):
                echo_event(output, record)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
