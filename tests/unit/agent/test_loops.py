"""The agent's loops and the API's host monitor outlive anything unexpected: garbage from
the API (an HTML page from a proxy, truncated JSON, wrong types), exceptions of any kind.
They log, back off and go on, and converge once the answers are good again."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import httpx
import pytest

from capsuled.agent import loop
from capsuled.agent.http_channel import HttpChannel
from capsuled.agent.loop import Agent
from capsuled.api.services.host_monitor import HostMonitor
from capsuled.config import AgentSettings
from capsuled.domain.backoff import Backoff
from capsuled.domain.channel import HostInfo
from capsuled.errors import Unavailable
from tests.conftest import wait_for

SPEC = {"containers": [{"name": "web", "image": "busybox", "uuid": "c1"}]}
GOOD = {"host": "h1", "revision": 7, "capsules": [{"uuid": "cap1", "generation": 1, "spec": SPEC}],
        "containers": []}
# What a newer API may send: fields this agent has never heard of, at every level.
NEWER = {**GOOD, "shiny": True, "capsules": [{
    "uuid": "cap1", "generation": 1, "future": 1,
    "spec": {**SPEC, "topology": "x", "containers": [{**SPEC["containers"][0], "gpu": 1}]}}]}


class Recorder:
    """Stands in for CapsuleWorkers: remembers what was enqueued."""

    def __init__(self) -> None:
        self.enqueued: list[str] = []

    def enqueue(self, uuid: str) -> None:
        self.enqueued.append(uuid)

    def stop(self) -> None:
        pass


def make_agent(channel: Any, runtime: Any = None, **settings: Any) -> Agent:
    agent = Agent(channel, runtime or mock.Mock(), mock.Mock(),
                  AgentSettings(host_name="h1", **settings), "inst", "infra", networks=mock.Mock())
    agent.workers.stop()
    agent.workers = Recorder()  # type: ignore[assignment]
    return agent


@contextlib.contextmanager
def run_loop(agent: Agent, target: Callable[[], None]) -> Iterator[threading.Thread]:
    """`target` (one of the agent's loops) in a thread, stopped and joined at the end."""
    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield t
    finally:
        agent.stop()
        t.join(5)
    assert not t.is_alive()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "LOOP_BACKOFF_INITIAL", 0.01)
    monkeypatch.setattr(loop, "LOOP_BACKOFF_MAX", 0.05)


def scripted(*answers: Any) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering with `answers` in turn (an exception is raised), then the last
    one for ever."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    return httpx.MockTransport(handle), seen


GARBAGE = [
    httpx.Response(502, html="<html><body>Bad Gateway</body></html>"),
    httpx.Response(200, html="<html>maintenance</html>"),
    httpx.Response(200, content=json.dumps(GOOD)[:40].encode(),
                   headers={"content-type": "application/json"}),
    httpx.Response(200, json={"host": "h1", "revision": "seven", "capsules": {}}),
    httpx.Response(200, json=[1, 2, 3]),
    httpx.Response(200, json=None),
    RuntimeError("a bug in a transport"),
    httpx.ReadTimeout("slow"),
]


def test_watch_loop_survives_garbage_then_converges() -> None:
    transport, seen = scripted(*GARBAGE, httpx.Response(200, json=NEWER))
    agent = make_agent(HttpChannel("http://api", "t", transport=transport))
    with run_loop(agent, agent._watch_loop):
        wait_for(lambda: "cap1" in agent._desired, timeout=10)
        assert agent.workers.enqueued == ["cap1"]  # type: ignore[attr-defined]
        # Converged: it goes on watching from the revision it got.
        wait_for(lambda: any(r.url.params.get("after") == "7" for r in seen), timeout=10)
    assert len(seen) > len(GARBAGE)


def test_watch_loop_survives_a_channel_that_raises_anything() -> None:
    calls: list[int] = []
    good = HttpChannel("http://api", "t", transport=httpx.MockTransport(
        lambda r: httpx.Response(200, json=GOOD)))

    class Flaky:
        def watch(self, host: str, after: int, timeout: float, full: bool = True) -> Any:
            calls.append(after)
            if len(calls) == 1:
                raise KeyError("surprise")
            if len(calls) == 2:
                return object()  # not Assignments at all
            return good.watch(host, after, timeout)

    agent = make_agent(Flaky())
    with run_loop(agent, agent._watch_loop):
        wait_for(lambda: "cap1" in agent._desired, timeout=10)


@pytest.mark.parametrize("answer", GARBAGE[:6], ids=["502-html", "200-html", "truncated",
                                                     "wrong-types", "list", "null"])
def test_http_channel_turns_garbage_into_unavailable(answer: httpx.Response) -> None:
    channel = HttpChannel("http://api", "t", transport=httpx.MockTransport(lambda r: answer))
    with pytest.raises(Unavailable):
        channel.watch("h1", -1, 1.0)
    with pytest.raises(Unavailable):
        channel.instance_id("h1")


def test_http_channel_ignores_fields_of_a_newer_api() -> None:
    channel = HttpChannel("http://api", "t", transport=httpx.MockTransport(
        lambda r: httpx.Response(200, json=NEWER)))
    got = channel.watch("h1", -1, 1.0)
    assert got.revision == 7 and got.capsules[0].spec.containers[0].name == "web"


def test_relist_loop_survives_failures() -> None:
    runtime = mock.Mock()
    runtime.list_summaries.side_effect = [RuntimeError("boom"), Unavailable("docker down"),
                                          ValueError("odd"), [], [], [], [], []] + [[]] * 1000
    agent = make_agent(mock.Mock(), runtime, relist_interval=0.01)
    agent._first_watch.set()
    with run_loop(agent, agent._relist_loop):
        wait_for(lambda: runtime.list_summaries.call_count >= 5, timeout=10)


