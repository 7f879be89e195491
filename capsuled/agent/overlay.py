"""This host's part of the project networks that span hosts (docs/networking.md).

The control plane sends, with the assignments, the overlay networks of this host's
projects (domain.channel.OverlayNetwork: VNI, subnet, this host's block and gateway, the
peers' underlay addresses, the project's names on other hosts). From them:

    layout(project)     how ProjectNetworks makes the project's Docker network: the
                        allocated subnet, block and gateway, a bridge of a known name, the
                        overlay MTU
    attach(net)         after the network is ensured: join it to the segment now (a create
                        must not wait for the relist to reach a remote capsule) and give
                        its containers this host's DNS responder first
    update(overlays)    a new desired set: reconcile
    reconcile(repair)   level-triggered, from the desired set and what the host has: a
                        VXLAN device (with a flood entry per peer) on the bridge of every
                        overlay project whose network exists here, none on any other, the
                        firewall chains, and a DNS responder socket per such network.
                        Run on each update, by every relist, and never raises (a failure
                        is logged and the next relist tries again)
    service_names(…)    the project's capsule services (name -> VIP), from the service
                        agent's view: answered by the responder too (agent/dns.py)

A Docker network made before its project spanned hosts (its bridge has Docker's own
name) is left as it is, host-local, until it is collected; the next one is laid out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
from collections.abc import Collection, Mapping
from typing import Protocol

from capsuled.agent.dns import DnsResponder
from capsuled.domain.channel import OverlayNetwork
from capsuled.drivers.network.base import NetworkLayout, ProjectNetwork
from capsuled.drivers.network.vxlan import (ALIAS_PREFIX, VxlanPort, alias_of, bridge_name,
                                            vxlan_name)
from capsuled.errors import CapsuledError

LOG = logging.getLogger(__name__)


class Links(Protocol):
    """drivers/network/vxlan.VxlanLinks, as the overlay uses it."""

    def links(self) -> tuple[set[str], dict[str, str]]: ...

    def ensure(self, port: VxlanPort) -> None: ...

    def remove(self, name: str) -> None: ...

    def firewall(self, instance: str, bridges: Collection[str], peers: Collection[str],
                 vnis: Collection[int]) -> None: ...


class Overlay:
    def __init__(self, links: Links, dns: DnsResponder | None, instance: str, underlay: str,
                 mtu: int, resolvers: tuple[str, ...] = ()) -> None:
        self._links = links
        self._dns = dns
        self._instance = instance
        self._underlay = underlay
        self._mtu = mtu
        # The host's resolvers, after this host's responder: names that are not the
        # project's resolve as they would without it (agent/dns.py).
        self._resolvers = resolvers
        self._desired: dict[str, OverlayNetwork] = {}
        self._applied: dict[str, VxlanPort] = {}
        self._firewall: tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]] | None = None
        self._lock = threading.Lock()  # one reconcile at a time

    def layout(self, project: str) -> NetworkLayout | None:
        o = self._desired.get(project)
        if o is None:
            return None
        return NetworkLayout(subnet=str(o.subnet), ip_range=str(o.ip_range),
                             gateway=str(o.gateway), bridge=bridge_name(self._instance, project),
                             mtu=self._mtu)

    def attach(self, net: ProjectNetwork) -> ProjectNetwork:
        o = self._desired.get(net.project)
        if o is None or net.bridge != bridge_name(self._instance, net.project):
            return net  # host-local: not laid out for the overlay (made before it)
        self.reconcile()
        return dataclasses.replace(net, dns=(str(o.gateway), *self._resolvers))

    def update(self, overlays: list[OverlayNetwork]) -> None:
        fresh = {o.project_id: o for o in overlays}
        if fresh == self._desired:
            return
        self._desired = fresh
        self.reconcile()

    def reconcile(self, repair: bool = False) -> None:
        """`repair` (the relist's): set everything again, whatever was applied before (a
        rule or an FDB entry removed by hand comes back)."""
        with self._lock:
            before = dict(self._applied)
            if repair:
                self._applied.clear()
                self._firewall = None
            try:
                bridges, ours = self._links.links()
            except CapsuledError as exc:
                LOG.warning("overlay: listing links failed: %s", exc.message)
                return
            desired = dict(self._desired)
            wanted: dict[str, tuple[VxlanPort, OverlayNetwork]] = {}
            for project, o in desired.items():
                bridge = bridge_name(self._instance, project)
                if bridge not in bridges:
                    continue  # no network of the project here (yet)
                port = VxlanPort(name=vxlan_name(self._instance, project),
                                 alias=alias_of(self._instance, project), vni=o.vni,
                                 local=self._underlay, bridge=bridge, mtu=self._mtu,
                                 peers=tuple(sorted(str(p) for p in o.peers)))
                wanted[port.alias] = (port, o)
            # The guard first: a segment is never joined before the firewall knows of it.
            self._ensure_firewall(
                sorted(p.bridge for p, _ in wanted.values()),
                sorted({str(p) for o in desired.values() for p in o.peers},
                       key=ipaddress.IPv4Address),
                sorted({o.vni for o in desired.values()}))
            for alias, (port, _) in wanted.items():
                if self._applied.get(alias) == port and ours.get(alias) == port.name:
                    continue
                try:
                    self._links.ensure(port)
                    self._applied[alias] = port
                    if before.get(alias) != port:
                        LOG.info("overlay: %s on %s (VNI %d) floods to %s", port.name,
                                 port.bridge, port.vni, ", ".join(port.peers) or "no peer yet")
                except CapsuledError as exc:
                    self._applied.pop(alias, None)
                    LOG.warning("overlay: %s", exc.message)
            mine = f"{ALIAS_PREFIX}{self._instance}:"
            for alias, name in ours.items():
                if alias.startswith(mine) and alias not in wanted:
                    try:
                        self._links.remove(name)
                        LOG.info("overlay: removed %s (%s)", name, alias[len(mine):])
                    except CapsuledError as exc:
                        LOG.warning("overlay: %s", exc.message)
                    self._applied.pop(alias, None)
            self._serve_names({o.project_id: o for _, o in wanted.values()})

    def service_names(self, by_project: Mapping[str, Mapping[str, str]]) -> None:
        """Each project's service names and VIPs, answered by its responder from now on."""
        if self._dns is not None:
            self._dns.serve_services(by_project)

    def _ensure_firewall(self, bridges: list[str], peers: list[str], vnis: list[int]) -> None:
        want = (tuple(bridges), tuple(peers), tuple(vnis))
        if want == self._firewall:
            return
        try:
            self._links.firewall(self._instance, bridges, peers, vnis)
            self._firewall = want
        except CapsuledError as exc:
            self._firewall = None
            LOG.warning("overlay: firewall: %s", exc.message)

    def _serve_names(self, joined: dict[str, OverlayNetwork]) -> None:
        if self._dns is None:
            return
        for project, o in joined.items():
            try:
                self._dns.serve(project, str(o.gateway), o.subnet,
                                {n.name: str(n.addr) for n in o.names})
            except OSError as exc:
                LOG.warning("overlay: DNS responder on %s for project %s: %s", o.gateway,
                            project, exc.strerror or exc)
        for project in self._dns.keys() - joined.keys():
            self._dns.stop(project)
