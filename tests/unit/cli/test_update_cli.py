"""`capsule update / rollback / history` against an in-memory fake of the update API: what
is sent (quick changes, templates, causes), waiting out a busy 409, and the fleet's stop:
at the first failure the batch's other capsules are rolled back, later batches untouched."""

from __future__ import annotations

import json
import uuid as uuidlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from capsuled.cli.capsule.main import Runtime, app
from capsuled.cli.capsule.updates import apply_to_template, quick_changes
from cli_env import clean_env  # noqa: F401 - the autouse fixture, by name

BASE = "http://capsuled.test"


def _error(status: int, title: str) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{"status": status, "code": "x", "title": title,
                                                    "detail": title}]})


class FakeUpdates:
    """Capsules whose updates end after two GETs: Ready, or (names in `failing`) Failed
    and rolled back by the server (one more revision)."""

    def __init__(self, *names: str, label: str = "web") -> None:
        self.capsules: dict[str, dict[str, Any]] = {}
        self.revisions: dict[str, list[dict[str, Any]]] = {}
        self.failing: set[str] = set()
        self.busy: dict[str, int] = {}  # name → GETs until the update under way ends
        self.sent: list[tuple[str, str, Any]] = []
        self._left: dict[str, int] = {}
        for name in names:
            u = str(uuidlib.uuid4())
            self.capsules[u] = {"uuid": u, "name": name, "labels": {"app": label},
                                "status": "Running", "status_reason": None, "revision": 1,
                                "rollout": None, "all_ready": True}
            self.revisions[u] = [{"revision": 1, "current": True, "outcome": None,
                                  "change_cause": "created", "user_id": "u",
                                  "created_at": "2026-01-01 00:00:00",
                                  "template": {"kind": "capsule", "metadata": {"name": name},
                                               "spec": {"containers": [{"name": "web",
                                                                        "image": "busybox"}]}}}]

    def find(self, ident: str) -> dict[str, Any]:
        return next(c for c in self.capsules.values() if ident in (c["uuid"], c["name"]))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, body))
        if len(parts) == 2:
            want = dict(p.split("=") for p in request.url.params.get("labels", "").split(",") if p)
            return httpx.Response(200, json={"capsules": [
                c for c in self.capsules.values() if all(c["labels"].get(k) == v for k, v in want.items())],
                "next": None})
        c = self.find(parts[2])
        if len(parts) == 4 and parts[3] == "revisions":
            return httpx.Response(200, json={"revision": c["revision"], "rollout": c["rollout"],
                                             "revisions": self.revisions[c["uuid"]]})
        if request.method == "PATCH":
            if self.busy.get(c["name"]):
                return _error(409, f"Capsule {c['name']} is being updated to revision 9; wait")
            return self._begin(c, "update")
        if request.method == "POST" and parts[3] == "rollback":
            return self._begin(c, "rollback", restores=(body or {}).get("revision"))
        if self.busy.get(c["name"]):
            self.busy[c["name"]] -= 1
            c["status"], c["rollout"] = ("Updating", {"kind": "update"}) if self.busy[c["name"]] \
                else ("Running", None)
        elif c["rollout"] is not None:
            self._left[c["uuid"]] -= 1
            if not self._left[c["uuid"]]:
                self._end(c)
        return httpx.Response(200, json=c)

    def _begin(self, c: dict[str, Any], kind: str, restores: int | None = None) -> httpx.Response:
        c["revision"] += 1
        c["status"], c["rollout"] = "Updating", {"kind": kind, "restores": restores,
                                                 "to_revision": c["revision"]}
        c["status_reason"] = f"updating to revision {c['revision']}"
        for r in self.revisions[c["uuid"]]:
            r["current"] = False
        self.revisions[c["uuid"]].append({"revision": c["revision"], "current": True,
                                          "outcome": None, "outcome_reason": None,
                                          "change_cause": kind, "template": {}})
        self._left[c["uuid"]] = 2
        return httpx.Response(202, json=c)

    def _end(self, c: dict[str, Any]) -> None:
        mine = self.revisions[c["uuid"]][-1]
        c["status"], c["rollout"], c["status_reason"] = "Running", None, None
        if c["name"] in self.failing and mine["change_cause"] == "update":
            mine.update(outcome="Failed", outcome_reason="not ready within progressDeadlineSeconds (8s)",
                        current=False)
            c["revision"] += 1
            self.revisions[c["uuid"]].append({"revision": c["revision"], "current": True,
                                              "outcome": "Ready", "change_cause": "automatic rollback"})
        else:
            mine["outcome"] = "Ready"


def run(fake: FakeUpdates, *args: str, stdin: str | None = None) -> Any:
    rt = Runtime(url=BASE, token="t", transport=httpx.MockTransport(fake), poll_interval=0,
                 sleep=lambda s: None)
    return CliRunner().invoke(app, list(args), obj=rt, input=stdin)


