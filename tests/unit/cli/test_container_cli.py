"""`capsule run` and `capsule container …` against a scripted fake of /v1/containers
(httpx.MockTransport): the exact requests each command sends, its output and exit code."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from capsuled.cli.capsule import archives, container_common, render, terminal
from capsuled.cli.capsule.main import Runtime, app
from cli_env import clean_env  # noqa: F401 - the autouse fixture, by name

TOKEN = "s3cret"
BASE = "http://capsuled.test"
UUID = "0b7c4b9e-6a3f-4d52-9c1e-5d7f1f0a2b3c"
DIR_MODE = (1 << 31) | 0o755

Reply = httpx.Response | Callable[[httpx.Request], httpx.Response]


def _error(status: int, title: str, detail: str | None = None) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{
        "status": status, "code": "container.x", "title": title, "detail": detail or title,
        "request_id": "req-1", "links": []}]})


def container(name: str = "web", status: str = "Running", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "uuid": UUID, "name": name, "image": "busybox", "command": ["sleep", "3600"],
        "entrypoint": [], "status": status, "status_reason": None, "status_detail": status,
        "cpu": 0.5, "memory": "64", "environment": {"A": "1"}, "workdir": "/tmp",
        "labels": {"app": "web"}, "restart_policy": {"Name": "on-failure", "MaximumRetryCount": "3"},
        "interactive": False, "tty": False, "auto_remove": False, "hostname": name,
        "restart_count": 2, "exit_code": None, "started_at": None, "finished_at": None,
        "created_at": "2026-11-24 08:00:00.123456", "capsule_id": None}
    body.update(extra)
    return body


class FakeApi:
    """Scripted answers by (method, path): a queue, the last answer repeating. Anything
    unscripted is a Zun-style 404. Every request is recorded."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *replies: Reply) -> None:
        self.routes[(method, path)] = list(replies)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("X-Auth-Token") != TOKEN:
            return _error(401, "Authentication required")
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            return _error(404, f"no route {request.method} {request.url.path}")
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        return reply(request) if callable(reply) else reply

    def only(self) -> httpx.Request:
        assert len(self.requests) == 1, [f"{r.method} {r.url}" for r in self.requests]
        return self.requests[0]

    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path}" + (f"?{r.url.query.decode()}" if r.url.query else "")
                for r in self.requests]


def sent(request: httpx.Request) -> Any:
    return json.loads(request.content)


@pytest.fixture()
def fake() -> FakeApi:
    return FakeApi()


@pytest.fixture()
def cli(fake: FakeApi) -> Iterator[Any]:
    runner = CliRunner()

    def invoke(*args: str, input: bytes | str | None = None) -> Any:
        rt = Runtime(transport=httpx.MockTransport(fake), poll_interval=0)
        return runner.invoke(app, list(args), obj=rt, input=input,
                             env={"CAPSULE_URL": BASE, "CAPSULE_TOKEN": TOKEN})

    yield invoke


# --- run --------------------------------------------------------------------------------------

def test_run_sends_every_option_and_passes_the_command_through(cli: Any, fake: FakeApi,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HERE", "local value")
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container(status="Creating")))
    result = cli("run", "--name", "web", "-e", "A=1=2", "-e", "FROM_HERE", "-w", "/srv",
                 "--cpu", "0.5", "-m", "1g", "-l", "app=web", "-l", "tier=", "--restart",
                 "on-failure:3", "-i", "-t", "busybox", "sh", "-c", "echo -n hi; ls -l --color")
    assert result.exit_code == 0, result.output
    request = fake.only()
    assert request.url.params["run"] == "true"
    assert request.headers["OpenStack-API-Version"] == "container 1.40"
    assert sent(request) == {
        "image": "busybox", "command": ["sh", "-c", "echo -n hi; ls -l --color"], "name": "web",
        "environment": {"A": "1=2", "FROM_HERE": "local value"}, "workdir": "/srv", "cpu": 0.5,
        "memory": "1024", "labels": {"app": "web", "tier": ""},
        "restart_policy": {"Name": "on-failure", "MaximumRetryCount": "3"},
        "interactive": True, "tty": True}
    assert result.stdout == f"container/web created ({UUID})\n"


def test_run_sends_only_what_was_asked(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container(name="c-1")))
    result = cli("run", "--rm", "busybox")
    assert result.exit_code == 0, result.output
    assert sent(fake.only()) == {"image": "busybox", "auto_remove": True}


