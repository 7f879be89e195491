"""The agent's own counters: a histogram Prometheus can read, and what a running agent
sends with its heartbeats after it synced something."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from capsuled.agent.http_channel import HttpChannel
from capsuled.agent.meters import SYNC_BOUNDS, AgentMeters, LoopMeter
from capsuled.domain.channel import AgentStats, LoopStats
from tests.conftest import wait_for
from tests.unit.agent.test_loop_on_fake import Host, capsule, up


def test_rounds_errors_and_a_cumulative_histogram() -> None:
    meter = LoopMeter((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 7.0):
        meter.record(seconds)
    meter.record(0.2, error=True)
    meter.record(0.01, settled=False)
    with pytest.raises(RuntimeError), meter.round():
        raise RuntimeError("docker went away")
    got = meter.snapshot()
    assert (got.count, got.errors, got.unsettled) == (7, 2, 1)
    assert got.bounds == [0.1, 1.0]
    assert got.buckets[1] == 6 and got.buckets[0] >= 3  # 7.0 s is only in +Inf (count)
    assert got.seconds == pytest.approx(7.86, abs=0.05)
    LoopStats.model_validate(got.model_dump())  # what the API accepts


@pytest.mark.parametrize("bad", [
    {"count": 1, "bounds": [1.0], "buckets": [2]},
    {"count": 3, "bounds": [1.0, 0.5], "buckets": [1, 2]},
    {"count": 3, "bounds": [0.5, 1.0], "buckets": [2, 1]},
    {"count": 3, "bounds": [0.5], "buckets": []},
    {"count": 3, "bounds": [float("inf")], "buckets": [1]},
    {"count": 3, "seconds": float("nan")},
    {"count": 40, "bounds": [float(i + 1) for i in range(33)], "buckets": [1] * 33},
])
def test_inconsistent_stats_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LoopStats.model_validate(bad)


def test_a_running_agent_heartbeats_its_sync_counters() -> None:
    host = Host()
    try:
        host.start_agent()  # heartbeats every 0.2 s
        host.channel.assign([capsule("cap-a")])
        wait_for(lambda: up(host.report("cap-a")), timeout=10)

        def synced() -> bool:
            stats = host.channel.stats[-1] if host.channel.stats else None
            return stats is not None and stats.sync.count >= 1 and stats.watch.count >= 1
        wait_for(synced, timeout=10)
        stats = host.channel.stats[-1]
        assert stats.sync.bounds == list(SYNC_BOUNDS)
        assert stats.sync.buckets[-1] <= stats.sync.count and stats.sync.seconds > 0
    finally:
        for agent in host.agents:
            host.stop_agent(agent)


def test_the_http_channel_sends_the_stats_with_the_heartbeat() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)
    channel = HttpChannel("http://api", "t", transport=httpx.MockTransport(answer))
    meters = AgentMeters()
    meters.sync.record(0.2)
    channel.heartbeat("h1", meters.snapshot())
    channel.heartbeat("h1")  # no stats: no body, as agents before them sent
    first, second = seen
    assert first.url.path == "/v1/agents/h1/heartbeat"
    sent = AgentStats.model_validate(json.loads(first.content)["stats"])
    assert sent.sync.count == 1 and sent.sync.buckets[-1] == 1
    assert second.content == b""


def test_the_http_channel_reads_a_resync_from_the_heartbeat_s_answer() -> None:
    answers = iter([httpx.Response(204), httpx.Response(200, json={"resync": True}),
                    httpx.Response(200, json={"resync": "yes"})])
    channel = HttpChannel("http://api", "t",
                          transport=httpx.MockTransport(lambda request: next(answers)))
    assert [channel.heartbeat("h1") for _ in range(3)] == [False, True, False]
