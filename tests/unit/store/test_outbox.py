"""The outbox on SQLite: records commit with their change, in seq order, and are pruned."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from capsuled.domain.template import parse_template
from capsuled.store import capsules as repo
from capsuled.store import outbox
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.tables import Capsule, OutboxRecord


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'o.db'}")
    upgrade(engine)
    return Store(engine)


def _template(name: str) -> dict[str, Any]:
    return {"kind": "capsule", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [{"image": "busybox"}]}}


def _records(store: Store) -> list[OutboxRecord]:
    with store.transaction() as s:
        return list(s.scalars(select(OutboxRecord).order_by(OutboxRecord.seq)).all())


def test_a_create_commits_its_records_numbered_from_one(store: Store) -> None:
    seen: list[int] = []
    store.outbox_listeners.append(seen.append)
    with store.transaction() as s:
        row = repo.create_capsule(s, parse_template(_template("web")), "p1", "u1", host="h1")
    records = _records(store)
    assert [(r.seq, r.event_type, r.reason) for r in records] == [
        (1, "capsule.create.start", "Accepted"), (2, "capsule.update", "Scheduled")]
    assert {(r.project_id, r.kind, r.object_uuid, r.object_name) for r in records} == {
        ("p1", "capsule", row.uuid, "web")}
    assert records[0].labels == {"app": "web"}
    assert seen == [2]  # the listener heard of the commit, once, with the newest seq


def test_a_rolled_back_change_leaves_no_record_and_no_gap(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.transaction() as s:
            repo.create_capsule(s, parse_template(_template("gone")), "p1", "u1", host=None)
            raise RuntimeError("the change fails after the record was queued")
    with store.transaction() as s:
        assert s.scalars(select(Capsule)).all() == []
        assert outbox.cursor(s).newest == 0
    assert _records(store) == []
    with store.transaction() as s:
        repo.create_capsule(s, parse_template(_template("kept")), "p1", "u1", host=None)
    assert [r.seq for r in _records(store)] == [1]


def test_delete_and_read_are_scoped_and_ordered(store: Store) -> None:
    with store.transaction() as s:
        a = repo.create_capsule(s, parse_template(_template("aa")), "p1", "u1", host=None)
        repo.create_capsule(s, parse_template(_template("bb")), "p2", "u2", host=None)
    with store.transaction() as s:
        repo.mark_deleting(s, repo.get_capsule(s, a.uuid, "p1"))
    with store.transaction() as s:
        mine = outbox.read(s, 0, "p1", 100)
        assert [r.event_type for r in mine] == [
            "capsule.create.start", "capsule.delete.start", "capsule.delete.end"]
        assert mine[-1].status == "Deleted"
        assert [r.seq for r in mine] == sorted(r.seq for r in mine)
        assert {r.project_id for r in outbox.read(s, 0, "p2", 100)} == {"p2"}
        assert [r.object_name for r in outbox.read(s, 0, None, 100, name="bb")] == ["bb"]
        assert len(outbox.read(s, mine[0].seq, "p1", 1)) == 1


def test_records_past_the_count_are_pruned_and_the_cursor_says_how_far(store: Store) -> None:
    outbox.configure(outbox.OutboxRetention(records=100, max_age=timedelta(days=1)))
    try:
        for i in range(300):
            with store.transaction() as s:
                outbox.record(s, project_id="p", kind="capsule", uuid=f"u{i}", name=None,
                              event_type="capsule.update", reason="Test")
    finally:
        outbox.configure(outbox.OutboxRetention())
    records = _records(store)
    with store.transaction() as s:
        cur = outbox.cursor(s)
    assert cur.newest == 300
    assert cur.pruned_through == 256 - 100
    assert records[0].seq == cur.pruned_through + 1 and records[-1].seq == 300


def test_a_savepoint_rolled_back_drops_only_its_own_records(store: Store) -> None:
    # SQLAlchemy reports a savepoint's rollback like any other: the outbox once dropped
    # every pending record of the transaction then, losing the outer change's records.
    with store.transaction() as s:
        row = repo.create_capsule(s, parse_template(_template("outer")), "p1", "u1", host="h1")
        with pytest.raises(RuntimeError):
            with s.begin_nested():
                outbox.record(s, project_id="p1", kind="capsule", uuid="inner-uuid",
                              name="inner", event_type="capsule.update", reason="Inner")
                raise RuntimeError("the savepoint fails")
        with s.begin_nested():  # a savepoint that commits keeps its record
            outbox.record(s, project_id="p1", kind="capsule", uuid=row.uuid, name="outer",
                          event_type="capsule.update", reason="Kept")
    records = _records(store)
    assert [(r.seq, r.object_name, r.reason) for r in records] == [
        (1, "outer", "Accepted"), (2, "outer", "Scheduled"), (3, "outer", "Kept")]
