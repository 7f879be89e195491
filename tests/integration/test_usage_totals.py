"""The running totals of claims (store/usage.py) equal a recount of the rows after every
step of a random sequence of what the API and the agents do, on every engine: creates
(over quota, unplaceable, with a security group that does not exist), deletes and the
agent's report that a capsule is gone, force deletes, updates (gated, rolled back by the
deadline, finished by a report), rollbacks, containers added to capsules, bare containers
created, resized and deleted, transactions and savepoints rolled back after their flush,
and creates from several replicas at once.

What the user sees follows them: the quota API's `in_use` and the hosts' `cpu_used`.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any, cast

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner
from test_databases import (Database, add_host, at_once, capsule_service,  # noqa: F401 - db fixture
                            container_service, db, member)

from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import QuotaService
from capsuled.api.services.rollouts import RolloutService
from capsuled.cli.server import app
from capsuled.config import QuotaSettings
from capsuled.domain.channel import BareReport, CapsuleReport, ContainerReport
from capsuled.domain.spec import CapsuleSpec
from capsuled.domain.status import Status
from capsuled.domain.template import Limits, parse_template
from capsuled.errors import CapsuledError
from capsuled.store import capsules as capsule_repo
from capsuled.store import containers as container_repo
from capsuled.store import hosts as host_repo
from capsuled.store import rollouts, usage
from capsuled.store.engine import Store
from capsuled.store.tables import Capsule, Container, HostUsage, ProjectUsage, utcnow

PROJECTS = ("p1", "p2", "p3")
# p2 is tight, so that creates and updates are refused now and then.
QUOTA = {"capsules": 40, "containers": 120, "cpu": 40.0, "memory": 65536, "disk": 500}
TIGHT = {"capsules": 4, "containers": 6, "cpu": 0.8, "memory": 512, "disk": 6}


class _Control:
    def notify(self) -> None:
        pass


def _template(rng: random.Random, name: str) -> dict[str, Any]:
    n = rng.randint(1, 3)
    volumes = [{"name": f"v{i}", "cinder": {"size": rng.randint(1, 3)}} if rng.random() < 0.5
               else {"name": f"v{i}", "emptyDir": {}} for i in range(rng.randint(0, 2))]
    apps = [{"name": f"c{i}", "image": "busybox",
             "resources": {"requests": {"cpu": rng.choice((0.1, 0.2, 0.25, 0.5)),
                                        "memory": rng.choice((16, 32, 64))}},
             "volumeMounts": [{"name": v["name"], "mountPath": f"/{v['name']}"} for v in volumes]}
            for i in range(n)]
    spec: dict[str, Any] = {"containers": apps, "volumes": volumes}
    if rng.random() < 0.2:
        spec["initContainers"] = [{"name": "init", "image": "busybox",
                                   "resources": {"requests": {"cpu": 0.3, "memory": 16}}}]
    if rng.random() < 0.05:
        spec["securityGroups"] = ["no-such-group"]  # refused after the project lock
    return {"kind": "capsule", "metadata": {"name": name}, "spec": spec}


class World:
    """The control plane's services over one store, and what it has made so far."""

    def __init__(self, db: Database, seed: int) -> None:
        self.db = db
        self.rng = random.Random(seed)
        self.store = db.ready()
        add_host(self.store, "h1", cpus=8, memory_mb=4096)
        add_host(self.store, "h2", cpus=4, memory_mb=2048)
        self.quotas = QuotaService(self.store, QuotaSettings().model_dump())
        for p in PROJECTS:
            self.quotas.update(p, TIGHT if p == "p2" else QUOTA)
        self.capsules = capsule_service(self.store)
        self.containers = container_service(self.store)
        self.rollouts = RolloutService(self.store, cast(Any, _Control()), self.capsules,
                                       Placement(self.quotas, timedelta(seconds=180)))
        self.n = 0

    def who(self) -> Any:
        return member(self.rng.choice(PROJECTS))

    def name(self) -> str:
        self.n += 1
        return f"x{self.n}"

    def rows(self, kind: type[Capsule] | type[Container], **where: Any) -> list[Any]:
        with self.store.transaction() as s:
            stmt = select(kind.uuid, kind.project_id)
            for key, value in where.items():
                stmt = stmt.where(getattr(kind, key) == value)
            return list(s.execute(stmt).all())

    def pick(self, kind: type[Capsule] | type[Container], **where: Any) -> tuple[str, Any] | None:
        found = self.rows(kind, **where)
        if not found:
            return None
        uuid, project = self.rng.choice(found)
        return uuid, member(project)

    # -- the steps ------------------------------------------------------------------------
    def create(self) -> None:
        self.capsules.create(self.who(), _template(self.rng, self.name()))

    def create_bare(self) -> None:
        body: dict[str, Any] = {"name": self.name(), "image": "busybox",
                                "cpu": self.rng.choice((0.1, 0.3)), "memory": 32}
        if self.rng.random() < 0.3:
            body["mounts"] = [{"destination": "/d", "size": self.rng.randint(1, 2)}]
        self.containers.create(self.who(), body, run=True, request_id=self.name())

    def delete(self) -> None:
        got = self.pick(Capsule)
        if got:
            self.capsules.delete(got[1], got[0], force=self.rng.random() < 0.2
                                 and got[1].project_id != "p1")

    def gone(self) -> None:
        """The agent reports a deleting capsule (or bare container) removed."""
        with self.store.transaction() as s:
            c = s.scalars(select(Capsule).where(Capsule.deleting.is_(True))).first()
            if c is not None:
                capsule_repo.apply_report(s, c.host or "", CapsuleReport(
                    uuid=c.uuid, generation=c.generation, gone=True))
            b = s.scalars(select(Container).where(Container.deleting.is_(True),
                                                  Container.role == "bare")).first()
            if b is not None:
                container_repo.apply_bare_report(s, b.host or "", BareReport(
                    uuid=b.uuid, generation=b.generation, gone=True))

    def running(self) -> None:
        """The agent reports a capsule running on its spec (which may end an update)."""
        with self.store.transaction() as s:
            c = s.scalars(select(Capsule).where(Capsule.host.is_not(None),
                                                Capsule.deleting.is_(False))).first()
            if c is None:
                return
            spec = CapsuleSpec.model_validate(c.spec)
            capsule_repo.apply_report(s, c.host or "", CapsuleReport(
                uuid=c.uuid, generation=c.generation, sandbox_state="running", converged=True,
                containers=[ContainerReport(uuid=m.uuid or "", name=m.name, role=m.role,
                                            state="exited" if m.role == "init" else "running",
                                            exit_code=0 if m.role == "init" else None)
                            for m in spec.all_containers]))

    def deadline(self) -> None:
        """The rollout supervisor finds an update past its deadline: rolled back."""
        with self.store.transaction() as s:
            c = s.scalars(select(Capsule).where(Capsule.rollout.is_not(None))).first()
            if c is not None:
                rollouts.tick(s, c, utcnow() + timedelta(hours=1))

    def update(self) -> None:
        got = self.pick(Capsule, deleting=False)
        if got:
            self.rollouts.update(got[1], got[0], {"template": _template(self.rng, "u")})

    def rollback(self) -> None:
        got = self.pick(Capsule, deleting=False)
        if got:
            self.rollouts.rollback(got[1], got[0], {})

    def add_member(self) -> None:
        got = self.pick(Capsule, deleting=False)
        if got:
            self.containers.create(got[1], {"name": self.name(), "image": "busybox",
                                            "cpu": 0.1, "memory": 16, "capsule": got[0]},
                                   run=True, request_id=self.name())

    def resize(self) -> None:
        got = self.pick(Container, role="bare", deleting=False)
        if got:
            self.containers.update(got[1], got[0], {"cpu": self.rng.choice((0.1, 0.2, 0.6)),
                                                    "memory": self.rng.choice((16, 64))}, None)

    def delete_bare(self) -> None:
        got = self.pick(Container, role="bare")
        if got:
            self.containers.delete(got[1], got[0], force=False, stop=True,
                                   request_id=self.name())

    def rolled_back(self) -> None:
        """A transaction that made claims (and flushed them) and then failed: no trace."""
        spec = parse_template(_template(self.rng, self.name()), Limits())
        with pytest.raises(RuntimeError):
            with self.store.transaction() as s:
                capsule_repo.create_capsule(s, spec, "p1", "u", "h1")
                s.flush()
                raise RuntimeError("after the flush")

    def savepoint(self) -> None:
        """A savepoint rolled back inside a transaction that commits: its claims go, the
        outer transaction's stay."""
        keep = parse_template(_template(self.rng, self.name()), Limits())
        drop = parse_template(_template(self.rng, self.name()), Limits())
        with self.store.transaction() as s:
            capsule_repo.create_capsule(s, keep, "p3", "u", "h2")
            s.flush()
            try:
                with s.begin_nested():
                    capsule_repo.create_capsule(s, drop, "p3", "u", "h1")
                    s.flush()
                    raise RuntimeError("inside the savepoint")
            except RuntimeError:
                pass

    def burst(self) -> None:
        """Creates from several replicas at once (each its own engine and pool)."""
        replicas = [capsule_service(self.db.store()) for _ in range(4)]
        names = [self.name() for _ in range(4)]
        templates = [_template(self.rng, n) for n in names]
        projects = [self.rng.choice(PROJECTS) for _ in range(4)]
        at_once(4, lambda i: replicas[i].create(member(projects[i]), templates[i]))

    STEPS = ("create", "create", "create_bare", "delete", "gone", "gone", "running",
             "deadline", "update", "rollback", "add_member", "resize", "delete_bare",
             "rolled_back", "savepoint", "burst")

    def step(self) -> str:
        name = self.rng.choice(self.STEPS)
        try:
            getattr(self, name)()
        except CapsuledError as exc:  # refusals are steps too: over quota, no room, 409s
            return f"{name}: {type(exc).__name__}"
        return name

    # -- the check ------------------------------------------------------------------------
    def assert_exact(self, after: str) -> None:
        with self.store.transaction() as s:
            drifts = usage.check(s)
            counted = usage.recount(s)
            used = host_repo.usage(s)
        assert drifts == [], f"after {after}: {drifts}"
        for p in PROJECTS:  # what the quota API shows its members
            shown = cast(dict[str, dict[str, float]], self.quotas.get(p, usages=True))
            in_use = {r: v["in_use"] for r, v in shown.items()}
            want = counted.projects.get(p, usage.ZERO)
            assert in_use == {"capsules": want.capsules, "containers": want.containers,
                              "cpu": pytest.approx(want.cpu), "memory": want.memory,
                              "disk": want.disk}, after
        for host in ("h1", "h2"):
            want = counted.hosts.get(host, usage.ZERO)
            got = used.get(host, (0.0, 0, 0))
            assert (pytest.approx(want.cpu), want.memory, want.containers) == got, after


