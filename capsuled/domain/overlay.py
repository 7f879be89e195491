"""Project networks that span hosts: the address plan and the segment ids (pure).

On hosts that registered an underlay address, a project's network is one L2 segment
across hosts (kernel VXLAN, docs/networking.md). The control plane hands out, from one
deployment-wide pool:

    a project subnet   one /project_prefix block per project, the same on every host, so
                       a container keeps one address plan wherever it runs
    a host block       one /host_prefix block of that subnet per (project, host): the
                       Docker network on that host allocates only inside it (its
                       ip_range), so two hosts never hand out the same address
    a gateway          the host block's first usable address: the project bridge's own
                       address on that host (each host's bridge has its own, since they
                       share the segment)
    a VNI              the segment's 24-bit id, derived from the deployment and project
                       and collision-checked centrally (`vni_candidates` gives the
                       probe order)

All of it is decided in one place (store/overlay.py) under the host row locks.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

VNI_MIN, VNI_MAX = 1, (1 << 24) - 2  # 0 and 0xFFFFFF are reserved by some switches
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 bytes


@dataclass(frozen=True)
class OverlayPool:
    pool: ipaddress.IPv4Network
    project_prefix: int = 20
    host_prefix: int = 24

    def __post_init__(self) -> None:
        if not self.pool.prefixlen <= self.project_prefix <= self.host_prefix <= 29:
            raise ValueError(f"overlay: need pool /{self.pool.prefixlen} <= project_prefix "
                             f"/{self.project_prefix} <= host_prefix /{self.host_prefix} <= /29")

    def project_subnets(self) -> Iterator[ipaddress.IPv4Network]:
        return self.pool.subnets(new_prefix=self.project_prefix)

    def host_blocks(self, subnet: ipaddress.IPv4Network) -> Iterator[ipaddress.IPv4Network]:
        return subnet.subnets(new_prefix=self.host_prefix)

    @property
    def hosts_per_project(self) -> int:
        return 1 << (self.host_prefix - self.project_prefix)


def gateway_of(block: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The bridge's address on the host that has `block`: its first usable address (the
    block's first address is the subnet's network address for the first block)."""
    return block.network_address + 1


def vni_candidates(instance: str, network_id: str) -> Iterator[int]:
    """VNIs to try for a project network, in order: a hash of the deployment and the
    network, then the next ones (the store keeps the first that no other project holds).
    The deployment is part of it so that two deployments sharing a host rarely collide
    (the kernel refuses two VXLAN devices with one VNI and port)."""
    span = VNI_MAX - VNI_MIN + 1
    start = int.from_bytes(hashlib.sha256(f"{instance}:{network_id}".encode()).digest()[:4],
                           "big") % span
    for i in range(span):
        yield VNI_MIN + (start + i) % span
