"""The agent's side of security groups: keep each unit's rules (a capsule's sandbox, a bare
container) in the kernel, level-triggered, through a FirewallDriver.

What a unit's rules are comes with its assignment (`firewall`, resolved by the API); where
the unit is comes from what the agent observes (its address on the project network), or,
until it has observed it (just after a start), from the address the store last knew.

    desire(units)        each watch: the desired set's firewalls; applied at once
    observe(unit, addrs) each sync, and right after a sandbox is made, before any member
                         starts (execute.py): a new address is guarded before anything
                         listens on it; raises DriverError when the kernel refuses, so the
                         capsule's sync fails (and is retried) rather than run unguarded
    forget(unit)         its containers are gone: its rules go (the address may be
                         another's next)
    relist(present)      every relist: the units Docker has; rules of units neither
                         desired nor present go, and what the kernel holds is read again,
                         so a rule removed by hand or by a restarted engine comes back

Nothing is removed before the first relist: after a restart (even a kill -9) the rules of
units this agent has not listed yet stay as they are, and the running containers stay
guarded throughout.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from capsuled.domain.addresses import Address
from capsuled.domain.security_groups import Firewall as Rules
from capsuled.drivers.firewall.base import FirewallDriver, Guard
from capsuled.errors import CapsuledError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wanted:
    """One desired unit: its rules (None: not filtered) and the addresses the store knows."""

    rules: Rules | None
    stored: tuple[str, ...] = ()


def addresses(found: Iterable[Address]) -> tuple[str, ...]:
    """"ip/prefix" of each address, as the driver takes them."""
    out = []
    for a in found:
        prefix = a.subnet.rpartition("/")[2]
        out.append(f"{a.addr}/{prefix}")
    return tuple(out)


class Firewall:
    def __init__(self, driver: FirewallDriver, instance: str) -> None:
        self._driver = driver
        self._instance = instance
        self._lock = threading.Lock()  # one writer of the kernel at a time
        self._wanted: dict[str, Wanted] | None = None  # None until the first watch
        self._seen: dict[str, tuple[int, tuple[str, ...]]] = {}  # unit → (when, addresses)
        self._present: set[str] | None = None  # None until the first relist
        self._gone: set[str] = set()  # removed, though maybe still desired (being deleted)
        self._applied: tuple[list[Guard], set[str] | None] | None = None
        self._clock = itertools.count(1)

    def desire(self, units: Mapping[str, Wanted]) -> None:
        """The desired set changed (a watch answered): apply it. A failure is logged; the
        next sync or relist tries again."""
        with self._lock:
            self._wanted = dict(units)
            self._gone &= units.keys()
            for uuid, w in units.items():
                if uuid in self._gone:
                    continue
                if uuid not in self._seen and w.stored:
                    self._seen[uuid] = (0, w.stored)  # older than anything observed
        self._apply(quiet=True)

    def observe(self, unit: str, found: Iterable[Address]) -> None:
        """What the unit holds now. Nothing seen (it is stopped, or being remade): the last
        addresses stay guarded (Docker keeps them for the container)."""
        now = addresses(found)
        with self._lock:
            if now and self._seen.get(unit, (0, ()))[1] != now:
                self._seen[unit] = (next(self._clock), now)
            if now:
                self._gone.discard(unit)
        self._apply()  # nothing new: no kernel call, unless the last one failed

    def forget(self, unit: str) -> None:
        with self._lock:
            known = self._seen.pop(unit, None) is not None or unit not in self._gone
            self._gone.add(unit)
            if not known:
                return
        self._apply(quiet=True)

    def relist(self, present: Collection[str]) -> None:
        with self._lock:
            self._present = set(present)
            gone = [u for u in self._seen if u not in self._present
                    and (self._wanted is None or u not in self._wanted)]
            for u in gone:
                del self._seen[u]
        self._apply(quiet=True, verify=True)

    def _apply(self, quiet: bool = False, verify: bool = False) -> None:
        with self._lock:
            if self._wanted is None:
                return  # no desired set yet: nothing to decide with
            guards, keep = self._plan()
            if not verify and self._applied is not None and _holds(self._applied, guards, keep):
                return
            try:
                self._driver.ensure(self._instance, guards, keep)
            except CapsuledError as exc:
                self._applied = None  # the next call tries again
                if not quiet:
                    raise
                LOG.warning("%s", exc.message)
                return
            self._applied = (guards, keep)

    def _plan(self) -> tuple[list[Guard], set[str] | None]:
        """The guards to hold, and the units whose rules stay as they are (None: all
        others, before the first relist)."""
        assert self._wanted is not None
        guards = []
        unknown = set()
        for uuid, w in sorted(self._wanted.items()):
            if w.rules is None or uuid in self._gone:
                continue  # not filtered (no project network, an API from before groups), or gone
            seen = self._seen.get(uuid)
            if seen is None:
                unknown.add(uuid)  # guarded as it was until its address is known
                continue
            guards.append(Guard(unit=uuid, addresses=seen[1], firewall=w.rules, seen=seen[0]))
        if self._present is None:
            return guards, None
        # In Docker but no longer desired (being removed): closed as it was, until gone.
        orphans = {u for u in self._present if u not in self._wanted and u not in self._gone}
        return guards, unknown | orphans


def _holds(applied: tuple[list[Guard], set[str] | None], guards: list[Guard],
           keep: set[str] | None) -> bool:
    """Whether the kernel as the last `ensure` left it is already what (`guards`, `keep`)
    asks for: the same guards, and every unit kept then still kept. Keeping more removes
    less, so it writes nothing, and reading the table to find that out cost every create
    an `iptables-save` before its first Docker call (a new capsule is kept until its
    address is known)."""
    done_guards, done_keep = applied
    if done_guards != guards:
        return False
    if keep is None:  # before the first relist every unit is kept
        return True
    return done_keep is not None and done_keep <= keep
