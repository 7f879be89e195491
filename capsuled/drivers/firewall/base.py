"""Security groups in the host's kernel, as the agent sees them.

Contract: `ensure` makes this deployment's filtering exactly the `guards` it is given:
each guarded unit (a capsule's sandbox, or a bare container), addressed by its IPv4
addresses, admits what its `Firewall` allows, replies to its own connections, and nothing
else; every other unit's rules go, except those of the units in `keep` (which exist but
whose addresses this agent has not learnt yet), which stay as they are. It is idempotent
and level-triggered: it reads what the kernel holds and writes only the difference, in one
atomic step, so a crash at any point leaves either the old rules or the new ones.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from capsuled.domain.security_groups import Firewall


@dataclass(frozen=True)
class Guard:
    unit: str  # the capsule's uuid (its sandbox holds the addresses) or the bare container's
    addresses: tuple[str, ...]  # "ip/prefix" on its project network
    firewall: Firewall
    # When its addresses were learnt (a counter): should two units claim one address (the
    # one removed a moment ago, the one that got its address since), the later one wins.
    seen: int = 0


class FirewallDriver(Protocol):
    def ensure(self, instance: str, guards: Sequence[Guard],
               keep: Collection[str] | None) -> None:
        """Make this deployment's rules `guards`; `keep`: units whose rules stay as they
        are (None: every unit's not in `guards`). Raises DriverError when the kernel
        refuses."""
        ...

    def remove_all(self, instance: str) -> None:
        """Remove every rule and chain of this deployment (its containers are all gone)."""
        ...
