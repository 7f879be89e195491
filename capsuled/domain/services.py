"""Capsule services (`/v1/capsule_services`, an extension): a stable virtual address (VIP)
and a name inside a project's network that spread connections over the project's ready
capsules matching a label selector, on any host. Pure: the create body, which capsules
serve, the VIP pick, and the view the agents program their host's load balancer from.

    name        an RFC 1123 label, unique in the project: what the capsules of the project
                resolve to the VIP (their /etc/hosts; agent/services.py)
    selector    capsule labels, all of which a capsule must carry (equality only)
    ports       each `port` on the VIP goes to `targetPort` on a backend (TCP or UDP);
                `publish` also opens it on that port of every host, for clients outside
A capsule serves while it is Running (or Updating), not being deleted or drained (a
replacement of its containers under way), has an address, and every app container is
ready: the condition that its readiness probe (or, without one, Docker's health check)
decides.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from capsuled.domain.channel import AgentChannel
from capsuled.domain.conditions import container_ready
from capsuled.domain.template import LABEL_KEY_RE, MAX_LABEL_CHARS, short
from capsuled.errors import InvalidInput

Protocol_ = Literal["TCP", "UDP"]
# An RFC 1123 label that starts with a letter: a name in /etc/hosts, never an address.
NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?\Z")
UUID_LIKE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
FIELDS = ("name", "selector", "ports")
PORT_FIELDS = ("port", "targetPort", "protocol", "publish")
MAX_SELECTOR = 16  # labels a selector may name
# A capsule being updated keeps serving while its containers are ready: its agent drains
# it before it replaces any of them (CapsuleReport.draining).
SERVING_STATUSES = ("Running", "Updating")


@dataclass(frozen=True)
class ServiceLimits:
    """What a tenant may ask for (settings `services.*`)."""

    publish_min: int = 30000
    publish_max: int = 32767
    max_ports: int = 16


class ServicePort(BaseModel):
    """One port of a service: `port` on its VIP to `target_port` on each backend, and on
    `publish` of every host when set."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    port: int = Field(ge=1, le=65535)
    target_port: int = Field(ge=1, le=65535)
    protocol: Protocol_ = "TCP"
    publish: int | None = Field(None, ge=1, le=65535)


@dataclass(frozen=True)
class NewService:
    name: str
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]

    def published(self) -> list[tuple[str, int]]:
        """(protocol, host port) of each published port: the claims it needs."""
        return sorted({(p.protocol, p.publish) for p in self.ports if p.publish is not None})


def parse_service(body: Any, limits: ServiceLimits) -> NewService:
    """A create body → the service, or InvalidInput naming every problem."""
    if not isinstance(body, dict):
        raise InvalidInput("body: must be a JSON object")
    problems = [f"{_key(k)}: unknown field" for k in sorted(set(body) - set(FIELDS), key=str)]
    name = body.get("name")
    if name is None:
        problems.append("name: is required")
    elif not (isinstance(name, str) and NAME_RE.match(name)) or UUID_LIKE.match(str(name)):
        problems.append("name: must be 1 to 63 lowercase letters, digits or '-', starting "
                        "with a letter and ending with a letter or digit (an RFC 1123 DNS label)")
    selector = _selector(body.get("selector"), problems)
    ports = _ports(body.get("ports"), limits, problems)
    if problems:
        raise InvalidInput(problems)
    assert isinstance(name, str)
    return NewService(name=name, selector=selector, ports=tuple(ports))


def _selector(value: Any, problems: list[str]) -> dict[str, str]:
    if value is None:
        problems.append("selector: is required: the labels of the capsules to serve")
        return {}
    if not isinstance(value, dict):
        problems.append("selector: must be a map of label names to values")
        return {}
    if not value:
        problems.append("selector: must name at least one label (an empty selector would "
                        "select every capsule of the project)")
    if len(value) > MAX_SELECTOR:
        problems.append(f"selector: at most {MAX_SELECTOR} labels")
        return {}
    out = {}
    for k, v in value.items():
        where = f"selector.{_key(k)}"
        if not isinstance(k, str) or not LABEL_KEY_RE.match(k):
            problems.append(f"{where}: is not a valid label name")
        elif isinstance(v, bool) or not isinstance(v, (str, int)):
            problems.append(f"{where}: must be a string")
        elif "\x00" in str(v) or len(str(v)) > MAX_LABEL_CHARS:
            problems.append(f"{where}: must be at most {MAX_LABEL_CHARS} characters, no NUL")
        else:
            out[k] = str(v)
    return out


