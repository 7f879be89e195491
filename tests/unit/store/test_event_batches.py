"""A capsule's events written in batches (store/capsules.add_events: one read, one insert,
one prune per batch) end exactly as written one at a time: kubelet's aggregation (an
event equal to one of the capsule's newest ten counts up that one) holds across and
within batches, on random sequences and random batch splits."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest
from sqlalchemy import select

from capsuled.domain.fold import EventRecord
from capsuled.domain.template import parse_template
from capsuled.store import capsules as repo
from capsuled.store.engine import Store
from capsuled.store.tables import Event
from tests.unit.store.sqlite_rig import sqlite_store

WINDOW = 10  # store/capsules._AGGREGATE_WITHIN


def one_at_a_time(events: list[EventRecord]) -> list[tuple[tuple[str, str, str, str | None], int]]:
    """The rule, as a model: each event counts up an equal one among the newest WINDOW,
    else it is a new row."""
    rows: list[list[object]] = []
    for e in events:
        same = next((r for r in reversed(rows[-WINDOW:]) if r[0] == e.key), None)
        if same is not None:
            same[1] = int(same[1]) + 1  # type: ignore[call-overload]
        else:
            rows.append([e.key, 1])
    return [(r[0], int(r[1])) for r in rows]  # type: ignore[misc,call-overload]


# 20 distinct events: repeats both within the window and past it are common.
EVENTS = st.builds(EventRecord, st.sampled_from(["Normal", "Warning"]),
                   st.sampled_from(["Started", "Failed"]), st.just("m"),
                   st.sampled_from([None, "web", "side", "db", "x"]))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return sqlite_store(tmp_path_factory.mktemp("events"))  # migrated once: a capsule per example


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(EVENTS, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=6))
def test_batches_end_as_one_at_a_time(store: Store, events: list[EventRecord],
                                      cuts: list[int]) -> None:
    spec = parse_template({"kind": "capsule", "metadata": {"name": f"c-{uuid.uuid4().hex[:8]}"},
                           "spec": {"containers": [{"name": "web", "image": "busybox"}]}})
    with store.transaction() as s:
        capsule = repo.create_capsule(s, spec, "p", "u", "h1")
        first = [(e.type, e.reason, e.message, e.container) for e in s.scalars(
            select(Event).where(Event.capsule_id == capsule.id))]
    bounds = sorted({0, len(events), *(c for c in cuts if c <= len(events))})
    for lo, hi in zip(bounds, bounds[1:]):
        with store.transaction() as s:
            row = repo.get_capsule(s, capsule.uuid, None)
            repo.add_events(s, row, events[lo:hi])
    with store.transaction() as s:
        got = [((e.type, e.reason, e.message, e.container), e.count or 1)
               for e in s.scalars(select(Event).where(Event.capsule_id == capsule.id)
                                  .order_by(Event.id))]
    accepted = [EventRecord(*k) for k in first]  # the create's own "Accepted"
    assert got == one_at_a_time(accepted + events)


def test_an_equal_event_pushed_out_of_the_window_by_its_own_batch_is_new(store: Store) -> None:
    spec = parse_template({"kind": "capsule", "metadata": {"name": f"c-{uuid.uuid4().hex[:8]}"},
                           "spec": {"containers": [{"name": "web", "image": "busybox"}]}})
    again = EventRecord("Warning", "Failed", "pull failed", "web")
    others = [EventRecord("Normal", "Started", f"started {i}", "web") for i in range(WINDOW)]
    with store.transaction() as s:
        capsule = repo.create_capsule(s, spec, "p", "u", "h1")
        repo.add_events(s, capsule, [again])
    with store.transaction() as s:
        row = repo.get_capsule(s, capsule.uuid, None)
        repo.add_events(s, row, [again])  # the newest: counted on it
        repo.add_events(s, row, [*others, again])  # ten newer ones first: a row of its own
    with store.transaction() as s:
        got = [(e.message, e.count) for e in s.scalars(
            select(Event).where(Event.capsule_id == capsule.id).order_by(Event.id))]
    assert got[1] == ("pull failed", 2) and got[-1] == ("pull failed", 1)
    assert len(got) == 2 + WINDOW + 1
