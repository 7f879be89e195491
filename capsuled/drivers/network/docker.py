"""BridgeNetworks: one Docker bridge network per project and deployment.

What it leaves on the host: bridge networks named `capsuled-<instance>-<project hash>`,
labelled `capsuled.instance=<deployment>`, `capsuled.project=<project id>` and
`capsuled.network-id=<the network's uuid as the API shows it>`, with
inter-container traffic enabled inside the network (Docker's isolation rules drop traffic
between different bridge networks). Containers attach by network name, as the docker CLI
does, so a container whose network was recreated still starts.

Known networks are cached per process: after the first ensure of a project, an ensure makes
no Docker call. The cache entry goes when the agent removes the network, or when a create
found it missing (`forget_network`).

A project network that spans hosts (agent/overlay.py) is made with the subnet, this host's
block (ip_range) and gateway the control plane allocated, a bridge of a known name (VXLAN
is attached to it) and the overlay's MTU. Any other network's subnet comes from
capsuled's own pool (`agent.network_pool`, cut into `/network_prefix`
blocks), not from Docker's default address pools: those hold about 30 networks, so a host
would refuse the 31st project. A new network takes the first block that overlaps no
Docker network and no route of this host.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.types

from capsuled.domain import labels as L
from capsuled.domain.addresses import network_uuid
from capsuled.drivers.docker_client import translate_docker_errors
from capsuled.drivers.network.base import NetworkLayout, ProjectNetwork, network_name
from capsuled.errors import DriverError, NotFound, RuntimeConflict, RuntimeRejected

LOG = logging.getLogger(__name__)
ICC = "com.docker.network.bridge.enable_icc"
BRIDGE_NAME = "com.docker.network.bridge.name"
MTU = "com.docker.network.driver.mtu"
_TRIES = 8  # blocks tried when Docker says one overlaps something it knows and we did not


class BridgeNetworks:
    def __init__(self, client: docker.APIClient, pool: ipaddress.IPv4Network, prefix: int,
                 routes_file: Path = Path("/proc/net/route")) -> None:
        self._api = client
        self._pool = pool
        self._prefix = prefix
        self._routes_file = routes_file
        self._lock = threading.Lock()
        self._subnets = threading.Lock()  # two projects' creates must not pick one block
        self._known: dict[tuple[str, str], ProjectNetwork] = {}
        self._creating: dict[tuple[str, str], threading.Lock] = {}

    def ensure_network(self, instance: str, project: str,
                       layout: NetworkLayout | None = None) -> ProjectNetwork:
        key = (instance, project)
        known = self._known.get(key)
        if known is not None:
            return known
        with self._lock:
            creating = self._creating.setdefault(key, threading.Lock())
        with creating:  # one create per network in this process; others wait and reuse it
            known = self._known.get(key)
            if known is None:
                known = self._create_or_adopt(instance, project, layout)
                with self._lock:
                    self._known[key] = known
            return known

    def forget_network(self, instance: str, project: str) -> None:
        with self._lock:
            self._known.pop((instance, project), None)

    def _create_or_adopt(self, instance: str, project: str,
                         layout: NetworkLayout | None) -> ProjectNetwork:
        name = network_name(instance, project)
        try:
            if layout is not None:
                made = self._create_laid_out(name, instance, project, layout)
                LOG.info("created network %s (%s, this host's block %s) for project %s", name,
                         layout.subnet, layout.ip_range, project)
                return ProjectNetwork(id=made, name=name, project=project, bridge=layout.bridge)
            created = self._create(name, instance, project)
            LOG.info("created network %s (%s) for project %s", name, created[1], project)
            return ProjectNetwork(id=created[0], name=name, project=project)
        except RuntimeConflict:
            pass  # it exists: made by an earlier run, or by a concurrent create
        with translate_docker_errors(f"find network {name}"):
            rows = self._api.networks(names=[name]) or []
        rows = [r for r in rows if r.get("Name") == name]
        if not rows:
            raise DriverError(f"network {name} exists but could not be found")
        row = min(rows, key=lambda r: (str(r.get("Created") or ""), str(r["Id"])))
        labels = row.get("Labels") or {}
        if labels.get(L.INSTANCE) != instance or labels.get(L.PROJECT) != project:
            raise DriverError(f"network {name} exists and is not this deployment's network "
                              f"for project {project}")
        return _network(row)

    def _create_laid_out(self, name: str, instance: str, project: str,
                         layout: NetworkLayout) -> str:
        """Create the network with the addresses the control plane allocated: its id."""
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
            subnet=layout.subnet, iprange=layout.ip_range, gateway=layout.gateway)])
        with translate_docker_errors(f"create network {name}"):
            created = self._api.create_network(
                name, driver="bridge", check_duplicate=True, ipam=ipam,
                options={ICC: "true", BRIDGE_NAME: layout.bridge, MTU: str(layout.mtu)},
                labels={L.INSTANCE: instance, L.PROJECT: project,
                        L.NETWORK_ID: network_uuid(project)})
        return str(created["Id"])

    def _create(self, name: str, instance: str, project: str) -> tuple[str, str]:
        """Create the network on a free block of the pool: (id, subnet)."""
        with self._subnets:
            tried = 0
            for subnet in self._free_blocks():
                ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
                try:
                    with translate_docker_errors(f"create network {name}"):
                        created = self._api.create_network(
                            name, driver="bridge", options={ICC: "true"}, check_duplicate=True,
                            labels={L.INSTANCE: instance, L.PROJECT: project,
                                    L.NETWORK_ID: network_uuid(project)}, ipam=ipam)
                    return str(created["Id"]), str(subnet)
                except (RuntimeRejected, DriverError) as exc:
                    if isinstance(exc, RuntimeConflict) or "overlap" not in exc.message.lower():
                        raise
                    tried += 1
                    if tried >= _TRIES:
                        raise
        raise DriverError(f"create network {name}: no free /{self._prefix} block left in "
                          f"{self._pool} for project networks (agent.network_pool, "
                          f"agent.network_prefix)")

    def _free_blocks(self) -> Iterator[ipaddress.IPv4Network]:
        with translate_docker_errors("list networks"):
            rows = self._api.networks() or []
        taken = [*_subnets(rows), *_routes(self._routes_file)]
        for block in self._pool.subnets(new_prefix=self._prefix):
            if not any(block.overlaps(t) for t in taken):
                yield block

    def list_networks(self, instance: str) -> list[ProjectNetwork]:
        with translate_docker_errors("list networks"):
            rows = self._api.networks(filters={"label": [f"{L.INSTANCE}={instance}"]}) or []
        return [_network(r) for r in rows if (r.get("Labels") or {}).get(L.PROJECT)]

    def remove_unused_networks(self, instance: str,
                               projects: Collection[str]) -> list[ProjectNetwork]:
        wanted = set(projects)
        removed = []
        for net in self.list_networks(instance):
            if net.project not in wanted or self._attached(net):
                continue
            try:
                with translate_docker_errors(f"remove network {net.name}"):
                    self._api.remove_network(net.id)
            except NotFound:
                pass
            except DriverError as exc:
                if "active endpoints" in exc.message:  # a container joined since the inspect
                    continue
                raise
            with self._lock:
                if self._known.get((instance, net.project), net).id == net.id:
                    self._known.pop((instance, net.project), None)
            LOG.info("removed unused network %s of project %s", net.name, net.project)
            removed.append(net)
        return removed

    def _attached(self, net: ProjectNetwork) -> bool:
        try:
            with translate_docker_errors(f"inspect network {net.name}"):
                data: dict[str, Any] = self._api.inspect_network(net.id)
        except NotFound:
            return False
        return bool(data.get("Containers"))


def _network(row: dict[str, Any]) -> ProjectNetwork:
    bridge = (row.get("Options") or {}).get(BRIDGE_NAME)
    return ProjectNetwork(id=str(row["Id"]), name=str(row["Name"]),
                          project=str((row.get("Labels") or {})[L.PROJECT]),
                          bridge=str(bridge) if bridge else None)


def _subnets(rows: list[dict[str, Any]]) -> Iterator[ipaddress.IPv4Network]:
    """The IPv4 subnets of Docker's networks (any network, capsuled's or not)."""
    for row in rows:
        for cfg in (row.get("IPAM") or {}).get("Config") or []:
            try:
                net = ipaddress.ip_network(str(cfg.get("Subnet") or ""), strict=False)
            except ValueError:
                continue
            if isinstance(net, ipaddress.IPv4Network):
                yield net


def _routes(path: Path) -> list[ipaddress.IPv4Network]:
    """This host's IPv4 routes but the default one, from the kernel's table (hex, little
    endian): a block that overlaps one would shadow or be shadowed by it."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(fields[1]), "little"))
            mask = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(fields[7]), "little"))
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except ValueError:
            continue
        if net.prefixlen > 0:
            out.append(net)
    return out
