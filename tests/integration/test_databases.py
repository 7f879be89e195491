"""The store on every engine it supports: SQLite (the all-in-one default), PostgreSQL
(psycopg 3) and MariaDB (PyMySQL), each in a throwaway database.

Migrations, the race-safe bootstrap, the repositories as the API services use them, and
the two guarantees that need the database's locks: a project's quota under concurrent
creates, and a host's capacity under concurrent claims from different projects.

PostgreSQL and MariaDB are found through admin URLs (a user that may CREATE DATABASE):
$CAPSULED_TEST_POSTGRESQL_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
and $CAPSULED_TEST_MARIADB_URL (default mysql+pymysql://root@127.0.0.1:3306/test). Where
one does not answer, its tests are skipped, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, func, make_url, select, text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from capsuled.api.metrics import ApiMetrics
from capsuled.api.policy import Policy
from capsuled.api.services import placement as placement_module
from capsuled.api.services.placement import Placement
from capsuled.api.services.capsules import CapsuleService
from capsuled.api.services.containers import ContainerService
from capsuled.api.services.quotas import QuotaService
from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.security_groups import SecurityGroupService
from capsuled.cli.server import app
from capsuled.config import QuotaSettings
from capsuled.domain.channel import HostInfo
from capsuled.domain.template import Limits
from capsuled.domain.overlay import OverlayPool
from capsuled.errors import Conflict, InvalidInput, NotFound, OverQuota
from capsuled.identity.base import Principal
from capsuled.identity.local import LocalIdentity, bootstrap
from capsuled.store import hosts as host_repo
from capsuled.store import overlay
from capsuled.domain.status import Status
from capsuled.scheduler.select import Request
from capsuled.store import capsules as capsule_repo
from capsuled.store import usage
from capsuled.store.capsules import Page
from capsuled.store.engine import Store, make_engine, safe_url, upgrade
from capsuled.store.meta import get_meta
from capsuled.store.tables import (Base, Capsule, ContainerAction, Host, Meta, OverlayBlock,
                                   OverlayProject, Token)

ADMIN_URLS = {
    "postgresql": os.environ.get("CAPSULED_TEST_POSTGRESQL_URL",
                                 "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
    "mariadb": os.environ.get("CAPSULED_TEST_MARIADB_URL",
                              "mysql+pymysql://root@127.0.0.1:3306/test"),
}
T = TypeVar("T")


@dataclass
class Database:
    kind: str
    url: str
    engines: list[Engine] = field(default_factory=list)

    def engine(self) -> Engine:
        engine = make_engine(self.url)
        self.engines.append(engine)
        return engine

    def store(self) -> Store:
        """A store with its own engine and pool, as another API server would have."""
        return Store(self.engine())

    def ready(self) -> Store:
        store = self.store()
        upgrade(store.engine)
        return store


def _admin_engine(kind: str) -> Engine:
    url = ADMIN_URLS[kind]
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        message = (f"{kind} is not reachable at {safe_url(url)} ({type(exc).__name__}: "
                   f"{str(exc).splitlines()[0]}); set CAPSULED_TEST_{kind.upper()}_URL to an "
                   "admin URL of a running server")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return engine


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    kind: str = request.param
    if kind == "sqlite":
        database = Database(kind, f"sqlite:///{tmp_path / 'capsuled.db'}")
        yield database
        for engine in database.engines:
            engine.dispose()
        return
    admin = _admin_engine(kind)
    name = f"capsuled_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    database = Database(kind, make_url(ADMIN_URLS[kind]).set(database=name)
                        .render_as_string(hide_password=False))
    try:
        yield database
    finally:
        for engine in database.engines:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name}" + (" WITH (FORCE)" if kind == "postgresql" else "")))
        admin.dispose()


class _Control:
    """What the services call after a commit to wake the agents; nothing to wake here."""

    def notify(self) -> None:
        pass


def capsule_service(store: Store, **quota: float) -> CapsuleService:
    quotas = QuotaService(store, {**QuotaSettings().model_dump(), **quota})
    return CapsuleService(store, cast(Any, _Control()), Limits(), policy=Policy(), quotas=quotas)


def container_service(store: Store) -> ContainerService:
    return ContainerService(store, lambda: None, lambda host: cast(Any, None), Limits(),
                            policy=Policy(), quotas=QuotaService(store, QuotaSettings().model_dump()))


def template(name: str, labels: dict[str, str] | None = None, memory: int = 32) -> dict[str, Any]:
    return {"kind": "capsule", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                                     "resources": {"requests": {"cpu": 0.1, "memory": memory}},
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "emptyDir": {}}]}}


def member(project: str, user: str = "user") -> Principal:
    return Principal(project, user, frozenset({"member"}))


def add_host(store: Store, name: str = "h1", cpus: float = 64, memory_mb: int = 65536) -> None:
    with store.transaction() as s:
        host_repo.register_host(s, HostInfo(name=name, cpus=cpus, memory_mb=memory_mb, disk_gb=100))


def at_once(n: int, fn: Callable[[int], T]) -> list[T | Exception]:
    """Run fn(0..n-1) in n threads released together; each result or the error it raised."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T | Exception:
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_migrations_build_the_models_schema_and_run_again_as_a_no_op(db: Database) -> None:
    engine = db.engine()
    first = upgrade(engine)
    assert first.before is None and first.after is not None and first.changed
    again = upgrade(engine)
    assert (again.before, again.after, again.changed) == (first.after, first.after, False)
    cli = CliRunner().invoke(app, ["db", "upgrade", "--database-url", db.url])
    assert cli.exit_code == 0 and f"already at revision {first.after}" in cli.output, cli.output
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        if db.kind != "sqlite":  # what the row locks in quotas and hosts rely on
            assert conn.get_isolation_level() == "READ COMMITTED"
        if db.kind == "mariadb":
            cols = {(t, c): (dt, prec, coll) for t, c, dt, prec, coll in conn.execute(text(
                "SELECT table_name, column_name, data_type, datetime_precision, collation_name "
                "FROM information_schema.columns WHERE table_schema = DATABASE()"))}
            assert cols["capsules", "cpu"][0] == "double"
            assert cols["capsules", "created_at"][:2] == ("datetime", 6)
            assert cols["capsules", "name"][2] == "utf8mb4_bin"


