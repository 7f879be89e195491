"""One status table on both sides of the ops endpoint: the agent answers each error with
the status capsuled/http_status.py gives its class, and the API's client reads a class it
does not know back from that status. In-process: no Docker, no sockets."""

from __future__ import annotations

import json
from typing import Any, cast

import anyio
import httpx
import pytest

from capsuled import errors
from capsuled.hostops import wire
from capsuled.hostops.client import RemoteOps
from capsuled.hostops.protocol import ContainerOps
from capsuled.hostops.server import create_ops_app
from capsuled.http_status import STATUS, error_class_for, status_for

KEY = "k" * 32


class Failing:
    """The part of ContainerOps these tests call: `start` raises what it was given."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def start(self, container_id: str) -> None:
        raise self.exc


def _post(exc: BaseException, method: str, body: dict[str, Any]) -> httpx.Response:
    app = create_ops_app(cast(ContainerOps, Failing(exc)), KEY)

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://agent.test") as client:
            return await client.post(wire.call_path(method), json=body,
                                     headers={wire.OPS_KEY_HEADER: KEY})
    return anyio.run(post)


def _start(exc: BaseException) -> httpx.Response:
    return _post(exc, "start", {"container_id": "c1"})


def test_status_goes_by_the_nearest_class_in_the_table() -> None:
    assert status_for(errors.OverQuota("no")) == 403
    assert status_for(errors.ImageNotFound("no")) == 404
    assert status_for(errors.RuntimeRejected("no")) == 400
    assert status_for(RuntimeError("bug")) == 500


def test_a_status_stands_for_its_most_general_class() -> None:
    assert error_class_for(400) is errors.InvalidInput
    assert error_class_for(404) is errors.NotFound
    assert error_class_for(409) is errors.Conflict
    assert error_class_for(500) is errors.DriverError
    assert error_class_for(503) is errors.Unavailable
    assert error_class_for(418) is None


@pytest.mark.parametrize("cls", sorted(STATUS, key=lambda c: c.__name__))
def test_the_agent_answers_each_error_with_its_status(cls: type[errors.CapsuledError]) -> None:
    r = _start(cls("why"))
    assert r.status_code == STATUS[cls]
    assert wire.decode_error(r.json()).message == "why"
    assert type(wire.decode_error(r.json())) is cls


def test_the_agent_answers_a_bug_with_500_and_an_unknown_operation_with_404() -> None:
    r = _start(RuntimeError("boom"))
    assert r.status_code == 500 and r.json() == {"error": "DriverError",
                                                 "message": "RuntimeError: boom"}
    r = _post(RuntimeError(), "reboot_host", {})
    assert r.status_code == 404 and r.json()["error"] == "DriverError"


def _client(status: int, body: Any) -> RemoteOps:
    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, content=json.dumps(body).encode(),
                              headers={"content-type": "application/json"})
    return RemoteOps("http://agent.test:9518", KEY, transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(("status", "cls"), [(404, errors.NotFound), (409, errors.Conflict),
                                             (400, errors.InvalidInput), (503, errors.Unavailable),
                                             (500, errors.DriverError), (418, errors.DriverError)])
def test_a_class_the_api_does_not_know_is_read_from_the_status(
        status: int, cls: type[errors.CapsuledError]) -> None:
    ops = _client(status, {"error": "SomethingNewer", "message": "from a newer agent"})
    with pytest.raises(errors.CapsuledError) as raised:
        ops.start("c1")
    assert type(raised.value) is cls and raised.value.message == "from a newer agent"


def test_a_known_class_wins_over_the_status() -> None:
    ops = _client(500, {"error": "ImageNotFound", "message": "no such image"})
    with pytest.raises(errors.ImageNotFound, match="no such image"):
        ops.start("c1")


def test_the_key_check_and_a_hosts_refusal_stay_apart() -> None:
    with pytest.raises(errors.Unavailable, match="refused the ops key"):
        _client(401, "missing or wrong X-Capsuled-Ops-Key").start("c1")
    with pytest.raises(errors.NotAuthenticated, match="expired"):
        _client(401, {"error": "NotAuthenticated", "message": "expired"}).start("c1")
    with pytest.raises(errors.Unavailable, match="answered HTTP 502"):
        _client(502, "bad gateway").start("c1")
