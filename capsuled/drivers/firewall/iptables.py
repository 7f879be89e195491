"""IptablesFirewall: security groups as iptables chains in the filter table.

What it leaves on the host, per deployment (`tag`: 8 hex digits of the deployment's id):

    DOCKER-USER  -j CAPSULED-<tag>-SG          (FORWARD when Docker made no DOCKER-USER)
    CAPSULED-<tag>-SG   one line per guarded address:
                 -d <ip>/32 -m comment --comment sg:<digest> -g CSG-<tag>-<unit>
    CSG-<tag>-<unit>    the unit's rules (below); <unit>: 10 hex digits of its uuid
    CSG-<tag>-<unit>-<n>s, -<n>p    sources and ports of a rule group with many of both

Packets to a container pass FORWARD (between project networks, from outside, and, with
br_netfilter's net.bridge.bridge-nf-call-iptables = 1, between containers on one bridge
too), and Docker sends FORWARD to DOCKER-USER before any rule of its own. The dispatch
chain is jumped to; a unit's chain is reached by goto, so a RETURN in it (or its sub-chains)
goes straight back to DOCKER-USER: admitted, and Docker's own rules (its isolation of
networks included) still apply after ours. Rules only ever take away: nothing here
ACCEPTs. A unit's chain:

    replies (conntrack RELATED,ESTABLISHED)  RETURN
    each allow with one source, or few      -s <src> [-p P [--dport A:B]] RETURN
    a group of many sources and many allows goto <n>s: -s <src> goto <n>p, … goto next
                                                 <n>p: [-p P --dport A:B] RETURN, … goto next
    the rest                                 DROP  (a client sees its connection time out)

The sub-chains keep a rule naming a remote group of N members and M rules at N + M lines,
not N × M. Rules are rendered in iptables-save's own form, so `ensure` reads the table once
(iptables-save), compares, rewrites only the units whose chains read otherwise (changed
rules, or edited by hand), and writes everything in one iptables-restore --noflush (atomic:
nf_tables commits it as one transaction, legacy iptables as one table replace). The digest
in each dispatch line names the rendering it dispatches to, for a reader of the table.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import subprocess
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from capsuled.domain.security_groups import Allow, Firewall
from capsuled.drivers.firewall.base import Guard
from capsuled.errors import DriverError

LOG = logging.getLogger(__name__)
TIMEOUT = 30.0  # seconds an iptables call may take (it waits for the xtables lock)
DOCKER_USER = "DOCKER-USER"
# A group of this many source × allow lines or fewer is written out in the unit's chain.
INLINE_PRODUCT = 8
_DISPATCH_RULE = re.compile(
    r"^-d (?P<dst>\S+) -m comment --comment \"?sg:(?P<digest>[0-9a-f]+)\"? -g (?P<chain>\S+)$")


class Iptables(Protocol):
    """The kernel's filter table as iptables-save prints it and iptables-restore takes it."""

    def save(self) -> str: ...

    def restore(self, text: str) -> None: ...