def _ports(value: Any, limits: ServiceLimits, problems: list[str]) -> list[ServicePort]:
    if value is None:
        problems.append("ports: is required: at least one {port, targetPort, protocol}")
        return []
    if not isinstance(value, list) or not value:
        problems.append("ports: must be a non-empty list of {port, targetPort, protocol}")
        return []
    if len(value) > limits.max_ports:
        problems.append(f"ports: at most {limits.max_ports} (services.max_ports)")
        return []
    out: list[ServicePort] = []
    seen: set[tuple[str, int]] = set()
    published: set[tuple[str, int]] = set()
    for i, p in enumerate(value):
        path = f"ports[{i}]"
        if not isinstance(p, dict):
            problems.append(f"{path}: must be an object {{port, targetPort, protocol, publish}}")
            continue
        problems += [f"{path}.{_key(k)}: unknown field"
                     for k in sorted(set(p) - set(PORT_FIELDS), key=str)]
        port = _port_number(p.get("port"), f"{path}.port", problems, required=True)
        target = _port_number(p.get("targetPort", port), f"{path}.targetPort", problems)
        proto = p.get("protocol", "TCP")
        if not isinstance(proto, str) or proto.upper() not in ("TCP", "UDP"):
            problems.append(f"{path}.protocol: must be TCP or UDP, not {short(proto)}")
            continue
        proto = proto.upper()
        publish = p.get("publish")
        if publish is not None:
            publish = _port_number(publish, f"{path}.publish", problems)
            if publish is not None and not limits.publish_min <= publish <= limits.publish_max:
                problems.append(f"{path}.publish: must be between {limits.publish_min} and "
                                f"{limits.publish_max} (services.publish_min/publish_max)")
                publish = None
        if port is None or target is None:
            continue
        if (proto, port) in seen:
            problems.append(f"{path}.port: {proto} port {port} is listed twice")
            continue
        seen.add((proto, port))
        if publish is not None:
            if (proto, publish) in published:
                problems.append(f"{path}.publish: {proto} port {publish} is published twice")
                continue
            published.add((proto, publish))
        out.append(ServicePort(port=port, target_port=target, protocol=proto, publish=publish))
    return out


