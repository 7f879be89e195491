"""IPv4 addresses on project networks, for DockerRuntime.

Docker gives a container an address when it starts and takes it back when it stops, so
a stopped and started container would come back with another one (and a sandbox remade
after a crash always would). A container created with an explicit address (endpoint
`IPv4Address`, allowed on networks with a user-set subnet, as project networks have)
keeps it for its whole life. So every create on such a network asks for one: the
address it had before if it is free, else the first free one. Free means held by no
endpoint and reserved by no container of the network, stopped ones included.

Picks and creates on one network are serialised in this process (`AddressBook`), so two
creates cannot pick the same address. Someone else's container may still take a
stopped container's address (Docker's own allocation ignores reservations); its start
then fails with "Address already in use", and `repin` gives it a fresh one.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker

from capsuled.drivers.docker_client import translate_docker_errors
from capsuled.errors import CapsuledError, NotFound

IN_USE = "address already in use"
_DEFAULT_NETWORKS = frozenset({"bridge", "host", "none"})


def observed(data: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(network, "ip/prefix") of each network an inspected container holds an address on."""
    nets = (data.get("NetworkSettings") or {}).get("Networks") or {}
    out = []
    for name, ep in sorted(nets.items()):
        ip, prefix = (ep or {}).get("IPAddress"), (ep or {}).get("IPPrefixLen")
        if ip and prefix:
            out.append((str(name), f"{ip}/{prefix}"))
    return tuple(out)


class AddressBook:
    def __init__(self, client: docker.APIClient) -> None:
        self._api = client
        self._lock = threading.Lock()
        self._per_network: dict[str, threading.Lock] = {}

    @contextmanager
    def picking(self, network: str | None) -> Iterator[None]:
        """Hold while picking an address on `network` and creating the container with it."""
        if network is None:
            yield
            return
        with self._lock:
            lock = self._per_network.setdefault(network, threading.Lock())
        with lock:
            yield

    def pick(self, network: str | None, preferred: str | None,
             exclude: frozenset[str] = frozenset()) -> str | None:
        """An address for a new endpoint on `network`: `preferred` if free, else the first
        free one; None where Docker must choose (the default networks, no subnet of ours,
        the network gone: then the create itself reports that)."""
        if network is None or network in _DEFAULT_NETWORKS:
            return None
        try:
            with translate_docker_errors(f"inspect network {network}"):
                data: dict[str, Any] = self._api.inspect_network(network)
                rows = self._api.containers(all=True, filters={"network": [network]})
        except NotFound:
            return None
        subnet = _subnet(data)
        if subnet is None:
            return None
        # A network across hosts hands out only this host's block of its subnet (ip_range).
        pool = _ip_range(data, subnet) or subnet
        taken = set(exclude) | {str(next(subnet.hosts()))}  # the bridge's own (gateway) address
        for cfg in (data.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Gateway"):
                taken.add(str(cfg["Gateway"]).split("/")[0])
        for ep in (data.get("Containers") or {}).values():
            taken.add(str(ep.get("IPv4Address") or "").split("/")[0])
        for row in rows:
            ep = ((row.get("NetworkSettings") or {}).get("Networks") or {}).get(network) or {}
            taken.add(str(ep.get("IPAddress") or ""))
            taken.add(str((ep.get("IPAMConfig") or {}).get("IPv4Address") or ""))
        if preferred and _inside(preferred, subnet) and _inside(preferred, pool, edges=True) \
                and preferred not in taken:
            return preferred
        for host in pool.hosts():
            if str(host) not in taken:
                return str(host)
        return None  # full: Docker says so when it tries

    def repin(self, container_id: str) -> bool:
        """Give a stopped container whose reserved address was taken a fresh one on each of
        its networks (leaving and joining again, with its DNS aliases); whether it had any."""
        with translate_docker_errors(f"inspect {container_id[:12]}"):
            data = self._api.inspect_container(container_id)
        nets = (data.get("NetworkSettings") or {}).get("Networks") or {}
        moved = False
        for name, ep in nets.items():
            old = ((ep or {}).get("IPAMConfig") or {}).get("IPv4Address")
            if not old:
                continue
            aliases = [a for a in (ep.get("Aliases") or []) if not container_id.startswith(a)]
            with self.picking(name):
                ip = self.pick(name, None, exclude=frozenset({str(old)}))
                with translate_docker_errors(f"move {container_id[:12]} to a free address"):
                    self._api.disconnect_container_from_network(container_id, name)
                    self._api.connect_container_to_network(container_id, name,
                                                           aliases=aliases or None,
                                                           ipv4_address=ip)
            moved = True
        return moved


def in_use(exc: CapsuledError) -> bool:
    return IN_USE in exc.message.lower()


def _subnet(data: dict[str, Any]) -> ipaddress.IPv4Network | None:
    for cfg in (data.get("IPAM") or {}).get("Config") or []:
        try:
            net = ipaddress.ip_network(str(cfg.get("Subnet") or ""), strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network) and net.num_addresses >= 4:
            return net
    return None


def _ip_range(data: dict[str, Any], subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Network | None:
    for cfg in (data.get("IPAM") or {}).get("Config") or []:
        try:
            block = ipaddress.ip_network(str(cfg.get("IPRange") or ""), strict=False)
        except ValueError:
            continue
        if isinstance(block, ipaddress.IPv4Network) and block.subnet_of(subnet):
            return block
    return None


def _inside(ip: str, subnet: ipaddress.IPv4Network, edges: bool = False) -> bool:
    """`ip` is a host address of `subnet` (with `edges`, its first and last count too)."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return addr in subnet and (edges or addr not in (subnet.network_address,
                                                     subnet.broadcast_address))
