"""The CLI's event stream resumes a dropped watch after the last record it printed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from capsuled.cli.capsule.client import ApiError, ConnectionFailed
from capsuled.cli.capsule.event_stream import EventClient, Query, event_line


def _record(seq: int) -> dict[str, Any]:
    return {"seq": seq, "event_type": "capsule.update", "kind": "capsule", "uuid": f"u{seq}",
            "name": "web", "reason": "Started", "message": "app: started", "status": "Running",
            "created_at": "2026-01-01 00:00:00"}


class DroppingServer:
    """Sends two records per connection, a heartbeat, then drops the connection."""

    def __init__(self) -> None:
        self.asked: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.asked.append(params)
        since = int(params["since"])

        def body() -> Iterator[bytes]:
            yield (json.dumps(_record(since + 1)) + "\n").encode()
            yield b'{"heartbeat": true, "seq": 0}\n'
            yield (json.dumps(_record(since + 2)) + "\n").encode()
            raise httpx.ReadError("connection reset")
        return httpx.Response(200, content=body())


def test_a_dropped_watch_resumes_after_the_last_record_seen() -> None:
    server = DroppingServer()
    client = EventClient("http://capsuled", "t", transport=httpx.MockTransport(server))
    stream = client.watch(Query(capsule="web", labels={"app": "web"}), since=10,
                          sleep=lambda _s: None)
    seqs = [next(stream)["seq"] for _ in range(6)]
    assert seqs == [11, 12, 13, 14, 15, 16]  # none lost, none twice, no heartbeat
    assert [a["since"] for a in server.asked] == ["10", "12", "14"]
    assert server.asked[0] == {"capsule": "web", "labels": "app=web", "watch": "true", "since": "10"}


def test_a_watch_gives_up_after_repeated_failures_and_reports_refusals() -> None:
    def down(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")
    client = EventClient("http://capsuled", "t", transport=httpx.MockTransport(down))
    with pytest.raises(ConnectionFailed):
        list(client.watch(Query(), since=0, sleep=lambda _s: None))

    def forbidden(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"errors": [{"title": "Policy doesn't allow "
                                                              "event:get_all_all_projects"}]})
    client = EventClient("http://capsuled", "t", transport=httpx.MockTransport(forbidden))
    with pytest.raises(ApiError, match="event:get_all_all_projects"):
        list(client.watch(Query(all_projects=True), since=0, sleep=lambda _s: None))


def test_event_line_reads_well() -> None:
    line = event_line(_record(7))
    assert "capsule/web" in line and "capsule.update" in line and "Started: app: started" in line
