"""The simulated agent (bench/sim_agents.py) does what agent/loop.py does when a
heartbeat answers 200 `{"resync": true}` (the host was silent long enough for its
capsules to turn Unknown): the beat counts as accepted and every capsule it holds is
reported again. Counted as a failed beat with nothing re-reported, the simulation left
those capsules Unknown for ever and overstated the missed heartbeats."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bench.sim_agents import LightAgent, Tally  # noqa: E402

ASSIGNMENT = {"uuid": "c-1", "generation": 1, "spec": {"containers": [
    {"uuid": "m-1", "name": "main", "image": "busybox"}]}}


def test_a_resync_answer_is_an_accepted_beat_and_reports_everything_again() -> None:
    reports: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/heartbeat"):
            return httpx.Response(200, json={"resync": True})
        assert request.url.path.endswith("/reports")
        reports.extend(c["uuid"] for c in json.loads(request.content)["capsules"])
        return httpx.Response(204)

    async def run() -> Tally:
        tally, stop = Tally(), asyncio.Event()
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer),
                                     base_url="http://api") as http:
            agent = LightAgent(http, "sim-1", "t", {"heartbeat_interval": 0.05}, tally, stop)
            agent.assigned = {"c-1": ASSIGNMENT}
            beating = asyncio.create_task(agent.heartbeats())
            for _ in range(100):
                if reports:
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await beating
        return tally

    tally = asyncio.run(run())
    assert "c-1" in reports
    assert tally.beat_failures == 0 and tally.beats and tally.resyncs >= 1, tally.errors