def test_quick_changes_merge_per_container() -> None:
    assert quick_changes(["web=nginx:2"], ["web\x1fA=1", "web\x1fB-", "side\x1fC=x=y"]) == [
        {"name": "web", "image": "nginx:2", "env": {"A": "1", "B": None}},
        {"name": "side", "env": {"C": "x=y"}}]
    template = {"spec": {"containers": [{"name": "web", "image": "a", "env": {"B": "1"}}]}}
    assert apply_to_template(template, [{"name": "web", "image": "b", "env": {"B": None, "A": "1"}}]) == {
        "spec": {"containers": [{"name": "web", "image": "b", "env": {"A": "1"}}]}}


def test_update_sends_image_and_env_and_waits_for_ready() -> None:
    fake = FakeUpdates("web")
    got = run(fake, "update", "web", "--image", "web=nginx:2", "--env", "web", "MODE=fast",
              "--env", "web", "OLD-", "--wait")
    assert got.exit_code == 0, got.output
    assert "capsule/web updating to revision 2" in got.stdout
    assert "capsule/web revision 2 is ready" in got.stdout
    (patch,) = [b for m, _, b in fake.sent if m == "PATCH"]
    assert patch == {"containers": [{"name": "web", "image": "nginx:2",
                                     "env": {"MODE": "fast", "OLD": None}}]}


def test_a_failed_update_says_how_it_ended_and_exits_1(tmp_path: Path) -> None:
    fake = FakeUpdates("web")
    fake.failing.add("web")
    path = tmp_path / "v2.yaml"
    path.write_text(yaml.safe_dump({"kind": "capsule", "metadata": {},
                                    "spec": {"containers": [{"image": "busybox"}]}}))
    got = run(fake, "update", "web", "-f", str(path), "--wait")
    assert got.exit_code == 1
    assert "revision 2 failed: not ready within progressDeadlineSeconds (8s); the capsule is " \
           "at revision 3" in got.output
    (patch,) = [b for m, _, b in fake.sent if m == "PATCH"]
    assert patch["change_cause"] == f"update from {path}" and "template" in patch


def test_a_busy_capsule_is_a_409_or_with_wait_waited_for() -> None:
    fake = FakeUpdates("web")
    fake.busy["web"] = 3
    got = run(fake, "update", "web", "--image", "web=x:1")
    assert got.exit_code == 1 and "is being updated" in got.output
    got = run(fake, "update", "web", "--image", "web=x:1", "--wait")
    assert got.exit_code == 0, got.output
    assert [m for m, _, _ in fake.sent].count("PATCH") == 3  # refused twice, then made


@pytest.mark.parametrize(("args", "problem"), [
    (["update"], "exactly one of NAME|UUID or -l"),
    (["update", "web", "-l", "app=web", "--image", "a=b"], "exactly one of NAME|UUID or -l"),
    (["update", "web"], "either -f FILE or --image/--env"),
    (["update", "web", "--image", "nope"], "is not CONTAINER=IMAGE"),
    (["update", "web", "--env", "web"], "CONTAINER KEY=VALUE"),
    (["update", "web", "--env", "web", "KEY"], "is not KEY=VALUE or KEY-"),
])
def test_usage_errors_exit_2(args: list[str], problem: str) -> None:
    got = run(FakeUpdates("web"), *args)
    assert got.exit_code == 2 and problem in got.output.replace("\n", " ")


def test_a_fleet_stops_at_the_first_failing_batch_and_rolls_that_batch_back() -> None:
    fake = FakeUpdates("a", "b", "c", "d", "e")
    fake.failing.add("d")
    got = run(fake, "update", "-l", "app=web", "--image", "web=v2", "--max-unavailable", "2")
    assert got.exit_code == 1
    revs = {c["name"]: c["revision"] for c in fake.capsules.values()}
    # a, b: batch 1, fine. c, d: batch 2: d failed and rolled back by itself; c was ready,
    # so the CLI rolled it back to revision 1 (a new revision 3). e: never touched.
    assert revs == {"a": 2, "b": 2, "c": 3, "d": 3, "e": 1}
    rollbacks = [(p, b) for m, p, b in fake.sent if m == "POST"]
    assert len(rollbacks) == 1 and rollbacks[0][0].endswith(fake.find("c")["uuid"] + "/rollback")
    assert rollbacks[0][1]["revision"] == 1
    assert "fleet: stopped at batch 2/3; not touched: e" in got.stdout
    assert "capsule/d: revision 2 failed" in got.output


def test_history_lists_revisions_and_shows_one_as_yaml() -> None:
    fake = FakeUpdates("web")
    run(fake, "update", "web", "--image", "web=v2", "--wait")
    table = run(fake, "history", "web")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["REVISION", "CREATED", "USER", "OUTCOME", "CHANGE-CAUSE"]
    assert lines[1].split()[0] == "1" and lines[2].startswith("2 *")
    one = run(fake, "history", "web", "--revision", "1")
    assert yaml.safe_load(one.stdout)["spec"]["containers"][0]["image"] == "busybox"
    assert run(fake, "history", "web", "--revision", "7").exit_code == 1
