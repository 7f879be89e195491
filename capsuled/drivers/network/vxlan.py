"""VxlanLinks: the host side of project networks that span hosts, through netlink
(pyroute2) and iptables, in the network namespace the Docker Engine's bridges live in.

What it leaves on the host (agent/overlay.py decides what should exist):
- per project network: a VXLAN device `cpx<12 hex>` (VNI, local underlay address, UDP
  4789, MAC learning on) enslaved to the project's Docker bridge `cpb<12 hex>`, its alias
  `capsuled:<instance>:<project>` (how the agent finds its own devices again), and one
  all-zeros FDB entry per peer host: broadcast, unknown unicast and multicast are
  replicated to every peer (head-end replication, no multicast underlay needed);
- three iptables chains of the deployment (`Chains`, `firewall_rules`), the first two
  jumped to first from INPUT and FORWARD: VXLAN (UDP 4789) for one of the deployment's
  VNIs is accepted from peer hosts only, since a VXLAN packet is a frame put straight onto
  a project's segment (nobody else, a container of this host included, may send one);
  VXLAN for any other VNI is left alone (another deployment's, which guards its own; one
  nobody has is dropped by the kernel); no forwarded packet may be
  VXLAN (a container must not reach a peer's VTEP: masqueraded, it would come from this
  host's address); and project bridges never route into one another (Docker isolates its
  bridges only when it manages iptables, and a host may run it without).

Netlink sockets and the DNS responder's sockets must be made in that namespace; a socket
keeps the namespace it was made in, so one long-lived thread that joined the namespace
(setns) makes them all (`in_netns`), and the agent uses them from any thread.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import logging
import os
import socket
import subprocess
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from capsuled.errors import DriverError

LOG = logging.getLogger(__name__)
T = TypeVar("T")

VXLAN_PORT = 4789
ALIAS_PREFIX = "capsuled:"
BRIDGE_PREFIX, VXLAN_PREFIX = "cpb", "cpx"
_ZERO_MAC = "00:00:00:00:00:00"
_CLONE_NEWNET = 0x40000000
_IPTABLES_TIMEOUT = 30.0


def _suffix(instance: str, project: str) -> str:
    return hashlib.sha256(f"{instance}:{project}".encode()).hexdigest()[:12]


def bridge_name(instance: str, project: str) -> str:
    """The project bridge's interface name on every host (15 characters at most)."""
    return BRIDGE_PREFIX + _suffix(instance, project)


def vxlan_name(instance: str, project: str) -> str:
    return VXLAN_PREFIX + _suffix(instance, project)


def alias_of(instance: str, project: str) -> str:
    return f"{ALIAS_PREFIX}{instance}:{project}"


@dataclass(frozen=True)
class VxlanPort:
    """One project network's VXLAN device as it should be."""

    name: str
    alias: str
    vni: int
    local: str  # this host's underlay address
    bridge: str
    mtu: int
    peers: tuple[str, ...]  # the other hosts' underlay addresses