def test_totals_equal_a_recount_after_every_step(db: Database) -> None:
    world = World(db, seed=16)
    done = []
    for _ in range(70 if db.kind == "sqlite" else 45):
        done.append(world.step())
        world.assert_exact(done[-1])
    # The sequence did what it is for: claims were made, refused and released.
    assert any(d.startswith("create") and ":" not in d for d in done)
    assert any(":" in d for d in done), done
    with world.store.transaction() as s:
        assert usage.stored(s).projects  # the totals are not trivially empty


def test_a_drift_is_found_and_repaired(db: Database) -> None:
    world = World(db, seed=3)
    for i in range(5):
        world.capsules.create(member("p1"), _template(world.rng, f"r{i}"))
    with world.store.transaction() as s:  # what a bug (or a hand edit) would leave
        s.execute(update(ProjectUsage).values(cpu=999.0))
    with world.store.transaction() as s:
        drifts = usage.check(s)
    assert {d.kind for d in drifts} == {"project"} and drifts[0].stored.cpu == 999.0
    with world.store.transaction() as s:
        assert [d.key for d in usage.repair(s)] == [d.key for d in drifts]
    with world.store.transaction() as s:
        assert usage.check(s) == []
    world.capsules.create(member("p1"), _template(world.rng, "after"))
    world.assert_exact("create after the repair")


def test_capsuled_db_recount_finds_and_repairs_a_drift(db: Database) -> None:
    world = World(db, seed=5)
    world.capsules.create(member("p1"), _template(world.rng, "one"))
    with world.store.transaction() as s:
        s.execute(update(HostUsage).values(memory=HostUsage.memory + 1000))
    runner = CliRunner()
    args = ["db", "recount", "--database-url", db.url]
    found = runner.invoke(app, args)
    assert found.exit_code == 1, found.output
    assert "host h" in found.output and "recount" in found.output
    fixed = runner.invoke(app, [*args, "--repair"])
    assert fixed.exit_code == 0 and "(repaired)" in fixed.output, fixed.output
    again = runner.invoke(app, args)
    assert (again.exit_code, again.output.strip()) == (0, "the running totals equal the recount")
