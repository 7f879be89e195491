"""What to type instead, when the server found no capsule or container by the name given:
names like it (difflib), the capsule a container name belongs to, and the list command
that shows them all. It costs one bounded list request, and only on such an error."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from capsuled.cli.capsule.client import ApiError, CapsuleClient, CliError, ContainerClient

MATCHES = 3


def close_to(name: str, names: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(name, sorted(set(names)), n=MATCHES, cutoff=0.6)


def did_you_mean(name: str, names: Iterable[str]) -> list[str]:
    close = close_to(name, names)
    return [f"did you mean {' or '.join(close)}?"] if close else []


def members(capsule: Mapping[str, Any]) -> list[str]:
    """The names of a capsule's containers, init containers included."""
    return [str(c.get("name")) for c in [*(capsule.get("init_containers") or []),
                                         *(capsule.get("containers") or [])] if c.get("name")]


def owners(name: str, capsules: Iterable[Mapping[str, Any]]) -> list[str]:
    """The capsules (by name, else uuid) that have a container called `name`."""
    return [str(c.get("name") or c.get("uuid")) for c in capsules if name in members(c)]


def hints(capsules: CapsuleClient, containers: ContainerClient, exc: ApiError) -> list[str]:
    """The hints for `exc` (see the module docstring); none if they cannot be had."""
    if exc.status == 409 and exc.title.startswith("Multiple "):
        return ["name it by uuid: `capsule list -o wide` and `capsule container list --capsule "
                "NAME` show them"]
    if exc.missing is None:
        return []
    kind, name = exc.missing
    try:
        found = capsules.first_page()
        bare = containers.first_page() if kind == "container" else []
    except CliError:
        return []
    if kind == "capsule":
        return did_you_mean(name, (str(c.get("name")) for c in found if c.get("name"))) + [
            "`capsule list` shows the capsules you can see"]
    mine = owners(name, found)
    if mine:
        return [f"{name} is a container of capsule {', '.join(mine)}: add --capsule {mine[0]}"]
    names = [str(c.get("name")) for c in bare if c.get("name")]
    return did_you_mean(name, names + [m for c in found for m in members(c)]) + [
        "`capsule container list` shows bare containers; with --capsule NAME, a capsule's"]
