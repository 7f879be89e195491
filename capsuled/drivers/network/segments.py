"""Where a project's capsules on this host connect from: the Linux bridge and subnet of
each of its project networks, read from Docker in one call. The service load balancer
lets only these (a packet entering on the project's bridge, from its subnet) reach the
project's VIPs."""

from __future__ import annotations

import ipaddress
from typing import Any

import docker

from capsuled.domain import labels as L
from capsuled.drivers.docker_client import translate_docker_errors
from capsuled.drivers.lb.base import Segment

BRIDGE_NAME = "com.docker.network.bridge.name"


class DockerSegments:
    def __init__(self, client: docker.APIClient) -> None:
        self._api = client

    def segments(self, instance: str) -> dict[str, list[Segment]]:
        """Project id → its networks' segments on this host (this deployment's only)."""
        with translate_docker_errors("list networks"):
            rows = self._api.networks(filters={"label": [f"{L.INSTANCE}={instance}"]}) or []
        out: dict[str, list[Segment]] = {}
        for row in rows:
            project = (row.get("Labels") or {}).get(L.PROJECT)
            if not project or row.get("Driver") != "bridge":
                continue
            for subnet in _subnets(row):
                out.setdefault(project, []).append(Segment(bridge=bridge_of(row), subnet=subnet))
        return out


def bridge_of(row: dict[str, Any]) -> str:
    """The Linux bridge of a Docker bridge network: named in its options, else Docker's
    default br-<first 12 of its id>."""
    named = (row.get("Options") or {}).get(BRIDGE_NAME)
    return str(named) if named else f"br-{str(row['Id'])[:12]}"


def _subnets(row: dict[str, Any]) -> list[ipaddress.IPv4Network]:
    out = []
    for cfg in (row.get("IPAM") or {}).get("Config") or []:
        try:
            net = ipaddress.ip_network(str(cfg.get("Subnet") or ""), strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            out.append(net)
    return out