def test_heartbeat_loop_survives_failures_and_registers_again() -> None:
    runtime = mock.Mock()
    runtime.host_info.return_value = HostInfo(name="h1", cpus=1, memory_mb=1, disk_gb=1)
    runtime.list_summaries.return_value = []
    channel = mock.Mock()
    channel.heartbeat.side_effect = [RuntimeError("boom"), TypeError("odd")] + [None] * 10_000
    agent = make_agent(channel, runtime, heartbeat_interval=0.01)
    with run_loop(agent, agent._heartbeat_loop):
        wait_for(lambda: channel.heartbeat.call_count >= 4, timeout=10)
    # Back after a failure, it registered again before beating on.
    assert channel.register.called


def test_host_monitor_survives_unexpected_exceptions() -> None:
    monitor = HostMonitor(mock.Mock(), timedelta(seconds=0.1))
    calls: list[int] = []

    def check() -> int:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("database driver surprise")
        return 0

    monitor.check = check  # type: ignore[method-assign]
    monitor.start()
    try:
        wait_for(lambda: len(calls) >= 4, timeout=20)
    finally:
        monitor.stop()


def test_backoff_doubles_up_to_its_bound_and_resets() -> None:
    b = Backoff(0.5, 4.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for _ in range(5000):  # days of failures never overflow
        b.next()
    assert b.next() == 4.0
    b.reset()
    assert b.next() == 0.5


def test_the_api_reads_reports_of_a_newer_agent_but_not_wrong_types() -> None:
    """The other direction of a rolling upgrade: unknown fields are ignored, types are not."""
    from pydantic import ValidationError

    from capsuled.domain.channel import BareReport, CapsuleReport

    report = CapsuleReport.model_validate({"uuid": "c", "generation": 1, "telemetry": {"x": 1},
                                           "containers": [{"uuid": "u", "name": "n",
                                                           "role": "app", "gpu_util": 3}]})
    assert report.containers[0].name == "n"
    BareReport.model_validate({"uuid": "u", "generation": 2, "future": True})
    with pytest.raises(ValidationError):
        CapsuleReport.model_validate({"uuid": "c", "generation": "one"})


def test_a_heartbeat_that_asks_for_a_resync_relists_everything_at_most_once_a_period() -> None:
    from capsuled.domain.channel import Assignments

    runtime = mock.Mock()
    runtime.list_summaries.return_value = []
    channel = mock.Mock()
    channel.heartbeat.return_value = False
    agent = make_agent(channel, runtime, heartbeat_interval=0.01, relist_interval=3600)
    agent._desired = {c.uuid: c for c in Assignments.model_validate(GOOD).capsules}
    agent.relist()
    assert agent.workers.enqueued == ["cap1"]  # type: ignore[attr-defined]
    with run_loop(agent, agent._heartbeat_loop):
        wait_for(lambda: channel.heartbeat.call_count >= 3, timeout=10)
        assert agent.workers.enqueued == ["cap1"]  # type: ignore[attr-defined]
        channel.heartbeat.return_value = True  # marked Unknown meanwhile: report it again
        wait_for(lambda: len(agent.workers.enqueued) == 2, timeout=10)  # type: ignore[attr-defined]
        calls = channel.heartbeat.call_count
        wait_for(lambda: channel.heartbeat.call_count >= calls + 5, timeout=10)
    assert agent.workers.enqueued == ["cap1", "cap1"]  # type: ignore[attr-defined]


def test_watch_loop_keeps_its_set_on_unchanged_and_takes_the_whole_set_now_and_then(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "FULL_SET_EVERY", 0.3)
    asked: list[tuple[int, bool]] = []
    answers: list[Any] = []
    seen = threading.Event()
    channel = HttpChannel("http://api", "t", transport=httpx.MockTransport(
        lambda r: httpx.Response(200, json=answers[-1])))

    class Scripted:
        def watch(self, host: str, after: int, timeout: float, full: bool = True) -> Any:
            asked.append((after, full))
            answers.append(GOOD if full else {**GOOD, "capsules": [], "unchanged": True})
            if len(asked) >= 12:
                seen.set()
            threading.Event().wait(0.05)  # an idle long poll, shortened
            return channel.watch(host, after, timeout, full)

    agent = make_agent(Scripted())
    with run_loop(agent, agent._watch_loop):
        assert seen.wait(10)
        assert "cap1" in agent._desired  # an empty "unchanged" answer removed nothing
    assert asked[0] == (-1, True)  # the first poll takes everything
    assert any(not full for _, full in asked) and asked.count((7, True)) >= 1  # and now and then
    assert agent.workers.enqueued == ["cap1"]  # type: ignore[attr-defined]


def test_watch_loop_asks_for_everything_after_an_unchanged_of_another_revision() -> None:
    asked: list[tuple[int, bool]] = []

    class Wrong:
        def watch(self, host: str, after: int, timeout: float, full: bool = True) -> Any:
            asked.append((after, full))
            threading.Event().wait(0.02)
            if len(asked) == 2:  # a faulty API: "unchanged", but another revision
                return HttpChannel("http://api", "t", transport=httpx.MockTransport(
                    lambda r: httpx.Response(200, json={**GOOD, "revision": 9, "capsules": [],
                                                        "unchanged": True}))).watch(host, after, 1)
            return HttpChannel("http://api", "t", transport=httpx.MockTransport(
                lambda r: httpx.Response(200, json=GOOD))).watch(host, after, 1)

    agent = make_agent(Wrong())
    with run_loop(agent, agent._watch_loop):
        wait_for(lambda: len(asked) >= 3, timeout=10)
        assert "cap1" in agent._desired
    assert asked[2] == (7, True)
