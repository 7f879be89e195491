"""A client that goes away before its request body arrived (an agent's heartbeat that
timed out on its side, a killed CLI) is not a fault of the server: no internal error in
the log, no 500 counted, no answer sent into the closed connection. Before, each one was
logged as an internal error with its traceback (a thousand a minute when a replica was
slow for a while), which cost the event loop time just when it had none."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.api.agent_rig import TestClient, agent_channel


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[tuple[TestClient, Any, str]]:
    with agent_channel(tmp_path) as got:
        yield got


def _gone_before_the_body(client: TestClient, app: Any, path: str, token: str) -> list[Any]:
    """Send the request's head to the app, then a disconnect instead of its body; what
    the app sent back."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80),
             "headers": [(b"host", b"x"), (b"x-auth-token", token.encode()),
                         (b"content-type", b"application/json"), (b"content-length", b"100")]}
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        await app(scope, receive, send)
    assert client.portal is not None
    client.portal.call(call)
    return sent


@pytest.mark.parametrize("path", ["/v1/agents/h1/heartbeat", "/v1/agents/h1/reports"])
def test_a_client_gone_before_its_body_is_no_internal_error(
        rig: tuple[TestClient, Any, str], path: str, caplog: pytest.LogCaptureFixture) -> None:
    client, app, token = rig
    with caplog.at_level(logging.INFO):
        sent = _gone_before_the_body(client, app, path, token)
    assert sent == []  # nobody is there to read an answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "went away" in caplog.text

    registry = app.state.metrics.registry
    route = path.replace("h1", "{host}")
    counted = {status: registry.get_sample_value("capsuled_http_requests_total", {
        "method": "POST", "route": route, "status": status}) for status in ("499", "500")}
    assert counted == {"499": 1.0, "500": None}, counted


def test_a_heartbeat_still_answers_afterwards(rig: tuple[TestClient, Any, str]) -> None:
    client, app, token = rig
    _gone_before_the_body(client, app, "/v1/agents/h1/heartbeat", token)
    r = client.post("/v1/agents/h1/heartbeat", headers={"X-Auth-Token": token})
    assert r.status_code in (200, 204), r.text