def _port_number(value: Any, path: str, problems: list[str], required: bool = False) -> int | None:
    if value is None:
        if required:
            problems.append(f"{path}: is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        problems.append(f"{path}: must be a port number from 1 to 65535, not {short(value)}")
        return None
    return value


def _key(key: Any) -> str:
    return key if isinstance(key, str) and len(key) <= 64 and key.isprintable() else short(key)


# -- VIPs ----------------------------------------------------------------------------------
def vip_candidates(vip_range: ipaddress.IPv4Network, count: int,
                   rng: random.Random | None = None) -> list[str]:
    """Addresses of the range to try for a new VIP, in random order (concurrent creates
    rarely pick the same; the unique key is the backstop). Not the range's first or last
    address, which some stacks treat as the network and broadcast addresses."""
    rng = rng or random.SystemRandom()
    size = vip_range.num_addresses
    if size <= 2:
        return []
    first, usable = int(vip_range.network_address) + 1, size - 2
    offsets = rng.sample(range(usable), min(count, usable))
    return [str(ipaddress.IPv4Address(first + i)) for i in offsets]


# -- which capsules serve --------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A capsule as far as services care: its labels and whether it can take traffic."""

    uuid: str
    name: str | None
    project_id: str
    labels: Mapping[str, str]
    status: str
    deleting: bool
    draining: bool
    addr: str | None
    # (status, stored conditions) of each app container (store Container.probe)
    members: Sequence[tuple[str, dict[str, Any] | None]] = field(default_factory=tuple)


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def serving(c: Candidate) -> bool:
    """Whether new connections may go to it (see the module docstring)."""
    return (c.status in SERVING_STATUSES and not c.deleting and not c.draining
            and c.addr is not None
            and bool(c.members) and all(container_ready(s, p) for s, p in c.members))


# -- what the agents are given -----------------------------------------------------------
class _Wire(BaseModel):
    """Crosses the agent channel: fields a newer peer adds are ignored."""

    model_config = ConfigDict(extra="ignore")


class Backend(_Wire):
    capsule: str  # its uuid
    addr: ipaddress.IPv4Address


class ServiceEntry(_Wire):
    uuid: str
    name: str
    project_id: str
    vip: ipaddress.IPv4Address
    ports: list[ServicePort]
    backends: list[Backend] = Field(default_factory=list)


class ServicesView(_Wire):
    """A host's part of the service catalog: the services of every project with a capsule
    or container on it (`projects`, which it covers even when they have none) and every
    other project's published ports (project ""), each with the addresses of its serving
    backends on any host. `version` changes whenever anything else in it does: the agent's
    long poll waits for a version other than the one it has."""

    host: str
    version: str = ""
    vip_range: ipaddress.IPv4Network | None = None
    projects: list[str] = Field(default_factory=list)
    services: list[ServiceEntry] = Field(default_factory=list)

    def with_version(self) -> ServicesView:
        body = self.model_dump_json(exclude={"version"})
        return self.model_copy(update={"version": hashlib.sha256(body.encode()).hexdigest()[:32]})

    def hosts_for(self, project: str) -> list[tuple[str, str]]:
        """(name, VIP) of the project's services: what its sandboxes' /etc/hosts carry."""
        return sorted((s.name, str(s.vip)) for s in self.services
                      if s.project_id == project and s.name)

    def backends(self) -> dict[str, tuple[str, frozenset[int]]]:
        """Capsule uuid → (its address, the TCP target ports it serves on), over every
        service of the view."""
        out: dict[str, tuple[str, frozenset[int]]] = {}
        for s in self.services:
            tcp = frozenset(p.target_port for p in s.ports if p.protocol == "TCP")
            for b in s.backends:
                addr, ports = out.get(b.capsule, (str(b.addr), frozenset()))
                out[b.capsule] = (addr, ports | tcp)
        return out


@dataclass(frozen=True)
class ServiceRecord:
    """A stored service as `build_view` needs it. `foreign`: a service of a project with
    nothing on the host, there only for its published ports (open on every host): the
    host is told no more of it than it forwards (no name, no project, no VIP ports)."""

    uuid: str
    name: str
    project_id: str
    vip: str
    ports: list[ServicePort]
    selector: Mapping[str, str]
    foreign: bool = False


def build_view(host: str, vip_range: ipaddress.IPv4Network | None, projects: Iterable[str],
               services: Iterable[ServiceRecord], candidates: Iterable[Candidate]) -> ServicesView:
    """The view of `host` from its projects, the services it forwards and their projects'
    capsules; sorted, so that equal content has one version."""
    by_project: dict[str, list[Candidate]] = {}
    for c in candidates:
        if serving(c):
            by_project.setdefault(c.project_id, []).append(c)
    entries = []
    for r in sorted(services, key=lambda r: r.uuid):
        ports = [p for p in r.ports if not r.foreign or p.publish is not None]
        if not ports:
            continue
        backends = sorted(((c.uuid, c.addr) for c in by_project.get(r.project_id, [])
                           if matches(r.selector, c.labels) and c.addr), key=lambda b: b[0])
        entries.append(ServiceEntry(
            uuid=r.uuid, name="" if r.foreign else r.name,
            project_id="" if r.foreign else r.project_id, vip=ipaddress.IPv4Address(r.vip),
            ports=sorted(ports, key=lambda p: (p.protocol, p.port)),
            backends=[Backend(capsule=u, addr=ipaddress.IPv4Address(a)) for u, a in backends]))
    return ServicesView(host=host, vip_range=vip_range, projects=sorted(set(projects)),
                        services=entries).with_version()


class ServiceChannel(Protocol):
    """How an agent gets its host's view (the control plane in process, or HTTP)."""

    def services(self, host: str, after: str | None, timeout: float) -> ServicesView:
        """The view once its version differs from `after`, or as it is after `timeout`
        seconds, whichever comes first."""
        ...


class AgentServiceChannel(AgentChannel, ServiceChannel, Protocol):
    """What an agent talks to: the control plane in process, or HttpChannel."""
