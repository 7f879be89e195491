"""A recently checked token is answered in the event loop: an agent's heartbeat goes
through while every worker thread of the replica is taken (a burst of reports waiting on
row locks did that), instead of queueing behind them until the host is seen down."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.unit.api.agent_rig import TestClient, agent_channel


@pytest.fixture()
def http(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    with agent_channel(tmp_path) as (client, _app, token):
        yield client, token


def _in_time(fn: Any, seconds: float) -> Any:
    """fn() in a thread; its result, or None if it had not returned within `seconds`."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    return out[0] if out else None


def test_a_remembered_agent_token_needs_no_worker_thread(http: tuple[TestClient, str]) -> None:
    client, token = http
    beat = lambda: client.post("/v1/agents/h1/heartbeat", headers={"X-Auth-Token": token})  # noqa: E731
    assert beat().status_code in (200, 204)  # checked once: remembered from now on
    assert client.portal is not None
    borrowers = [object() for _ in range(1000)]

    async def take_every_thread() -> int:
        limiter = anyio.to_thread.current_default_thread_limiter()
        taken = 0
        for b in borrowers:
            if limiter.available_tokens == 0:
                break
            limiter.acquire_on_behalf_of_nowait(b)
            taken += 1
        return taken

    async def give_back(taken: int) -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        for b in borrowers[:taken]:
            limiter.release_on_behalf_of(b)

    taken = client.portal.call(take_every_thread)
    try:
        assert taken > 0
        answer = _in_time(beat, 10)
        assert answer is not None, "the heartbeat waited for a worker thread"
        assert answer.status_code in (200, 204), answer.text
    finally:
        client.portal.call(give_back, taken)
    # An unknown token is still checked against the store (in a thread) and refused.
    assert client.post("/v1/agents/h1/heartbeat",
                       headers={"X-Auth-Token": "cap_not-a-token"}).status_code == 401
