"""Capsule update, rollback and revisions through the services on SQLite, with an agent on
the fake runtime stepped by hand: the least disruptive plan, the health gate and its
automatic rollback, refusals up front, and one update at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capsuled.domain.image_ref import normalise
from capsuled.errors import Conflict, InvalidInput, NotFound, OverQuota
from capsuled.store import capsules as repo
from capsuled.store import committed_images, host_ports
from capsuled.store.tables import utcnow
from tests.unit.api.update_rig import ALICE, Rig, template


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def test_an_image_change_replaces_only_that_container(rig: Rig) -> None:
    uuid = rig.create()
    before = rig.docker(uuid)
    assert rig.get(uuid).status == "Running" and rig.revisions(uuid) == [(1, None, "created")]

    row = rig.update(uuid, containers=[{"name": "front", "image": "busybox:2"}])
    assert (row.status, row.revision) == ("Updating", 2)
    assert row.rollout is not None and row.rollout["watched"] == ["front"]
    rig.sync()
    after = rig.docker(uuid)
    assert after["side"].id == before["side"].id and after["side"].started_at == before["side"].started_at
    assert after["sandbox"].id == before["sandbox"].id
    assert after["front"].id != before["front"].id
    assert rig.images(uuid) == {"front": "busybox:2", "side": "busybox"}
    done = rig.get(uuid)
    assert (done.status, done.revision, done.rollout) == ("Running", 2, None)
    assert [c.uuid for c in done.containers] == [c.uuid for c in rig.get(uuid).containers]
    assert rig.revisions(uuid) == [(1, None, "created"), (2, "Ready", "update: image front=busybox:2")]
    assert rig.events(uuid)[-3:] == ["UpdateStarted", "Replaced", "UpdateDone"] or \
        "UpdateDone" in rig.events(uuid)
    assert ("capsule.update", "UpdateStarted") in rig.records(uuid)
    assert ("capsule.update", "UpdateDone") in rig.records(uuid)


def test_container_uuids_survive_an_update_and_the_claim_follows_the_spec(rig: Rig) -> None:
    uuid = rig.create()
    uuids = {c.name: c.uuid for c in rig.get(uuid).containers}
    apps = [{"name": "front", "image": "busybox", "command": ["httpd", "-f"],
             "resources": {"requests": {"cpu": 0.5, "memory": 512}}},
            {"name": "extra", "image": "busybox", "command": ["sleep", "1"]}]
    row = rig.update(uuid, template=template(apps=apps))
    # While it rolls out, the claim is the larger of both specs (a rollback must fit).
    assert (row.cpu, row.memory) == (0.6, 768)
    rig.sync()
    done = rig.get(uuid)
    assert done.status == "Running"
    assert {c.name: c.uuid for c in done.containers}["front"] == uuids["front"]
    assert sorted(c.name for c in done.containers) == ["extra", "front"]
    assert (done.cpu, done.memory) == (0.6, 768)  # 0.5 + 0.1, 512 + 256: its own now
    assert set(rig.docker(uuid)) == {"sandbox", "front", "extra"}


def test_an_env_change_is_applied_and_null_removes_a_variable(rig: Rig) -> None:
    uuid = rig.create(template(apps=[{"name": "front", "image": "busybox", "env": {"A": "1", "B": "2"}}]))
    rig.update(uuid, containers=[{"name": "front", "env": {"A": "9", "B": None, "C": "3"}}])
    rig.sync()
    (front,) = [c for c in rig.runtime.containers.values() if c.labels.get("capsuled.name") == "front"]
    assert front.env == {"A": "9", "C": "3"}
    assert rig.get(uuid).status == "Running"


def test_a_new_volume_remakes_the_capsule_in_place(rig: Rig) -> None:
    uuid = rig.create()
    before = rig.docker(uuid)
    apps = [{"name": "front", "image": "busybox", "command": ["httpd", "-f"],
             "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            {"name": "side", "image": "busybox", "command": ["sleep", "3600"]}]
    row = rig.update(uuid, template=template(apps=apps, volumes=[{"name": "data", "emptyDir": {}}]))
    assert row.rollout is not None and row.rollout["watched"] == ["front", "side"]
    rig.sync()
    after = rig.docker(uuid)
    assert after["sandbox"].id != before["sandbox"].id
    assert after["side"].id != before["side"].id  # unchanged, but a new sandbox remakes all
    done = rig.get(uuid)
    assert (done.uuid, done.name, done.status, done.restart_count) == (uuid, "web", "Running", 0)
    assert [v.name for v in done.volumes] == ["data"]
    assert "SandboxReplaced" in rig.events(uuid) and "SandboxRecreated" not in rig.events(uuid)


def test_a_second_update_while_one_is_under_way_is_a_409(rig: Rig) -> None:
    uuid = rig.create()
    rig.update(uuid, containers=[{"name": "front", "image": "busybox:2"}])
    with pytest.raises(Conflict, match="being updated to revision 2"):
        rig.update(uuid, containers=[{"name": "side", "image": "busybox:2"}])
    rig.sync()
    rig.update(uuid, containers=[{"name": "side", "image": "busybox:2"}])  # once it is done
    assert rig.get(uuid).revision == 3


def test_an_update_made_on_a_stale_revision_is_a_409(rig: Rig) -> None:
    uuid = rig.create()
    with pytest.raises(Conflict, match="at revision 1, not 7"):
        rig.update(uuid, containers=[{"name": "front", "image": "busybox:2"}], revision=7)
    rig.update(uuid, containers=[{"name": "front", "image": "busybox:2"}], revision=1)


def test_nothing_to_change_makes_no_revision(rig: Rig) -> None:
    uuid = rig.create()
    row = rig.update(uuid, template=template())
    assert (row.revision, row.status, row.rollout) == (1, "Running", None)


def test_a_crashing_new_version_rolls_back_by_itself_at_the_deadline(rig: Rig) -> None:
    uuid = rig.create(template(progressDeadlineSeconds=30))
    side = rig.docker(uuid)["side"].id
    rig.update(uuid, containers=[{"name": "front", "image": "broken"}])
    rig.sync()
    assert rig.get(uuid).status == "Updating"
    rig.tick()  # not yet
    assert rig.get(uuid).status == "Updating"
    rig.tick(later=31)
    row = rig.get(uuid)
    assert (row.status, row.revision) == ("Updating", 3)
    assert row.status_reason is not None and "rolling back to revision 1" in row.status_reason
    rig.sync()
    row = rig.get(uuid)
    assert (row.status, row.rollout) == ("Running", None)
    assert row.status_reason is not None and "rolled back to revision 1" in row.status_reason
    assert rig.images(uuid) == {"front": "busybox", "side": "busybox"}
    assert rig.docker(uuid)["side"].id == side  # never touched
    revs = rig.revisions(uuid)
    assert [(n, o) for n, o, _ in revs] == [(1, None), (2, "Failed"), (3, "Ready")]
    assert revs[2][2] is not None and revs[2][2].startswith("automatic rollback to revision 1")
    assert {"UpdateFailed", "RollingBack", "RolledBack"} <= set(rig.events(uuid))
    assert ("capsule.update", "RolledBack") in rig.records(uuid)


def test_an_init_container_that_fails_rolls_back_at_once(rig: Rig) -> None:
    uuid = rig.create(template(initContainers=[{"name": "prep", "image": "busybox",
                                                "command": ["true"]}]))
    rig.update(uuid, template=template(initContainers=[{"name": "prep", "image": "busybox",
                                                        "command": ["false"]}]))
    rig.sync()  # the new sandbox's init container fails: Error, and the rollback begins
    row = rig.get(uuid)
    assert row.revision == 3 and row.status == "Updating"
    rig.sync()
    row = rig.get(uuid)
    assert (row.status, row.rollout) == ("Running", None)
    assert [o for _, o, _ in rig.revisions(uuid)] == [None, "Failed", "Ready"]


def test_rollback_by_hand_to_a_given_revision(rig: Rig) -> None:
    uuid = rig.create()
    for image in ("busybox:2", "broken", "busybox"):
        rig.update(uuid, containers=[{"name": "side", "image": image}])
        rig.sync()
        rig.tick(later=200)  # `broken` rolls back by itself
        rig.sync()
    assert rig.get(uuid).revision == 5
    row = rig.rollouts.rollback(ALICE, uuid, {"revision": 2})
    assert (row.revision, row.status) == (6, "Updating")
    rig.sync()
    assert rig.images(uuid)["side"] == "busybox:2"
    assert rig.revisions(uuid)[-1] == (6, "Ready", "rollback to revision 2")
    # Without a revision: the one before the current.
    rig.rollouts.rollback(ALICE, uuid, {})
    rig.sync()
    assert rig.images(uuid)["side"] == "busybox"
    with pytest.raises(NotFound, match="no revision 99"):
        rig.rollouts.rollback(ALICE, uuid, {"revision": 99})
    with pytest.raises(InvalidInput, match="current revision"):
        rig.rollouts.rollback(ALICE, uuid, {"revision": 7})


def test_a_rollback_supersedes_an_update_under_way(rig: Rig) -> None:
    uuid = rig.create()
    rig.update(uuid, containers=[{"name": "front", "image": "broken"}])
    rig.sync()
    rig.rollouts.rollback(ALICE, uuid, {})
    with pytest.raises(Conflict, match="already rolling back"):
        rig.rollouts.rollback(ALICE, uuid, {})
    rig.sync()
    assert rig.get(uuid).status == "Running" and rig.images(uuid)["front"] == "busybox"
    assert [o for _, o, _ in rig.revisions(uuid)] == [None, "Superseded", "Ready"]


def test_an_update_beyond_quota_is_refused_up_front_with_the_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path, quota={"capsules": 10, "containers": 40, "cpu": 1, "memory": 8192, "disk": 100})
    try:
        uuid = rig.create()
        apps = [{"name": "front", "image": "busybox", "resources": {"requests": {"cpu": 2}}}]
        with pytest.raises(OverQuota, match=r"cpu \(limit 1"):
            rig.update(uuid, template=template(apps=apps))
        row = rig.get(uuid)
        assert (row.revision, row.status, row.cpu) == (1, "Running", 0.2)
        assert "UpdateRefused" in rig.events(uuid)
        assert ("capsule.update", "UpdateRefused") in rig.records(uuid)
    finally:
        rig.close()


def test_an_update_beyond_the_hosts_room_is_a_409(tmp_path: Path) -> None:
    rig = Rig(tmp_path, cpus=1.0)
    try:
        uuid = rig.create()
        apps = [{"name": "front", "image": "busybox", "resources": {"requests": {"cpu": 1.5}}}]
        with pytest.raises(Conflict, match="cpu: the capsule's host has not enough free CPU"):
            rig.update(uuid, template=template(apps=apps))
        assert rig.get(uuid).revision == 1
    finally:
        rig.close()


@pytest.mark.parametrize(("body", "problem"), [
    ({"template": template(name="other")}, "metadata.name: a capsule keeps its name"),
    ({"containers": [{"name": "nope", "image": "busybox"}]}, "containers[0].name: the capsule has no container 'nope'"),
    ({"containers": [{"name": "front", "image": "bad image"}]}, "containers[0].image"),
    ({"containers": [{"name": "front", "env": {"A": 1}}]}, "containers[0].env.A"),
    ({"containers": [{"name": "front", "tty": True}]}, "containers[0].tty: unknown field"),
    ({"containers": []}, "containers: must be a list"),
    ({"template": template(), "containers": []}, "either template"),
    ({}, "either template"),
    ({"template": template(), "force": True}, "force: unknown field"),
    ({"template": template(), "change_cause": 5}, "change_cause"),
    ({"template": template(), "revision": "x"}, "revision: must be a revision number"),
    ({"template": template(nodeSelector={"disk": "ssd"})}, "spec.nodeSelector: the capsule's host"),
    ({"template": template(progressDeadlineSeconds=0)}, "spec.progressDeadlineSeconds"),
])
def test_bad_updates_are_400s_naming_the_field(rig: Rig, body: dict[str, object], problem: str) -> None:
    uuid = rig.create()
    with pytest.raises(InvalidInput) as got:
        rig.rollouts.update(ALICE, uuid, body)
    assert problem in got.value.message
    assert rig.get(uuid).revision == 1


def test_a_volume_keeps_its_type(rig: Rig) -> None:
    apps = [{"name": "front", "image": "busybox", "volumeMounts": [{"name": "d", "mountPath": "/d"}]}]
    uuid = rig.create(template(apps=apps, volumes=[{"name": "d", "emptyDir": {}}]))
    with pytest.raises(InvalidInput, match=r"spec.volumes\[0\]: volume 'd' is emptyDir"):
        rig.update(uuid, template=template(apps=apps, volumes=[{"name": "d", "cinder": {"size": 1}}]))


def test_other_spec_changes_wait_for_the_update(rig: Rig) -> None:
    from capsuled.api.services.containers import ContainerService
    uuid = rig.create()
    rig.update(uuid, containers=[{"name": "front", "image": "busybox:2"}])
    containers = ContainerService(rig.store, rig.control.notify, lambda host: None,  # type: ignore[arg-type, return-value]
                                  rig.capsules._limits)
    with pytest.raises(Conflict, match="being updated"):
        containers.update(ALICE, "front", {"memory": "300"}, capsule=uuid)


def test_a_delete_ends_the_update(rig: Rig) -> None:
    uuid = rig.create()
    rig.update(uuid, containers=[{"name": "front", "image": "busybox:2"}])
    rig.capsules.delete(ALICE, uuid)
    row = rig.get(uuid)
    assert (row.status, row.rollout, row.rollout_deadline) == ("Deleting", None, None)
    rig.sync(2)
    with pytest.raises(NotFound):
        rig.get(uuid)


def test_only_the_newest_revisions_are_kept(tmp_path: Path) -> None:
    from capsuled.store import revisions
    rig = Rig(tmp_path)
    revisions.configure(3)
    try:
        uuid = rig.create()
        for i in range(5):
            rig.update(uuid, containers=[{"name": "side", "env": {"N": str(i)}}])
            rig.sync()
        assert [n for n, _, _ in rig.revisions(uuid)] == [4, 5, 6]
    finally:
        revisions.configure(10)
        rig.close()


def test_a_rollout_is_judged_once_whoever_looks(rig: Rig) -> None:
    uuid = rig.create(template(progressDeadlineSeconds=5))
    rig.update(uuid, containers=[{"name": "front", "image": "broken"}])
    rig.sync()
    rig.tick(later=10)
    rig.tick(later=10)  # a second replica, or the next tick: the rollback is not made twice
    assert rig.get(uuid).revision == 3
    rig.sync()
    assert rig.get(uuid).status == "Running"
    assert utcnow()  # the clock is the API's: nothing here waited for it


def test_the_supervisor_rolls_back_what_passed_its_deadline_and_wakes_the_agents(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from capsuled.api.services import rollout_supervisor
    from capsuled.api.services.rollout_supervisor import RolloutSupervisor

    woken: list[bool] = []
    supervisor = RolloutSupervisor(rig.store, 0.1, lambda: woken.append(True))
    uuid = rig.create(template(progressDeadlineSeconds=30))
    rig.update(uuid, containers=[{"name": "front", "image": "broken"}])
    rig.sync()
    assert supervisor.check() == 0 and woken == []
    monkeypatch.setattr(rollout_supervisor, "utcnow", lambda: utcnow() + timedelta(seconds=31))
    assert supervisor.check() == 1 and woken == [True]
    assert rig.get(uuid).revision == 3
    assert supervisor.check() == 0  # the rollback has its own deadline, not passed


def test_a_member_cannot_reuse_an_admins_privileged_revision(rig: Rig) -> None:
    from capsuled.errors import Forbidden
    from capsuled.identity.base import Principal

    admin = Principal(project_id="p1", user_id="root", roles=frozenset({"admin"}))
    privileged = template(apps=[{"name": "front", "image": "busybox",
                                 "securityContext": {"privileged": True}}])
    uuid = rig.capsules.create(admin, privileged).uuid
    rig.sync()
    # A new image in a privileged container would be a member's program run privileged.
    with pytest.raises(Forbidden, match="privileged"):
        rig.update(uuid, containers=[{"name": "front", "image": "busybox:2"}])
    rig.rollouts.update(admin, uuid, {"template": template()})  # unprivileged now
    rig.sync()
    with pytest.raises(Forbidden, match="privileged"):
        rig.rollouts.rollback(ALICE, uuid, {"revision": 1})
    rig.rollouts.rollback(admin, uuid, {"revision": 1})
    rig.sync()
    assert rig.get(uuid).revision == 3


def test_an_update_to_a_host_port_another_capsule_holds_is_a_409(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        ported = [{"name": "front", "image": "busybox", "command": ["httpd", "-f"],
                   "ports": [{"containerPort": 80, "hostPort": 18090}]}]
        holder = rig.create(template("holder", apps=ported))
        uuid = rig.create()
        with pytest.raises(Conflict, match=r"hostPort: TCP port 18090 .*your capsule holder"):
            rig.update(uuid, template=template(apps=ported))
        assert rig.get(uuid).revision == 1 and "UpdateRefused" in rig.events(uuid)
        # Its own port stays its own: an update that keeps it is no conflict.
        rig.update(holder, template=template("holder", apps=[{**ported[0], "env": {"A": "1"}}]))
        assert rig.get(holder).revision == 2
    finally:
        rig.close()


def test_an_update_keeps_its_old_host_ports_until_it_ends_so_a_rollback_gets_them_back(
        tmp_path: Path) -> None:
    """An update that moves a capsule from host port 18091 to 18092 holds both while it
    rolls out: another capsule cannot take 18091 meanwhile (a 409 naming the holder), so
    the automatic rollback always gets its port back; once the rollout ends, the capsule
    holds only its spec's own port."""
    rig = Rig(tmp_path)
    try:
        def ported(port: int, image: str = "busybox") -> list[dict[str, object]]:
            return [{"name": "front", "image": image, "command": ["httpd", "-f"],
                     "ports": [{"containerPort": 80, "hostPort": port}]}]

        uuid = rig.create(template(apps=ported(18091), progressDeadlineSeconds=30))
        rig.update(uuid, template=template(apps=ported(18092, "broken"),
                                           progressDeadlineSeconds=30))
        thief = rig.capsules.create(ALICE, template("thief", apps=ported(18091)))
        assert thief.status == "Error" and "18091" in (thief.status_reason or "")
        rig.sync()
        rig.tick(later=31)  # the broken revision fails: back to revision 1 and port 18091
        rig.sync()
        row = rig.get(uuid)
        assert (row.status, row.rollout, row.revision) == ("Running", None, 3)
        with rig.store.transaction() as s:
            held = {port for (_, port) in host_ports.held(s).get("h1", {})}
        assert held == {18091}
        # Ended: 18092 is free again for anyone.
        assert rig.capsules.create(ALICE, template("other", apps=ported(18092))).host == "h1"
    finally:
        rig.close()


def test_another_projects_committed_image_is_refused_at_create_and_update(rig: Rig) -> None:
    # Read in the create's and the update's own transactions, after their locks.
    with rig.store.transaction() as s:
        committed_images.claim(s, normalise("bob/secret:v1"), "bob-project", "c-1")
    uuid = rig.create()
    theirs = [{"name": "front", "image": "bob/secret:v1", "command": ["httpd", "-f"]}]
    for attempt in (lambda: rig.capsules.create(ALICE, template("steal", apps=theirs)),
                    lambda: rig.update(uuid, template=template(apps=theirs)),
                    lambda: rig.update(uuid, containers=[{"name": "front",
                                                          "image": "docker.io/bob/secret:v1"}])):
        with pytest.raises(InvalidInput) as got:
            attempt()
        assert "image: " in got.value.message and "not available to this project" in got.value.message
    assert rig.get(uuid).revision == 1
    assert [c.name for c in rig.capsules.list(ALICE, repo.Page(limit=10), False, {})] == ["web"]
