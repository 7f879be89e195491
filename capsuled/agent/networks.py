"""Project networks on this host: joined by every create, collected when unused.

    with_network(project, create)   lease the project's network (ensured; cached by the
                                    driver), run the create, release; a create that finds
                                    the network gone makes it again and retries once
    move_in(rt, container, ...)     a container made before project networks joins its
                                    project's network in place and leaves Docker's bridge
    collect(in_use)                 called by the relist: remove the networks of projects
                                    that have been idle (no desired capsule or container,
                                    no container in Docker, no lease) for a whole grace
                                    period

A network removed under a create that is about to join it would fail the create, so the
two are serialised here: `collect` removes only projects with no lease, under the lock a
lease is taken with, and a project is idle at the earliest from the end of its last lease. A create that found
its network gone all the same (removed by hand) forgets it and makes it again.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TypeVar

from capsuled.agent.overlay import Overlay
from capsuled.domain.addresses import Address, network_uuid, preferred
from capsuled.drivers.network.base import NetworkDriver, ProjectNetwork, network_name
from capsuled.drivers.runtime.base import Observed, Runtime
from capsuled.errors import CapsuledError, DriverError, NotFound

LOG = logging.getLogger(__name__)
T = TypeVar("T")


class ProjectNetworks:
    def __init__(self, driver: NetworkDriver, instance: str, grace: float,
                 clock: Callable[[], float] = time.monotonic,
                 overlay: Overlay | None = None,
                 on_ready: Callable[[str, ProjectNetwork], None] | None = None) -> None:
        self._driver = driver
        # Projects whose network spans hosts: laid out by the control plane, joined by VXLAN.
        self._overlay = overlay
        # Told of the network before each create joins it (services put its rules in).
        self._on_ready = on_ready
        self._instance = instance
        self._grace = grace
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: Counter[str] = Counter()
        self._idle_since: dict[str, float] = {}

    def with_network(self, project: str | None, create: Callable[[ProjectNetwork | None], T]) -> T:
        """Run `create` with the project's network (None without a project: the runtime's
        default network) and keep the network from being collected meanwhile."""
        if project is None:
            return create(None)
        with self._lease(project):
            net = self._ensure(project)
            try:
                return create(net)
            except NotFound as exc:
                if not network_missing(exc):
                    raise
                LOG.warning("network %s of project %s is gone; making it again", net.name, project)
            self._driver.forget_network(self._instance, project)
            net = self._ensure(project)
            try:
                return create(net)
            except NotFound as exc:
                raise DriverError(exc.message) from exc

    def _ensure(self, project: str) -> ProjectNetwork:
        if self._overlay is None:
            net = self._driver.ensure_network(self._instance, project)
        else:
            net = self._overlay.attach(self._driver.ensure_network(
                self._instance, project, self._overlay.layout(project)))
        if self._on_ready is not None:
            self._on_ready(project, net)
        return net

    def move_in(self, rt: Runtime, container: Observed, project: str,
                aliases: tuple[str, ...]) -> bool:
        """Connect a container (a sandbox, or a bare container) that is not on its project's
        network to it, without a restart, and take it off Docker's shared default bridge.
        Whether it had to join."""
        name = network_name(self._instance, project)
        joined = name not in container.networks
        if joined:
            self.with_network(project, lambda net: rt.connect_network(
                container.id, net.name if net else name, aliases))
        if "bridge" in container.networks:
            rt.disconnect_network(container.id, "bridge")
        return joined

    @contextmanager
    def _lease(self, project: str) -> Iterator[None]:
        with self._lock:
            self._leases[project] += 1
            self._idle_since.pop(project, None)
        try:
            yield
        finally:
            with self._lock:
                self._leases[project] -= 1
                if self._leases[project] <= 0:
                    del self._leases[project]
                self._idle_since.pop(project, None)  # idle from now at the earliest

    def collect(self, in_use: Collection[str]) -> list[ProjectNetwork]:
        """Remove the networks of projects idle for the grace period; the removed. Never
        raises: a failure is logged and the next relist tries again."""
        try:
            networks = self._driver.list_networks(self._instance)
        except CapsuledError as exc:
            LOG.warning("listing project networks failed: %s", exc.message)
            return []
        now = self._clock()
        with self._lock:
            idle = {n.project for n in networks} - set(in_use) - set(self._leases)
            for project in list(self._idle_since):
                if project not in idle:
                    del self._idle_since[project]
            due = set()
            for project in idle:
                since = self._idle_since.setdefault(project, now)
                if now - since >= self._grace:
                    due.add(project)
            if not due:
                return []
            try:
                # Under the lock: no lease (no create joining these networks) can start
                # until they are gone.
                removed = self._driver.remove_unused_networks(self._instance, due)
            except CapsuledError as exc:
                LOG.warning("removing unused project networks failed: %s", exc.message)
                return []
            for net in removed:
                self._idle_since.pop(net.project, None)
        if removed and self._overlay is not None:
            self._overlay.reconcile()  # their VXLAN devices and DNS responders go too
        return removed


def network_missing(exc: NotFound) -> bool:
    message = exc.message.lower()
    return "network" in message and "not found" in message


def addresses_of(instance: str, project: str | None, o: Observed | None) -> list[Address]:
    """What a container (a sandbox, or a bare container) holds on its project's network,
    as the API shows it; nothing of any other network (Docker's bridge before it moved in)."""
    if project is None or o is None:
        return []
    name, net = network_name(instance, project), network_uuid(project)
    out = []
    for network, iface in o.addresses:
        if network != name:
            continue
        try:
            addr = ipaddress.IPv4Interface(iface)
        except ValueError:
            continue
        out.append(Address(network_id=net, addr=str(addr.ip), subnet=str(addr.network)))
    return out


def previous_address(project: str | None, known: list[Address]) -> str | None:
    """The address to ask for again when the container is remade."""
    return None if project is None else preferred(known, network_uuid(project))
