"""Project networks as the agent sees them.

Every project with containers on a host gets one network there: a host-local bridge that
the project's capsule sandboxes and bare containers join, so they reach one another by
name (the network's DNS) while other projects' networks are unreachable.

Contract: `ensure_network` creates or adopts the project's network (idempotent, safe
against a concurrent create of the same network) and remembers it, so a steady-state call
costs no runtime call; `forget_network` drops that memory (the runtime said the network is
gone). `remove_unused_networks` removes the named projects' networks that have no
container attached, and nothing else. Objects are found by their `capsuled.*` labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ProjectNetwork:
    id: str
    name: str
    project: str
    bridge: str | None = None  # its Linux bridge, when we named it (a network across hosts)
    # DNS servers its containers are given (a network across hosts: this host's responder
    # for the project's names elsewhere first, agent/dns.py); empty: Docker's defaults.
    dns: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkLayout:
    """A project network's addresses as the control plane allocated them (a network that
    spans hosts, domain/overlay.py), and the bridge the agent then attaches VXLAN to."""

    subnet: str  # the project's, the same on every host
    ip_range: str  # this host's block: the only addresses Docker hands out here
    gateway: str  # this host's bridge address
    bridge: str  # the Linux bridge's name
    mtu: int


def network_name(instance: str, project: str) -> str:
    """A legal network name for any project id, unique per deployment and project."""
    return f"capsuled-{instance}-{hashlib.sha256(project.encode()).hexdigest()[:16]}"


class NetworkDriver(Protocol):
    def ensure_network(self, instance: str, project: str,
                       layout: NetworkLayout | None = None) -> ProjectNetwork:
        """`layout`: the addresses to make the network with when it does not exist yet
        (None: a free block of the host's own pool). An existing network is adopted as it
        is: one made before its project spanned hosts keeps its addresses until it is
        collected."""
        ...

    def forget_network(self, instance: str, project: str) -> None: ...

    def list_networks(self, instance: str) -> list[ProjectNetwork]:
        """Every project network of this deployment, one runtime call."""
        ...

    def remove_unused_networks(self, instance: str,
                               projects: Collection[str]) -> list[ProjectNetwork]:
        """Remove the networks of `projects` that no container is attached to; the removed."""
        ...
