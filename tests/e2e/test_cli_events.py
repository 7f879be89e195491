"""`capsule events [NAME] [-f] [-o json]` and `capsule list --watch` against the real
server: the records a member's changes wrote, and following new ones as they commit."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import uuid
from typing import Any

import pytest
from conftest import VENV_BIN, Server, sleeper, template

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def _unplaceable(name: str) -> dict[str, Any]:
    t = template(name, [sleeper("c")], labels={"app": name})
    t["availabilityZone"] = "no-such-zone"  # Error at once, nothing for Docker to do
    return t


def _churn(server: Server, token: str, name: str) -> None:
    with server.client(token) as c:
        assert c.post("/v1/capsules", json={"template": _unplaceable(name)}).status_code == 202
        assert c.delete(f"/v1/capsules/{name}").status_code == 204


class Running:
    """A `capsule` command that does not end by itself, its stdout read line by line."""

    def __init__(self, server: Server, token: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "capsule"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "CAPSULE_URL": server.url, "CAPSULE_TOKEN": token})
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def take(self, n: int, timeout: float = 30) -> list[str]:
        return [self.lines.get(timeout=timeout) for _ in range(n)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


EXPECTED = ["capsule.create.start", "capsule.create.error", "capsule.delete.start",
            "capsule.delete.end"]


def test_events_of_a_capsule_and_following_them(server: Server) -> None:
    project = f"ce-{uuid.uuid4().hex[:8]}"
    token = server.issue_token(project, "u", "member")
    other = server.issue_token(f"ce-{uuid.uuid4().hex[:8]}", "u", "member")
    first = f"first-{uuid.uuid4().hex[:6]}"
    _churn(server, token, first)
    _churn(server, other, first)  # the same name in another project: never shown
    listed = server.cli("events", first, "-o", "json", env={"CAPSULE_TOKEN": token})
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [r["event_type"] for r in records] == EXPECTED
    assert {r["project_id"] for r in records} == {project}
    table = server.cli("events", first, env={"CAPSULE_TOKEN": token})
    assert table.returncode == 0 and f"capsule/{first}" in table.stdout
    assert "capsule.create.error" in table.stdout
    # Following: what was there, then each new record as it commits (JSON lines).
    follow = Running(server, token, "events", "-f", "-o", "json")
    try:
        before = [json.loads(x) for x in follow.take(4)]
        assert [r["name"] for r in before] == [first] * 4
        second = f"second-{uuid.uuid4().hex[:6]}"
        _churn(server, other, second)
        _churn(server, token, second)
        after = [json.loads(x) for x in follow.take(4)]
        assert [(r["name"], r["event_type"]) for r in after] == [(second, e) for e in EXPECTED]
        assert {r["project_id"] for r in after} == {project}
    finally:
        follow.stop()
    member_all = server.cli("events", "--all-projects", env={"CAPSULE_TOKEN": token})
    assert member_all.returncode == 1 and "event:get_all_all_projects" in member_all.stderr


def test_list_watch_prints_the_list_then_each_change(server: Server) -> None:
    project = f"cw-{uuid.uuid4().hex[:8]}"
    token = server.issue_token(project, "u", "member")
    watcher = Running(server, token, "list", "--watch", "-o", "json")
    try:
        assert json.loads(watcher.take(1)[0]) == []  # the (empty) list first
        name = f"w-{uuid.uuid4().hex[:6]}"
        _churn(server, token, name)
        seen = [json.loads(x) for x in watcher.take(4)]
        assert [(r["name"], r["event_type"]) for r in seen] == [(name, e) for e in EXPECTED]
    finally:
        watcher.stop()
