"""Events recorded before host names were kept out of messages: members read them without."""

from __future__ import annotations

from datetime import datetime

import pytest

from capsuled.api.views import event_view
from capsuled.store.tables import Event


def _event(message: str) -> Event:
    return Event(id=1, capsule_id=1, type="Normal", reason="Accepted", message=message,
                 container=None, created_at=datetime(2026, 1, 1), count=1)


@pytest.mark.parametrize("old,member_reads", [
    ("capsule accepted, scheduled to rack7-node3", "capsule accepted and scheduled"),
    ("Running → Unknown: host rack7-node3 is down: no heartbeat since 2026-01-01 00:00:00 UTC",
     "Running → Unknown: its host is down: no heartbeat since 2026-01-01 00:00:00 UTC"),
    ("Running → Unknown: host rack7-node3 is forced down", "Running → Unknown: its host is forced down"),
    ("container app started", "container app started"),
])
def test_members_read_old_events_without_host_names(old: str, member_reads: str) -> None:
    assert event_view(_event(old), is_admin=False)["message"] == member_reads
    assert event_view(_event(old), is_admin=True)["message"] == old


def test_members_read_old_unknown_reasons_without_host_names() -> None:
    from capsuled.api.views import _for

    old = "host rack7-node3 is down: no heartbeat since 2026-01-01 00:00:00 UTC"
    assert _for(old, is_admin=False) == "its host is down: no heartbeat since 2026-01-01 00:00:00 UTC"
    assert _for(old, is_admin=True) == old
    assert _for(None, is_admin=False) is None
