"""HttpChannel given several API replicas: a replica that cannot answer is left for the
next one and the call is made there once; an answer (4xx, 500) is never asked again
elsewhere; failures move on round robin; one warning per switch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from capsuled.agent.http_channel import HttpChannel
from capsuled.config import AgentSettings, api_urls
from capsuled.domain.channel import CapsuleReport
from capsuled.errors import Forbidden, NotAuthenticated, Unavailable

A, B, C = "http://a:9517", "http://b:9517", "http://c:9517"
Behaviour = Callable[[httpx.Request], httpx.Response]
SWITCH = "switching to"


def ok(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/heartbeat"):
        return httpx.Response(200, json={"resync": False})
    if request.url.path.endswith("/assignments"):
        return httpx.Response(200, json={"host": "h1", "revision": 7, "capsules": []})
    if request.url.path.endswith("/reports"):
        return httpx.Response(204)
    return httpx.Response(200, json={"instance_id": "inst"})


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def status(code: int) -> Behaviour:
    return lambda request: httpx.Response(code, json={"errors": [{"detail": f"said {code}"}]})


class Replicas:
    """Fake replicas by host name, each answering as its behaviour says; every request
    is recorded as (host, path)."""

    def __init__(self, **behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[str, str]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.url.host, request.url.path))
        return self.behaviour[request.url.host](request)

    def hosts(self) -> list[str]:
        return [h for h, _ in self.calls]

    def channel(self, *urls: str) -> HttpChannel:
        return HttpChannel(list(urls), "t", transport=httpx.MockTransport(self.handler))


def switches(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and SWITCH in r.getMessage()]


def test_calls_land_on_the_second_replica_when_the_first_refuses_connections(
        caplog: pytest.LogCaptureFixture) -> None:
    replicas = Replicas(a=refuse, b=ok)
    channel = replicas.channel(A, B)
    assert channel.instance_id("h1") == "inst"
    assert replicas.hosts() == ["a", "b"] and channel.current == B
    # The rest go straight to the second: no new try of the first per call.
    assert channel.heartbeat("h1") is False
    assert channel.watch("h1", 0, 1.0).revision == 7
    channel.report("h1", [CapsuleReport(uuid="u1", generation=1)])
    assert replicas.hosts() == ["a", "b", "b", "b", "b"]
    assert len(switches(caplog)) == 1
    assert f"API replica {A} failed" in switches(caplog)[0] and B in switches(caplog)[0]


@pytest.mark.parametrize("code", [502, 503, 504])
def test_a_gateway_saying_the_replica_is_gone_fails_over(code: int) -> None:
    replicas = Replicas(a=status(code), b=ok)
    channel = replicas.channel(A, B)
    assert channel.heartbeat("h1") is False
    assert replicas.hosts() == ["a", "b"]


def test_a_timeout_fails_over() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("", request=request)  # httpx's own has no message either
    replicas = Replicas(a=hang, b=ok)
    channel = replicas.channel(A, B)
    assert channel.watch("h1", 3, 1.0).revision == 7
    assert channel.current == B


@pytest.mark.parametrize(("code", "error"), [(400, Unavailable), (401, NotAuthenticated),
                                             (403, Forbidden), (404, Unavailable),
                                             (409, Unavailable), (500, Unavailable)])
def test_an_answer_is_not_asked_again_elsewhere(code: int, error: type[Exception],
                                                caplog: pytest.LogCaptureFixture) -> None:
    replicas = Replicas(a=status(code), b=ok)
    channel = replicas.channel(A, B)
    with pytest.raises(error, match=f"said {code}"):
        channel.heartbeat("h1")
    assert replicas.hosts() == ["a"] and channel.current == A
    assert switches(caplog) == []


def test_failures_move_on_round_robin_and_come_back(caplog: pytest.LogCaptureFixture) -> None:
    replicas = Replicas(a=refuse, b=ok)
    channel = replicas.channel(A, B)
    channel.heartbeat("h1")
    assert channel.current == B
    replicas.behaviour.update(a=ok, b=refuse)  # a restarted, b went away
    channel.heartbeat("h1")
    assert channel.current == A
    assert replicas.hosts() == ["a", "b", "b", "a"]
    assert [m.split(" failed")[0] for m in switches(caplog)] == [f"API replica {A}",
                                                                  f"API replica {B}"]


def test_with_three_the_call_is_retried_once_and_the_next_call_moves_on() -> None:
    replicas = Replicas(a=refuse, b=refuse, c=ok)
    channel = replicas.channel(A, B, C)
    with pytest.raises(Unavailable, match="http://b:9517 unreachable"):
        channel.heartbeat("h1")
    assert replicas.hosts() == ["a", "b"]
    # No blacklist: the next call starts where the last one ended and moves on from there.
    assert channel.heartbeat("h1") is False
    assert replicas.hosts() == ["a", "b", "b", "c"] and channel.current == C


def test_all_replicas_down_is_unavailable_after_one_retry() -> None:
    replicas = Replicas(a=refuse, b=refuse)
    channel = replicas.channel(A, B)
    with pytest.raises(Unavailable):
        channel.report("h1", [])
    assert replicas.hosts() == ["a", "b"]


def test_one_replica_is_not_retried() -> None:
    replicas = Replicas(a=refuse)
    channel = replicas.channel(A)
    with pytest.raises(Unavailable, match="unreachable"):
        channel.heartbeat("h1")
    assert replicas.hosts() == ["a"]


def test_calls_failing_together_switch_once(caplog: pytest.LogCaptureFixture) -> None:
    """The loops' threads all lose the replica at once: one of them switches (one
    warning), the others follow it instead of switching again (back to the dead one)."""
    both_in = threading.Barrier(2, timeout=10)

    def refuse_together(request: httpx.Request) -> httpx.Response:
        both_in.wait()
        return refuse(request)
    replicas = Replicas(a=refuse_together, b=ok)
    channel = replicas.channel(A, B)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(channel.heartbeat("h1")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert results == [False, False]
    assert sorted(replicas.hosts()) == ["a", "a", "b", "b"] and channel.current == B
    assert len(switches(caplog)) == 1


@pytest.mark.parametrize(("given", "urls"), [
    ("http://a:1", ["http://a:1"]),
    ("http://a:1/, https://b", ["http://a:1", "https://b"]),
    (["http://a:1", "http://b:2,http://c:3", "http://a:1"],
     ["http://a:1", "http://b:2", "http://c:3"]),
])
def test_api_urls_split_commas_and_repeats(given: str | list[str], urls: list[str]) -> None:
    assert api_urls(given) == urls


@pytest.mark.parametrize("bad", ["api:9517", "ftp://api", "http://", "http://a:port"])
def test_a_bad_api_url_is_refused_up_front(bad: str) -> None:
    with pytest.raises(ValueError, match=f"{bad!r} is not"):
        HttpChannel(["http://good:1", bad], "t")


@pytest.mark.parametrize("empty", [",", " ", []])
def test_no_api_url_at_all_is_refused(empty: str | list[str]) -> None:
    with pytest.raises(ValueError, match="no API URL"):
        api_urls(empty)


def test_the_setting_takes_a_list_or_a_comma_separated_string() -> None:
    assert AgentSettings(api_url="http://a:1").api_url == ["http://a:1"]
    assert AgentSettings(api_url="http://a:1,http://b:2").api_url == [
        "http://a:1", "http://b:2"]
    assert AgentSettings(api_url=["http://a:1", "http://b:2"]).api_url == [
        "http://a:1", "http://b:2"]
    assert AgentSettings().api_url is None
    with pytest.raises(ValidationError, match="not an http"):
        AgentSettings(api_url="api:9517")