def test_the_migration_lock_is_released_only_once_the_new_revision_is_visible(
        db: Database) -> None:
    """The next server to take the lock must read the revision the last one wrote. On
    MariaDB the lock was released before the final `alembic_version` update committed,
    so a server waiting on it ran the newest migration again ("Duplicate key name")."""
    if db.kind == "sqlite":
        pytest.skip("one all-in-one process per SQLite file: no lock to take")
    engine, watcher = db.engine(), db.engine()
    seen: list[str | None] = []

    def on_release(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "RELEASE_LOCK" in statement or "pg_advisory_unlock" in statement:
            with watcher.connect() as other:
                seen.append(MigrationContext.configure(other).get_current_revision())

    event.listen(engine, "before_cursor_execute", on_release)
    done = upgrade(engine)
    assert done.after is not None and seen == [done.after]


def test_servers_starting_at_once_on_an_empty_database_write_one_admin_token(
        db: Database, tmp_path: Path) -> None:
    servers = 4
    stores = [db.store() for _ in range(servers)]
    if db.kind == "sqlite":  # one all-in-one process per SQLite file
        upgrade(stores[0].engine)
    else:  # the servers take turns on the migration lock
        done = [d for d in at_once(servers, lambda i: upgrade(stores[i].engine))
                if not isinstance(d, Exception)]
        assert len(done) == servers and len({d.after for d in done}) == 1, done
        assert sorted(d.before is None for d in done) == [False] * (servers - 1) + [True]
    dirs = [tmp_path / f"server{i}" for i in range(servers)]
    results = at_once(servers, lambda i: bootstrap(stores[i], dirs[i], "admin-token"))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(set(results)) == 1
    with stores[0].transaction() as s:
        assert s.scalar(select(func.count()).select_from(Token)) == 1
        assert s.scalar(select(func.count()).select_from(Meta)) == 1
        assert get_meta(s, "instance_id") == results[0]
    files = [d / "admin-token" for d in dirs if (d / "admin-token").exists()]
    assert len(files) == 1, files
    admin = LocalIdentity(stores[1]).authenticate(files[0].read_text().strip())
    assert admin is not None and admin.is_admin
    # A restart finds the instance and writes nothing.
    assert bootstrap(stores[2], tmp_path / "later", "admin-token") == results[0]
    assert not (tmp_path / "later").exists()


def test_capsules_and_containers_through_the_services(db: Database) -> None:
    store = db.ready()
    add_host(store)
    capsules, containers = capsule_service(store), container_service(store)
    alice, bob = member("p1", "alice"), member("p2", "bob")
    made = [capsules.create(alice, template(f"web-{c}", {"app": "web" if i % 2 == 0 else "db",
                                                           "idx": str(i)}))
            for i, c in enumerate("abcde")]
    other = capsules.create(bob, template("web-a", {"app": "web"}))

    first = capsules.get(alice, "web-a")
    assert first.uuid == made[0].uuid and first.host == "h1" and first.status == "Creating"
    assert first.labels == {"app": "web", "idx": "0"}
    assert first.spec["containers"][0]["name"] == "main"
    assert [c.name for c in first.containers] == ["main"] and len(first.volumes) == 1
    assert capsules.get(bob, "web-a").uuid == other.uuid
    with pytest.raises(NotFound):
        capsules.get(bob, made[1].uuid)
    with pytest.raises(NotFound):
        capsules.get(alice, "WEB-A")  # names compare byte for byte on every engine

    def names(page: Page, labels: dict[str, str] | None = None) -> list[str | None]:
        return [c.name for c in capsules.list(alice, page, False, labels or {})]

    assert names(Page(limit=2, sort_key="name", sort_dir="desc")) == ["web-e", "web-d"]
    assert names(Page(limit=2, marker=made[3].uuid, sort_key="name", sort_dir="desc")) == [
        "web-c", "web-b"]
    assert names(Page(limit=5, marker=made[1].uuid, sort_key="name", sort_dir="desc")) == ["web-a"]
    assert names(Page(limit=10, sort_key="created_at")) == [f"web-{c}" for c in "abcde"]
    assert names(Page(limit=10), {"app": "web"}) == ["web-a", "web-c", "web-e"]
    assert names(Page(limit=10), {"app": "web", "idx": "2"}) == ["web-c"]
    assert names(Page(limit=10), {"app": "WEB"}) == []
    admin = Principal("p1", "root", frozenset({"admin"}))
    assert len(capsules.list(admin, Page(limit=10), True, {"app": "web"})) == 4

    for name in ("box-2", "box-1", "Box-1"):
        containers.create(alice, {"image": "busybox", "name": name, "cpu": 0.5, "memory": 64},
                          run=True, request_id=f"req-{name}")
    listed = containers.list(alice, Page(limit=10, sort_key="name"), False, None, {})
    assert [c.name for c in listed] == ["Box-1", "box-1", "box-2"]
    box = containers.get(alice, "box-1")
    assert (box.host, box.desired_state, box.cpu, box.memory) == ("h1", "running", 0.5, 64)
    members = containers.list(alice, Page(limit=10), False, "web-b", {})
    assert [c.name for c in members] == ["main"]

    capsules.delete(alice, "web-a")
    assert capsules.get(alice, made[0].uuid).status == "Deleting"
    with store.transaction() as s:
        used = host_repo.usage(s)["h1"]
    assert used == (pytest.approx(6 * 0.1 + 3 * 0.5), 6 * 32 + 3 * 64, 6 + 3)


def test_a_projects_quota_holds_under_50_concurrent_creates(db: Database) -> None:
    store = db.ready()
    add_host(store)
    capsules = capsule_service(store, capsules=10, cpu=1.0)
    who = member("busy")
    results = at_once(50, lambda i: capsules.create(who, template(f"q-{i}")))
    errors = [r for r in results if isinstance(r, Exception)]
    assert {type(e) for e in errors} == {OverQuota}, errors[:3]
    assert len(results) - len(errors) == 10
    with store.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Capsule)) == 10
        # 10 × 0.1 CPU is exactly the cpu limit (1.0): no float drift on any engine.
        assert s.scalar(select(func.sum(Capsule.cpu))) == pytest.approx(1.0)


