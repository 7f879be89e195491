"""Pod manifests and dry runs through the capsule services (SQLite, fake runtime): a Pod
makes the same capsule its template does, and a dry run answers what a create or an
update would do while nothing is kept (no capsule, revision, event, change record or
placement claim)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from capsuled.errors import InvalidInput, OverQuota
from capsuled.store.tables import Capsule, CapsuleRevision, Event, OutboxRecord
from tests.unit.api.update_rig import ALICE, Rig, template


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def pod(name: str = "web", image: str = "busybox") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [
                {"name": "front", "image": image, "command": ["httpd", "-f"]},
                {"name": "side", "image": "busybox", "command": ["sleep", "3600"]}]}}


def counts(rig: Rig) -> tuple[int, ...]:
    with rig.store.transaction() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) or 0
                     for t in (Capsule, CapsuleRevision, Event, OutboxRecord))


def test_a_pod_and_its_template_make_the_same_capsule(rig: Rig) -> None:
    uuid = rig.create(pod())
    assert rig.get(uuid).status == "Running"
    same = rig.rollouts.rehearse_update(ALICE, uuid, {"template": template()})
    assert not same.changed and same.new == same.current


def test_a_create_dry_run_keeps_nothing(rig: Rig) -> None:
    before = counts(rig)
    r = rig.capsules.rehearse_create(ALICE, pod())
    assert (r.name, r.status, r.current, r.changed) == ("web", "Creating", None, True)
    assert [c.name for c in r.new.containers] == ["front", "side"]
    assert r.new.containers[0].memory == 256  # defaults filled in, as stored
    assert counts(rig) == before
    assert rig.control.watch("h1", -1, 0).capsules == []


def test_a_create_dry_run_checks_quota_and_input(tmp_path: Path) -> None:
    rig = Rig(tmp_path, quota={"capsules": 0, "containers": 40, "cpu": 8, "memory": 8192,
                               "disk": 100})
    try:
        with pytest.raises(OverQuota):
            rig.capsules.rehearse_create(ALICE, pod())
        bad = pod()
        bad["spec"]["containers"][0]["lifecycle"] = {"preStop": {}}
        with pytest.raises(InvalidInput, match=r"spec.containers\[0\].lifecycle: is not supported"):
            rig.capsules.rehearse_create(ALICE, bad)
        assert counts(rig)[3] == 0  # no "refused" change record for a dry run
    finally:
        rig.close()


def test_an_update_dry_run_says_what_would_change_and_changes_nothing(rig: Rig) -> None:
    uuid = rig.create(pod())
    before = counts(rig)
    r = rig.rollouts.rehearse_update(ALICE, uuid, {"template": pod(image="busybox:2")})
    assert r.changed and r.revision == 1 and r.uuid == uuid
    assert r.change is not None and r.change.replaced == ("front",)
    assert r.current is not None and r.current.containers[0].image == "busybox"
    assert r.new.containers[0].image == "busybox:2"
    # Uuids are carried over, so only what changed differs.
    assert [c.uuid for c in r.new.containers] == [c.uuid for c in r.current.containers]
    assert counts(rig) == before
    row = rig.get(uuid)
    assert (row.revision, row.rollout, row.status) == (1, None, "Running")


def test_an_update_dry_run_during_a_rollout_compares_with_the_new_revision(rig: Rig) -> None:
    uuid = rig.create(pod())
    rig.update(uuid, template=pod(image="busybox:2"))
    r = rig.rollouts.rehearse_update(ALICE, uuid, {"template": pod(image="busybox:2")})
    assert not r.changed and r.revision == 2
    with pytest.raises(InvalidInput, match="metadata.name: a capsule keeps its name"):
        rig.rollouts.rehearse_update(ALICE, uuid, {"template": pod(name="other")})
