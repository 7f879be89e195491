"""Published ports: which container ports a capsule or bare container publishes on its
host, in one shape for the scheduler, the agent and the views.

Two ways in, one spec field (`Port.host_port`):
- a template port with `hostPort` publishes that container port on that fixed host port.
  The sandbox holds the capsule's network namespace, so the sandbox publishes the ports
  of every member. A fixed host port is a scheduling resource: a host hands out each
  (protocol, port) once, and the store claims it with the capsule;
- a bare container's Zun `exposed_ports` (`{"80/tcp": {}}`) publish on host ports the
  runtime picks (host_port 0, as `docker run -P`); nothing is claimed, and the agent
  reports the ports Docker chose.
A port with no host port is documentation only, as in Kubernetes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from capsuled.domain.spec import CapsuleSpec, ContainerSpec, Port

Protocol = Literal["TCP", "UDP"]
HostPortKey = tuple[str, int]  # (protocol, host port): what a host hands out once
ANY_HOST_PORT = 0  # Port.host_port: a free one the runtime picks


class PublishedPort(BaseModel):
    """One binding of a container port to a host port: what the agent asks the runtime
    for (host_port 0: any free one) and what it observes and reports."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    container_port: int
    protocol: Protocol = "TCP"
    host_port: int = ANY_HOST_PORT
    host_ip: str = "0.0.0.0"


def published(c: ContainerSpec) -> list[Port]:
    """The ports of a container that are published (fixed or any host port)."""
    return [p for p in c.ports if p.host_port is not None]


def capsule_published(spec: CapsuleSpec) -> list[Port]:
    """Every member's published ports: what the sandbox publishes."""
    return [p for c in spec.all_containers for p in published(c)]


def fixed_host_ports(ports: Iterable[Port]) -> list[HostPortKey]:
    """The fixed host ports among `ports`, sorted and without repeats: a host's claims."""
    return sorted({(p.protocol, p.host_port) for p in ports if p.host_port})


def capsule_host_ports(spec: CapsuleSpec) -> list[HostPortKey]:
    return fixed_host_ports(capsule_published(spec))


def bindings(ports: Iterable[Port], host_ip: str) -> tuple[PublishedPort, ...]:
    """What the runtime is asked to publish, on `host_ip` (agent.publish_address)."""
    return tuple(PublishedPort(container_port=p.container_port, protocol=p.protocol,
                               host_port=p.host_port or ANY_HOST_PORT, host_ip=host_ip)
                 for p in ports if p.host_port is not None)


def fingerprint(ports: Iterable[Port]) -> str:
    """A sandbox's published ports as a label value ("8080:80/TCP,…"): a sandbox made
    for other ports is remade, since Docker cannot change a container's bindings."""
    return ",".join(sorted({f"{p.host_port}:{p.container_port}/{p.protocol}"
                            for p in ports if p.host_port is not None}))


def describe(key: HostPortKey) -> str:
    return f"{key[0]} port {key[1]}"


def view(c: ContainerSpec | None, observed: Any = None) -> list[dict[str, Any]]:
    """The `published_ports` extension key of a container body: each published port with
    the host port it has (a fixed one from the spec; one the runtime picked as last
    observed, null until then or while the container is not running)."""
    if c is None:
        return []
    seen = _observed(observed)
    out = []
    for p in published(c):
        host_port = p.host_port or seen.get((p.protocol, p.container_port))
        out.append({"container_port": p.container_port, "protocol": p.protocol,
                    "host_port": host_port})
    return out


def _observed(raw: Any) -> Mapping[tuple[str, int], int]:
    """A stored list of PublishedPort dicts by (protocol, container port); unreadable
    entries are left out (a row written by a newer version must not break a GET)."""
    out: dict[tuple[str, int], int] = {}
    for item in raw if isinstance(raw, list) else []:
        try:
            b = PublishedPort.model_validate(item)
        except ValueError:
            continue
        out.setdefault((b.protocol, b.container_port), b.host_port)
    return out