def test_concurrent_claims_from_different_projects_never_oversubscribe_a_host(
        db: Database) -> None:
    store = db.ready()
    add_host(store, cpus=4, memory_mb=1024)
    capsules = capsule_service(store)
    results = at_once(8, lambda i: capsules.create(member(f"p{i}"), template("big", memory=768)))
    assert not [r for r in results if isinstance(r, Exception)], results
    placed = [c for c in results if isinstance(c, Capsule) and c.host == "h1"]
    assert len(placed) == 1
    refused = [c for c in results if isinstance(c, Capsule) and c.host is None]
    assert len(refused) == 7
    assert all(c.status == "Error" and "768 MiB" in (c.status_reason or "") for c in refused)


def _lockable(db: Database, host: str) -> bool:
    """Whether another server could lock `host`'s row now (NOWAIT: no waiting)."""
    with db.engine().connect() as conn:
        try:
            conn.execute(text("SELECT id FROM hosts WHERE name = :n FOR UPDATE NOWAIT"),
                         {"n": host})
            return True
        except DBAPIError:
            return False
        finally:
            conn.rollback()


def test_a_new_claim_locks_its_host_row_alone_and_an_exact_one_every_row(db: Database) -> None:
    """Optimistic placement (api/services/placement.py): creates on different hosts go on
    at once, from any replica. Decided again exactly, a claim locks every host row."""
    if db.kind == "sqlite":
        pytest.skip("SQLite has no row locks: one writer at a time, every claim exact")
    store = db.ready()
    add_host(store, "h1")
    add_host(store, "h2", memory_mb=1024)  # less free memory: spread picks h1
    placement = Placement(QuotaService(store, QuotaSettings().model_dump()),
                          timedelta(seconds=180))
    for exact in (False, True):
        with store.transaction() as s:
            if exact:
                s.info[placement_module._EXACT] = True
            placement.lock(s, "p")
            placed = placement.choose(s, Request(cpu=0.1, memory=32), "capsule c", "p")
            assert placed.host == "h1"
            assert not _lockable(db, "h1")
            assert _lockable(db, "h2") is not exact
        assert _lockable(db, "h1") and _lockable(db, "h2")  # released at the commit


