"""Fixed host ports claimed with the capsule, on SQLite through the capsule service: the
one-host and two-host cases of the scheduler, the members' reason, the privileged-port
gate, and the claim's release on every way a capsule row goes."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from capsuled.api.policy import Policy
from capsuled.api.services.capsules import CapsuleService
from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import QuotaService
from capsuled.config import QuotaSettings
from capsuled.domain.channel import CapsuleReport, HostInfo
from capsuled.domain.fold import EventRecord
from capsuled.domain.spec import CapsuleSpec, Port
from capsuled.domain.template import Limits
from capsuled.errors import Conflict, Forbidden
from capsuled.identity.base import Principal
from capsuled.store import capsules as repo
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.hosts import register_host
from capsuled.store.tables import Capsule, HostPort


class _Control:
    def notify(self) -> None:
        pass


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    return Store(engine)


def add_host(store: Store, name: str) -> None:
    with store.transaction() as s:
        register_host(s, HostInfo(name=name, cpus=8, memory_mb=8192, disk_gb=50))


def service(store: Store) -> CapsuleService:
    quotas = QuotaService(store, QuotaSettings().model_dump())
    return CapsuleService(store, cast(Any, _Control()), Limits(), policy=Policy(), quotas=quotas)


def who(project: str, *roles: str) -> Principal:
    return Principal(project, "u", frozenset(roles or {"member"}))


def web(name: str, host_port: int = 18080, protocol: str = "TCP") -> dict[str, Any]:
    return {"kind": "capsule", "metadata": {"name": name}, "spec": {"containers": [
        {"name": "httpd", "image": "busybox",
         "ports": [{"containerPort": 8080, "hostPort": host_port, "protocol": protocol}]}]}}


def claims(store: Store) -> list[tuple[str, str, int, str]]:
    with store.transaction() as s:
        return [(r.host, r.protocol, r.port, r.project_id) for r in s.scalars(
            select(HostPort).order_by(HostPort.host, HostPort.port))]


def test_a_second_capsule_on_a_one_host_deployment_fails_with_a_clear_reason(store: Store) -> None:
    add_host(store, "h1")
    caps = service(store)
    first = caps.create(who("p1"), web("web"))
    assert (first.host, first.status) == ("h1", "Creating")
    assert claims(store) == [("h1", "TCP", 18080, "p1")]
    again = caps.create(who("p1"), web("web-2"))
    assert (again.host, again.status) == (None, "Error")
    assert again.status_reason == ("There are not enough hosts available. (no host has TCP port "
                                   "18080 free: used by your capsule web)")
    other = caps.create(who("p2"), web("mine"))
    assert other.status_reason == ("There are not enough hosts available. (no host has TCP port "
                                   "18080 free: used by another project)")
    # The same number over UDP is another port.
    assert caps.create(who("p2"), web("dns", protocol="UDP")).host == "h1"
    assert claims(store) == [("h1", "TCP", 18080, "p1"), ("h1", "UDP", 18080, "p2")]


def test_the_second_capsule_lands_on_the_other_host(store: Store) -> None:
    add_host(store, "h1")
    add_host(store, "h2")
    caps = service(store)
    hosts = {caps.create(who(f"p{i}"), web(f"web-{i}")).host for i in range(2)}
    assert hosts == {"h1", "h2"}
    assert caps.create(who("p9"), web("third")).status == "Error"


def test_ports_below_the_minimum_are_for_administrators(store: Store) -> None:
    add_host(store, "h1")
    caps = service(store)
    with pytest.raises(Forbidden) as exc:
        caps.create(who("p1"), web("web", host_port=80))
    assert "spec.containers[0].ports[0].hostPort (80 is below 1024)" in exc.value.message
    assert caps.create(who("admin", "admin"), web("web", host_port=80)).host == "h1"


def test_a_claim_goes_with_its_capsule_however_the_row_goes(store: Store) -> None:
    add_host(store, "h1")
    caps = service(store)
    # Deleted and confirmed gone by the agent.
    first = caps.create(who("p1"), web("web"))
    caps.delete(who("p1"), first.uuid)
    assert claims(store) != []  # held while the agent removes it, as CPU and memory are
    with store.transaction() as s:
        row = s.scalars(select(Capsule).where(Capsule.uuid == first.uuid)).one()
        repo.apply_report(s, "h1", CapsuleReport(uuid=first.uuid, generation=row.generation,
                                                 gone=True))
    assert claims(store) == []
    # Force-deleted (the host is up: an admin's power).
    second = caps.create(who("p1"), web("web"))
    assert second.host == "h1"
    caps.delete(who("admin", "admin"), second.uuid, all_projects=True, force=True)
    assert claims(store) == []
    # Unplaced capsules claim nothing and go at once.
    third = caps.create(who("p1"), web("web"))
    unplaced = caps.create(who("p1"), web("web-2"))
    assert unplaced.host is None and len(claims(store)) == 1
    caps.delete(who("p1"), unplaced.uuid)
    assert claims(store) == [("h1", "TCP", 18080, "p1")]
    caps.delete(who("admin", "admin"), third.uuid, all_projects=True, force=True)
    assert claims(store) == []


def test_a_spec_change_moves_the_claims_after_the_placement_check(store: Store) -> None:
    add_host(store, "h1")
    caps = service(store)
    a = caps.create(who("p1"), web("aa", 18080))
    b = caps.create(who("p2"), web("bb", 18081))
    placement = Placement(QuotaService(store, QuotaSettings().model_dump()), timedelta(seconds=180))
    with store.transaction() as s:
        # Its own port is no obstacle; another capsule's is, named only as its own project's.
        placement.ensure_ports(s, "h1", a.uuid, [("TCP", 18080), ("TCP", 18082)], "p1")
        with pytest.raises(Conflict) as exc:
            placement.ensure_ports(s, "h1", a.uuid, [("TCP", 18081)], "p1")
    assert exc.value.message == "hostPort: TCP port 18081 is in use on the capsule's host (by another project)."
    with store.transaction() as s:
        row = s.scalars(select(Capsule).where(Capsule.uuid == a.uuid)).one()
        spec = CapsuleSpec.model_validate(row.spec)
        moved = spec.containers[0].model_copy(update={"ports": [
            Port(container_port=8080, host_port=18082), Port(container_port=53, protocol="UDP",
                                                             host_port=18082)]})
        repo.change_spec(s, row, spec.model_copy(update={"containers": [moved]}),
                         EventRecord("Normal", "Updated", "ports moved"), user_id="u1",
                         cause="ports moved")
    assert claims(store) == [("h1", "TCP", 18081, "p2"), ("h1", "TCP", 18082, "p1"),
                             ("h1", "UDP", 18082, "p1")]
    assert caps.create(who("p3"), web("cc", 18080)).host == "h1"  # 18080 was released
    assert b.host == "h1"


def test_the_database_refuses_a_double_claim_the_locks_would_have_prevented(store: Store) -> None:
    add_host(store, "h1")
    service(store).create(who("p1"), web("web"))
    with pytest.raises(IntegrityError), store.transaction() as s:
        row = s.scalars(select(Capsule)).one()
        s.add(HostPort(host="h1", protocol="TCP", port=18080, capsule_id=row.id, project_id="p1"))
        s.flush()


def test_the_migration_claims_the_host_ports_of_capsules_placed_before_it(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from capsuled.store.engine import MIGRATIONS

    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0013")
        for i, (host, spec) in enumerate([
                ("h1", {"containers": [{"ports": [{"container_port": 80, "host_port": 18080}]}],
                        "init_containers": [{"ports": [{"container_port": 53, "protocol": "UDP",
                                                        "host_port": 18053}]}]}),
                ("h1", {"containers": [{"ports": [{"container_port": 81, "host_port": 18080}]}]}),
                ("h2", {"containers": [{"ports": [{"container_port": 80, "host_port": 18080},
                                                  {"container_port": 90}]}]}),
                (None, {"containers": [{"ports": [{"container_port": 80, "host_port": 18081}]}]})]):
            conn.execute(text(
                "INSERT INTO capsules (uuid, project_id, user_id, labels, annotations, spec, status,"
                " cpu, memory, host, generation, deleting, restart_count, created_at) VALUES "
                "(:u, :p, 'u', '{}', '{}', :spec, 'Running', 0, 0, :host, 1, 0, 0, '2026-01-01')"),
                {"u": f"00000000-0000-0000-0000-00000000000{i}", "p": f"p{i}",
                 "spec": json.dumps(spec), "host": host})
    upgrade(engine)
    got = Store(engine)
    with got.transaction() as s:
        rows = [(r.host, r.protocol, r.port, r.project_id) for r in s.scalars(
            select(HostPort).order_by(HostPort.id))]
    # The older capsule keeps a port two of them asked for on one host.
    assert rows == [("h1", "UDP", 18053, "p0"), ("h1", "TCP", 18080, "p0"), ("h2", "TCP", 18080, "p2")]
