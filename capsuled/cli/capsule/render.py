"""Turning API bodies into what a person (tables) or a program (JSON) reads.

Everything that comes from the server is wrapped in `Text`, never interpolated into rich
markup: a label value like `[red]` must print as itself.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

# Piped output is for grep and awk: wrapping a table row across lines would break them.
PIPE_WIDTH = 400
STATUS_STYLES = {"Running": "green", "Error": "bold red", "Unknown": "red",
                 "Deleting": "magenta", "Stopped": "dim", "Rebuilding": "yellow"}
NONE = "-"


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=PIPE_WIDTH)
    return console


def emit(console: Console, renderable: RenderableType) -> None:
    """Print; off a terminal, without the cell padding rich leaves at the end of lines."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def json_line(value: Any) -> str:
    """One JSON value on one line (a stream's record)."""
    return json.dumps(value, ensure_ascii=False)


# --- small formatters -------------------------------------------------------------------

def parse_time(value: str | None) -> datetime | None:
    """API timestamps are naive UTC (`2026-11-24 08:00:00.123456`); tolerate ISO with a zone."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def humanize(seconds: float) -> str:
    """kubectl-style ages: precise while young, coarse when old."""
    s = max(int(seconds), 0)
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if h < 1:
        return f"{m}m"
    if h < 10:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if d < 2:
        return f"{h}h"
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d"


def age(created_at: str | None, now: datetime | None = None) -> str:
    when = parse_time(created_at)
    if when is None:
        return NONE
    now = now or datetime.now(timezone.utc)
    return humanize((now - when).total_seconds())


def pairs(mapping: Mapping[str, Any] | None) -> str:
    if not mapping:
        return NONE
    return ",".join(f"{k}={v}" for k, v in mapping.items())


def display_name(capsule: Mapping[str, Any]) -> str:
    """Name if it has one, else uuid: how a capsule is called in one-line messages."""
    return str(capsule.get("name") or capsule.get("uuid") or "?")


def images(capsule: Mapping[str, Any]) -> list[str]:
    """The distinct images of a capsule's containers, init containers first."""
    found = [c.get("image") for c in [*(capsule.get("init_containers") or []),
                                      *(capsule.get("containers") or [])]]
    return list(dict.fromkeys(str(i) for i in found if i))


def ready(capsule: Mapping[str, Any]) -> str:
    apps = capsule.get("containers") or []
    running = sum(1 for c in apps if c.get("status") == "Running")
    return f"{running}/{len(apps)}"


def restarts(capsule: Mapping[str, Any]) -> int:
    # Sandbox recreations plus every app container's own restarts: one "is it flapping?" number.
    own = int(capsule.get("restart_count") or 0)
    return own + sum(int(c.get("restart_count") or 0) for c in capsule.get("containers") or [])


def restart_policy(capsule: Mapping[str, Any]) -> str:
    policy = capsule.get("restart_policy")
    if isinstance(policy, Mapping):  # microversions >= 1.40
        return str(policy.get("Name") or NONE)
    return str(policy or NONE)


# A member's status as its progress line says it: what is happening to it now.
_DOING = {"Creating": "creating", "Created": "starting", "Running": "running",
          "Restarting": "restarting", "Paused": "paused", "Deleting": "deleting"}


def member_state(c: Mapping[str, Any], init: bool = False) -> str:
    """One container of a capsule, for a progress line: creating, starting, running,
    ready, completed, exited (code N), failed: why; and its restarts."""
    status = str(c.get("status") or "Unknown")
    state = _DOING.get(status, status.lower())
    if status == "Running" and c.get("ready") is True:
        state = "running, ready"
    elif status == "Stopped":
        code = c.get("exit_code")
        state = "completed" if init and code == 0 else f"exited (code {code})"
    elif status == "Error":
        state = f"failed: {c.get('status_reason') or 'no reason given'}"
    restarts = int(c.get("restart_count") or 0)
    return state + (f", {restarts} restart{'s' if restarts > 1 else ''}" if restarts else "")