def test_a_claim_whose_room_went_meanwhile_is_decided_again_under_every_hosts_lock(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another server's claim commits between the unlocked read and the chosen host's
    lock and takes its room: the create runs again, exactly, and goes elsewhere; the
    totals stay equal to a recount."""
    if db.kind == "sqlite":
        pytest.skip("SQLite has no row locks: one writer at a time, every claim exact")
    store = db.ready()
    add_host(store, "h1", memory_mb=2048)
    add_host(store, "h2", memory_mb=1024)
    metrics = ApiMetrics()
    capsules = CapsuleService(store, cast(Any, _Control()), Limits(), policy=Policy(),
                              quotas=QuotaService(store, QuotaSettings().model_dump()),
                              metrics=metrics)
    rival = db.store()  # the other server's own engine
    read = placement_module.capacities
    raced: list[str] = []

    def racing(s: Any, lock: bool = True, only: str | None = None) -> Any:
        got = read(s, lock=lock, only=only)
        if not lock and not raced:  # the other server commits 1,500 MiB on h1 now
            with rival.transaction() as r:
                spec = capsules.parse(member("other"), template("big", memory=1500))
                raced.append(capsule_repo.create_capsule(r, spec, "other", "u", "h1",
                                                         Status.CREATING, None).uuid)
        return got

    monkeypatch.setattr(placement_module, "capacities", racing)
    made = capsules.create(member("p"), template("web", memory=768))
    assert raced and made.host == "h2" and made.status == "Creating"

    def decided(result: str) -> float:
        return metrics.registry.get_sample_value(
            "capsuled_scheduler_decisions_total", {"action": "place", "result": result}) or 0
    assert (decided("contended"), decided("ok")) == (1, 1)
    with store.transaction() as s:
        assert usage.check(s) == []
        assert host_repo.usage(s)["h1"][1] == 1500 and host_repo.usage(s)["h2"][1] == 768


def _metered_capsules(store: Store) -> tuple[CapsuleService, ApiMetrics]:
    metrics = ApiMetrics()
    return CapsuleService(store, cast(Any, _Control()), Limits(), policy=Policy(),
                          quotas=QuotaService(store, QuotaSettings().model_dump()),
                          metrics=metrics), metrics


def _count_full_reads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every read of all hosts' capacities placement makes, as whether it locked them."""
    read = placement_module.capacities
    full_reads: list[bool] = []

    def counting(s: Any, lock: bool = True, only: str | None = None) -> Any:
        if only is None:
            full_reads.append(lock)
        return read(s, lock=lock, only=only)

    monkeypatch.setattr(placement_module, "capacities", counting)
    return full_reads


def test_optimistic_creates_read_every_host_once_a_second_spread_and_see_a_host_disabled(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between full reads, a create reads only its chosen host; its own claims move the
    choice on (spread alternates); a host disabled since the full read is seen under its
    lock, and the create is decided again, exactly."""
    if db.kind == "sqlite":
        pytest.skip("SQLite has no row locks: one writer at a time, every claim exact")
    store = db.ready()
    add_host(store, "h1")
    add_host(store, "h2")
    capsules, metrics = _metered_capsules(store)
    full_reads = _count_full_reads(monkeypatch)
    clock = [0.0]
    monkeypatch.setattr(capsules._placement, "_snapshot",
                        placement_module._Snapshot(clock=lambda: clock[0]))
    hosts = [capsules.create(member("p"), template(f"s-{i}")).host for i in range(4)]
    assert hosts[0::2] == [hosts[0]] * 2 and hosts[1::2] == [hosts[1]] * 2, hosts
    assert set(hosts) == {"h1", "h2"} and full_reads == [False]
    with store.transaction() as s:
        s.execute(update(Host).where(Host.name == hosts[0]).values(enabled=False))
    assert capsules.create(member("p"), template("s-4")).host == hosts[1]
    assert full_reads == [False, True]  # decided again under every host's lock
    assert capsules.create(member("p"), template("s-5")).host == hosts[1]
    assert full_reads == [False, True, False]  # the snapshot was read again
    clock[0] += placement_module.SNAPSHOT_SECONDS
    capsules.create(member("p"), template("s-6"))
    assert full_reads == [False, True, False, False]
    with store.transaction() as s:
        assert usage.check(s) == []


def test_a_refusal_locks_no_host_row_and_finds_a_host_new_since_the_snapshot(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """No host fits in the snapshot: the refusal is decided on every host read again,
    unlocked, so a member's creates that no host can take hold up nobody's creates; and a
    host that joined since the snapshot was read is found by that read and claimed."""
    if db.kind == "sqlite":
        pytest.skip("SQLite has no row locks: one writer at a time, every claim exact")
    store = db.ready()
    add_host(store, "h1", memory_mb=1024)
    add_host(store, "h2", memory_mb=1024)
    capsules, metrics = _metered_capsules(store)
    full_reads = _count_full_reads(monkeypatch)
    placement = capsules._placement
    monkeypatch.setattr(placement, "_snapshot", placement_module._Snapshot(clock=lambda: 0.0))
    assert capsules.create(member("p"), template("small")).host in ("h1", "h2")
    assert full_reads == [False]

    with store.transaction() as s:
        placement.lock(s, "p")
        placed = placement.choose(s, Request(cpu=0.1, memory=4096), "capsule huge", "p")
        assert (placed.host, placed.status) == (None, Status.ERROR)
        assert "4096 MiB" in (placed.reason or "")
        assert _lockable(db, "h1") and _lockable(db, "h2")  # refused, holding no host
    assert full_reads == [False, False]
    refused = capsules.create(member("p"), template("huge", memory=4096))
    assert (refused.host, refused.status) == (None, "Error")
    assert full_reads == [False] * 3

    add_host(store, "h3")  # 64 GiB: it joins after the snapshot was read
    made = capsules.create(member("p"), template("big", memory=4096))
    assert (made.host, made.status) == ("h3", "Creating")
    assert full_reads == [False] * 4  # none of them under every host's lock

    def decided(result: str) -> float:
        return metrics.registry.get_sample_value(
            "capsuled_scheduler_decisions_total", {"action": "place", "result": result}) or 0
    assert {r: decided(r) for r in ("ok", "no_valid_host", "contended")} == {
        "ok": 2, "no_valid_host": 2, "contended": 0}
    with store.transaction() as s:
        assert usage.check(s) == []


def test_creates_and_deletes_on_one_host_at_once_never_deadlock(db: Database) -> None:
    """A create locks host rows (its host's, or every one) and then bumps its host's
    revision; a delete bumps it too. On MariaDB a row lock taken through the name's index
    and one taken by id, in opposite orders, deadlock: every host lock and bump goes by
    id. Creates decided exactly (a new overlay block) are in the mix."""
    store = db.ready()
    with store.transaction() as s:
        host_repo.register_host(s, HostInfo(name="h1", cpus=64, memory_mb=65536, disk_gb=100,
                                            underlay_address="192.0.2.1"))  # type: ignore[arg-type]
    overlay.configure(OverlayPool(ipaddress.IPv4Network("10.224.0.0/16"), 24, 26))
    try:
        capsules = capsule_service(store)
        live = [capsules.create(member(f"d{i}"), template("c0")) for i in range(8)]
        for step in range(3):
            # Half the creates in a project new to the host: decided exactly.
            projects = [f"d{i}" if i % 2 else f"n{step}-{i}" for i in range(8)]

            def one(i: int) -> Capsule | None:
                if i < 8:
                    return capsules.delete(member(live[i].project_id), live[i].uuid)
                return capsules.create(member(projects[i - 8]), template(f"c{step + 1}"))
            results = at_once(16, one)
            assert not [r for r in results if isinstance(r, Exception)], results
            live = [r for r in results[8:] if isinstance(r, Capsule)]
            assert len(live) == 8 and all(c.host == "h1" for c in live)
    finally:
        overlay.configure(overlay.DEFAULT_POOL)


def test_a_security_group_is_never_deleted_under_a_create_that_names_it(db: Database) -> None:
    store = db.ready()
    add_host(store)
    capsules = capsule_service(store)
    groups = SecurityGroupService(store, QuotaService(store, QuotaSettings().model_dump()), Limits())
    who = member("sg")
    web = {"protocol": "tcp", "port_range_min": 80, "remote_group": "default"}
    groups.create(who, {"name": "web", "rules": [web]})

    def tmpl(i: int) -> dict[str, Any]:
        t = template(f"sg-{i}")
        t["spec"]["securityGroups"] = ["web"]
        return t
    results = at_once(9, lambda i: groups.delete(who, "web") if i == 0 else capsules.create(who, tmpl(i)))
    made = [r for r in results[1:] if isinstance(r, Capsule)]
    if isinstance(results[0], Exception):  # some create was first: the group stays in use
        assert isinstance(results[0], Conflict) and len(made) == 8, results
        fw = next(a for a in ControlPlane(store).watch("h1", -1, 0).capsules).firewall
        assert fw is not None and [(a.protocol, a.port_min) for a in fw.allow] == [("tcp", 80)]
    else:  # the delete was first: every create names a group that is gone
        assert made == [] and all(isinstance(r, InvalidInput) for r in results[1:]), results


def test_concurrent_creates_never_claim_one_host_port_twice(db: Database) -> None:
    store = db.ready()
    add_host(store, "h1")
    add_host(store, "h2")
    capsules = capsule_service(store)
    tmpl = template("web")
    tmpl["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 18080}]
    results = at_once(8, lambda i: capsules.create(member(f"p{i}"), tmpl))
    assert not [r for r in results if isinstance(r, Exception)], results
    placed = sorted(c.host for c in results if isinstance(c, Capsule) and c.host is not None)
    assert placed == ["h1", "h2"]
    refused = [c for c in results if isinstance(c, Capsule) and c.host is None]
    assert len(refused) == 6 and all("TCP port 18080 free" in (c.status_reason or "")
                                     for c in refused)


def test_a_port_a_service_publishes_and_capsules_ask_for_at_once_goes_once(db: Database) -> None:
    """Services publish on every host and capsules claim per host; both under the host row
    locks, so one of them gets TCP 30500, whichever it is, and the rest are refused."""
    from capsuled.api.services.capsule_services import CapsuleServices, ServiceView
    from capsuled.config import ServiceSettings
    from capsuled.errors import Conflict

    store = db.ready()
    add_host(store, "h1")
    services = CapsuleServices(store, Policy(), ServiceSettings())
    capsules = capsule_service(store)
    tmpl = template("web")
    tmpl["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 30500}]
    body = {"name": "web", "selector": {"app": "web"}, "ports": [{"port": 80, "publish": 30500}]}
    results = at_once(8, lambda i: services.create(member(f"p{i}"), body) if i % 2
                      else capsules.create(member(f"p{i}"), tmpl))
    assert all(isinstance(r, (ServiceView, Capsule, Conflict)) for r in results), results
    won = [r for r in results if isinstance(r, ServiceView)]
    placed = [r for r in results if isinstance(r, Capsule) and r.host is not None]
    assert len(won) + len(placed) == 1, results
    # Services that lost get a 409 naming the field; capsules that lost, the reason.
    assert all("ports[0].publish: TCP port 30500 is in use" in r.message
               for r in results if isinstance(r, Conflict))
    # Their addresses are distinct, whatever the engine.
    made = at_once(6, lambda i: services.create(member("vips"), {**body, "name": f"s{i}",
                                                                  "ports": [{"port": 80}]}))
    vips = [r.vip for r in made if isinstance(r, ServiceView)]
    assert len(vips) == 6 and len(set(vips)) == 6, made


def test_overlay_blocks_stay_distinct_under_concurrent_creates_and_idle_ones_come_back(
        db: Database) -> None:
    store = db.ready()
    for host, addr in (("h1", "192.0.2.1"), ("h2", "192.0.2.2")):
        with store.transaction() as s:
            host_repo.register_host(s, HostInfo(name=host, cpus=64, memory_mb=65536, disk_gb=100,
                                                underlay_address=addr))  # type: ignore[arg-type]
    # Room for 4 project subnets of 4 host blocks each.
    overlay.configure(OverlayPool(ipaddress.IPv4Network("10.224.0.0/22"), 24, 26))
    try:
        capsules = capsule_service(store)
        results = at_once(12, lambda i: capsules.create(member(f"ov{i % 4}"), template(f"o-{i}")))
        assert not [r for r in results if isinstance(r, Exception)], results
        with store.transaction() as s:
            blocks = s.execute(select(OverlayBlock.project_id, OverlayBlock.host,
                                      OverlayBlock.block)).all()
            subnets = dict(s.execute(select(OverlayProject.project_id, OverlayProject.subnet)).all())
        placed = {(c.project_id, c.host) for c in results if isinstance(c, Capsule)}
        assert {(p, h) for p, h, _ in blocks} == placed  # one block where work was placed
        assert len({b for _, _, b in blocks}) == len(blocks)
        assert len(set(subnets.values())) == 4
        for p, _, b in blocks:
            assert ipaddress.IPv4Network(b).subnet_of(ipaddress.IPv4Network(subnets[p]))
        with pytest.raises(Conflict, match="no subnet left in the overlay pool"):
            capsules.create(member("ov4"), template("o-late"))
        with store.transaction() as s:  # ov0 leaves: its blocks and subnet are idle
            for c in s.scalars(select(Capsule).where(Capsule.project_id == "ov0")).all():
                s.delete(c)
        assert capsules.create(member("ov4"), template("o-late")).host in ("h1", "h2")
        with store.transaction() as s:
            assert s.get(OverlayProject, "ov0") is None
            assert s.get(OverlayProject, "ov4") is not None
    finally:
        overlay.configure(overlay.DEFAULT_POOL)


def test_replicas_on_postgresql_wake_each_other_at_once(db: Database) -> None:
    """On PostgreSQL a commit's wake-up reaches the other API replicas through
    LISTEN/NOTIFY; elsewhere there is nothing to listen to and they re-read instead."""
    from capsuled.api.services.agents import ControlPlane
    from capsuled.store.notify import PgNotifier, supports_notify

    store = db.ready()
    if not supports_notify(store.engine):
        assert db.kind != "postgresql"
        return
    planes, notifiers = [], []
    for _ in range(2):
        replica = db.store()
        plane = ControlPlane(replica)
        notifier = PgNotifier(replica.engine, plane.on_notice)
        plane.publish = notifier.publish
        notifier.start()
        planes.append(plane)
        notifiers.append(notifier)
    try:
        a, b = planes
        time.sleep(0.5)  # both listening
        seen = a.assigned.seq
        b.notify()  # e.g. a capsule accepted by replica b
        deadline = time.monotonic() + 2
        while a.assigned.seq == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.assigned.seq > seen, "replica a never heard of b's commit"
        seen = a.reported.seq
        b.report("some-host", [])  # an agent's report through replica b
        deadline = time.monotonic() + 2
        while a.reported.seq == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.reported.seq > seen
    finally:
        for n in notifiers:
            n.stop()


def test_events_are_counted_pruned_and_paged_and_force_delete_frees_a_gone_host(
        db: Database) -> None:
    from datetime import timedelta

    from capsuled.domain.channel import CapsuleReport
    from capsuled.store import capsules as capsule_repo
    from capsuled.store import containers as container_repo

    store = db.ready()
    add_host(store)
    capsules, containers = capsule_service(store), container_service(store)
    alice = member("p1", "alice")
    made = capsules.create(alice, template("web"))
    failing = CapsuleReport(uuid=made.uuid, generation=1, sandbox_state="missing",
                            error="boom", events=[("Warning", "Failed", "boom", None)])
    capsule_repo.configure_retention(capsule_repo.Retention(events=3, actions=2))
    try:
        with store.transaction() as s:
            for _ in range(4):
                capsule_repo.apply_report(s, "h1", failing)
        events = capsules.events(alice, made.uuid)
        failed = [e for e in events if e.reason == "Failed"]
        assert len(failed) == 1 and failed[0].count == 4 and failed[0].last_at is not None
        with store.transaction() as s:
            capsule = capsule_repo.get_capsule(s, made.uuid, "p1")
            for i in range(5):
                capsule_repo.add_event(s, capsule, "Normal", "Note", f"note {i}")
        events = capsules.events(alice, made.uuid)
        assert [e.message for e in events] == ["note 2", "note 3", "note 4"]
        page = capsules.events(alice, made.uuid, limit=2)
        assert [e.message for e in page] == ["note 2", "note 3"]
        assert [e.message for e in capsules.events(alice, made.uuid, 2, page[-1].id)] == ["note 4"]

        box = containers.create(alice, {"image": "busybox", "name": "box"}, run=True,
                                request_id="req-0")
        with store.transaction() as s:
            for i in range(1, 4):
                container_repo.record_action(s, box.uuid, "stop", f"req-{i}", "p1", "alice", True)
        assert [a.request_id for a in containers.actions(alice, box.uuid)] == ["req-2", "req-3"]
        assert [a.request_id for a in containers.actions(alice, box.uuid, marker="req-2")] == [
            "req-3"]
    finally:
        capsule_repo.configure_retention(capsule_repo.Retention())

    # The host goes silent: both go at once with force, and the host holds nothing any more.
    with store.transaction() as s:
        host = host_repo.find_host(s, "h1")
        assert host is not None and host.last_seen is not None
        host_repo.heartbeats(s, {"h1": (host.last_seen - timedelta(hours=1), 0)})
    capsules.delete(alice, made.uuid, force=True)
    containers.delete(alice, box.uuid, force=True, stop=False, request_id="req-9")
    with pytest.raises(NotFound):
        capsules.get(alice, made.uuid)
    with store.transaction() as s:
        assert host_repo.usage(s).get("h1", (0.0, 0, 0)) == (0.0, 0, 0)
        # Their history went with them (a gone container's actions are a 404 anyway).
        assert s.scalar(select(func.count()).select_from(ContainerAction)) == 0


def test_outbox_readers_never_skip_a_seq_that_commits_later(db: Database) -> None:
    """The outbox gap: writers on several connections (replicas) number their records and
    then commit at different speeds; a reader that keeps only the last seq it saw must
    still see every record, each exactly once, in seq order."""
    import random

    from sqlalchemy import event as sa_event

    from capsuled.store import outbox

    db.ready()
    writers = [db.store() for _ in range(4)]
    for w in writers:
        # Runs after the outbox numbered the records: a slow commit, the gap's window.
        sa_event.listen(w._sessions, "before_commit",  # noqa: SLF001
                        lambda _s: time.sleep(random.uniform(0, 0.02)))
    reader = db.store()
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        last = 0
        while True:
            finished = done.is_set()
            with reader.transaction() as s:
                got = [r.seq for r in outbox.read(s, last, None, 1000)]
            seen.extend(got)
            last = got[-1] if got else last
            if finished and not got:
                return

    def write(i: int) -> None:
        with writers[i % 4].transaction() as s:
            for k in range(1 + i % 3):
                outbox.record(s, project_id=f"p{i % 2}", kind="capsule", uuid=f"u{i}-{k}",
                              name=None, event_type="capsule.update", reason="Test")
            if i % 7 == 0:
                raise RuntimeError("rolled back: its numbers go back too")

    thread = threading.Thread(target=read)
    thread.start()
    results = at_once(40, write)
    done.set()
    thread.join(timeout=60)
    written = sum(1 + i % 3 for i in range(40) if i % 7)
    assert sum(isinstance(r, RuntimeError) for r in results) == len(range(0, 40, 7))
    assert seen == list(range(1, written + 1))  # no gap, no repeat, in order


def test_a_watch_on_one_replica_wakes_on_another_replicas_notice(db: Database) -> None:
    """PostgreSQL: a replica's watchers wake when another replica publishes (its changes
    come with a notice), not only at their next poll."""
    import asyncio

    from capsuled.api.services.events import OutboxHub
    from capsuled.store.notify import PgNotifier, supports_notify

    store = db.ready()
    if not supports_notify(store.engine):
        return
    hub = OutboxHub()
    heard: list[str] = []
    listener = PgNotifier(db.store().engine, hub.also_wakes(heard.append))
    other = PgNotifier(db.store().engine, lambda _t: None)
    listener.start()
    try:
        time.sleep(0.5)  # listening

        async def wait_for_wake() -> float:
            started = time.monotonic()
            asyncio.get_running_loop().call_later(0.2, other.publish, "reported")
            await hub.wait(0, timeout=10)
            return time.monotonic() - started

        took = asyncio.run(wait_for_wake())
        assert took < 2, took
        assert heard == ["reported"]
    finally:
        listener.stop()


def test_webhook_subscriptions_limit_deliver_and_dead_letter(db: Database) -> None:
    """Subscriptions on every engine: the per-project limit under concurrent creates, a
    delivery round, dead letters past their bound, a redelivery, and a delete that drops
    the subscription's outbox reader."""
    import httpx

    from capsuled.api.relay.egress import HttpPoster
    from capsuled.api.relay.webhooks import WebhookSink
    from capsuled.api.relay.worker import OutboxRelay
    from capsuled.api.services.subscriptions import SubscriptionService
    from capsuled.config import WebhookSettings
    from capsuled.domain.webhooks import RetryPolicy
    from capsuled.store import outbox, outbox_readers
    from capsuled.store import subscriptions as subs
    from capsuled.store.crypto import SecretBox

    box = SecretBox("db-test")
    db.ready()

    def service(store: Store) -> SubscriptionService:
        return SubscriptionService(store, box, Policy(), WebhookSettings(per_project=3),
                                   lambda host, port: [])

    stores = [db.store() for _ in range(4)]
    made = at_once(8, lambda i: service(stores[i % 4]).create(
        member("hooks"), {"url": f"https://93.184.215.14/{i}"}))
    assert sum(not isinstance(m, Exception) for m in made) == 3
    assert all(isinstance(m, OverQuota) for m in made if isinstance(m, Exception)), made
    store = db.store()
    svc = service(store)
    first = next(m for m in made if not isinstance(m, Exception))
    status = {"now": 200}
    got: list[int] = []

    def receive(request: httpx.Request) -> httpx.Response:
        got.append(int(request.headers["X-Capsuled-Delivery"]))
        return httpx.Response(status["now"], stream=httpx.ByteStream(b""))

    poster = HttpPoster(2, 1024, transport=httpx.MockTransport(receive))
    sink = WebhookSink(store, box, first.uuid, poster, RetryPolicy(1, 60, 600, 1), keep=2,
                       budget=30)
    relay = OutboxRelay(store, subs.reader_name(first.uuid), sink, project_id="hooks")
    for n in range(4):
        with store.transaction() as s:
            outbox.record(s, project_id="hooks", kind="capsule", uuid=f"u{n}", name=None,
                          event_type="capsule.update", reason="Test")
        if n == 0:
            relay.run_once()
            status["now"] = 500
    relay.run_once()
    view = svc.get(member("hooks"), first.uuid)
    assert (view.delivered, view.dead_lettered, view.dead_letters, view.dead_letters_dropped,
            view.state) == (1, 3, 2, 1, "dead_lettering")
    letters = svc.dead_letters(member("hooks"), first.uuid, None, 10)
    assert [d.seq for d in letters] == [got[0] + 2, got[0] + 3]
    status["now"] = 200
    assert svc.redeliver(member("hooks"), first.uuid, None) == 2
    assert sink.redeliver_queued() is False
    assert got[-2:] == [d.seq for d in letters]
    assert svc.get(member("hooks"), first.uuid).state == "active"
    svc.delete(member("hooks"), first.uuid)
    with store.transaction() as s:
        assert outbox_readers.position(s, subs.reader_name(first.uuid)) is None
    poster.close()
