"""A host's service load balancer as the agent drives it: the whole desired state at once.

Contract: `apply(state)` makes the host's forwarding exactly `state`, atomically (a packet
sees the old rules or the new ones, never a mix) and idempotently; an empty state removes
everything the driver made. `connections(addr, ports)` counts the TCP connections to
`addr` on `ports` that are still open through this host (a drain waits for them).

Traffic of a frontend: a client on one of its `clients` segments (a project network's
bridge and subnet: nothing else may use the VIP) connecting to `vip`:`port`, or anyone
reaching `publish` on one of the host's addresses, goes to one of `backends` on
`target_port`, a new choice per connection. Traffic to `vip_range` that no frontend takes
is refused at once (a connection reset), never routed onwards.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Literal, Protocol


@dataclass(frozen=True, order=True)
class Segment:
    """A project network on this host: its Linux bridge and subnet."""

    bridge: str
    subnet: IPv4Network


@dataclass(frozen=True)
class Frontend:
    label: str  # for people reading the rules: "<service uuid> TCP 80"
    vip: IPv4Address
    protocol: Literal["TCP", "UDP"]
    port: int
    target_port: int
    clients: tuple[Segment, ...] = ()
    backends: tuple[IPv4Address, ...] = ()
    publish: int | None = None


@dataclass(frozen=True)
class LbState:
    vip_range: IPv4Network | None = None
    frontends: tuple[Frontend, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.frontends


@dataclass(frozen=True)
class Flows:
    """The TCP connections to a backend address on some of its ports that this host
    tracks: how many are open, and a key for every one the kernel still remembers, open,
    closed (kept for a while after) or never answered. A key not seen before is a
    connection made since: someone still sends new ones there."""

    open: int = 0
    keys: frozenset[str] = frozenset()


class LoadBalancer(Protocol):
    def apply(self, state: LbState) -> None: ...

    def connections(self, addr: str, ports: Collection[int]) -> Flows: ...
