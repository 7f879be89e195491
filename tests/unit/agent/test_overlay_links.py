"""The agent's overlay on fake links: project networks are laid out as the control plane
allocated them, joined to the segment as soon as their bridge exists (the firewall
first), follow peer changes, leave when their project does, never touch another
deployment's devices, and give containers this host's DNS responder first."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Collection
from pathlib import Path

import pytest

from capsuled.agent.networks import ProjectNetworks
from capsuled.agent.overlay import Overlay
from capsuled.domain.channel import OverlayNetwork
from capsuled.drivers.network import vxlan
from capsuled.drivers.network.base import ProjectNetwork
from capsuled.drivers.network.vxlan import (Chains, VxlanLinks, VxlanPort, alias_of,
                                            bridge_name, firewall_rules, vni_match,
                                            vxlan_name)
from capsuled.errors import DriverError
from rigs import MemoryNetworks


class FakeLinks:
    def __init__(self) -> None:
        self.bridges: set[str] = set()
        self.ports: dict[str, VxlanPort] = {}  # by name
        self.others: dict[str, str] = {}  # other deployments' devices: alias -> name
        self.rules: list[tuple[str, list[str], list[str], list[int]]] = []
        self.calls: list[str] = []
        self.fail = False
        self.nets = MemoryNetworks()  # Docker makes a network's bridge with it

    def links(self) -> tuple[set[str], dict[str, str]]:
        made = {str(n.bridge) for n in self.nets.networks.values() if n.bridge}
        return self.bridges | made, {**{p.alias: p.name for p in self.ports.values()},
                                     **self.others}

    def ensure(self, port: VxlanPort) -> None:
        if self.fail:
            raise DriverError("netlink said no")
        self.calls.append(f"ensure {port.name} {','.join(port.peers)}")
        self.ports[port.name] = port

    def remove(self, name: str) -> None:
        self.calls.append(f"remove {name}")
        self.ports.pop(name, None)
        self.others = {a: n for a, n in self.others.items() if n != name}

    def firewall(self, instance: str, bridges: Collection[str], peers: Collection[str],
                 vnis: Collection[int]) -> None:
        self.calls.append("firewall")
        self.rules.append((instance, list(bridges), list(peers), list(vnis)))


def _net(project: str, peers: list[str], vni: int = 42) -> OverlayNetwork:
    return OverlayNetwork(project_id=project, vni=vni, subnet="10.224.0.0/20",  # type: ignore[arg-type]
                          ip_range="10.224.1.0/24", gateway="10.224.1.1",
                          peers=peers)


def _overlay(links: FakeLinks) -> Overlay:
    return Overlay(links, None, "inst", "192.0.2.1", 1450, resolvers=("192.0.2.53",))


def test_a_network_is_laid_out_joined_at_once_and_given_the_responder() -> None:
    links = FakeLinks()
    nets = links.nets
    overlay = _overlay(links)
    overlay.update([_net("p", ["192.0.2.2"])])
    assert links.ports == {}  # no bridge of p here yet: nothing to join
    assert links.calls == ["firewall"]  # VXLAN from the peers only, from the start
    links.calls.clear()
    networks = ProjectNetworks(nets, "inst", grace=10, overlay=overlay)
    got = networks.with_network("p", lambda net: net)
    layout = nets.layouts["p"]
    assert layout is not None
    assert (layout.subnet, layout.ip_range, layout.gateway, layout.mtu) == (
        "10.224.0.0/20", "10.224.1.0/24", "10.224.1.1", 1450)
    assert layout.bridge == bridge_name("inst", "p") and len(layout.bridge) <= 15
    # The first create already joined it, the firewall first; later ones cost nothing.
    assert got is not None and got.dns == ("10.224.1.1", "192.0.2.53")
    assert networks.with_network("p", lambda net: net) == got
    assert links.calls == ["firewall", f"ensure {vxlan_name('inst', 'p')} 192.0.2.2"]
    assert links.rules[-1] == ("inst", [bridge_name("inst", "p")], ["192.0.2.2"], [42])
    port = links.ports[vxlan_name("inst", "p")]
    assert (port.vni, port.local, port.mtu, port.alias) == (42, "192.0.2.1", 1450,
                                                            alias_of("inst", "p"))


def test_peers_follow_the_control_plane_and_a_project_that_leaves_is_cut_off() -> None:
    links = FakeLinks()
    links.bridges = {bridge_name("inst", "p"), bridge_name("inst", "q")}
    links.others = {alias_of("other-deployment", "p"): "cpxsomeoneelse"}
    overlay = _overlay(links)
    overlay.update([_net("p", ["192.0.2.2"]), _net("q", [], vni=43)])
    overlay.update([_net("p", ["192.0.2.2", "192.0.2.3"]), _net("q", [], vni=43)])
    assert links.ports[vxlan_name("inst", "p")].peers == ("192.0.2.2", "192.0.2.3")
    links.calls.clear()
    overlay.update([_net("p", ["192.0.2.3"])])
    assert f"remove {vxlan_name('inst', 'q')}" in links.calls
    assert links.ports[vxlan_name("inst", "p")].peers == ("192.0.2.3",)
    assert "cpxsomeoneelse" in links.others.values()  # never another deployment's
    assert links.rules[-1] == ("inst", [bridge_name("inst", "p")], ["192.0.2.3"], [42])


def test_a_network_made_before_its_project_spanned_hosts_stays_local() -> None:
    links = FakeLinks()
    overlay = _overlay(links)
    overlay.update([_net("p", ["192.0.2.2"])])
    old = ProjectNetwork("id", "capsuled-inst-x", "p", bridge=None)  # Docker's own name
    assert overlay.attach(old) == old
    assert links.ports == {}


def test_failures_are_retried_by_the_relist() -> None:
    links = FakeLinks()
    links.bridges = {bridge_name("inst", "p")}
    links.fail = True
    overlay = _overlay(links)
    overlay.update([_net("p", ["192.0.2.2"])])  # logged, not raised
    assert links.ports == {}
    links.fail = False
    overlay.reconcile(repair=True)
    assert vxlan_name("inst", "p") in links.ports


def test_the_firewall_guards_vteps_of_its_own_vnis_and_isolates_bridges() -> None:
    chains = Chains.of("inst")
    assert all(len(c) <= 28 for c in (chains.input, chains.forward, chains.isolate))
    rules = firewall_rules(chains, ["cpbaaa", "cpbbbb"], ["192.0.2.3", "192.0.2.2"],
                           [0xABCDEF, 42, 42]).splitlines()
    assert rules[:4] == ["*filter", f":{chains.input} - [0:0]", f":{chains.forward} - [0:0]",
                         f":{chains.isolate} - [0:0]"]
    # Only our VNIs are dropped from non-peers: another deployment's VXLAN passes this
    # chain (its own guards it), whoever sends it.
    assert rules[4:] == [
        f"-A {chains.input} -s 192.0.2.2/32 -p udp -m udp --dport 4789 -j RETURN",
        f"-A {chains.input} -s 192.0.2.3/32 -p udp -m udp --dport 4789 -j RETURN",
        f'-A {chains.input} -p udp -m udp --dport 4789 -m u32 --u32 '
        f'"0x0>>0x16&0x3c@0xc>>0x8=0x2a" -j DROP',
        f'-A {chains.input} -p udp -m udp --dport 4789 -m u32 --u32 '
        f'"0x0>>0x16&0x3c@0xc>>0x8=0xabcdef" -j DROP',
        f"-A {chains.forward} -p udp -m udp --dport 4789 -j DROP",
        f"-A {chains.forward} -i cpbaaa ! -o cpbaaa -j {chains.isolate}",
        f"-A {chains.forward} -i cpbbbb ! -o cpbbbb -j {chains.isolate}",
        f"-A {chains.isolate} -o cpb+ -j DROP",
        "COMMIT"]
    # No VNI of ours yet: no VXLAN is dropped (nothing of ours to guard).
    bare = firewall_rules(chains, [], ["192.0.2.2"], []).splitlines()
    assert [r for r in bare if r.startswith(f"-A {chains.input}") and "DROP" in r] == []
    with pytest.raises(ValueError, match="24-bit"):
        vni_match(1 << 24)
    with pytest.raises(ValueError):
        vni_match(0)


class _Run:
    """subprocess.run as iptables would answer it: `-S` lists `rules`."""

    def __init__(self, rules: list[str]) -> None:
        self.rules = rules
        self.argv: list[list[str]] = []

    def __call__(self, argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        self.argv.append(argv)
        out = "\n".join(self.rules).encode() if argv[-1] == "-S" else b""
        return subprocess.CompletedProcess(argv, 0, out, b"")


def test_the_chains_are_rewritten_only_when_they_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    chains = Chains.of("inst")
    wanted = [line for line in firewall_rules(chains, ["cpbaaa"], ["192.0.2.2"], [42]).splitlines()
              if line.startswith("-A ")]
    # As iptables -S lists them: chains in its own order, the jumps elsewhere.
    listed = ["-P INPUT ACCEPT", f"-A INPUT -j {chains.input}", f"-A FORWARD -j {chains.forward}",
              *sorted(wanted, key=lambda line: line.split()[1])]
    run = _Run(listed)
    monkeypatch.setattr(vxlan.subprocess, "run", run)
    VxlanLinks(Path("/run/netns/x")).firewall("inst", ["cpbaaa"], ["192.0.2.2"], [42])
    assert run.argv == [["nsenter", "--net=/run/netns/x", "iptables", "-w", "-S"]]
    # A peer more: rewritten; jumps gone (someone flushed INPUT): put back first.
    run = _Run(["-P INPUT ACCEPT", *wanted])
    monkeypatch.setattr(vxlan.subprocess, "run", run)
    VxlanLinks().firewall("inst", ["cpbaaa"], ["192.0.2.2", "192.0.2.3"], [42])
    assert [a[:2] for a in run.argv] == [["iptables", "-w"], ["iptables-restore", "-w"],
                                         ["iptables", "-w"], ["iptables", "-w"]]
    assert run.argv[2] == ["iptables", "-w", "-I", "INPUT", "1", "-j", chains.input]