def test_run_publishes_ports_as_zuns_exposed_ports_and_show_lists_them(cli: Any,
                                                                         fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container(name="c-1")))
    result = cli("run", "-p", "8080", "--expose-port", "53/udp", "busybox")
    assert result.exit_code == 0, result.output
    assert sent(fake.only())["exposed_ports"] == {"8080": {}, "53/udp": {}}
    fake.on("GET", "/v1/containers/web", httpx.Response(200, json=container(published_ports=[
        {"container_port": 8080, "protocol": "TCP", "host_port": 49160}])))
    shown = cli("container", "show", "web")
    assert "Published ports:" in shown.stdout and "49160->8080/TCP" in shown.stdout


def test_run_with_mounts_sends_zuns_mounts(cli: Any, fake: FakeApi, tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_bytes(b"port=8080\n\x00\xff")
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container(name="c-1")))
    result = cli("run", "--mount", "size=2,destination=/data", "--mount",
                 f"type=bind,source={conf},destination=/etc/app.conf", "busybox")
    assert result.exit_code == 0, result.output
    assert sent(fake.only())["mounts"] == [
        {"size": "2", "destination": "/data"},
        {"type": "bind", "source": base64.b64encode(b"port=8080\n\x00\xff").decode(),
         "destination": "/etc/app.conf"}]


def test_run_in_a_capsule(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers",
            httpx.Response(202, json=container(name="debug", capsule_id="cap-uuid")))
    result = cli("run", "--capsule", "web-demo", "--name", "debug", "busybox", "sleep", "60", "-o", "json")
    assert result.exit_code == 0, result.output
    assert sent(fake.only()) == {"image": "busybox", "command": ["sleep", "60", "-o", "json"],
                                 "name": "debug", "capsule": "web-demo"}
    # -o after IMAGE belongs to the command: the default table output is used.
    assert result.stdout == f"container/debug created in capsule web-demo ({UUID})\n"


@pytest.mark.parametrize(("args", "needle"), [
    (["--capsule", "web", "--restart", "always", "busybox"], "--restart cannot be combined with --capsule"),
    (["--capsule", "web", "--rm", "busybox"], "--rm cannot be combined with --capsule"),
    (["--restart", "sometimes", "busybox"], "on-failure:N"),
    (["--restart", "always:3", "busybox"], "only on-failure takes a retry count"),
    (["-m", "lots", "busybox"], "not a size in MiB"),
    (["--cpu", "0", "busybox"], "not above 0"),
    (["-e", "NOT_SET_ANYWHERE_42", "busybox"], "NOT_SET_ANYWHERE_42 is not set here"),
    (["-l", "novalue", "busybox"], "not KEY=VALUE"),
    (["--mount", "size=1", "busybox"], "destination=/path is required"),
    (["--mount", "sz=1,destination=/d", "busybox"], "use size=GiB,destination=/path"),
    (["--mount", "type=bind,source=/no/such/file,destination=/f", "busybox"], "cannot read"),
    ([], "Missing argument"),
])
def test_run_usage_errors_send_nothing(cli: Any, fake: FakeApi, args: list[str], needle: str) -> None:
    result = cli("run", *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert fake.requests == []


def test_run_reports_the_servers_refusal(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers", _error(400, "memory: must be between 4 and 65536 MiB"))
    result = cli("run", "-m", "2", "busybox")
    assert result.exit_code == 1
    assert result.stderr == "error: memory: must be between 4 and 65536 MiB\n"
    assert result.stdout == ""


def test_run_wait_until_running(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container(status="Creating")))
    fake.on("GET", f"/v1/containers/{UUID}", httpx.Response(200, json=container(status="Created")),
            httpx.Response(200, json=container(status="Running")))
    result = cli("run", "--wait", "-o", "json", "busybox", "sleep", "3600")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "Running"
    assert fake.calls() == ["POST /v1/containers?run=true", f"GET /v1/containers/{UUID}",
                            f"GET /v1/containers/{UUID}"]
    assert "container/web: Created" in result.stderr and "container/web: Running" in result.stderr


@pytest.mark.parametrize(("final", "message"), [
    (container(status="Error", status_reason="image busybox:nope not found"),
     "error: container web failed: image busybox:nope not found"),
    (container(status="Stopped", exit_code=3), "error: container web exited with code 3"),
])
def test_run_wait_fails_with_the_reason(cli: Any, fake: FakeApi, final: dict[str, Any], message: str) -> None:
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container(status="Creating")))
    fake.on("GET", f"/v1/containers/{UUID}", httpx.Response(200, json=final))
    result = cli("run", "--wait", "busybox")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == message


def test_run_wait_accepts_a_clean_exit_and_an_auto_removed_container(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container(status="Creating")))
    fake.on("GET", f"/v1/containers/{UUID}", httpx.Response(200, json=container(status="Stopped", exit_code=0)))
    assert cli("run", "--wait", "busybox", "true").exit_code == 0
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container(status="Creating", auto_remove=True)))
    fake.on("GET", f"/v1/containers/{UUID}", _error(404, f"Container {UUID} could not be found."))
    assert cli("run", "--rm", "--wait", "busybox", "true").exit_code == 0


