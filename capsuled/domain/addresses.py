"""Container addresses as Zun shows them, and the stable ids behind them.

Zun's addresses come from Neutron: a network uuid, a port per container and network, a
subnet id. Here a project has one network (a bridge per host today, spanning hosts
later), so the ids are derived, never stored: uuid5 of a fixed namespace and what they
stand for. The same project gets the same network uuid on every host and every API
replica; a container keeps its port id for as long as it exists. Capsule members share
their sandbox's network namespace, hence its one port, owned by the capsule.

What the agent observes and the store keeps is `Address` (network uuid, IPv4, subnet
CIDR); the views turn it into Zun's three shapes (addresses, network_list old and new).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

# Fixed forever: changing it would change every network, port and subnet id clients hold.
NAMESPACE = uuid.UUID("7d1c2a8e-4b51-5c0e-9a7f-3e6b2d9c1f40")


class Address(BaseModel):
    """One IPv4 address of a container on a project network."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    network_id: str
    addr: str
    subnet: str  # the network's CIDR, e.g. 10.128.4.0/22

    @field_validator("addr")
    @classmethod
    def _ipv4(cls, v: str) -> str:
        return str(ipaddress.IPv4Address(v))

    @field_validator("subnet")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return str(ipaddress.IPv4Network(v, strict=False))


def network_uuid(project_id: str) -> str:
    """The project network's id: the same on every host."""
    return str(uuid.uuid5(NAMESPACE, f"network:{project_id}"))


def port_id(network_id: str, owner: str) -> str:
    """The port of a container (a bare container's uuid, or a capsule's for its members)."""
    return str(uuid.uuid5(NAMESPACE, f"port:{network_id}:{owner}"))


def subnet_id(network_id: str, cidr: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"subnet:{network_id}:{cidr}"))


def parse_stored(raw: Any) -> list[Address]:
    """The JSON column's value as Addresses; anything unreadable is left out (a row
    written by a newer version, or by hand, must not break a GET)."""
    out = []
    for item in raw if isinstance(raw, list) else []:
        try:
            out.append(Address.model_validate(item))
        except ValueError:
            continue
    return out


def zun_addresses(addresses: Iterable[Address], owner: str) -> dict[str, list[dict[str, Any]]]:
    """Zun's `addresses`: {network uuid: [{addr, version, port, subnet_id, preserve_on_delete}]}."""
    out: dict[str, list[dict[str, Any]]] = {}
    for a in addresses:
        out.setdefault(a.network_id, []).append({
            "addr": a.addr, "version": 4, "port": port_id(a.network_id, owner),
            "subnet_id": subnet_id(a.network_id, a.subnet), "preserve_on_delete": False})
    return out


def network_list(addresses: Iterable[Address], owner: str, grouped: bool) -> list[dict[str, Any]]:
    """network_list's entries: grouped per port (≥1.18: net_id, port_id, fixed_ips) or one
    flat entry per address (1.13–1.17: net_id, port_id, subnet_id, version, ip_address)."""
    ports: dict[str, dict[str, Any]] = {}
    flat = []
    for a in addresses:
        port, sub = port_id(a.network_id, owner), subnet_id(a.network_id, a.subnet)
        flat.append({"net_id": a.network_id, "port_id": port, "subnet_id": sub, "version": 4,
                     "ip_address": a.addr})
        entry = ports.setdefault(port, {"net_id": a.network_id, "port_id": port, "fixed_ips": []})
        entry["fixed_ips"].append({"ip_address": a.addr, "version": 4, "subnet_id": sub})
    return list(ports.values()) if grouped else flat


def preferred(addresses: Iterable[Address], network_id: str) -> str | None:
    """The address a container held on `network_id`: asked for again when it is recreated."""
    return next((a.addr for a in addresses if a.network_id == network_id), None)
