"""The long poll on a capsule (`GET /v1/capsules/{id}?wait_while=…`): held while the
status is one of those, answered as soon as it changes, 404 once the capsule is gone; it
holds no worker thread, so many waiters do not stall other requests."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Capsules, Server, sleeper, template

pytestmark = pytest.mark.docker


def _init_then_app(name: str, seconds: float) -> dict[str, Any]:
    init = {"name": "setup", "image": "busybox", "command": ["sleep", str(seconds)]}
    return template(name, [sleeper("app")], initContainers=[init])


def test_the_answer_is_held_until_the_status_changes(capsules: Capsules, unique) -> None:
    body = capsules.create(_init_then_app(unique("wait"), 2))
    t0 = time.monotonic()
    r = capsules.api.get(f"/v1/capsules/{body['uuid']}",
                         params={"wait_while": "Creating", "wait_timeout": "30"})
    held = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "Running", r.json()
    assert 1.5 <= held < 15, held  # the init container alone takes 2 s

    # Not waiting on the current status: answered at once.
    t0 = time.monotonic()
    r = capsules.api.get(f"/v1/capsules/{body['uuid']}", params={"wait_while": "Creating"})
    assert r.json()["status"] == "Running" and time.monotonic() - t0 < 1


def test_a_timeout_answers_with_the_capsule_as_it_is(capsules: Capsules, unique) -> None:
    body = capsules.create(_init_then_app(unique("wait"), 30))
    t0 = time.monotonic()
    r = capsules.api.get(f"/v1/capsules/{body['uuid']}",
                         params={"wait_while": "Creating", "wait_timeout": "1"})
    assert r.status_code == 200 and r.json()["status"] == "Creating", r.text
    assert 0.9 <= time.monotonic() - t0 < 5


def test_waiting_through_a_delete_ends_in_404(capsules: Capsules, unique) -> None:
    body = capsules.create(template(unique("wait"), [sleeper("app")]))
    capsules.wait_status(body["uuid"], "Running")
    assert capsules.api.delete(f"/v1/capsules/{body['uuid']}").status_code == 204
    r = capsules.api.get(f"/v1/capsules/{body['uuid']}",
                         params={"wait_while": "Deleting,Running", "wait_timeout": "30"})
    assert r.status_code == 404, r.text


def test_many_waiters_do_not_stall_other_requests(server: Server, capsules: Capsules,
                                                  unique) -> None:
    body = capsules.create(_init_then_app(unique("wait"), 30))
    answers: list[int] = []

    def wait() -> None:
        with server.client() as api:
            answers.append(api.get(f"/v1/capsules/{body['uuid']}", params={
                "wait_while": "Creating", "wait_timeout": "4"}).status_code)

    threads = [threading.Thread(target=wait) for _ in range(60)]  # more than the thread pool
    for t in threads:
        t.start()
    time.sleep(1)
    t0 = time.monotonic()
    r = capsules.api.get("/v1/capsules", params={"limit": 5})
    assert r.status_code == 200 and time.monotonic() - t0 < 2, "a list stalled behind the waiters"
    for t in threads:
        t.join()
    assert answers == [200] * 60


@pytest.mark.parametrize(("params", "problem"), [
    ({"wait_while": "Sleeping"}, "wait_while: 'Sleeping' is not a capsule status"),
    ({"wait_while": ","}, "wait_while: nothing is not a capsule status"),
    ({"wait_while": "Creating", "wait_timeout": "61"}, "wait_timeout: must be a number of seconds"),
    ({"wait_while": "Creating", "wait_timeout": "soon"}, "wait_timeout: must be a number"),
    ({"wait_timeout": "5"}, "wait_timeout: only with wait_while"),
])
def test_bad_wait_parameters_are_400_naming_the_field(api: httpx.Client, params: dict[str, str],
                                                      problem: str) -> None:
    r = api.get("/v1/capsules/any-name", params=params)
    assert r.status_code == 400, r.text
    assert problem in r.text, r.text


def _threads(server: Server) -> int:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_long_polls_hold_no_thread(server: Server, api: httpx.Client, capsules: Capsules,
                                   unique) -> None:
    """Agents waiting for their assignments and clients waiting on a capsule are parked in
    the event loop: hundreds of hosts watching cost no thread each."""
    host = unique("ghost-host")
    r = api.post("/v1/tokens", json={"project_id": "service", "user_id": f"agent-{host}",
                                     "roles": ["agent"], "host": host})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    body = capsules.create(_init_then_app(unique("wait"), 30))
    for _ in range(3):  # the thread pool at its working size first
        api.get("/v1/capsules", params={"limit": 5})
    before = _threads(server)
    answers: list[int] = []

    def watch() -> None:
        with server.client(token) as agent:
            answers.append(agent.get(f"/v1/agents/{host}/assignments",
                                     params={"after": 0, "timeout": 4}).status_code)

    def wait() -> None:
        with server.client() as c:
            answers.append(c.get(f"/v1/capsules/{body['uuid']}", params={
                "wait_while": "Creating", "wait_timeout": "4"}).status_code)

    threads = [threading.Thread(target=watch if i % 2 else wait) for i in range(80)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    during = _threads(server)
    for t in threads:
        t.join()
    assert answers == [200] * 80
    assert during - before < 20, (before, during)  # a thread each would be +80


def test_an_agents_idle_poll_may_answer_unchanged(api: httpx.Client, server: Server,
                                                  unique) -> None:
    """`full=false`: a poll that times out on the revision it was given answers
    `unchanged` and empty lists; without it (agents from before) the whole set."""
    host = unique("idle-host")
    r = api.post("/v1/tokens", json={"project_id": "service", "user_id": f"agent-{host}",
                                     "roles": ["agent"], "host": host})
    assert r.status_code == 201, r.text
    with server.client(r.json()["token"]) as agent:
        path = f"/v1/agents/{host}/assignments"
        first = agent.get(path, params={"after": -1, "timeout": 0, "full": "false"})
        assert first.status_code == 200 and first.json()["unchanged"] is False, first.text
        rev = first.json()["revision"]
        idle = agent.get(path, params={"after": rev, "timeout": 0.5, "full": "false"}).json()
        assert idle["unchanged"] is True and idle["revision"] == rev
        assert idle["capsules"] == [] and idle["containers"] == []
        whole = agent.get(path, params={"after": rev, "timeout": 0.5}).json()
        assert whole["unchanged"] is False and whole["revision"] == rev
        bad = agent.get(path, params={"after": rev, "timeout": 0, "full": "maybe"})
        assert bad.status_code == 400 and "full" in bad.text, bad.text
