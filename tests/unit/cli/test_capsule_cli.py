"""The `capsule` CLI against an in-memory fake of the capsule API (httpx.MockTransport)."""

from __future__ import annotations

import json
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from typer.testing import CliRunner

from capsuled.cli.capsule import render
from capsuled.cli.capsule.main import Runtime, app
from cli_env import clean_env  # noqa: F401 - the autouse fixture, by name

TOKEN = "s3cret"
BASE = "http://capsuled.test"


def _error(status: int, title: str, detail: str | None = None) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{
        "status": status, "code": "container.x", "title": title, "detail": detail or title,
        "request_id": "req-1", "links": []}]})


class FakeCapsuled:
    """Just enough of /v1/capsules. Each GET of a capsule moves it one step along its
    `script` of statuses, so --wait sees it change without any real time passing."""

    def __init__(self) -> None:
        self.capsules: dict[str, dict[str, Any]] = {}
        self.scripts: dict[str, list[tuple[str, str | None]]] = {}
        self.requests: list[httpx.Request] = []
        self.posted: list[dict[str, Any]] = []
        self.page_size = 1000
        self.fail_next: httpx.Response | None = None

    # -- test helpers
    def add(self, name: str | None, status: str = "Running", labels: dict[str, str] | None = None,
            **extra: Any) -> dict[str, Any]:
        uuid = str(uuidlib.uuid4())
        body: dict[str, Any] = {
            "uuid": uuid, "name": name, "labels": labels or {}, "annotations": {},
            "status": status, "status_reason": None,
            "restart_policy": {"Name": "always", "MaximumRetryCount": "0"},
            "cpu": 0.5, "memory": "384", "addresses": {}, "project_id": "p", "user_id": "u",
            "created_at": "2026-11-24 08:00:00.123456", "updated_at": None, "restart_count": 1,
            "volumes": [{"name": "site", "type": "emptyDir", "size": None, "auto_remove": True,
                         "docker_volume": "vol-1"}],
            "containers": [self._container("web", "Running", 2), self._container("probe", status, 0)],
            "init_containers": [self._container("prepare", "Stopped", 0, exit_code=0)],
        }
        body.update(extra)
        self.capsules[uuid] = body
        return body

    @staticmethod
    def _container(name: str, status: str, restarts: int, exit_code: int | None = None) -> dict[str, Any]:
        return {"uuid": str(uuidlib.uuid4()), "name": name, "image": "busybox", "command": [],
                "status": status, "status_reason": None, "restart_count": restarts,
                "exit_code": exit_code}

    def sent(self, method: str) -> list[httpx.Request]:
        """Requests for capsules (a wait also asks /v1/events, which this fake has not)."""
        return [r for r in self.requests if r.method == method
                and r.url.path.startswith("/v1/capsules")]

    # -- the API
    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("X-Auth-Token") != TOKEN:
            return _error(401, "Authentication required")
        if self.fail_next is not None:
            response, self.fail_next = self.fail_next, None
            return response
        parts = request.url.path.strip("/").split("/")
        if parts[:2] != ["v1", "capsules"]:
            return _error(404, "no such route")
        if len(parts) == 2:
            return self._create(request) if request.method == "POST" else self._list(request)
        found = self._find(parts[2])
        if isinstance(found, httpx.Response):
            return found
        if len(parts) == 4 and parts[3] == "events":
            return httpx.Response(200, json={"events": [
                {"created_at": "2026-11-24 08:00:01", "type": "Normal", "reason": "Created",
                 "message": "created sandbox", "container": None},
                {"created_at": "2026-11-24 08:00:02", "type": "Warning", "reason": "BackOff",
                 "message": "restarting [web]", "container": "web", "count": 4,
                 "last_seen": "2026-11-24 08:00:09"}]})
        if request.method == "DELETE":
            found["status"] = "Deleting"
            self.scripts[found["uuid"]] = [("GONE", None)]
            return httpx.Response(204)
        return self._show(found)

    def _find(self, ident: str) -> dict[str, Any] | httpx.Response:
        if ident in self.capsules:
            return self.capsules[ident]
        named = [c for c in self.capsules.values() if c["name"] == ident]
        if len(named) > 1:
            return _error(409, f"Multiple capsules exist with name {ident}")
        if not named:
            return _error(404, f"Capsule {ident} could not be found")
        return named[0]

    def _show(self, capsule: dict[str, Any]) -> httpx.Response:
        script = self.scripts.get(capsule["uuid"])
        if script:
            status, reason = script.pop(0)
            if status == "GONE":
                del self.capsules[capsule["uuid"]]
                return _error(404, f"Capsule {capsule['uuid']} could not be found")
            capsule["status"], capsule["status_reason"] = status, reason
        return httpx.Response(200, json=capsule)

    def _create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.posted.append(body)
        meta = body["template"].get("metadata") or {}
        if meta.get("name") == "invalid":
            return _error(400, "2 problems: spec.containers: required; kind: wrong",
                          "spec.containers: required\nkind: wrong")
        capsule = self.add(meta.get("name"), status="Creating", labels=meta.get("labels"))
        self.scripts.setdefault(capsule["uuid"], [("Created", None), ("Running", None)])
        return httpx.Response(202, json=capsule)

    def _list(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        wanted = dict(p.split("=", 1) for p in params.get("labels", "").split(",") if p)
        rows = [c for c in self.capsules.values()
                if all(c["labels"].get(k) == v for k, v in wanted.items())]
        start = int(params.get("marker", "0"))
        page = rows[start:start + self.page_size]
        nxt = None
        if start + self.page_size < len(rows):
            query = {k: v for k, v in params.multi_items() if k != "marker"}
            nxt = f"{BASE}/v1/capsules?{urlencode({**query, 'marker': start + self.page_size})}"
        return httpx.Response(200, json={"capsules": page, "next": nxt})


@pytest.fixture()
def fake() -> FakeCapsuled:
    return FakeCapsuled()


@pytest.fixture()
def cli(fake: FakeCapsuled) -> Iterator[Any]:
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Any:
        env = {"CAPSULE_URL": BASE, "CAPSULE_TOKEN": TOKEN} if env is None else env
        rt = Runtime(transport=httpx.MockTransport(fake), poll_interval=0)
        return runner.invoke(app, list(args), obj=rt, env=env, input=input)

    yield invoke


WEB = """\
kind: capsule
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - {name: web, image: busybox}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- create -------------------------------------------------------------------------------

def test_create_from_yaml_file(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    result = cli("create", "-f", str(write(tmp_path, "web.yaml", WEB)))
    assert result.exit_code == 0, result.output
    (capsule,) = fake.capsules.values()
    assert result.stdout == f"capsule/web created ({capsule['uuid']})\n"
    assert fake.posted == [{"template": {"kind": "capsule", "metadata": {
        "name": "web", "labels": {"app": "web"}}, "spec": {"containers": [
            {"name": "web", "image": "busybox"}]}}}]
    request = fake.requests[0]
    assert request.headers["OpenStack-API-Version"] == "container 1.40"
    assert request.headers["Accept"] == "application/json"


def test_create_from_multi_document_yaml(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    text = WEB + "---\n" + WEB.replace("name: web\n", "name: db\n") + "---\n"
    result = cli("create", "-f", str(write(tmp_path, "two.yaml", text)))
    assert result.exit_code == 0, result.output
    assert [p["template"]["metadata"]["name"] for p in fake.posted] == ["web", "db"]
    assert "capsule/web created" in result.stdout and "capsule/db created" in result.stdout


def test_create_from_directory_sorted_and_filtered(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    write(tmp_path, "b.yml", WEB.replace("name: web\n", "name: bee\n"))
    write(tmp_path, "a.json", json.dumps({"kind": "capsule", "metadata": {"name": "ay"}, "spec": {}}))
    write(tmp_path, "notes.txt", "not a template")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "c.yaml", WEB)
    result = cli("create", "-f", str(tmp_path), "-o", "json")
    assert result.exit_code == 0, result.output
    assert [p["template"]["metadata"]["name"] for p in fake.posted] == ["ay", "bee"]
    assert [c["name"] for c in json.loads(result.stdout)] == ["ay", "bee"]


def test_create_with_a_bad_file_sends_nothing(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", WEB)
    bad = write(tmp_path, "bad.yaml", "kind: capsule\nspec: [unclosed\n")
    result = cli("create", "-f", str(good), "-f", str(bad))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not valid YAML")
    assert fake.requests == []


@pytest.mark.parametrize("text,expected", [
    ("a0: &a0 lol\n" + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n"
                               for i in range(1, 8)) + "kind: *a7\n", "expands to more than"),
    ("x: " + "[" * 2000 + "]" * 2000 + "\n", "nested deeper than"),
    ("{" + '"a": {' * 2000 + "}" * 2001, "nested deeper than"),
], ids=["billion-laughs", "deep-yaml", "deep-json"])
def test_create_refuses_hostile_files_fast_and_sends_nothing(
        cli: Any, fake: FakeCapsuled, tmp_path: Path, text: str, expected: str) -> None:
    started = time.monotonic()
    result = cli("create", "-f", str(write(tmp_path, "evil.yaml", text)))
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert expected in result.stderr and "evil.yaml" in result.stderr
    assert fake.posted == []


def test_create_with_a_missing_file(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    result = cli("create", "-f", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert result.stderr == f"error: cannot read {tmp_path / 'nope.yaml'}: No such file or directory\n"
    assert fake.requests == []


def test_create_reports_rejected_templates_and_creates_the_rest(
        cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    text = WEB.replace("name: web\n", "name: invalid\n") + "---\n" + WEB
    path = write(tmp_path, "mixed.yaml", text)
    result = cli("create", "-f", str(path))
    assert result.exit_code == 1
    assert "capsule/web created" in result.stdout
    assert result.stderr.splitlines() == [
        f"error: 2 problems: spec.containers: required; kind: wrong ({path}, document 1)",
        "  spec.containers: required", "  kind: wrong"]


def test_create_wait_until_running(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    result = cli("create", "-f", str(write(tmp_path, "web.yaml", WEB)), "--wait", "-o", "json")
    assert result.exit_code == 0, result.output
    assert [c["status"] for c in json.loads(result.stdout)] == ["Running"]
    assert len(fake.sent("GET")) == 2  # Created, then Running
    assert "capsule/web: Running" in result.stderr  # progress, one line per change off a tty


def test_create_wait_lets_the_server_hold_the_answer(cli: Any, fake: FakeCapsuled,
                                                     tmp_path: Path) -> None:
    result = cli("create", "-f", str(write(tmp_path, "web.yaml", WEB)), "--wait")
    assert result.exit_code == 0, result.output
    first, held = fake.sent("GET")
    assert dict(first.url.params) == {}
    assert held.url.params["wait_while"] == "Created"  # the status it last saw
    assert 0 < float(held.url.params["wait_timeout"]) <= 10


def test_create_wait_sleeps_between_reads_of_a_server_that_does_not_hold(
        fake: FakeCapsuled, tmp_path: Path) -> None:
    original = fake._create

    def slow(request: httpx.Request) -> httpx.Response:
        response = original(request)
        fake.scripts[response.json()["uuid"]] = [("Creating", None)] * 3 + [("Running", None)]
        return response

    fake._create = slow  # type: ignore[method-assign]
    naps: list[float] = []
    rt = Runtime(transport=httpx.MockTransport(fake), poll_interval=0.25, sleep=naps.append)
    result = CliRunner().invoke(app, ["create", "-f", str(write(tmp_path, "web.yaml", WEB)), "--wait"],
                                obj=rt, env={"CAPSULE_URL": BASE, "CAPSULE_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert naps == [0.25, 0.25]  # each unchanged, unheld answer; none after the change


def test_create_wait_reports_a_failed_capsule(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    original = fake._create

    def failing(request: httpx.Request) -> httpx.Response:
        response = original(request)
        fake.scripts[response.json()["uuid"]] = [("Error", "image busybox:nope not found")]
        return response

    fake._create = failing  # type: ignore[method-assign]
    result = cli("create", "-f", str(write(tmp_path, "web.yaml", WEB)), "--wait")
    assert result.exit_code == 1
    assert "error: capsule web failed: image busybox:nope not found" in result.stderr


def test_create_wait_times_out(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    result = cli("create", "-f", str(write(tmp_path, "web.yaml", WEB)), "--wait", "--timeout", "0")
    assert result.exit_code == 1
    assert "error: timed out after 0s; not Running yet: web (Created)" in result.stderr


# --- list -----------------------------------------------------------------------------------

def test_list_table(cli: Any, fake: FakeCapsuled) -> None:
    web = fake.add("web", labels={"app": "web", "tier": "front"}, ready="1/2")
    result = cli("list")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["UUID", "NAME", "STATUS", "CONTAINERS", "READY", "RESTARTS", "LABELS", "AGE"]
    cells = row.split()
    # 2 of 2 running; restarts = 1 (sandbox) + 2 + 0 (containers)
    assert cells[:7] == [web["uuid"], "web", "Running", "2/2", "1/2", "3", "app=web,tier=front"]


def test_describe_shows_ready_health_and_probe_state(cli: Any, fake: FakeCapsuled) -> None:
    web = fake.add("web", ready="1/2", health="healthy")
    web["containers"][0].update(ready=False, probe={"readiness": {
        "result": "failure", "consecutive_failures": 3, "last_failure": "HTTP probe failed with status 404"}})
    result = cli("describe", "web")
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "Ready: 1/2" in out and "Health: healthy" in out
    assert "readiness: failure x3 (HTTP probe failed with status 404)" in out


def test_describe_shows_published_ports(cli: Any, fake: FakeCapsuled) -> None:
    web = fake.add("web")
    web["containers"][0]["published_ports"] = [
        {"container_port": 8080, "protocol": "TCP", "host_port": 18080},
        {"container_port": 53, "protocol": "UDP", "host_port": None}]
    result = cli("describe", "web")
    assert result.exit_code == 0, result.output
    assert "PORTS" in result.stdout and "18080->8080/TCP, 53/UDP" in result.stdout


def test_list_json_follows_next_links(cli: Any, fake: FakeCapsuled) -> None:
    names = [f"c{i}" for i in range(5)]
    for name in names:
        fake.add(name)
    fake.page_size = 2
    result = cli("list", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [c["name"] for c in json.loads(result.stdout)] == names
    assert len(fake.sent("GET")) == 3


def test_list_sends_one_label_selector(cli: Any, fake: FakeCapsuled) -> None:
    fake.add("web", labels={"app": "web", "tier": "front"})
    fake.add("db", labels={"app": "db"})
    result = cli("list", "-l", "app=web", "-l", "tier=front", "--all-projects", "-o", "json")
    assert result.exit_code == 0, result.output
    (request,) = fake.requests
    assert request.url.params.get_list("labels") == ["app=web,tier=front"]
    assert request.url.params["all_projects"] == "1"
    assert request.url.params["limit"] == "1000"
    assert [c["name"] for c in json.loads(result.stdout)] == ["web"]


@pytest.mark.parametrize("bad", ["app", "=web", "a=b,c=d"])
def test_list_rejects_bad_selectors(cli: Any, fake: FakeCapsuled, bad: str) -> None:
    result = cli("list", "-l", bad)
    assert result.exit_code == 2
    assert fake.requests == []


def test_server_error_title_is_printed(cli: Any, fake: FakeCapsuled) -> None:
    fake.fail_next = _error(503, "The database is unavailable", "retry later")
    result = cli("list")
    assert result.exit_code == 1
    assert result.stderr == "error: The database is unavailable\n"


def test_non_json_error_body(cli: Any, fake: FakeCapsuled) -> None:
    fake.fail_next = httpx.Response(502, text="upstream went away")
    result = cli("list")
    assert result.exit_code == 1
    assert result.stderr == "error: HTTP 502 Bad Gateway: upstream went away\n"


def test_connection_refused_is_one_line(fake: FakeCapsuled) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    rt = Runtime(transport=httpx.MockTransport(refuse))
    result = CliRunner().invoke(app, ["list"], obj=rt, env={"CAPSULE_TOKEN": TOKEN})
    assert result.exit_code == 1
    assert result.stderr == "error: cannot reach capsuled at http://127.0.0.1:9517 (connection refused)\n"


# --- describe -------------------------------------------------------------------------------

def test_describe_continues_past_a_missing_capsule(cli: Any, fake: FakeCapsuled) -> None:
    web = fake.add("web", labels={"app": "web"}, host="node-1")
    result = cli("describe", "ghost", "web")
    assert result.exit_code == 1
    assert result.stderr == ("error: Capsule ghost could not be found\n"
                             "  hint: `capsule list` shows the capsules you can see\n")
    out = result.stdout
    for expected in (web["uuid"], "Running", "app=web", "384 MiB", "always", "node-1",
                     "prepare (init)", "emptyDir", "vol-1", "BackOff",
                     "restarting [web] (4 times, last"):
        assert expected in out, expected
    # init containers first
    assert out.index("prepare (init)") < out.index("probe")
    assert fake.requests[-1].url.path == f"/v1/capsules/{web['uuid']}/events"


def test_describe_json_is_a_list_of_bodies(cli: Any, fake: FakeCapsuled) -> None:
    web, db = fake.add("web"), fake.add("db")
    result = cli("describe", "web", "db", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [web, db]


def test_ambiguous_name(cli: Any, fake: FakeCapsuled) -> None:
    fake.add("twin"), fake.add("twin")
    result = cli("describe", "twin")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: Multiple capsules exist with name twin",
        "  hint: name it by uuid: `capsule list -o wide` and `capsule container list --capsule "
        "NAME` show them"]


# --- delete -----------------------------------------------------------------------------------

def test_delete_by_name_and_wait(cli: Any, fake: FakeCapsuled) -> None:
    fake.add("web")
    keep = fake.add("db")
    result = cli("delete", "web", "--wait")
    assert result.exit_code == 0, result.output
    assert result.stdout == "capsule/web deleted\n"
    assert list(fake.capsules) == [keep["uuid"]]
    assert [r.url.path for r in fake.sent("DELETE")] == ["/v1/capsules/web"]


def test_delete_by_label(cli: Any, fake: FakeCapsuled) -> None:
    web = fake.add("web", labels={"app": "web"})
    fake.add("db", labels={"app": "db"})
    result = cli("delete", "-l", "app=web")
    assert result.exit_code == 0, result.output
    assert result.stdout == "capsule/web deleted\n"
    assert [r.url.path for r in fake.sent("DELETE")] == [f"/v1/capsules/{web['uuid']}"]
    assert fake.sent("GET")[0].url.params["labels"] == "app=web"


def test_delete_all(cli: Any, fake: FakeCapsuled) -> None:
    fake.add("web"), fake.add(None)
    result = cli("delete", "--all", "--all-projects", "-o", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2
    assert {r.url.params["all_projects"] for r in fake.sent("DELETE")} == {"1"}
    assert all(c["status"] == "Deleting" for c in fake.capsules.values())


def test_delete_reports_missing_and_exits_1(cli: Any, fake: FakeCapsuled) -> None:
    fake.add("web")
    result = cli("delete", "ghost", "web")
    assert result.exit_code == 1
    assert result.stdout == "capsule/web deleted\n"
    assert result.stderr == ("error: Capsule ghost could not be found (capsule/ghost)\n"
                             "  hint: `capsule list` shows the capsules you can see\n")


@pytest.mark.parametrize("args", [["web", "-l", "app=web"], ["web", "--all"],
                                  ["-l", "app=web", "--all"], []])
def test_delete_needs_exactly_one_selection(cli: Any, fake: FakeCapsuled, args: list[str]) -> None:
    result = cli("delete", *args)
    assert result.exit_code == 2
    assert "exactly one of" in result.stderr
    assert fake.requests == []


# --- connection settings -------------------------------------------------------------------

def test_token_is_read_from_the_state_dir(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text(f"  {TOKEN}\n")
    fake.add("web")
    result = cli("list", env={"CAPSULED_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert fake.requests[0].headers["X-Auth-Token"] == TOKEN
    assert str(fake.requests[0].url).startswith("http://127.0.0.1:9517/v1/capsules")


def test_state_dir_token_is_only_for_the_local_server(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text(TOKEN)
    result = cli("list", env={"CAPSULED_STATE_DIR": str(tmp_path), "CAPSULE_URL": BASE})
    assert result.exit_code == 1
    assert "X-Auth-Token" not in fake.requests[0].headers
    assert result.stderr == ("error: the server wants a token and none was given: "
                             "pass --token or set CAPSULE_TOKEN\n")


def test_state_dir_token_serves_a_local_server_on_another_port(cli: Any, fake: FakeCapsuled,
                                                               tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text(TOKEN)
    result = cli("list", env={"CAPSULED_STATE_DIR": str(tmp_path),
                              "CAPSULE_URL": "http://127.0.0.1:9599"})
    assert result.exit_code == 0, result.output
    assert fake.requests[0].headers["X-Auth-Token"] == TOKEN


def test_missing_local_token_names_the_file(cli: Any, tmp_path: Path) -> None:
    result = cli("list", env={"CAPSULED_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert str(tmp_path / "admin-token") in result.stderr
    assert len(result.stderr.splitlines()) == 1


# --- rendering helpers -------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [(-5, "0s"), (59, "59s"), (150, "2m30s"), (900, "15m"),
                                               (3 * 3600 + 60, "3h1m"), (30 * 3600, "30h"),
                                               (3 * 86400, "3d"), (30 * 86400, "30d")])
def test_humanize(seconds: float, text: str) -> None:
    assert render.humanize(seconds) == text


def test_age_of_naive_utc_timestamp() -> None:
    now = render.parse_time("2026-11-24 09:00:00")
    assert render.age("2026-11-24 08:59:30.5", now) == "29s"
    assert render.age(None, now) == "-"
