"""Two overlay deployments in one network namespace, on the real kernel: each guards only
its own VNIs, so neither drops the other's VXLAN (drivers/network/vxlan.firewall_rules).

Three namespaces of this test's own stand in for hosts: A runs both deployments, B is
deployment 1's other host, C deployment 2's, each linked to A by a veth pair (the
underlay). The agents' own code (agent/overlay.Overlay over drivers/network/vxlan) lays
out one project network per deployment; the bridges are made here as Docker would. Then:
A reaches B over VNI 1 and C over VNI 2 at once, though each peer is a stranger to the
other deployment's chain; and a VXLAN packet for VNI 1 from C (no peer of deployment 1)
is dropped by deployment 1's rule (its counter, and the VXLAN device received nothing),
while the same packet for VNI 2 is delivered (its bridge learns the sender: the evidence
is not blind). Then `capsuled sweep` removes deployment 1's leftovers from A and nothing of
deployment 2's.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from capsuled.agent.overlay import Overlay
from capsuled.domain.channel import OverlayNetwork
from capsuled.drivers.lb.nft import table_name
from capsuled.drivers.network.vxlan import (Chains, VxlanLinks, bridge_name, vni_match,
                                            vxlan_name)
from conftest import VENV_BIN, wait_for

PROJECT = "p"
# Underlay /30s (inside this test's namespaces only) and each deployment's project subnet.
AB = ("10.99.0.1", "10.99.0.2")
AC = ("10.99.0.5", "10.99.0.6")
SUBNETS = ("10.240.0", "10.241.0")
SENDER = "02:00:00:00:be:ef"  # the source of the VXLAN packets crafted in C


@dataclass
class Host:
    netns: str
    links: VxlanLinks

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.netns

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={self.path}", *argv], capture_output=True,
                              text=True, check=check, timeout=30)


@dataclass
class Rig:
    a: Host
    b: Host
    c: Host
    instances: tuple[str, str]
    vnis: tuple[int, int]
    overlays: list[Overlay]


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


def _veth(left: Host, left_addr: str, right: Host, right_addr: str, name: str) -> None:
    _ip("link", "add", f"{name}l", "netns", left.netns, "type", "veth", "peer", "name",
        f"{name}r", "netns", right.netns)
    left.run("ip", "addr", "add", f"{left_addr}/30", "dev", f"{name}l")
    right.run("ip", "addr", "add", f"{right_addr}/30", "dev", f"{name}r")
    left.run("ip", "link", "set", f"{name}l", "up")
    right.run("ip", "link", "set", f"{name}r", "up")


def _bridge(host: Host, instance: str, addr: str) -> None:
    """The project's bridge, as Docker makes it for the network the overlay laid out."""
    name = bridge_name(instance, PROJECT)
    host.run("ip", "link", "add", name, "type", "bridge")
    host.run("ip", "addr", "add", f"{addr}/24", "dev", name)
    host.run("ip", "link", "set", name, "up")


def _overlay(host: Host, instance: str, local: str, peer: str, vni: int, subnet: str,
             gateway: str) -> Overlay:
    overlay = Overlay(host.links, None, instance, local, 1450)
    overlay.update([OverlayNetwork(  # type: ignore[arg-type]
        project_id=PROJECT, vni=vni, subnet=f"{subnet}.0/24", ip_range=f"{subnet}.0/25",
        gateway=gateway, peers=[peer])])
    return overlay


@pytest.fixture
def rig() -> Iterator[Rig]:
    tag = secrets.token_hex(3)
    hosts = []
    try:
        for side in "abc":
            name = f"capvx-{tag}-{side}"
            _ip("netns", "add", name)
            hosts.append(Host(name, VxlanLinks(Path("/run/netns") / name)))
            hosts[-1].run("ip", "link", "set", "lo", "up")
        a, b, c = hosts
        _veth(a, AB[0], b, AB[1], f"vb{tag}")
        _veth(a, AC[0], c, AC[1], f"vc{tag}")
        instances = (f"vx{tag}-one", f"vx{tag}-two")
        vnis = (1000 + secrets.randbelow(1000), 3000 + secrets.randbelow(1000))
        for host, instance, addr in ((a, instances[0], f"{SUBNETS[0]}.1"),
                                     (b, instances[0], f"{SUBNETS[0]}.2"),
                                     (a, instances[1], f"{SUBNETS[1]}.1"),
                                     (c, instances[1], f"{SUBNETS[1]}.2")):
            _bridge(host, instance, addr)
        overlays = [
            _overlay(a, instances[0], AB[0], AB[1], vnis[0], SUBNETS[0], f"{SUBNETS[0]}.1"),
            _overlay(b, instances[0], AB[1], AB[0], vnis[0], SUBNETS[0], f"{SUBNETS[0]}.2"),
            _overlay(a, instances[1], AC[0], AC[1], vnis[1], SUBNETS[1], f"{SUBNETS[1]}.1"),
            _overlay(c, instances[1], AC[1], AC[0], vnis[1], SUBNETS[1], f"{SUBNETS[1]}.2")]
        yield Rig(a, b, c, instances, vnis, overlays)
    finally:
        for host in hosts:
            host.links.close()
            _ip("netns", "del", host.netns)


def _drops(host: Host, instance: str, vni: int) -> int:
    """Packets deployment `instance`'s rule for `vni` dropped in `host`."""
    rule = f"-A {Chains.of(instance).input} -p udp -m udp --dport 4789 {vni_match(vni)} -c "
    listed = host.run("iptables", "-w", "-S", Chains.of(instance).input, "-v").stdout
    for line in listed.splitlines():
        if line.startswith(rule) and line.endswith(" -j DROP"):
            return int(line[len(rule):].split()[0])
    raise AssertionError(f"no drop rule for VNI {vni} in {listed}")


