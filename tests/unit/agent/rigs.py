"""In-memory stand-ins for what the agent drives besides the runtime (volumes, networks,
the control plane), typed to their protocols so tests need no `# type: ignore`."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence

from capsuled.domain import labels as L
from capsuled.domain.channel import (AgentStats, Assignment, Assignments, BareReport,
                                     CapsuleReport, ContainerAssignment, HostInfo, Registration)
from capsuled.drivers.firewall.base import Guard
from capsuled.drivers.firewall.iptables import IptablesFirewall, Names
from capsuled.drivers.network.base import NetworkLayout, ProjectNetwork, network_name
from capsuled.drivers.runtime.fake import FakeRuntime
from capsuled.drivers.volume.base import VolumeRequest
from capsuled.errors import DriverError
from tests.unit.drivers.fake_iptables import FakeIptables

INFRA = "capsuled/infra:latest"


def fake_runtime() -> FakeRuntime:
    """Busybox and the infra image present; an init container (`true`) exits 0 at once."""
    return FakeRuntime(images=(INFRA, "busybox"),
                       program=lambda c: 0 if (c.entrypoint or c.cmd)[:1] == ["true"] else None)


class MemoryVolumes:
    def __init__(self) -> None:
        self.volumes: dict[str, VolumeRequest] = {}

    def ensure_volume(self, req: VolumeRequest) -> str:
        self.volumes.setdefault(req.name, req)
        return req.name

    def remove_volume(self, name: str) -> None:
        self.volumes.pop(name, None)

    def remove_owned(self, instance: str, capsule: str) -> list[str]:
        gone = [n for n, v in self.volumes.items() if v.labels.get(L.CAPSULE) == capsule
                and v.labels.get(L.INSTANCE) == instance and v.labels.get(L.AUTO_REMOVE) == "true"]
        for n in gone:
            del self.volumes[n]
        return gone


class MemoryNetworks:
    def __init__(self) -> None:
        self.networks: dict[str, ProjectNetwork] = {}
        self.layouts: dict[str, NetworkLayout | None] = {}  # the last asked for, per project

    def ensure_network(self, instance: str, project: str,
                       layout: NetworkLayout | None = None) -> ProjectNetwork:
        self.layouts[project] = layout
        return self.networks.setdefault(project, ProjectNetwork(
            f"net-{project}", network_name(instance, project), project,
            bridge=layout.bridge if layout else None))

    def forget_network(self, instance: str, project: str) -> None:
        pass

    def list_networks(self, instance: str) -> list[ProjectNetwork]:
        return list(self.networks.values())

    def remove_unused_networks(self, instance: str,
                               projects: Collection[str]) -> list[ProjectNetwork]:
        return [self.networks.pop(p) for p in list(projects) if p in self.networks]


class MemoryChannel:
    """The control plane: a desired set the test edits, and the reports agents sent."""

    def __init__(self, host: str = "h1") -> None:
        self._host = host
        self._changed = threading.Condition()
        self._revision = 0
        self._capsules: list[Assignment] = []
        self._containers: list[ContainerAssignment] = []
        self.reports: list[CapsuleReport] = []
        self.bare_reports: list[BareReport] = []
        self.registered: list[HostInfo] = []
        self.stats: list[AgentStats] = []

    def assign(self, capsules: list[Assignment],
               containers: list[ContainerAssignment] | None = None) -> None:
        with self._changed:
            self._capsules, self._containers = list(capsules), list(containers or [])
            self._revision += 1
            self._changed.notify_all()

    def last_report(self, uuid: str) -> CapsuleReport | None:
        with self._changed:
            return next((r for r in reversed(self.reports) if r.uuid == uuid), None)

    def register(self, host: HostInfo) -> Registration | None:
        self.registered.append(host)
        return None

    def heartbeat(self, host: str, stats: AgentStats | None = None) -> bool:
        if stats is not None:
            self.stats.append(stats)
        return False

    def watch(self, host: str, after_revision: int, timeout: float,
              full: bool = True) -> Assignments:
        with self._changed:
            self._changed.wait_for(lambda: self._revision > after_revision, timeout)
            return Assignments(host=self._host, revision=self._revision,
                               capsules=list(self._capsules), containers=list(self._containers))

    def report(self, host: str, reports: list[CapsuleReport],
               containers: list[BareReport] | None = None) -> None:
        with self._changed:
            self.reports.extend(reports)
            self.bare_reports.extend(containers or [])


class Kernel:
    """The iptables driver over an in-memory table that a test can make refuse."""

    def __init__(self) -> None:
        self.table = FakeIptables()
        self.driver = IptablesFirewall(self.table)
        self.refuse = False
        self.ensures = 0

    def ensure(self, instance: str, guards: Sequence[Guard], keep: Collection[str] | None) -> None:
        self.ensures += 1
        if self.refuse:
            raise DriverError("security groups: iptables-restore failed: refused")
        self.driver.ensure(instance, guards, keep)

    def remove_all(self, instance: str) -> None:
        self.driver.remove_all(instance)

    def guarded(self) -> dict[str, str]:
        """Dispatched address → unit chain."""
        rules = self.table.chains.get(Names.of("inst").dispatch, [])
        return {r.split()[1].split("/")[0]: r.split()[-1] for r in rules}
