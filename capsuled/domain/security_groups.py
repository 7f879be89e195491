"""Security groups as rules: what a group may hold, which names a container or template may
list, and the effective firewall of one capsule or bare container.

A group is a project's named set of ingress rules (protocol, port range, and a source: a
CIDR or a remote group). A capsule or bare container is in one or more groups (Zun's
`security_groups`, a template's `spec.securityGroups`; `["default"]` unless it says
otherwise), and what reaches it is what any rule of its groups allows, plus replies to
its own connections, plus its published ports; everything else is dropped.

`default` exists in every project without being made: one rule, any protocol from remote
group `default`. As a remote group, `default` means the whole project (every capsule and
container on the project's network, whatever its groups); any other remote group means
the members of that group. So, as before groups existed, traffic within a project is
allowed and nothing else.

The API resolves each unit's rules into a `Firewall` (sources as CIDRs) for the agent, which
keeps it in the kernel (agent/firewall.py). Names are looked up in the caller's project
only, so another project's group is as unknown as a missing one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from capsuled.domain.spec import BareSpec, CapsuleSpec, Port

DEFAULT = "default"
Protocol = Literal["tcp", "udp", "icmp", "any"]
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp", "icmp", "any")
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}\Z")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
MAX_DESCRIPTION = 255
RULE_KEYS = {"direction", "ethertype", "protocol", "port_range_min", "port_range_max",
             "remote_ip_prefix", "remote_group", "description"}
ANYWHERE = "0.0.0.0/0"


class Rule(BaseModel):
    """One ingress rule as stored and shown (Neutron's field names)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    direction: Literal["ingress"] = "ingress"
    ethertype: Literal["IPv4"] = "IPv4"
    protocol: Protocol = "any"
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None  # a normalised IPv4 CIDR; neither: any source
    remote_group: str | None = None  # a group of the same project
    description: str = ""


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(protocol="any", remote_group=DEFAULT,
         description="any traffic from the project's own capsules and containers"),)


# Where a parser reports a problem: (field path, what is wrong), as template._Problems.add.
AddProblem = Callable[[str, str], None]


def name_problem(name: Any) -> str | None:
    """What is wrong with a group name, or None."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        return ("must be 1 to 255 letters, digits, '_', '.' or '-', starting with a letter or "
                "digit")
    if _UUID_RE.match(name):
        return "must not look like a uuid (groups are found by uuid or name)"
    return None


def parse_names(value: Any, path: str, add: AddProblem, most: int) -> list[str] | None:
    """A list of at most `most` group names (a create's `security_groups`, a template's
    `spec.securityGroups`, limits.max_security_groups): None when not given (the unit is
    then in `default`)."""
    if value is None:
        return None
    if not isinstance(value, list):
        add(path, 'must be a list of security group names, e.g. ["default", "web"]')
        return None
    if len(value) > most:
        add(path, f"at most {most} security groups, not {len(value)}")
        return None
    out: list[str] = []
    for i, name in enumerate(value):
        problem = name_problem(name)
        if problem is not None:
            add(f"{path}[{i}]", problem)
        elif name in out:
            add(f"{path}[{i}]", f"{name} is listed twice")
        else:
            out.append(name)
    return out


def parse_rules(value: Any, path: str, add: AddProblem, most: int) -> list[Rule]:
    """At most `most` rules (limits.max_security_group_rules); repeats count once."""
    if value is None:
        return []
    if not isinstance(value, list):
        add(path, "must be a list of rules, e.g. [{\"protocol\": \"tcp\", \"port_range_min\": 80, "
                    "\"port_range_max\": 80, \"remote_group\": \"default\"}]")
        return []
    if len(value) > most:
        add(path, f"a group has at most {most} rules, not {len(value)}")
        return []
    out: list[Rule] = []
    for i, raw in enumerate(value):
        rule = parse_rule(raw, f"{path}[{i}]", add)
        if rule is not None and rule not in out:
            out.append(rule)
    return out


def parse_rule(raw: Any, path: str, report: AddProblem) -> Rule | None:
    if not isinstance(raw, dict):
        report(path, "must be an object of protocol, port_range_min, port_range_max and "
                     "remote_ip_prefix or remote_group")
        return None
    found: list[str] = []

    def add(where: str, message: str) -> None:
        found.append(where)
        report(where, message)

    for key in sorted(set(raw) - RULE_KEYS, key=str):
        add(f"{path}.{str(key)[:60]}", "unknown field")
    direction = raw.get("direction", "ingress")
    if direction != "ingress":
        add(f"{path}.direction", "must be ingress: rules say what may reach a capsule; "
                                   "everything may leave it")
    ethertype = raw.get("ethertype", "IPv4")
    if ethertype not in ("IPv4", "ipv4"):
        add(f"{path}.ethertype", "must be IPv4: project networks have IPv4 addresses only")
    protocol = raw.get("protocol")
    protocol = "any" if protocol is None else protocol
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        add(f"{path}.protocol", "must be tcp, udp, icmp or any")
        protocol = "any"
    protocol = protocol.lower()
    low, high = _ports(raw, path, protocol, add)
    prefix = raw.get("remote_ip_prefix")
    group = raw.get("remote_group")
    if prefix is not None and group is not None:
        add(path, "give remote_ip_prefix or remote_group, not both")
    cidr = None
    if prefix is not None:
        cidr = _cidr(prefix)
        if cidr is None:
            add(f"{path}.remote_ip_prefix", "must be an IPv4 network such as 10.0.0.0/8 or an "
                                              "address such as 192.0.2.7")
    if group is not None:
        problem = name_problem(group)
        if problem is not None:
            add(f"{path}.remote_group", problem)
    description = raw.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION \
            or "\x00" in description:
        add(f"{path}.description", f"must be a string of at most {MAX_DESCRIPTION} characters")
    if found:
        return None
    return Rule(protocol=protocol, port_range_min=low, port_range_max=high,
                remote_ip_prefix=cidr, remote_group=group, description=description)


def _ports(raw: dict[str, Any], path: str, protocol: str, add: AddProblem) -> tuple[int | None, int | None]:
    low, high = raw.get("port_range_min"), raw.get("port_range_max")
    if low is None and high is None:
        return None, None
    if protocol not in ("tcp", "udp"):
        add(f"{path}.port_range_min", f"ports are for tcp and udp rules, not {protocol}")
        return None, None
    out: list[int | None] = []
    for key, v in (("port_range_min", low), ("port_range_max", high)):
        if v is None:
            out.append(None)
            continue
        n = v if isinstance(v, int) and not isinstance(v, bool) else (
            int(v) if isinstance(v, str) and v.isdigit() and len(v) <= 5 else None)
        if n is None or not 1 <= n <= 65535:
            add(f"{path}.{key}", "must be a port from 1 to 65535")
            return None, None
        out.append(n)
    first = out[0] if out[0] is not None else out[1]
    last = out[1] if out[1] is not None else out[0]
    assert first is not None and last is not None
    if first > last:
        add(f"{path}.port_range_max", f"must be at least port_range_min ({first})")
        return None, None
    return first, last


def _cidr(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > 18:
        return None
    try:
        return str(ipaddress.IPv4Network(value.strip(), strict=False))
    except ValueError:
        return None


def remote_groups(rules: Iterable[Rule]) -> set[str]:
    return {r.remote_group for r in rules if r.remote_group is not None}


def groups_of(spec: CapsuleSpec | BareSpec) -> list[str]:
    return list(spec.security_groups)


# -- what the agent is told ---------------------------------------------------------------

class Peers(BaseModel):
    """The sources one or more rules admit: CIDRs, and with `own_network` the guarded
    unit's own project network on its host (which the agent knows best: a member that
    started a moment ago is in it before the store knows its address)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    cidrs: list[str] = Field(default_factory=list)
    own_network: bool = False


