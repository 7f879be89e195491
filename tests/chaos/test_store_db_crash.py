"""The store when its PostgreSQL dies in the middle of a transaction (found by the chaos
run: an update refused with 409 while the database died came back as a 500, because the
rollback's own error replaced the refusal)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from capsuled.errors import Conflict, Unavailable
from capsuled.store.engine import Store, make_engine

from .rig import Postgres


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    db = Postgres()
    db.init()
    yield db
    db.stop()


def _store(pg: Postgres) -> Store:
    store = Store(make_engine(pg.url))
    with store.transaction() as s:  # a pooled connection that the kill will cut
        s.execute(text("select 1"))
    return store


def test_a_refusal_made_as_the_database_dies_stays_a_refusal(pg: Postgres) -> None:
    store = _store(pg)
    try:
        with pytest.raises(Conflict, match="being deleted"):
            with store.transaction() as s:
                s.execute(text("select 1"))
                pg.kill9()
                raise Conflict("Capsule x is being deleted.")
    finally:
        pg.start()
    with store.transaction() as s:  # and the store works again once it is back
        assert s.execute(text("select 2")).scalar() == 2


def test_a_query_on_a_dead_database_is_unavailable(pg: Postgres) -> None:
    store = _store(pg)
    try:
        with pytest.raises(Unavailable, match="unavailable"):
            with store.transaction() as s:
                s.execute(text("select 1"))
                pg.kill9()
                s.execute(text("select 2"))
    finally:
        pg.start()
