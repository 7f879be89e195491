"""BridgeNetworks: one Docker bridge network per project and deployment.

What it leaves on the host: bridge networks named `capsuled-<instance>-<project hash>`,
labelled `capsuled.instance=<deployment>` and `capsuled.project=<project id>`, with
inter-container traffic enabled inside the network (Docker's isolation rules drop traffic
between different bridge networks). Containers attach by network name, as the docker CLI
does, so a container whose network was recreated still starts.

Known networks are cached per process: after the first ensure of a project, an ensure makes
no Docker call. The cache entry goes when the agent removes the network, or when a create
found it missing (`forget_network`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from typing import Any

import docker

from capsuled.domain import labels as L
from capsuled.drivers.docker_client import translate_docker_errors
from capsuled.drivers.network.base import ProjectNetwork, network_name
from capsuled.errors import DriverError, NotFound, RuntimeConflict

LOG = logging.getLogger(__name__)
ICC = "com.docker.network.bridge.enable_icc"


class BridgeNetworks:
    def __init__(self, client: docker.APIClient) -> None:
        self._api = client
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], ProjectNetwork] = {}
        self._creating: dict[tuple[str, str], threading.Lock] = {}

    def ensure_network(self, instance: str, project: str) -> ProjectNetwork:
        key = (instance, project)
        known = self._known.get(key)
        if known is not None:
            return known
        with self._lock:
            creating = self._creating.setdefault(key, threading.Lock())
        with creating:  # one create per network in this process; others wait and reuse it
            known = self._known.get(key)
            if known is None:
                known = self._create_or_adopt(instance, project)
                with self._lock:
                    self._known[key] = known
            return known

    def forget_network(self, instance: str, project: str) -> None:
        with self._lock:
            self._known.pop((instance, project), None)

    def _create_or_adopt(self, instance: str, project: str) -> ProjectNetwork:
        name = network_name(instance, project)
        try:
            with translate_docker_errors(f"create network {name}"):
                created = self._api.create_network(
                    name, driver="bridge", options={ICC: "true"}, check_duplicate=True,
                    labels={L.INSTANCE: instance, L.PROJECT: project})
            LOG.info("created network %s for project %s", name, project)
            return ProjectNetwork(id=str(created["Id"]), name=name, project=project)
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
        return ProjectNetwork(id=str(row["Id"]), name=name, project=project)

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
    return ProjectNetwork(id=str(row["Id"]), name=str(row["Name"]),
                          project=str((row.get("Labels") or {})[L.PROJECT]))