def _learned(host: Host, instance: str) -> bool:
    """Whether the deployment's bridge in `host` took in a frame from SENDER (it learns the
    source address of every frame its VXLAN port decapsulates)."""
    out = host.run("bridge", "-j", "fdb", "show", "br", bridge_name(instance, PROJECT))
    return any(e.get("mac") == SENDER and e.get("ifname") == vxlan_name(instance, PROJECT)
               for e in json.loads(out.stdout))


def _echo(near: Host, near_addr: str, far: Host, far_addr: str) -> bool:
    """One UDP datagram from `near_addr` to `far_addr` and its echo back (1 s each way)."""
    here, there = near.links.udp_socket(), far.links.udp_socket()
    try:
        here.bind((near_addr, 0))
        there.bind((far_addr, 0))
        for s in (here, there):
            s.settimeout(1.0)
        here.sendto(b"ping", there.getsockname())
        data, source = there.recvfrom(64)
        there.sendto(data + b"-pong", source)
        return here.recvfrom(64)[0] == b"ping-pong"
    except OSError:  # socket.timeout included
        return False
    finally:
        here.close()
        there.close()


def _vxlan_packet(vni: int) -> bytes:
    """A VXLAN header (flags: VNI valid) and a broadcast Ethernet frame from SENDER."""
    frame = b"\xff" * 6 + bytes.fromhex(SENDER.replace(":", "")) + b"\x88\xb5" + b"x" * 46
    return b"\x08\x00\x00\x00" + vni.to_bytes(3, "big") + b"\x00" + frame


def test_two_deployments_in_one_namespace_pass_each_others_vxlan(rig: Rig) -> None:
    one, two = rig.instances
    inputs = [line for line in rig.a.run("iptables", "-w", "-S", "INPUT").stdout.splitlines()
              if "CAPSULED-" in line]
    assert sorted(inputs) == sorted(f"-A INPUT -j {Chains.of(i).input}" for i in rig.instances)

    # Both segments work at once, both ways: B is no peer of deployment two, C none of one.
    for far, subnet in ((rig.b, SUBNETS[0]), (rig.c, SUBNETS[1])):
        wait_for(lambda f=far, s=subnet: _echo(rig.a, f"{s}.1", f, f"{s}.2"), timeout=10,
                 what=f"A and {far.netns} reach each other on {subnet}.0/24")

    # Our VNI from a non-peer (C, to A's address on its link): dropped by our rule, before
    # the kernel decapsulates it. Deployment two's VNI the same way: delivered.
    dropped = _drops(rig.a, one, rig.vnis[0])
    assert not _learned(rig.a, one) and not _learned(rig.a, two)
    sock = rig.c.links.udp_socket()
    try:
        sock.sendto(_vxlan_packet(rig.vnis[0]), (AC[0], 4789))
        sock.sendto(_vxlan_packet(rig.vnis[1]), (AC[0], 4789))
    finally:
        sock.close()
    wait_for(lambda: _learned(rig.a, two), timeout=5,
             what="deployment two's segment to take in its VNI from its peer")
    assert _drops(rig.a, one, rig.vnis[0]) == dropped + 1
    time.sleep(0.2)
    assert not _learned(rig.a, one)

    # The chains as rendered are the chains as iptables lists them: a repair leaves them
    # (and their counters) alone.
    for overlay in rig.overlays:
        overlay.reconcile(repair=True)
    assert _drops(rig.a, one, rig.vnis[0]) == dropped + 1


def test_capsuled_sweep_removes_one_dead_deployment_and_leaves_the_other(rig: Rig) -> None:
    one, two = rig.instances
    tag = Chains.of(one).input.split("-")[1]
    # What its agents would also have left: a services table and security-group chains.
    for t in (one, two):
        rig.a.run("nft", "add", "table", "ip", table_name(t, "host-a"))
    rig.a.run("iptables", "-w", "-N", f"CAPSULED-{tag}-SG")
    rig.a.run("iptables", "-w", "-A", "FORWARD", "-j", f"CAPSULED-{tag}-SG")

    done = subprocess.run([str(VENV_BIN / "capsuled"), "sweep", one, "--netns", str(rig.a.path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted([
        f"removed VXLAN device {vxlan_name(one, PROJECT)} (capsuled:{one}:{PROJECT})",
        *(f"removed iptables chain {c}" for c in (Chains.of(one).input, Chains.of(one).forward,
                                                   Chains.of(one).isolate)),
        f"removed security-group chains of tag {tag}",
        f"removed nftables table {table_name(one, 'host-a')}"])
    rules = rig.a.run("iptables", "-w", "-S").stdout
    assert tag not in rules and Chains.of(two).input in rules
    tables = rig.a.run("nft", "list", "tables").stdout
    assert table_name(one, "host-a") not in tables and table_name(two, "host-a") in tables
    links = rig.a.run("ip", "-o", "link").stdout
    assert vxlan_name(one, PROJECT) not in links and vxlan_name(two, PROJECT) in links
    assert _echo(rig.a, f"{SUBNETS[1]}.1", rig.c, f"{SUBNETS[1]}.2")  # two still works
    # Nothing left: said so; and an instance id that is not one is refused, naming it.
    again = subprocess.run([str(VENV_BIN / "capsuled"), "sweep", one, "--netns", str(rig.a.path)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == f"nothing of deployment {one} here\n"
    bad = subprocess.run([str(VENV_BIN / "capsuled"), "sweep", "a b;c"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "INSTANCE" in bad.stderr