class VxlanLinks:
    """Links, FDB entries and firewall rules of the overlay, in `netns` (a path such as
    /run/netns/NAME; None: the agent's own namespace)."""

    def __init__(self, netns: Path | None = None) -> None:
        self._netns = netns
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlay-netns",
                                          initializer=self._enter if netns else None)

    def _enter(self) -> None:
        """The thread's initializer: join the host's namespace for good. A failure leaves
        the thread where it was, so every call then fails (never acts on the wrong host)."""
        assert self._netns is not None
        try:
            fd = os.open(self._netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._entered = f"{self._netns}: {exc.strerror}"
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                self._entered = f"setns {self._netns}: {os.strerror(ctypes.get_errno())}"
                return
            self._entered = ""
        finally:
            os.close(fd)

    _entered = ""

    def in_netns(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the host's namespace (in the namespace thread, one call at a time)."""
        def checked() -> T:
            if self._entered:
                raise DriverError(f"cannot enter the host's network namespace: {self._entered}")
            return fn()
        return self._thread.submit(checked).result()

    def udp_socket(self) -> socket.socket:
        """A UDP socket in the host's namespace (the DNS responder's)."""
        return self.in_netns(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

    def close(self) -> None:
        self._thread.shutdown(wait=False)

    # -- links -------------------------------------------------------------------------
    def links(self) -> tuple[set[str], dict[str, str]]:
        """(names of every bridge, {alias: name} of every VXLAN device of ours)."""
        def read() -> tuple[set[str], dict[str, str]]:
            bridges: set[str] = set()
            ours: dict[str, str] = {}
            with _iproute() as ipr:
                for link in ipr.get_links():
                    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
                    name = str(link.get("IFLA_IFNAME"))
                    alias = link.get("IFLA_IFALIAS")
                    if kind == "bridge":
                        bridges.add(name)
                    elif kind == "vxlan" and alias and str(alias).startswith(ALIAS_PREFIX):
                        ours[str(alias)] = name
            return bridges, ours
        return self._netlink("list links", read)

    def ensure(self, port: VxlanPort) -> None:
        """Make the device as `port` says (idempotent): created, up, enslaved to its bridge,
        with one flood entry per peer and none for a host that is no longer one."""
        def apply() -> None:
            with _iproute() as ipr:
                found = ipr.link_lookup(ifname=port.name)
                if found and not _same_vxlan(ipr.get_links(found[0])[0], port):
                    ipr.link("del", index=found[0])  # another VNI or address: made again
                    found = []
                if not found:
                    ipr.link("add", ifname=port.name, kind="vxlan", vxlan_id=port.vni,
                             vxlan_local=port.local, vxlan_port=VXLAN_PORT, vxlan_learning=1)
                    found = ipr.link_lookup(ifname=port.name)
                index = found[0]
                bridge = ipr.link_lookup(ifname=port.bridge)
                if not bridge:
                    raise DriverError(f"bridge {port.bridge} is gone")
                ipr.link("set", index=index, master=bridge[0], mtu=port.mtu, ifalias=port.alias,
                         state="up")
                have = {str(e.get("NDA_DST")) for e in ipr.fdb("dump", ifindex=index)
                        if e.get("NDA_LLADDR") == _ZERO_MAC and e.get("NDA_DST")
                        and e.get("ifindex") == index}
                for peer in sorted(set(port.peers) - have):
                    ipr.fdb("append", ifindex=index, lladdr=_ZERO_MAC, dst=peer)
                for peer in sorted(have - set(port.peers)):
                    ipr.fdb("del", ifindex=index, lladdr=_ZERO_MAC, dst=peer)
        self._netlink(f"set up {port.name} (VNI {port.vni})", apply)

    def remove(self, name: str) -> None:
        def delete() -> None:
            with _iproute() as ipr:
                for index in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=index)
        self._netlink(f"remove {name}", delete)

    def _netlink(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return self.in_netns(fn)
        except DriverError:
            raise
        except Exception as exc:  # pyroute2's NetlinkError, OSError, …: one taxonomy up
            raise DriverError(f"{what}: {exc}") from exc

    # -- firewall ----------------------------------------------------------------------
    def firewall(self, instance: str, bridges: Collection[str], peers: Collection[str],
                 vnis: Collection[int]) -> None:
        """Rewrite the deployment's chains for these bridges, peers and VNIs, and make
        sure they are jumped to."""
        chains = Chains.of(instance)
        rules = firewall_rules(chains, bridges, peers, vnis)
        wanted = [line for line in rules.splitlines() if line.startswith("-A ")]
        jumps = [f"-A {parent} -j {chain}"
                 for parent, chain in (("INPUT", chains.input), ("FORWARD", chains.forward))]
        # Rewritten only when they differ (one read): a rewrite resets their counters.
        have = self._iptables_lines(["iptables", "-w", "-S"])
        if _by_chain(have, chains) != _by_chain(wanted, chains):
            self._iptables(["iptables-restore", "-w", "--noflush"], rules.encode())
        for jump in jumps:
            if jump not in have:
                parent, chain = jump.split()[1], jump.split()[-1]
                self._iptables(["iptables", "-w", "-I", parent, "1", "-j", chain], None)

    def sweep(self, instance: str) -> list[str]:
        """Remove what deployment `instance` left in this namespace: its VXLAN devices (by
        their alias) and its chains with their jumps. For a deployment whose agents are
        gone (a live agent puts them back at its next relist). What it removed, by name."""
        _, ours = self.links()
        gone = []
        for alias, name in sorted(ours.items()):
            if alias.startswith(alias_of(instance, "")):
                self.remove(name)
                gone.append(f"VXLAN device {name} ({alias})")
        chains = Chains.of(instance)
        have = self._iptables_lines(["iptables", "-w", "-S"])
        found = [c for c in (chains.input, chains.forward, chains.isolate) if f"-N {c}" in have]
        if found:
            lines = ["*filter", *(f":{c} - [0:0]" for c in found)]  # declared: emptied
            for parent, chain in (("INPUT", chains.input), ("FORWARD", chains.forward)):
                lines += [f"-D {parent} -j {chain}"] * have.count(f"-A {parent} -j {chain}")
            lines += [f"-X {c}" for c in found]
            self._iptables(["iptables-restore", "-w", "--noflush"],
                           ("\n".join([*lines, "COMMIT"]) + "\n").encode())
            gone += [f"iptables chain {c}" for c in found]
        return gone

    def _iptables_lines(self, argv: list[str]) -> list[str]:
        if self._netns is not None:
            argv = ["nsenter", f"--net={self._netns}", *argv]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=_IPTABLES_TIMEOUT,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DriverError(f"{argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise DriverError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode(errors="replace").splitlines()

    def _iptables(self, argv: list[str], stdin: bytes | None,
                  ok_codes: Iterable[int] = (0,)) -> int:
        if self._netns is not None:
            argv = ["nsenter", f"--net={self._netns}", *argv]
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True,
                                  timeout=_IPTABLES_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DriverError(f"{argv[0]}: {exc}") from exc
        if done.returncode not in tuple(ok_codes):
            raise DriverError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace').strip()}")
        return done.returncode


@dataclass(frozen=True)
class Chains:
    """The deployment's iptables chains (names of at most 28 characters)."""

    input: str
    forward: str
    isolate: str

    @classmethod
    def of(cls, instance: str) -> Chains:
        tag = hashlib.sha256(instance.encode()).hexdigest()[:8]
        return cls(f"CAPSULED-{tag}-IN", f"CAPSULED-{tag}-FWD", f"CAPSULED-{tag}-ISO")


def firewall_rules(chains: Chains, bridges: Collection[str], peers: Collection[str],
                   vnis: Collection[int]) -> str:
    """iptables-restore input for the chains (declaring a chain empties it first):

    IN   VXLAN for one of our VNIs is accepted from the peer hosts only (`vni_match`);
         VXLAN for another VNI is not ours to judge: another deployment may share this
         namespace, and its packets must pass our chain (its own guards them);
    FWD  no forwarded packet is VXLAN, and a packet from one of our bridges that leaves by
         another interface goes through ISO;
    ISO  which drops it if that interface is a project bridge (ours or another
         deployment's): project networks never route into one another. Two stages, as
         Docker's own isolation, so a bridge's traffic to itself (bridged frames pass
         FORWARD too under br_netfilter) and to the outside is left alone."""
    lines = ["*filter", f":{chains.input} - [0:0]", f":{chains.forward} - [0:0]",
             f":{chains.isolate} - [0:0]"]
    vxlan = f"-p udp -m udp --dport {VXLAN_PORT}"
    for peer in sorted(peers, key=ipaddress.IPv4Address):
        lines.append(f"-A {chains.input} -s {ipaddress.IPv4Address(peer)}/32 {vxlan} -j RETURN")
    for vni in sorted(set(vnis)):
        lines.append(f"-A {chains.input} {vxlan} {vni_match(vni)} -j DROP")
    lines.append(f"-A {chains.forward} {vxlan} -j DROP")
    for bridge in sorted(bridges):
        lines.append(f"-A {chains.forward} -i {bridge} ! -o {bridge} -j {chains.isolate}")
    lines.append(f"-A {chains.isolate} -o {BRIDGE_PREFIX}+ -j DROP")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def vni_match(vni: int) -> str:
    """An iptables u32 match on a VXLAN packet's VNI: the IP header's length (`0>>22&0x3C`)
    jumps to the UDP header (`@`), whose bytes 12..15 are the VXLAN header's VNI (24 bits)
    and a reserved byte (`>>8`). Written as `iptables -S` prints it back, so that the
    chains compare equal and are not rewritten (which would reset their counters)."""
    if not 0 < vni < 1 << 24:
        raise ValueError(f"VNI {vni} is not a 24-bit VXLAN network identifier")
    return f'-m u32 --u32 "0x0>>0x16&0x3c@0xc>>0x8={vni:#x}"'


def _by_chain(lines: Iterable[str], chains: Chains) -> dict[str, list[str]]:
    """The `-A` lines of our chains, per chain, in order (iptables -S lists chains in its
    own order)."""
    out: dict[str, list[str]] = {c: [] for c in (chains.input, chains.forward, chains.isolate)}
    for line in lines:
        words = line.split()
        if len(words) > 1 and words[0] == "-A" and words[1] in out:
            out[words[1]].append(line)
    return out


def _iproute() -> Any:
    from pyroute2 import IPRoute  # imported where used: an agent without overlay never loads it

    return IPRoute()


def _same_vxlan(link: Any, port: VxlanPort) -> bool:
    data = ("IFLA_LINKINFO", "IFLA_INFO_DATA")
    return (link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vxlan"
            and link.get_nested(*data, "IFLA_VXLAN_ID") == port.vni
            and str(link.get_nested(*data, "IFLA_VXLAN_LOCAL")) == port.local)
