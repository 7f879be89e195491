"""Capsule updates on every engine (SQLite, PostgreSQL, MariaDB), as API replicas of their
own (each its own engine and pool) would make them at once: of concurrent updates of one
capsule exactly one becomes a revision and the others are 409s; replicas that judge one
failed rollout at once roll it back once; the claim under concurrent updates of different
capsules never passes the project's quota."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest
from sqlalchemy import func, select
from test_databases import (Database, add_host, at_once, capsule_service,  # noqa: F401 - db fixture
                            db, member, template)

from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import QuotaService
from capsuled.api.services.rollouts import RolloutService
from capsuled.config import QuotaSettings
from capsuled.errors import Conflict, OverQuota
from capsuled.store import rollouts
from capsuled.store.engine import Store
from capsuled.store.tables import Capsule, CapsuleRevision, utcnow


class _Control:
    def notify(self) -> None:
        pass


def updates(store: Store, **quota: float) -> RolloutService:
    quotas = QuotaService(store, {**QuotaSettings().model_dump(), **quota})
    return RolloutService(store, cast(Any, _Control()), capsule_service(store, **quota),
                          Placement(quotas, timedelta(seconds=180)))


def test_concurrent_updates_of_one_capsule_make_one_revision(db: Database) -> None:
    store = db.ready()
    add_host(store)
    alice = member("p1", "alice")
    uuid = capsule_service(store).create(alice, template("web")).uuid
    replicas = [updates(db.store()) for _ in range(8)]
    results = at_once(8, lambda i: replicas[i].update(alice, uuid, {"containers": [
        {"name": "main", "env": {"N": str(i)}}]}))
    made = [r for r in results if isinstance(r, Capsule)]
    assert len(made) == 1, results
    assert {type(r) for r in results if not isinstance(r, Capsule)} == {Conflict}
    with store.transaction() as s:
        capsule = s.scalars(select(Capsule).where(Capsule.uuid == uuid)).one()
        assert (capsule.revision, capsule.status) == (2, "Updating")
        assert s.scalar(select(func.count()).select_from(CapsuleRevision)) == 2
        env = capsule.spec["containers"][0]["env"]
    assert env == made[0].spec["containers"][0]["env"]


def test_replicas_judging_one_failed_rollout_roll_it_back_once(db: Database) -> None:
    store = db.ready()
    add_host(store)
    alice = member("p1", "alice")
    uuid = capsule_service(store).create(alice, template("web")).uuid
    updates(store).update(alice, uuid, {"containers": [{"name": "main", "image": "busybox:2"}]})
    stores = [db.store() for _ in range(6)]

    def tick(i: int) -> bool:
        with stores[i].transaction() as s:
            capsule = s.scalars(select(Capsule).where(Capsule.uuid == uuid)).one()
            return rollouts.tick(s, capsule, utcnow() + timedelta(seconds=200))

    results = at_once(6, tick)
    assert not [r for r in results if isinstance(r, Exception)], results
    with store.transaction() as s:
        capsule = s.scalars(select(Capsule).where(Capsule.uuid == uuid)).one()
        outcomes = [r.outcome for r in s.scalars(select(CapsuleRevision).where(
            CapsuleRevision.capsule_id == capsule.id).order_by(CapsuleRevision.revision))]
        assert (capsule.revision, outcomes) == (3, [None, "Failed", None])
        assert capsule.rollout is not None and capsule.rollout["kind"] == "rollback"


def test_concurrent_growth_of_different_capsules_stays_within_quota(db: Database) -> None:
    store = db.ready()
    add_host(store)
    who = member("busy")
    made = [capsule_service(store, cpu=2.0).create(who, template(f"c{i}")).uuid for i in range(6)]
    replicas = [updates(db.store(), cpu=2.0) for _ in range(6)]
    big = {"containers": [{"name": "main", "image": "busybox", "resources": {"requests": {
        "cpu": 0.5, "memory": 32}}, "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "emptyDir": {}}]}
    results = at_once(6, lambda i: replicas[i].update(who, made[i], {"template": {
        "kind": "capsule", "metadata": {"name": f"c{i}"}, "spec": big}}))
    refused = [r for r in results if isinstance(r, Exception)]
    assert {type(r) for r in refused} <= {OverQuota}, refused
    # 6 × 0.1 in use; each update claims 0.4 more: 3 fit in the 2.0 CPUs, never 4.
    assert len(results) - len(refused) == 3
    with store.transaction() as s:
        assert s.scalar(select(func.sum(Capsule.cpu))) == pytest.approx(1.8)