def test_run_wait_times_out(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container(status="Creating")))
    fake.on("GET", f"/v1/containers/{UUID}", httpx.Response(200, json=container(status="Creating")))
    result = cli("run", "--wait", "--timeout", "0", "busybox")
    assert result.exit_code == 1
    assert "error: timed out after 0s; not Running yet: web (Creating)" in result.stderr


# --- list / show ------------------------------------------------------------------------------

def test_list_table(cli: Any, fake: FakeApi) -> None:
    stopped = container("done", status="Stopped", exit_code=3, uuid="u-2", command=["sh", "-c", "exit 3"])
    fake.on("GET", "/v1/containers", httpx.Response(200, json={
        "containers": [container(), stopped], "next": None}))
    result = cli("container", "list")
    assert result.exit_code == 0, result.output
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["UUID", "NAME", "IMAGE", "COMMAND", "STATUS", "RESTARTS", "AGE"]
    assert first.split()[:7] == [UUID, "web", "busybox", "sleep", "3600", "Running", "2"]
    assert "sh -c 'exit 3'" in second and "Stopped (exit 3)" in second
    assert fake.only().url.params["limit"] == "1000"


def test_list_of_a_capsule_follows_next_links(cli: Any, fake: FakeApi) -> None:
    page2 = f"{BASE}/v1/containers?capsule=web-demo&all_projects=1&limit=1&marker={UUID}"
    fake.on("GET", "/v1/containers",
            httpx.Response(200, json={"containers": [container("a")], "next": page2}),
            httpx.Response(200, json={"containers": [container("b")], "next": None}))
    result = cli("container", "list", "--capsule", "web-demo", "--all-projects", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [c["name"] for c in json.loads(result.stdout)] == ["a", "b"]
    first, second = fake.requests
    assert (first.url.params["capsule"], first.url.params["all_projects"]) == ("web-demo", "1")
    assert str(second.url) == page2


def test_list_empty(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers", httpx.Response(200, json={"containers": [], "next": None}))
    result = cli("container", "list")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "No containers found.\n")


def test_show_continues_past_a_missing_container(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers/probe", httpx.Response(200, json=container(
        "probe", capsule_id="cap-1", host="node-1", environment={"GREETING": "[red]hi"})))
    fake.on("GET", "/v1/containers/ghost", _error(404, "Container ghost could not be found."))
    result = cli("container", "show", "ghost", "probe", "--capsule", "web-demo")
    assert result.exit_code == 1
    assert result.stderr == "error: Container ghost could not be found.\n"
    for expected in (UUID, "cap-1", "sleep 3600", "on-failure:3", "64 MiB", "GREETING=[red]hi",
                     "app=web", "node-1", "Running"):
        assert expected in result.stdout, expected
    # (the hint for `ghost` lists capsules and containers: one page each)
    assert {r.url.params["capsule"] for r in fake.requests
            if r.url.path.startswith("/v1/containers/")} == {"web-demo"}


def test_show_lists_the_addresses(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers/web", httpx.Response(200, json=container(addresses={
        "net-1": [{"addr": "10.208.0.2", "version": 4, "port": "p", "subnet_id": "s",
                   "preserve_on_delete": False}], "odd": "not a list"})))
    result = cli("container", "show", "web")
    assert result.exit_code == 0, result.output
    assert "Addresses:" in result.stdout and "10.208.0.2" in result.stdout


def test_show_json(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers/web", httpx.Response(200, json=container()))
    result = cli("container", "show", "web", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [container()]
    assert "capsule" not in fake.only().url.params


# --- lifecycle --------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "call", "output"), [
    (["start", "web"], "POST /v1/containers/web/start", "container/web started"),
    (["stop", "web"], "POST /v1/containers/web/stop", "container/web stopped"),
    (["stop", "-t", "2", "web"], "POST /v1/containers/web/stop?timeout=2", "container/web stopped"),
    (["restart", "--timeout", "0", "web"], "POST /v1/containers/web/reboot?timeout=0",
     "container/web restarted"),
    (["pause", "web"], "POST /v1/containers/web/pause", "container/web paused"),
    (["unpause", "web"], "POST /v1/containers/web/unpause", "container/web unpaused"),
    (["kill", "web"], "POST /v1/containers/web/kill", "container/web killed"),
    (["kill", "-s", "USR1", "web"], "POST /v1/containers/web/kill?signal=USR1", "container/web sent USR1"),
    (["delete", "web"], "DELETE /v1/containers/web", "container/web deleted"),
    (["delete", "--stop", "--force", "web"], "DELETE /v1/containers/web?force=true&stop=true",
     "container/web deleted"),
])
def test_lifecycle_commands(cli: Any, fake: FakeApi, args: list[str], call: str, output: str) -> None:
    method, path = call.split(" ")[0], call.split(" ")[1].split("?")[0]
    fake.on(method, path, httpx.Response(204 if method == "DELETE" else 202))
    result = cli("container", *args)
    assert result.exit_code == 0, result.output
    assert fake.calls() == [call]
    assert fake.only().content == b""
    assert result.stdout == output + "\n"


