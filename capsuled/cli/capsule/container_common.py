"""What the container commands share: their options and how they are parsed, the client,
binary stdio, exit statuses, and applying a call to several containers."""

from __future__ import annotations

import base64
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from capsuled.cli.capsule.client import ApiError, ContainerClient
from capsuled.cli.capsule.output import Format, echo_data
from capsuled.cli.capsule.shared import Runtime, report, reporting

INTERRUPTED = 130  # 128 + SIGINT, as shells report it
RESTART_NAMES = ("no", "always", "on-failure", "unless-stopped")
MEMORY_RE = re.compile(r"^\s*(\d+)\s*(m|mb|mi|mib|g|gb|gi|gib)?\s*$", re.IGNORECASE)
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")

# Commands whose trailing words go to the container unparsed (docker's `run IMAGE CMD...`).
PASS_THROUGH = {"allow_interspersed_args": False}


# --- option parsing -------------------------------------------------------------------------

def key_values(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{value!r} is not {what} (a non-empty key, then =), "
                                     "e.g. app=web")
        out[key] = rest
    return out


def parse_env(values: list[str] | None) -> dict[str, str]:
    """KEY=VALUE, or KEY alone for the value it has here (as docker does)."""
    out: dict[str, str] = {}
    for value in values or []:
        if "=" in value:
            out.update(key_values([value], "KEY=VALUE"))
            continue
        if not value.strip():
            raise typer.BadParameter("an empty variable name")
        if value not in os.environ:
            raise typer.BadParameter(f"{value} is not set here; give it as {value}=VALUE")
        out[value] = os.environ[value]
    return out


def parse_labels(values: list[str] | None) -> dict[str, str]:
    return key_values(values, "KEY=VALUE")


def parse_memory(value: str | None) -> int | None:
    """MiB: 64, 64m, 64MiB, 1g; what `docker run -m` takes, in whole mebibytes."""
    if value is None:
        return None
    match = MEMORY_RE.match(value)
    if not match:
        raise typer.BadParameter(f"{value!r} is not a size in MiB (e.g. 64, 64m, 1g)")
    number, unit = int(match.group(1)), (match.group(2) or "m").lower()
    return number * 1024 if unit.startswith("g") else number


def parse_restart(value: str | None) -> dict[str, str] | None:
    if value is None:
        return None
    name, sep, count = value.partition(":")
    if name not in RESTART_NAMES:
        raise typer.BadParameter(f"{value!r}: use one of no, always, unless-stopped, "
                                 "on-failure or on-failure:N")
    if sep and (name != "on-failure" or not count.isdigit()):
        raise typer.BadParameter(f"{value!r}: only on-failure takes a retry count (on-failure:3)")
    return {"Name": name, "MaximumRetryCount": count if sep else "0"}


def parse_mounts(values: list[str] | None) -> list[dict[str, Any]]:
    """`--mount` as the zun CLI takes it: size=GiB,destination=/path (a new volume of the
    container's own), source=VOLUME,destination=/path (a volume of the capsule, with
    --capsule) or type=bind,source=FILE,destination=/path (FILE's bytes put there)."""
    out = []
    for value in values or []:
        fields: dict[str, str] = {}
        for part in value.split(","):
            key, sep, val = part.partition("=")
            if not sep or key.strip() not in ("size", "source", "destination", "type"):
                raise typer.BadParameter(
                    f"{value!r}: use size=GiB,destination=/path, source=VOLUME,destination=/path "
                    "or type=bind,source=FILE,destination=/path")
            fields[key.strip()] = val.strip()
        if not fields.get("destination"):
            raise typer.BadParameter(f"{value!r}: destination=/path is required")
        mount: dict[str, Any] = dict(fields)
        if fields.get("type") == "bind":
            try:
                data = Path(fields.get("source", "")).read_bytes()
            except OSError as exc:
                raise typer.BadParameter(f"{value!r}: cannot read {fields.get('source')!r} "
                                         f"({exc.strerror})") from None
            mount["source"] = base64.b64encode(data).decode()
        out.append(mount)
    return out


def checked(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An option callback that only validates with `parse` (the command parses again), so
    that a bad value is a usage error naming the option."""
    def check(value: Any) -> Any:
        parse(value)
        return value
    return check


def positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value:g} is not above 0")
    return value


def parse_tail(value: str | None) -> str | None:
    if value is None or value == "all" or value.isdigit():
        return value
    raise typer.BadParameter(f"{value!r}: a number of lines, or all")


def since_epoch(value: str | None, now: float | None = None) -> str | None:
    """docker-style relative times (30s, 10m, 1h30m, 2d) become epoch seconds; anything
    else (epoch seconds, 'YYYY-MM-DD HH:MM:SS') goes to the server as it is."""
    if value is None or value.isdigit():
        return value
    match = DURATION_RE.match(value.strip())
    if not match or not any(match.groups()):
        return value
    d, h, m, s = (int(g or 0) for g in match.groups())
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    return str(int((time.time() if now is None else now) - seconds))


CapsuleOpt = Annotated[str | None, typer.Option(
    "--capsule", metavar="NAME|UUID", show_default=False,
    help="The capsule the container belongs to: needed to find a capsule's container by name.")]
IdentArg = Annotated[str, typer.Argument(metavar="CONTAINER", show_default=False,
                                         help="Container name or uuid.")]
IdentsArg = Annotated[list[str], typer.Argument(metavar="CONTAINER...", show_default=False,
                                                help="Container names or uuids.")]
WaitSecondsOpt = Annotated[int | None, typer.Option(
    "--timeout", "-t", min=0, metavar="SECONDS", show_default=False,
    help="Seconds to wait for a clean exit before SIGKILL (server default 10).")]


# --- plumbing -------------------------------------------------------------------------------

def container_client(rt: Runtime) -> ContainerClient:
    return ContainerClient(rt.url, rt.token, transport=rt.transport)


def binary_stdout() -> IO[bytes]:
    sys.stdout.flush()  # anything printed as text goes first
    return sys.stdout.buffer


def binary_stdin() -> IO[bytes]:
    return sys.stdin.buffer


def trailing_words(args: list[str] | None) -> list[str]:
    """Trailing arguments, without a leading `--` (`exec web -- ls -l`, as kubectl writes it)."""
    words = list(args or [])
    return words[1:] if words[:1] == ["--"] else words


def exit_status(code: Any) -> int:
    """The exit status to leave with for a command's exit code (-1/None: unknown → 1)."""
    try:
        value = int(code)
    except (TypeError, ValueError):
        return 1
    return value if 0 <= value <= 255 else 1


def for_each(rt: Runtime, idents: list[str], output: Format, done: str,
             call: Callable[[ContainerClient, str], Any]) -> None:
    """Apply `call` to every container; report each failure and carry on (exit 1 at the end)."""
    ok: list[str] = []
    failed = False
    with reporting(rt), container_client(rt) as client:
        for ident in dict.fromkeys(idents):
            try:
                call(client, ident)
            except ApiError as exc:
                report(rt, exc, f"container/{ident}")
                failed = True
                continue
            ok.append(ident)
            if not output.machine:
                typer.echo(f"container/{ident} {done}")
    if output.machine:
        echo_data(output, ok)
    if failed:
        raise typer.Exit(1)
