"""A whole control plane on SQLite with one agent executor on the fake runtime, stepped by
hand: what capsule update and rollback tests drive without Docker."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from capsuled.agent.execute import CapsuleExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.capsules import CapsuleService
from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import QuotaService
from capsuled.api.services.rollouts import RolloutService
from capsuled.domain import labels as L
from capsuled.domain.channel import HostInfo
from capsuled.domain.template import Limits
from capsuled.drivers.runtime.base import Observed
from capsuled.drivers.runtime.fake import FakeContainer, FakeRuntime
from capsuled.identity.base import Principal
from capsuled.store import rollouts
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.hosts import register_host
from capsuled.store.tables import Capsule, Event, OutboxRecord, utcnow
from tests.unit.agent.rigs import INFRA, MemoryNetworks, MemoryVolumes

HOST = "h1"
QUOTA = {"capsules": 10, "containers": 40, "cpu": 8, "memory": 8192, "disk": 100}
ALICE = Principal(project_id="p1", user_id="alice", roles=frozenset({"member"}))


def program(c: FakeContainer) -> int | None:
    """`true` exits 0 at once, `false` and image `broken` exit 1; the rest run."""
    words = (c.entrypoint or c.cmd)[:1]
    if words == ["true"]:
        return 0
    if words == ["false"] or c.image.startswith("broken"):
        return 1
    return None


def template(name: str = "web", apps: list[dict[str, Any]] | None = None,
             **spec: Any) -> dict[str, Any]:
    apps = apps if apps is not None else [
        {"name": "front", "image": "busybox", "command": ["httpd", "-f"]},
        {"name": "side", "image": "busybox", "command": ["sleep", "3600"]}]
    return {"kind": "capsule", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": apps, **spec}}


class Rig:
    def __init__(self, tmp: Path, quota: dict[str, float] | None = None, cpus: float = 4.0) -> None:
        engine = make_engine(f"sqlite:///{tmp / 'db.sqlite'}")
        upgrade(engine)
        self.store = Store(engine)
        with self.store.transaction() as s:
            register_host(s, HostInfo(name=HOST, cpus=cpus, memory_mb=4096, disk_gb=50))
        self.control = ControlPlane(self.store)
        quotas = QuotaService(self.store, quota or QUOTA)
        self.capsules = CapsuleService(self.store, self.control, Limits(), quotas=quotas)
        self.rollouts = RolloutService(self.store, self.control, self.capsules,
                                       Placement(quotas, timedelta(seconds=180)))
        self.runtime = FakeRuntime(images=(INFRA, "busybox", "busybox:2", "broken"),
                                   program=program)
        self._pool = ThreadPoolExecutor(4)
        self.executor = self.agent()

    def agent(self) -> CapsuleExecutor:
        """A fresh agent process: it knows nothing but what Docker holds."""
        return CapsuleExecutor(self.runtime, MemoryVolumes(),
                               ProjectNetworks(MemoryNetworks(), "inst", grace=60), "inst",
                               INFRA, stop_timeout=1, parallel=self._pool)

    def close(self) -> None:
        self._pool.shutdown()
        self.store.engine.dispose()

    def create(self, tmpl: dict[str, Any] | None = None) -> str:
        row = self.capsules.create(ALICE, tmpl or template())
        self.sync()
        return row.uuid

    def sync(self, times: int = 1, executor: CapsuleExecutor | None = None) -> None:
        """The agent's loop, by hand: take the desired set, sync each capsule, report."""
        for _ in range(times):
            got = self.control.watch(HOST, -1, 0)
            for a in got.capsules:
                outcome = (executor or self.executor).sync(a.uuid, a)
                if outcome.report is not None:
                    self.control.report(HOST, [outcome.report])

    def tick(self, later: float = 0.0) -> None:
        """The rollout supervisor's step, `later` seconds from now."""
        now = utcnow() + timedelta(seconds=later)
        with self.store.transaction() as s:
            for capsule in s.scalars(select(Capsule).where(Capsule.rollout_deadline.is_not(None))):
                rollouts.tick(s, capsule, now)

    def get(self, ident: str) -> Capsule:
        return self.capsules.get(ALICE, ident)

    def update(self, ident: str, **body: Any) -> Capsule:
        return self.rollouts.update(ALICE, ident, body)

    def docker(self, uuid: str) -> dict[str, Observed]:
        """What Docker holds of the capsule, by container name (`sandbox` for it)."""
        return {o.labels.get(L.NAME) or o.labels[L.ROLE]: o
                for o in self.runtime.observe_capsule("inst", uuid)}

    def images(self, uuid: str) -> dict[str, str]:
        return {c.labels[L.NAME]: c.image for c in self.runtime.containers.values()
                if c.labels.get(L.CAPSULE) == uuid and L.NAME in c.labels}

    def events(self, uuid: str) -> list[str]:
        with self.store.transaction() as s:
            capsule = s.scalars(select(Capsule).where(Capsule.uuid == uuid)).one()
            return [e.reason for e in s.scalars(select(Event).where(
                Event.capsule_id == capsule.id).order_by(Event.id))]

    def records(self, uuid: str) -> list[tuple[str, str]]:
        with self.store.transaction() as s:
            return [(r.event_type, r.reason) for r in s.scalars(
                select(OutboxRecord).where(OutboxRecord.object_uuid == uuid)
                .order_by(OutboxRecord.seq))]

    def revisions(self, uuid: str) -> list[tuple[int, str | None, str | None]]:
        _, found = self.rollouts.revisions(ALICE, uuid)
        return [(r.revision, r.outcome, r.change_cause) for r in found]


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
