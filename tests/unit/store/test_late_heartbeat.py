"""A host that was only late: the monitor marked its capsules Unknown while no heartbeat
came, and its agent, heartbeating again, observes nothing new to report. The heartbeat's
answer asks it to report everything again until nothing of the host is Unknown (read when
each batch of heartbeats is stored: api/services/heartbeats.py, so `beat` below writes a
batch after each heartbeat, as the replica's thread does every half second)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import QuotaService
from capsuled.domain.channel import CapsuleReport, ContainerReport, HostInfo
from capsuled.domain.template import parse_template
from capsuled.scheduler.select import Request
from capsuled.store import capsules as capsule_repo
from capsuled.store import liveness
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.tables import utcnow

QUOTA = {"capsules": -1, "containers": -1, "cpu": -1, "memory": -1, "disk": -1}


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    yield Store(engine)


def test_a_late_host_is_asked_to_report_again_until_nothing_of_it_is_unknown(
        store: Store) -> None:
    control = ControlPlane(store)
    for host in ("h1", "h2"):
        control.register(HostInfo(name=host, cpus=8, memory_mb=8192, disk_gb=50))
    placement = Placement(QuotaService(store, QUOTA), timedelta(seconds=180))
    with store.transaction() as s:
        placed = placement.choose(s, Request(cpu=0.1, memory=16), "capsule web", "p",
                                  only_host="h1")
        row = capsule_repo.create_capsule(s, parse_template({
            "kind": "capsule", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}}), "p", "u",
            placed.host)
        uuid, generation = row.uuid, row.generation
        app = next(c.uuid for c in row.containers if c.role == "app")
    def beat(host: str) -> bool:
        answer = control.heartbeat(host)
        control.heartbeats.flush()
        return answer

    assert beat("h1") is False
    assert beat("h1") is False

    with store.transaction() as s:  # the monitor: a heartbeat came too late
        assert liveness.mark_unknown(s, utcnow() + timedelta(seconds=10), timedelta(seconds=3))
        assert capsule_repo.get_capsule(s, uuid, None).status == "Unknown"
    assert beat("h1") is False  # what this batch learns, the next beat is told
    assert beat("h1") is True
    assert beat("h2") is False and beat("h2") is False  # the other host has nothing Unknown
    assert beat("h1") is True  # until the agent reported

    control.report("h1", [CapsuleReport(
        uuid=uuid, generation=generation, sandbox_state="running", converged=True,
        containers=[ContainerReport(uuid=app, name="app", role="app", state="running")])])
    with store.transaction() as s:
        assert capsule_repo.get_capsule(s, uuid, None).status == "Running"
    beat("h1")
    assert beat("h1") is False