def test_lifecycle_reports_each_refusal_and_carries_on(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers/extra/stop", _error(
        409, "Cannot stop container extra: it belongs to capsule web-demo; its lifecycle follows "
             "the capsule (delete or recreate the capsule instead)."))
    fake.on("POST", "/v1/containers/web/stop", httpx.Response(202))
    result = cli("container", "stop", "extra", "web", "web", "-o", "json")
    assert result.exit_code == 1
    assert result.stderr == ("error: Cannot stop container extra: it belongs to capsule web-demo; its "
                             "lifecycle follows the capsule (delete or recreate the capsule instead). "
                             "(container/extra)\n")
    assert json.loads(result.stdout) == ["web"]
    assert len(fake.requests) == 2  # web once, though named twice


def test_rename(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers/web/rename", httpx.Response(200, json=container("web-old")))
    result = cli("container", "rename", "web", "web-old")
    assert result.exit_code == 0, result.output
    assert fake.calls() == ["POST /v1/containers/web/rename?name=web-old"]
    assert result.stdout == "container/web renamed to web-old\n"


def test_update_in_a_capsule(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers/probe", httpx.Response(200, json=container("probe")))
    fake.on("PATCH", f"/v1/containers/{UUID}", httpx.Response(200, json=container("probe", memory="32")))
    result = cli("container", "update", "--capsule", "web-demo", "--cpu", "1", "-m", "32", "probe")
    assert result.exit_code == 0, result.output
    assert fake.calls() == ["GET /v1/containers/probe?capsule=web-demo",
                            f"PATCH /v1/containers/{UUID}?capsule=web-demo"]
    request = fake.requests[1]
    assert request.url.params["capsule"] == "web-demo"
    assert sent(request) == {"cpu": 1.0, "memory": "32"}
    assert request.headers["Content-Type"] == "application/json"
    assert result.stdout == "container/probe updated (cpu 1.0, memory 32 MiB)\n"


def test_update_of_a_bare_container(cli: Any, fake: FakeApi) -> None:
    fake.on("PATCH", "/v1/containers/web", httpx.Response(200, json=container(cpu=2.0)))
    result = cli("container", "update", "--cpu", "2", "web", "-o", "json")
    assert result.exit_code == 0, result.output
    assert fake.calls() == ["PATCH /v1/containers/web"]
    assert sent(fake.only()) == {"cpu": 2.0}
    assert json.loads(result.stdout)["cpu"] == 2.0


def test_update_needs_a_change(cli: Any, fake: FakeApi) -> None:
    result = cli("container", "update", "web")
    assert result.exit_code == 2
    assert "nothing to change" in result.stderr
    assert fake.requests == []


# --- logs ---------------------------------------------------------------------------------------

LOG_BYTES = b"line one\n\x00\x01\xff\xfebin\nto stderr\n"


def test_logs_are_byte_exact(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers/web/logs", httpx.Response(200, content=LOG_BYTES))
    result = cli("container", "logs", "web")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == LOG_BYTES
    request = fake.only()
    assert request.headers["Accept"] == "application/octet-stream"
    assert dict(request.url.params) == {}


def test_logs_options(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers/probe/logs", httpx.Response(200, content=b"x\n"))
    before = int(time.time())
    result = cli("container", "logs", "-t", "-n", "5", "--since", "10m", "--no-stderr",
                 "--capsule", "web-demo", "probe")
    assert result.exit_code == 0, result.output
    params = dict(fake.only().url.params)
    since = int(params.pop("since"))
    assert before - 600 - 1 <= since <= int(time.time()) - 600
    assert params == {"stderr": "false", "timestamps": "true", "tail": "5", "capsule": "web-demo"}


def test_logs_json_is_one_string(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers/web/logs", httpx.Response(200, content=b"hi\n\xff"))
    result = cli("container", "logs", "-o", "json", "web")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == "hi\n\ufffd"


def test_logs_follow_streams_until_the_end(cli: Any, fake: FakeApi) -> None:
    chunks = [b"first\n", b"\x00second\n", b"third"]
    fake.on("GET", "/v1/containers/web/logs",
            httpx.Response(200, stream=httpx.ByteStream(b"".join(chunks))))
    result = cli("container", "logs", "-f", "web")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"".join(chunks)
    assert fake.only().url.params["follow"] == "true"


@pytest.mark.parametrize(("args", "needle"), [
    (["--tail", "lots", "web"], "a number of lines, or all"),
    (["-f", "-o", "json", "web"], "--follow streams raw output"),
    (["--no-stdout", "--no-stderr", "web"], "nothing to print"),
])
def test_logs_usage_errors(cli: Any, fake: FakeApi, args: list[str], needle: str) -> None:
    result = cli("container", "logs", *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert fake.requests == []


def test_logs_of_a_missing_container(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers/ghost/logs", _error(404, "Container ghost could not be found."))
    result = cli("container", "logs", "-f", "ghost")
    assert result.exit_code == 1
    assert result.stderr == "error: Container ghost could not be found.\n"


@pytest.mark.parametrize(("value", "expected"), [
    ("1700000000", "1700000000"), ("30s", "999970"), ("1h30m", str(1_000_000 - 5400)),
    ("2d", str(1_000_000 - 172800)), ("2026-11-24 08:00:00,000", "2026-11-24 08:00:00,000")])
def test_since(value: str, expected: str) -> None:
    assert container_common.since_epoch(value, now=1_000_000) == expected


# --- exec ---------------------------------------------------------------------------------------

def test_exec_prints_the_exact_output_and_exits_with_the_code(cli: Any, fake: FakeApi) -> None:
    output = b"a\nb\x00\xff"
    fake.on("POST", "/v1/containers/web/execute", httpx.Response(200, json={
        "output": "a\nb\x00\ufffd", "exit_code": 3, "exec_id": "e1", "proxy_url": None,
        "output_base64": base64.b64encode(output).decode()}))
    result = cli("container", "exec", "web", "sh", "-c", "printf 'a\\nb'; exit 3")
    assert result.exit_code == 3
    assert result.stdout_bytes == output
    request = fake.only()
    assert request.url.params["run"] == "true"
    assert sent(request) == {"command": "sh -c 'printf '\"'\"'a\\nb'\"'\"'; exit 3'",
                             "interactive": False}


def test_exec_and_run_drop_a_leading_double_dash(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers/web/execute", httpx.Response(200, json={"output": "", "exit_code": 0}))
    fake.on("POST", "/v1/containers", httpx.Response(202, json=container()))
    assert cli("container", "exec", "web", "--", "ls", "--", "-l").exit_code == 0
    assert cli("run", "busybox", "--", "ls", "-l").exit_code == 0
    execute, create = (sent(r) for r in fake.requests)
    assert execute["command"] == "ls -- -l"
    assert create["command"] == ["ls", "-l"]
    assert cli("container", "exec", "web", "--").exit_code == 2


def test_exec_json_and_capsule(cli: Any, fake: FakeApi) -> None:
    answer = {"output": "ok\n", "exit_code": 0, "exec_id": "e1", "proxy_url": None,
              "output_base64": base64.b64encode(b"ok\n").decode()}
    fake.on("POST", "/v1/containers/probe/execute", httpx.Response(200, json=answer))
    result = cli("container", "exec", "-o", "json", "--capsule", "web-demo", "probe", "cat", "/x")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == answer
    assert sent(fake.only()) == {"command": "cat /x", "interactive": False, "capsule": "web-demo"}


@pytest.mark.parametrize(("args", "needle"), [
    (["web"], "Missing argument"),
    (["-it", "-o", "json", "web", "sh"], "cannot be combined with --format json"),
])
def test_exec_usage_errors(cli: Any, fake: FakeApi, args: list[str], needle: str) -> None:
    result = cli("container", "exec", *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert fake.requests == []


def test_exec_of_a_stopped_container(cli: Any, fake: FakeApi) -> None:
    fake.on("POST", "/v1/containers/web/execute",
            _error(409, f"Cannot execute container {UUID} in Stopped state."))
    result = cli("container", "exec", "web", "true")
    assert result.exit_code == 1
    assert result.stderr == f"error: Cannot execute container {UUID} in Stopped state.\n"


class FakeSocket:
    """A terminal websocket: answers with `replies`, then ends once the input ends (^D)
    or the client closes, like a shell that exits at the end of its input; or, with
    `reads_input` False, right after the replies, like `top -n 1`."""

    def __init__(self, url: str, replies: list[bytes], reads_input: bool = True) -> None:
        self.url = url
        self.replies = list(replies)
        self.sent: list[bytes] = []
        self.ended = threading.Event()
        if not reads_input:
            self.ended.set()
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        if terminal.EOT in data:
            self.ended.set()

    def recv(self) -> bytes:
        if self.replies:
            return self.replies.pop(0)
        self.ended.wait(5)
        return b""

    def close(self) -> None:
        self.closed = True
        self.ended.set()


class Terminals:
    """Stands in for terminal.connect_terminal: the sockets the CLI opens."""

    def __init__(self) -> None:
        self.opened: list[FakeSocket] = []
        self.reads_input = True

    def __call__(self, url: str) -> FakeSocket:
        self.opened.append(FakeSocket(url, [b"$ ", b"hi\r\n"], self.reads_input))
        return self.opened[-1]


@pytest.fixture()
def terminals(monkeypatch: pytest.MonkeyPatch) -> Terminals:
    fake_connect = Terminals()
    monkeypatch.setattr(terminal, "connect_terminal", fake_connect)
    return fake_connect


def test_exec_interactive_bridges_stdin_and_stdout(cli: Any, fake: FakeApi, terminals: Terminals) -> None:
    url = f"ws://capsuled.test/v1/containers/{UUID}/terminal?token=t1"
    fake.on("POST", "/v1/containers/web/execute", httpx.Response(200, json={
        "output": None, "exit_code": None, "exec_id": "e1", "proxy_url": url}))
    result = cli("container", "exec", "-i", "web", "sh", input=b"echo hi\n")
    assert result.exit_code == 0, result.output
    assert sent(fake.only()) == {"command": "sh", "interactive": True}
    (sock,) = terminals.opened
    assert sock.url == url and sock.closed
    assert b"".join(sock.sent) == b"echo hi\n" + terminal.EOT
    assert result.stdout_bytes == b"$ hi\r\n"


def test_exec_interactive_in_a_capsule_resolves_the_uuid(cli: Any, fake: FakeApi,
                                                         terminals: Terminals) -> None:
    fake.on("GET", "/v1/containers/probe", httpx.Response(200, json=container("probe")))
    fake.on("POST", f"/v1/containers/{UUID}/execute", httpx.Response(200, json={
        "output": None, "exit_code": None, "exec_id": "e1", "proxy_url": "ws://x/t"}))
    terminals.reads_input = False
    result = cli("container", "exec", "-t", "--capsule", "web-demo", "probe", "top")
    assert result.exit_code == 0, result.output
    assert fake.calls() == ["GET /v1/containers/probe?capsule=web-demo",
                            f"POST /v1/containers/{UUID}/execute?run=true"]
    assert terminals.opened[0].sent == []  # -t without -i: output only
    assert result.stdout_bytes == b"$ hi\r\n"


def test_attach(cli: Any, fake: FakeApi, terminals: Terminals) -> None:
    url = f"ws://capsuled.test/v1/containers/{UUID}/terminal?token=t2"
    fake.on("GET", "/v1/containers/shell/attach", httpx.Response(200, json=url))
    result = cli("container", "attach", "shell", input=b"exit\n")
    assert result.exit_code == 0, result.output
    assert fake.calls() == ["GET /v1/containers/shell/attach"]
    assert terminals.opened[0].url == url
    assert b"".join(terminals.opened[0].sent) == b"exit\n" + terminal.EOT
    assert result.stdout_bytes == b"$ hi\r\n"


def test_attach_without_stdin_only_watches(cli: Any, fake: FakeApi, terminals: Terminals) -> None:
    fake.on("GET", "/v1/containers/shell/attach", httpx.Response(200, json="ws://x/t"))
    terminals.reads_input = False
    result = cli("container", "attach", "--no-stdin", "shell", input=b"not sent\n")
    assert result.exit_code == 0, result.output
    assert terminals.opened[0].sent == []
    assert result.stdout_bytes == b"$ hi\r\n"


def test_attach_to_a_container_without_a_terminal(cli: Any, fake: FakeApi, terminals: Terminals) -> None:
    fake.on("GET", "/v1/containers/web/attach", _error(
        400, "Container web was not created interactive (interactive/tty); there is no "
             "terminal to attach to. Use logs instead."))
    result = cli("container", "attach", "web")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Container web was not created interactive")
    assert terminals.opened == []


def test_bridge_detaches_on_ctrl_p_ctrl_q() -> None:
    # The socket would stay open: only the detach keys end the session.
    sock = FakeSocket("ws://x", [b"output"])
    out = io.BytesIO()
    stdin = _Keys([b"ls\r", b"\x10", b"x", b"\x10", b"\x11", b"never sent"])
    terminal.bridge(sock, stdin, out, send_input=True, raw=True)  # type: ignore[arg-type]
    # A ^P is held back until the next key shows whether it detaches.
    assert sock.sent == [b"ls\r", b"\x10x"]
    assert terminal.EOT not in b"".join(sock.sent)


class _Keys(io.RawIOBase):
    """stdin of a raw terminal: one keystroke (or paste) per read."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys

    def read1(self, size: int = -1) -> bytes:
        return self.keys.pop(0) if self.keys else b""


# --- cp -----------------------------------------------------------------------------------------

def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)), "sub/deeper/c": b""}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def tar_files(data: bytes) -> dict[str, bytes | None]:
    """name -> content (None for a directory)."""
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            out[m.name] = f.read() if f else None
            assert (m.uid, m.gid, m.uname) == (0, 0, "root"), m.name
    return out


def test_cp_a_directory_into_an_existing_directory(cli: Any, fake: FakeApi, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "tree")
    fake.on("GET", "/v1/containers/web", httpx.Response(200, json=container()))
    fake.on("POST", f"/v1/containers/{UUID}/put_archive", httpx.Response(200))
    result = cli("container", "cp", str(tmp_path / "tree"), "web:tmp")
    assert result.exit_code == 0, result.output
    get, put = fake.requests
    assert get.url.path == "/v1/containers/web"
    body = sent(put)
    assert body["path"] == "/tmp"
    got = tar_files(base64.b64decode(body["data"]))
    assert {k: v for k, v in got.items() if v is not None} == {f"tree/{k}": v for k, v in files.items()}
    assert {"tree", "tree/sub", "tree/sub/deeper"} <= set(got)
    assert result.stderr.startswith("copied ") and result.stderr.endswith(" to web:tmp\n")


def test_cp_to_a_new_path_makes_it_in_the_parent(cli: Any, fake: FakeApi, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "tree")
    fake.on("GET", "/v1/containers/web", httpx.Response(200, json=container()))
    fake.on("POST", f"/v1/containers/{UUID}/put_archive",
            _error(404, "copy into /tmp/new: Could not find the file /tmp/new"), httpx.Response(200))
    result = cli("container", "cp", f"{tmp_path / 'tree'}/.", "web:/tmp/new", "-o", "json")
    assert result.exit_code == 0, result.output
    first, second = (sent(r) for r in fake.requests[1:])
    assert first["path"] == "/tmp/new"
    assert set(tar_files(base64.b64decode(first["data"]))) >= {"a.txt", "sub/b.bin"}  # contents only
    assert second["path"] == "/tmp"
    got = tar_files(base64.b64decode(second["data"]))
    assert {k: v for k, v in got.items() if v is not None} == {f"new/{k}": v for k, v in files.items()}
    assert json.loads(result.stdout)["destination"] == "web:/tmp/new"


def test_cp_a_file_over_a_file_and_into_a_missing_directory(cli: Any, fake: FakeApi, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"new\n")
    fake.on("GET", "/v1/containers/web", httpx.Response(200, json=container()))
    fake.on("POST", f"/v1/containers/{UUID}/put_archive",
            _error(500, "Internal Server Error"), httpx.Response(200))
    result = cli("container", "cp", str(tmp_path / "f.txt"), "web:/etc/motd")
    assert result.exit_code == 0, result.output
    second = sent(fake.requests[-1])
    assert second["path"] == "/etc"
    assert tar_files(base64.b64decode(second["data"])) == {"motd": b"new\n"}

    fake.requests.clear()
    fake.on("POST", f"/v1/containers/{UUID}/put_archive", _error(404, "no such path"))
    result = cli("container", "cp", str(tmp_path / "f.txt"), "web:/nope/at/all/")
    assert result.exit_code == 1
    assert result.stderr == "error: web:/nope/at/all/: no such directory\n"


def archive(files: dict[str, bytes], dirs: list[str]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o640
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def test_cp_a_directory_out(cli: Any, fake: FakeApi, tmp_path: Path) -> None:
    files = {"tree/a.txt": b"alpha\n", "tree/sub/b.bin": bytes(range(256))}
    fake.on("GET", "/v1/containers/web/get_archive", httpx.Response(200, json={
        "data": archive(files, ["tree", "tree/sub"]), "stat": {"name": "tree", "mode": DIR_MODE}}))
    # A missing destination becomes the copy; an existing directory receives it.
    result = cli("container", "cp", "web:/tmp/tree", str(tmp_path / "copy"))
    assert result.exit_code == 0, result.output
    assert fake.only().url.params["path"] == "/tmp/tree"
    assert (tmp_path / "copy" / "a.txt").read_bytes() == b"alpha\n"
    assert (tmp_path / "copy" / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert ((tmp_path / "copy" / "a.txt").stat().st_mode & 0o777) == 0o640
    result = cli("container", "cp", "web:/tmp/tree", str(tmp_path / "copy"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "copy" / "tree" / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert not any(p.name.startswith(".capsule-cp-") for p in tmp_path.rglob("*"))


def test_cp_a_file_out_into_a_directory_and_to_stdout(cli: Any, fake: FakeApi, tmp_path: Path) -> None:
    data = archive({"hostname": b"web\n"}, [])
    fake.on("GET", "/v1/containers/web/get_archive", httpx.Response(200, json={
        "data": data, "stat": {"name": "hostname", "mode": 0o644}}))
    result = cli("container", "cp", "web:/etc/hostname", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hostname").read_bytes() == b"web\n"
    result = cli("container", "cp", "web:/etc/hostname", "-")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == base64.b64decode(data)


def test_cp_out_refuses_an_archive_that_escapes(cli: Any, fake: FakeApi, tmp_path: Path) -> None:
    fake.on("GET", "/v1/containers/web/get_archive", httpx.Response(200, json={
        "data": archive({"../evil": b"x"}, []), "stat": {"name": "evil", "mode": 0o644}}))
    result = cli("container", "cp", "web:/evil", str(tmp_path / "dest"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot unpack the archive")
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("args", [["a", "b"], ["web:/a", "db:/b"], ["-", "-"]])
def test_cp_usage_errors(cli: Any, fake: FakeApi, args: list[str]) -> None:
    result = cli("container", "cp", *args)
    assert result.exit_code == 2
    assert fake.requests == []


def test_split_location() -> None:
    assert archives.split_location("web:/tmp") == ("web", "/tmp")
    assert archives.split_location("./odd:name") == (None, "./odd:name")
    assert archives.split_location("/abs:x") == (None, "/abs:x")
    assert archives.split_location("plain") == (None, "plain")
    assert archives.split_location("-") == (None, "-")


# --- top / stats / actions ------------------------------------------------------------------

def test_top(cli: Any, fake: FakeApi) -> None:
    fake.on("GET", "/v1/containers/web/top", httpx.Response(200, json={
        "Titles": ["PID", "[b]CMD"], "Processes": [["1", "sleep 3600"], ["7", "sh"]]}))
    result = cli("container", "top", "web", "-o", "pid,args")
    assert result.exit_code == 0, result.output
    assert fake.only().url.params["ps_args"] == "-o pid,args"
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PID", "[b]CMD"]
    assert lines[1].split() == ["1", "sleep", "3600"]


def test_stats_and_actions(cli: Any, fake: FakeApi) -> None:
    stats = {"CONTAINER": "web", "CPU %": 0.5, "MEM USAGE(MiB)": 1.25, "NET I/O(B)": "10/20"}
    fake.on("GET", "/v1/containers/web/stats", httpx.Response(200, json=stats))
    result = cli("container", "stats", "web")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert "MEM USAGE(MiB)" in header and row.split() == ["web", "0.5", "1.25", "10/20"]
    assert json.loads(cli("container", "stats", "-o", "json", "web").stdout) == stats

    fake.on("GET", "/v1/containers/web/container_actions", httpx.Response(200, json={"containerActions": [
        {"action": "create", "request_id": "req-1", "start_time": "2026-11-24 08:00:00.1",
         "finish_time": "2026-11-24 08:00:01.2", "message": None},
        {"action": "stop", "request_id": "req-2", "start_time": "2026-11-24 08:01:00",
         "finish_time": "2026-11-24 08:01:00", "message": "container is not running"}]}))
    result = cli("container", "actions", "web")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ACTION", "REQUEST", "ID", "STARTED", "FINISHED", "RESULT", "MESSAGE"]
    assert "create" in lines[1] and "Success" in lines[1] and "2026-11-24 08:00:01" in lines[1]
    assert "Error" in lines[2] and "container is not running" in lines[2]


# --- plumbing -----------------------------------------------------------------------------------

def test_connection_refused_is_one_line() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    rt = Runtime(transport=httpx.MockTransport(refuse))
    result = CliRunner().invoke(app, ["container", "list"], obj=rt, env={"CAPSULE_TOKEN": TOKEN})
    assert result.exit_code == 1
    assert result.stderr == "error: cannot reach capsuled at http://127.0.0.1:9517 (connection refused)\n"


@pytest.mark.parametrize("command", ["list", "show", "logs", "top", "stats", "actions", "delete", "start",
                                     "stop", "restart", "pause", "unpause", "kill", "rename", "update",
                                     "exec", "attach", "cp"])
def test_every_command_has_help(cli: Any, command: str) -> None:
    result = cli("container", command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.stdout


def test_render_restart_policy() -> None:
    assert render.container_restart({"restart_policy": {"Name": "on-failure", "MaximumRetryCount": "0"}}) == "on-failure"
    assert render.container_restart({"restart_policy": {"Name": "always", "MaximumRetryCount": "0"}}) == "always"
    assert render.command_line(["sh", "-c", "echo hi"]) == "sh -c 'echo hi'"
    assert render.command_line([]) == "-"