def member_states(capsule: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(name, state) of each of a capsule's containers, init containers first."""
    inits = [(f"{c.get('name')} (init)", member_state(c, True))
             for c in capsule.get("init_containers") or []]
    return (*inits, *((str(c.get("name")), member_state(c)) for c in capsule.get("containers") or []))


def status_text(status: str | None) -> Text:
    value = status or "Unknown"
    return Text(value, style=STATUS_STYLES.get(value, "yellow"))


def text(value: Any) -> Text:
    return Text(NONE if value is None or value == "" else str(value))


def plain_table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


# --- describe -------------------------------------------------------------------------------

def _fields(capsule: Mapping[str, Any], now: datetime | None) -> Table:
    memory = capsule.get("memory")
    rows: list[tuple[str, RenderableType]] = [
        ("UUID", text(capsule.get("uuid"))),
        ("Name", text(capsule.get("name"))),
        ("Status", status_text(capsule.get("status"))),
        ("Status reason", text(capsule.get("status_reason"))),
        ("Labels", text(pairs(capsule.get("labels")))),
        ("Annotations", text(pairs(capsule.get("annotations")))),
        ("CPU", text(_number(capsule.get("cpu")))),
        ("Memory", text(f"{memory} MiB" if memory not in (None, "") else None)),
        ("Restart policy", text(restart_policy(capsule))),
        ("Restart count", text(capsule.get("restart_count", 0))),
        ("Ready", text(capsule.get("ready"))),
        ("Health", text(capsule.get("health"))),
        ("Addresses", text(addresses(capsule.get("addresses")))),
    ]
    if "host" in capsule:  # admins only: absence means "not yours to know", not "none"
        rows.append(("Host", text(capsule.get("host"))))
    created = capsule.get("created_at")
    rows.append(("Created", text(f"{created} UTC ({age(created, now)} ago)" if created else None)))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(f"{key}:", value)
    return grid


def addresses(value: Any) -> str | None:
    """Zun's addresses ({network: [{addr, …}]}) as "10.0.0.5, 10.0.0.6"; None if none."""
    if not isinstance(value, Mapping):
        return None
    found = [str(a["addr"]) for entries in value.values() if isinstance(entries, list)
             for a in entries if isinstance(a, Mapping) and a.get("addr")]
    return ", ".join(found) or None


def _number(value: Any) -> str | None:
    if isinstance(value, float):
        return f"{value:g}"
    return None if value is None else str(value)


def containers_table(capsule: Mapping[str, Any]) -> Table:
    table = plain_table("NAME", "IMAGE", "STATUS", "READY", "EXIT", "RESTARTS", "PORTS", "PROBES",
                   "REASON")
    members = [(c, True) for c in capsule.get("init_containers") or []]
    members += [(c, False) for c in capsule.get("containers") or []]
    for c, init in members:
        name = Text(str(c.get("name") or NONE))
        if init:
            name.append(" (init)", style="dim")
        table.add_row(name, text(c.get("image")), status_text(c.get("status")),
                      text({True: "yes", False: "no"}.get(c.get("ready"))),
                      text(c.get("exit_code")), text(c.get("restart_count", 0)),
                      text(published(c)), text(probes(c.get("probe"))), text(c.get("status_reason")))
    return table


def published(c: Mapping[str, Any]) -> str | None:
    """published_ports as docker ps shows ports: "18080->8080/TCP, 53/UDP" (a port with no
    host port yet: the runtime picks one when the container runs)."""
    found = []
    for p in c.get("published_ports") or []:
        if isinstance(p, Mapping):
            port = f"{p.get('container_port')}/{p.get('protocol')}"
            found.append(f"{p['host_port']}->{port}" if p.get("host_port") else port)
    return ", ".join(found) or None


def probes(value: Any) -> str | None:
    """{purpose: {result, consecutive_failures, last_failure}}: one line per probe."""
    lines = [f"{k}: {r.get('result', 'unknown')}" + (f" x{r['consecutive_failures']}" if r.get(
        "consecutive_failures") else "") + (f" ({r['last_failure']})" if r.get("last_failure") else "")
        for k, r in (value.items() if isinstance(value, Mapping) else ()) if isinstance(r, Mapping)]
    return "\n".join(lines) or None


def volumes_table(capsule: Mapping[str, Any]) -> Table:
    table = plain_table("NAME", "TYPE", "SIZE", "AUTO-REMOVE", "DOCKER VOLUME")
    for v in capsule.get("volumes") or []:
        size = v.get("size")
        table.add_row(text(v.get("name")), text(v.get("type")),
                      text(f"{size}Gi" if size is not None else None),
                      Text("yes" if v.get("auto_remove") else "no"), text(v.get("docker_volume")))
    return table


def events_table(events: Sequence[Mapping[str, Any]], now: datetime | None = None) -> Table:
    table = plain_table("AGE", "TYPE", "REASON", "CONTAINER", "MESSAGE")
    for e in events:
        kind = str(e.get("type") or NONE)
        message = str(e.get("message") or "")
        count = e.get("count")
        if isinstance(count, int) and count > 1:  # the server counts repeats on one event
            message += f" ({count} times, last {age(e.get('last_seen'), now)} ago)"
        table.add_row(Text(age(e.get("created_at"), now)),
                      Text(kind, style="yellow" if kind == "Warning" else ""),
                      text(e.get("reason")), text(e.get("container")), text(message))
    return table


def _section(title: str, table: Table) -> RenderableType:
    body: RenderableType = table if table.row_count else Text("<none>", style="dim")
    return Group(Text(f"{title}:", style="bold"), Padding(body, (0, 0, 0, 2), expand=False))


def describe(capsule: Mapping[str, Any], events: Sequence[Mapping[str, Any]],
             now: datetime | None = None) -> RenderableType:
    return Group(_fields(capsule, now), Text(),
                 _section("Containers", containers_table(capsule)), Text(),
                 _section("Volumes", volumes_table(capsule)), Text(),
                 _section("Events", events_table(events, now)))


# --- containers -----------------------------------------------------------------------------

def command_line(value: Any) -> str:
    """A command as a shell would read it back (the API sends a list, or a string before 1.20)."""
    if isinstance(value, list | tuple):
        return shlex.join(str(v) for v in value) if value else NONE
    return str(value) if value else NONE


def container_status(c: Mapping[str, Any]) -> Text:
    out = status_text(c.get("status"))
    if c.get("status") == "Stopped" and c.get("exit_code") is not None:
        out.append(f" (exit {c['exit_code']})", style="dim")
    return out


def container_restart(c: Mapping[str, Any]) -> str:
    policy = c.get("restart_policy")
    if not isinstance(policy, Mapping):
        return str(policy or NONE)
    name, count = str(policy.get("Name") or NONE), str(policy.get("MaximumRetryCount") or "0")
    return f"{name}:{count}" if name == "on-failure" and count != "0" else name


def show_container(c: Mapping[str, Any], now: datetime | None = None) -> Table:
    """Every setting and state of one container, as `key: value` lines."""
    memory = c.get("memory")
    rows: list[tuple[str, RenderableType]] = [
        ("UUID", text(c.get("uuid"))),
        ("Name", text(c.get("name"))),
        ("Capsule", text(c.get("capsule_id"))),
        ("Image", text(c.get("image"))),
        ("Entrypoint", Text(command_line(c.get("entrypoint")))),
        ("Command", Text(command_line(c.get("command")))),
        ("Status", container_status(c)),
        ("Status reason", text(c.get("status_reason"))),
        ("Restart policy", text(container_restart(c))),
        ("Restart count", text(c.get("restart_count", 0))),
        ("CPU", text(_number(c.get("cpu")))),
        ("Memory", text(f"{memory} MiB" if memory not in (None, "") else None)),
        ("Workdir", text(c.get("workdir"))),
        ("Environment", text(pairs(c.get("environment")))),
        ("Labels", text(pairs(c.get("labels")))),
        ("Hostname", text(c.get("hostname"))),
        ("Addresses", text(addresses(c.get("addresses")))),
        ("Published ports", text(published(c))),
        ("Interactive", Text("yes" if c.get("interactive") else "no")),
        ("TTY", Text("yes" if c.get("tty") else "no")),
        ("Auto remove", Text("yes" if c.get("auto_remove") else "no")),
    ]
    if "host" in c:  # admins only
        rows.append(("Host", text(c.get("host"))))
    rows += [("Started", text(c.get("started_at"))), ("Finished", text(c.get("finished_at")))]
    created = c.get("created_at")
    rows.append(("Created", text(f"{created} UTC ({age(created, now)} ago)" if created else None)))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(f"{key}:", value)
    return grid


def top_table(top: Mapping[str, Any]) -> Table:
    """`ps` inside a container: the server's Titles over its Processes."""
    table = _server_table(top.get("Titles") or [])
    for process in top.get("Processes") or []:
        table.add_row(*(Text(str(cell)) for cell in process))
    return table


def stats_table(stats: Mapping[str, Any]) -> Table:
    """One row under the server's own column names, like `docker stats --no-stream`."""
    table = _server_table(stats)
    table.add_row(*(text(_number(v)) for v in stats.values()))
    return table


def _server_table(columns: Iterable[Any]) -> Table:
    # Column names that come from the server are Text too: never markup.
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for name in columns:
        table.add_column(Text(str(name)), overflow="fold")
    return table


def clock(value: Any) -> str | None:
    """`2026-11-24 08:00:00.123456` → `2026-11-24 08:00:00` (UTC, to the second)."""
    return str(value)[:19] if value else None
