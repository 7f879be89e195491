"""What an agent's host runs besides its runtime, each optional and built only when on:
networks across hosts (VXLAN overlay), security groups in the kernel (iptables), and
capsule services (nftables). Part of the composition root (cli/compose.py builds the
agent with them)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from capsuled.config import Settings

if TYPE_CHECKING:
    import docker

    from capsuled.agent.overlay import Overlay
    from capsuled.agent.services import ServiceAgent
    from capsuled.domain.services import AgentServiceChannel
    from capsuled.drivers.firewall.base import FirewallDriver

LOG = logging.getLogger("capsuled")


def overlay(settings: Settings, instance: str) -> Overlay | None:
    """Project networks across hosts, when this host has an underlay address."""
    conf = settings.agent
    if conf.underlay_address is None:
        return None
    from capsuled.agent.dns import DnsResponder, host_resolvers
    from capsuled.agent.overlay import Overlay
    from capsuled.drivers.network.vxlan import VxlanLinks

    links = VxlanLinks(conf.host_netns)
    LOG.info("project networks span hosts: VXLAN from %s%s", conf.underlay_address,
             f" in {conf.host_netns}" if conf.host_netns else "")
    return Overlay(links, DnsResponder(links.udp_socket), instance, str(conf.underlay_address),
                   conf.overlay_mtu, host_resolvers())


def firewall(settings: Settings) -> FirewallDriver | None:
    """The kernel's security-group rules (agent.security_groups), or None."""
    from capsuled.drivers.firewall.iptables import (Commands, IptablesFirewall,
                                                    bridged_traffic_filtered)

    if not settings.agent.security_groups:
        LOG.warning("agent.security_groups is off: security groups are not enforced on this "
                    "host")
        return None
    netns = settings.agent.host_netns
    if netns is None and not bridged_traffic_filtered():
        LOG.warning("net.bridge.bridge-nf-call-iptables is not 1 (modprobe br_netfilter; "
                    "sysctl -w net.bridge.bridge-nf-call-iptables=1): security groups filter "
                    "traffic from other networks only, not between containers of one host's "
                    "project network")
    return IptablesFirewall(Commands(str(netns) if netns else None))


def service_agent(settings: Settings, channel: AgentServiceChannel, client: docker.APIClient,
                  instance: str) -> ServiceAgent | None:
    """Capsule services on this host (nftables over Docker's project networks); None
    (and a warning) when turned off or unable to work here."""
    from capsuled.agent.services import ServiceAgent
    from capsuled.drivers.lb.nft import NftLoadBalancer, table_name
    from capsuled.drivers.network.segments import DockerSegments

    conf, host, segments = settings.services, settings.agent.host_name, DockerSegments(client)
    lb = NftLoadBalancer(table_name(instance, host), netns=settings.agent.host_netns,
                         comment=f"capsuled services: deployment {instance}, host {host}")
    why = "services.enabled is false" if not conf.enabled else lb.available()
    if why is not None:
        LOG.warning("capsule services are off on this host (no traffic reaches their "
                    "addresses here): %s", why)
        return None
    return ServiceAgent(channel, lb, lambda: segments.segments(instance), host,
                        drain_timeout=conf.drain_timeout, drain_grace=conf.drain_grace,
                        resync=settings.agent.relist_interval)


def sweep(instance: str, netns: Path | None) -> list[str]:
    """Remove what deployment `instance` left in this host's network namespace (or
    `netns`): VXLAN devices, the overlay's and the security groups' iptables chains, the
    services' nftables tables. What was removed, by name (`capsuled sweep`)."""
    from capsuled.drivers.firewall.iptables import Commands, IptablesFirewall, Names
    from capsuled.drivers.lb.nft import remove_tables
    from capsuled.drivers.network.vxlan import VxlanLinks

    links = VxlanLinks(netns)
    try:
        gone = links.sweep(instance)
    finally:
        links.close()
    firewall = IptablesFirewall(Commands(str(netns) if netns else None))
    if Names.of(instance).tag in firewall.deployments():
        firewall.remove_all(instance)
        gone.append(f"security-group chains of tag {Names.of(instance).tag}")
    if shutil.which("nft") is not None:
        gone += [f"nftables table {t}" for t in remove_tables(instance, netns)]
    return gone