class Allow(BaseModel):
    """Traffic one rule admits: protocol, destination ports, and the sources (`peers`, a
    key of Firewall.peers)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    protocol: Protocol = "any"
    port_min: int | None = None
    port_max: int | None = None
    peers: str


class Firewall(BaseModel):
    """The effective ingress rules of one capsule (its sandbox) or bare container, with the
    sources resolved. Replies to its own connections are always let in; what no `allow`
    admits is dropped."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    peers: dict[str, Peers] = Field(default_factory=dict)
    allow: list[Allow] = Field(default_factory=list)


@dataclass(frozen=True)
class Member:
    """A capsule or bare container of a project as the store knows it."""

    uuid: str
    host: str | None
    groups: tuple[str, ...]
    addresses: tuple[str, ...]  # its IPv4 addresses on the project network
    subnets: tuple[str, ...]  # the networks of those addresses


def peers_of(group: str, members: Sequence[Member], host: str | None) -> Peers:
    """The sources remote group `group` stands for, seen from a unit on `host`: for
    `default` the project's networks (its own on that host, and the subnets of its
    members elsewhere), for any other group the addresses of its members."""
    if group == DEFAULT:
        nets = {s for m in members if m.host != host for s in m.subnets}
        return Peers(cidrs=sorted(nets, key=_net_key), own_network=True)
    ips = {a for m in members if group in m.groups for a in m.addresses}
    return Peers(cidrs=sorted((f"{a}/32" for a in ips), key=_net_key))


def _net_key(cidr: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(cidr, strict=False)
    return int(net.network_address), net.prefixlen


def effective(groups: Sequence[str], rules_of: Mapping[str, Sequence[Rule]],
              peers: Callable[[str], Peers], open_ports: Iterable[Port] = ()) -> Firewall:
    """The firewall of a unit in `groups`. A group missing from `rules_of` admits nothing
    (it cannot be deleted while in use; a race at worst closes, never opens). Published
    ports are open to every source, as Zun opens a container's exposed ports in a group
    of their own."""
    keyed: dict[str, Peers] = {}
    allows: list[Allow] = []

    def add(allow: Allow) -> None:
        if allow not in allows:
            allows.append(allow)

    for name in dict.fromkeys(groups):
        for rule in rules_of.get(name, ()):
            if rule.remote_group is not None:
                key = f"group:{rule.remote_group}"
                if key not in keyed:
                    keyed[key] = peers(rule.remote_group)
            else:
                cidr = rule.remote_ip_prefix or ANYWHERE
                key = f"cidr:{cidr}"
                keyed.setdefault(key, Peers(cidrs=[cidr]))
            add(Allow(protocol=rule.protocol, port_min=rule.port_range_min,
                      port_max=rule.port_range_max, peers=key))
    for port in open_ports:
        keyed.setdefault(f"cidr:{ANYWHERE}", Peers(cidrs=[ANYWHERE]))
        proto: Protocol = "udp" if port.protocol == "UDP" else "tcp"
        add(Allow(protocol=proto, port_min=port.container_port, port_max=port.container_port,
                  peers=f"cidr:{ANYWHERE}"))
    used = {a.peers for a in allows}
    return Firewall(peers={k: v for k, v in sorted(keyed.items()) if k in used}, allow=allows)


def capsule_open_ports(spec: CapsuleSpec) -> list[Port]:
    """What a capsule publishes on its host (a template's hostPort): open to every source."""
    return [p for c in spec.all_containers for p in c.ports if p.host_port is not None]


def bare_open_ports(spec: BareSpec) -> list[Port]:
    """A bare container's exposed_ports: open to every source."""
    return [p for p in spec.container.ports if p.host_port is not None]