class Commands:
    """The iptables-save and iptables-restore programs (in network namespace `netns`, a
    path such as /var/run/netns/x, when given: tests use one of their own)."""

    def __init__(self, netns: str | None = None) -> None:
        self._prefix = ["nsenter", f"--net={netns}"] if netns else []

    def save(self) -> str:
        return self._run(["iptables-save", "-t", "filter"], None)

    def restore(self, text: str) -> None:
        self._run(["iptables-restore", "-w", "--noflush"], text)

    def _run(self, argv: list[str], stdin: str | None) -> str:
        try:
            done = subprocess.run([*self._prefix, *argv], input=stdin, capture_output=True,
                                  text=True, timeout=TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DriverError(f"security groups: {argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise DriverError(f"security groups: {argv[0]} failed: "
                              f"{done.stderr.strip()[:500] or done.returncode}")
        return done.stdout


@dataclass(frozen=True)
class Names:
    """A deployment's chain names (at most 28 characters, iptables' limit)."""

    tag: str

    @classmethod
    def of(cls, instance: str) -> Names:
        return cls(hashlib.sha256(instance.encode()).hexdigest()[:8])

    @property
    def dispatch(self) -> str:
        return f"CAPSULED-{self.tag}-SG"

    @property
    def unit_prefix(self) -> str:
        return f"CSG-{self.tag}-"

    def unit(self, uuid: str) -> str:
        return f"{self.unit_prefix}{hashlib.sha256(uuid.encode()).hexdigest()[:10]}"

    def owner(self, chain: str) -> str | None:
        """The unit chain a chain of ours belongs to (itself, or a sub-chain's parent)."""
        if not chain.startswith(self.unit_prefix):
            return None
        return chain[:len(self.unit_prefix) + 10]


@dataclass
class Rendered:
    """One unit's chains, in order (its own first), and their digest."""

    chains: dict[str, list[str]] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        raw = json.dumps(self.chains, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


def render(names: Names, guard: Guard) -> Rendered:
    """The chains of one guarded unit (see the module doc)."""
    top = names.unit(guard.unit)
    own = _own_networks(guard.addresses)
    out = Rendered({top: ["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]})
    fw = guard.firewall
    groups: dict[str, list[Allow]] = {}
    for allow in fw.allow:
        groups.setdefault(allow.peers, []).append(allow)
    many: list[tuple[list[str], list[Allow]]] = []
    for key, allows in groups.items():
        peers = fw.peers.get(key)
        if peers is None:
            continue
        sources = _sources(peers.cidrs, own if peers.own_network else [])
        if not sources:
            continue
        if len(sources) * len(allows) <= INLINE_PRODUCT or len(sources) == 1 or len(allows) == 1:
            out.chains[top] += [_line(_source(s), _match(a), "-j RETURN")
                                for s in sources for a in allows]
        else:
            many.append((sources, allows))
    if not many:
        out.chains[top].append("-j DROP")
        return out
    out.chains[top].append(f"-g {top}-1s")
    for i, (sources, allows) in enumerate(many, start=1):
        nxt = f"-g {top}-{i + 1:x}s" if i < len(many) else "-j DROP"
        out.chains[f"{top}-{i:x}s"] = [_line(_source(s), f"-g {top}-{i:x}p") for s in sources] + [nxt]
        out.chains[f"{top}-{i:x}p"] = [_line(_match(a), "-j RETURN") for a in allows] + [nxt]
    return out


def _own_networks(addresses: Iterable[str]) -> list[str]:
    nets = []
    for a in addresses:
        try:
            nets.append(str(ipaddress.IPv4Interface(a).network))
        except ValueError:
            LOG.warning("security groups: ignoring a malformed address %r", a)
    return list(dict.fromkeys(nets))


def _sources(cidrs: Iterable[str], own: Iterable[str]) -> list[str]:
    """Validated, normalised, without repeats: nothing but a network reaches the kernel."""
    out = []
    for c in [*cidrs, *own]:
        try:
            out.append(str(ipaddress.IPv4Network(c, strict=False)))
        except ValueError:
            LOG.warning("security groups: ignoring a malformed source %r", c)
    return list(dict.fromkeys(out))


def _source(cidr: str) -> str:
    return "" if cidr == "0.0.0.0/0" else f"-s {cidr}"


def _match(a: Allow) -> str:
    if a.protocol == "any":
        return ""
    if a.protocol == "icmp" or a.port_min is None:
        return f"-p {a.protocol}"
    lo, hi = int(a.port_min), int(a.port_max if a.port_max is not None else a.port_min)
    ports = str(lo) if lo == hi else f"{lo}:{hi}"
    return f"-p {a.protocol} -m {a.protocol} --dport {ports}"


def _line(*parts: str) -> str:
    return " ".join(p for p in parts if p)


@dataclass
class Table:
    """The filter table as iptables-save printed it: each chain's rules (without `-A NAME`)."""

    chains: dict[str, list[str]]

    @classmethod
    def parse(cls, text: str) -> Table:
        chains: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith(":"):
                chains.setdefault(line[1:].split(" ", 1)[0], [])
            elif line.startswith("-A "):
                _, chain, *rest = line.split(" ", 2)
                chains.setdefault(chain, []).append(rest[0] if rest else "")
        return cls(chains)


@dataclass(frozen=True)
class _Dispatch:
    address: str
    digest: str
    chain: str

    @property
    def line(self) -> str:
        return f"-d {self.address} -m comment --comment sg:{self.digest} -g {self.chain}"


BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def bridged_traffic_filtered(path: str = BRIDGE_NF) -> bool | None:
    """Whether packets between containers on one bridge pass iptables (br_netfilter's
    net.bridge.bridge-nf-call-iptables = 1); None when the module is not loaded."""
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return None


class IptablesFirewall:
    def __init__(self, iptables: Iptables | None = None) -> None:
        self._ipt = iptables or Commands()

    def ensure(self, instance: str, guards: Sequence[Guard],
               keep: Collection[str] | None) -> None:
        names = Names.of(instance)
        table = Table.parse(self._ipt.save())
        current = self._dispatch(names, table)
        ours = {c for c in table.chains if names.owner(c) is not None}
        kept = None if keep is None else {names.unit(u) for u in keep}

        wanted: dict[str, Rendered] = {}
        claims: dict[str, tuple[int, _Dispatch]] = {}
        for g in sorted(guards, key=lambda g: g.unit):
            r = render(names, g)
            top = names.unit(g.unit)
            wanted[top] = r
            for a in g.addresses:
                try:
                    ip = f"{ipaddress.IPv4Interface(a).ip}/32"
                except ValueError:
                    continue
                if ip not in claims or claims[ip][0] <= g.seen:
                    claims[ip] = (g.seen, _Dispatch(ip, r.digest, top))
        # Units kept as they are keep their dispatch lines, unless a guard claims the address.
        for d in current:
            if d.chain in wanted or d.address in claims:
                continue
            if (kept is None or d.chain in kept) and d.chain in ours:
                claims[d.address] = (-1, d)
        dispatch = sorted((d for _, d in claims.values()), key=lambda d: (d.address, d.chain))
        held = {d.chain for d in dispatch}

        # The kernel prints rules as they are rendered (iptables-save's own form): a chain
        # that reads otherwise, or is missing, or has a sub-chain too many, is written again.
        rewrite = [top for top, r in wanted.items()
                   if any(table.chains.get(c) != rules for c, rules in r.chains.items())
                   or any(names.owner(c) == top and c not in r.chains for c in ours)]
        stale = sorted(c for c in ours if names.owner(c) not in held and names.owner(c) not in wanted)
        jump = self._jump(names, table)
        same = (names.dispatch in table.chains and len(current) == len(table.chains[names.dispatch])
                and sorted(current, key=lambda d: (d.address, d.chain)) == dispatch)
        if not rewrite and not stale and jump is None and same:
            return
        lines = ["*filter", f":{names.dispatch} - [0:0]"]
        rewritten = [c for top in rewrite for c in wanted[top].chains]
        # Sub-chains a rewritten unit no longer has are emptied and removed with it.
        extra = sorted(c for c in ours if names.owner(c) in rewrite and c not in rewritten)
        lines += [f":{c} - [0:0]" for c in [*rewritten, *extra, *stale]]
        lines += [f"-A {names.dispatch} {d.line}" for d in dispatch]
        for top in rewrite:
            for chain, rules in wanted[top].chains.items():
                lines += [f"-A {chain} {rule}" for rule in rules]
        lines += [f"-X {c}" for c in [*extra, *stale]]
        if jump is not None:
            lines.append(jump)
        lines.append("COMMIT")
        self._ipt.restore("\n".join(lines) + "\n")
        if rewrite or stale:
            LOG.info("security groups: %d unit(s) rewritten, %d chain(s) removed",
                     len(rewrite), len(stale))

    def remove_all(self, instance: str) -> None:
        self.remove_deployment(Names.of(instance).tag)

    def deployments(self) -> set[str]:
        """The tags of the deployments whose chains this table holds."""
        found = set()
        for chain in Table.parse(self._ipt.save()).chains:
            m = re.fullmatch(r"CAPSULED-([0-9a-f]{8})-SG|CSG-([0-9a-f]{8})-[0-9a-f]{10}.*", chain)
            if m is not None:
                found.add(m[1] or m[2])
        return found

    def remove_deployment(self, tag: str) -> None:
        """Remove a deployment's rules by its tag (Names.of(instance).tag)."""
        names = Names(tag)
        table = Table.parse(self._ipt.save())
        ours = sorted(c for c in table.chains if names.owner(c) is not None)
        if names.dispatch not in table.chains and not ours:
            return
        lines = ["*filter"]
        lines += [f":{c} - [0:0]" for c in [names.dispatch, *ours]]
        for parent in (DOCKER_USER, "FORWARD"):
            for rule in table.chains.get(parent, []):
                if rule == f"-j {names.dispatch}":
                    lines.append(f"-D {parent} -j {names.dispatch}")
        lines += [f"-X {c}" for c in [*ours, names.dispatch]]
        lines.append("COMMIT")
        self._ipt.restore("\n".join(lines) + "\n")

    @staticmethod
    def _dispatch(names: Names, table: Table) -> list[_Dispatch]:
        out = []
        for rule in table.chains.get(names.dispatch, []):
            m = _DISPATCH_RULE.match(rule)
            if m is not None:
                out.append(_Dispatch(m["dst"], m["digest"], m["chain"]))
        return out

    @staticmethod
    def _jump(names: Names, table: Table) -> str | None:
        """The rule that sends FORWARD's packets to our dispatch chain, if it is missing:
        from DOCKER-USER, which Docker evaluates before its own rules, or, on an engine
        that manages no iptables rules, from the top of FORWARD."""
        parent = DOCKER_USER if DOCKER_USER in table.chains else "FORWARD"
        if f"-j {names.dispatch}" in table.chains.get(parent, []):
            return None
        return f"-I {parent} 1 -j {names.dispatch}"
