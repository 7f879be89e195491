"""Starvation and memory: one tenant's long-lived work (follow-log streams, terminals,
stops with a timeout) cannot freeze the API for the others, and the buffers a member
can fill (exec output, archives) are bounded."""

from __future__ import annotations

import base64
import contextlib
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import httpx
import pytest
from conftest import Server, free_port, remove_instance_objects, start_server, wait_for
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from capsuled.drivers.runtime.docker import DockerRuntime
from capsuled.errors import PayloadTooLarge, Unavailable
from capsuled.hostops.client import RemoteOps
from capsuled.hostops.server import create_ops_app, serve_ops, stop_ops

pytestmark = [pytest.mark.docker]
OCTET = {"Accept": "application/octet-stream"}
MiB = 1_048_576


def _project() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"


def _quiet_container(client: httpx.Client, **extra: Any) -> str:
    """A running bare container that writes nothing: a follow of its log stays open."""
    r = client.post("/v1/containers", params={"run": "true"},
                    json={"image": "busybox", "command": ["sleep", "3600"], **extra})
    assert r.status_code == 202, r.text
    ident = str(r.json()["uuid"])
    wait_for(lambda: client.get(f"/v1/containers/{ident}").json()["status"] == "Running",
             timeout=60, what=f"{ident} to run")
    return ident


class Followers:
    """Follow-log streams held open by threads (httpx streaming) until `close()`."""

    def __init__(self, server: Server, token: str, ident: str) -> None:
        self._server, self._token, self._ident = server, token, ident
        self._release = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.answers: list[tuple[int, str]] = []  # (status, body of a refusal)

    def open(self, n: int) -> None:
        for _ in range(n):
            t = threading.Thread(target=self._hold, daemon=True)
            t.start()
            self._threads.append(t)
        wait_for(lambda: len(self.answers) == len(self._threads), timeout=30,
                 what=f"{len(self._threads)} follow requests to be answered")

    def _hold(self) -> None:
        with self._server.client(self._token) as c, c.stream(
                "GET", f"/v1/containers/{self._ident}/logs",
                params={"follow": "true"}, headers=OCTET) as r:
            body = "" if r.status_code == 200 else r.read().decode()
            with self._lock:
                self.answers.append((r.status_code, body))
            if r.status_code == 200:
                self._release.wait(120)

    def statuses(self) -> list[int]:
        with self._lock:
            return sorted(s for s, _ in self.answers)

    def close(self) -> None:
        self._release.set()
        for t in self._threads:
            t.join(30)


@contextlib.contextmanager
def followers(server: Server, token: str, ident: str) -> Iterator[Followers]:
    f = Followers(server, token, ident)
    try:
        yield f
    finally:
        f.close()


def _answers_quickly(server: Server, token: str) -> None:
    """Another tenant's list and the health probe answer within a second."""
    with server.client(token) as c:
        for path in ("/v1/capsules", "/v1/containers", "/healthz"):
            started = time.monotonic()
            r = c.get(path, timeout=5)
            took = time.monotonic() - started
            assert r.status_code == 200, (path, r.text)
            assert took < 1.0, f"{path} took {took:.2f}s while another tenant holds its streams"


def test_one_member_cannot_hold_more_than_the_projects_streams_nor_starve_others(
        server: Server) -> None:
    hog_project = _project()
    hog = server.issue_token(hog_project, "hog", "member")
    other = server.issue_token(_project(), "other", "member")
    with server.client(hog) as c:
        ident = _quiet_container(c)
        try:
            with followers(server, hog, ident) as f:
                f.open(50)
                assert f.statuses() == [200] * 10 + [429] * 40
                refusal = next(body for status, body in f.answers if status == 429)
                assert (f"project {hog_project} has 10 open streams (follow-logs and "
                        "terminals), the limit is 10; close one") in refusal
                _answers_quickly(server, other)
                # A terminal is a stream too: no URL while the project is at its limit.
                r = c.post(f"/v1/containers/{ident}/execute",
                           json={"command": "sh", "interactive": True})
                assert r.status_code == 429, r.text
                assert "open streams" in r.text
            # Closed by the clients: the counts go down and streams can be opened again.
            with followers(server, hog, ident) as again:
                wait_for(lambda: _open_one(server, hog, ident), timeout=15,
                         what="a stream to be allowed again")
                again.open(9)
                assert again.statuses() == [200] * 9
        finally:
            c.delete(f"/v1/containers/{ident}", params={"force": "true"})


def _open_one(server: Server, token: str, ident: str) -> bool:
    with server.client(token) as c, c.stream("GET", f"/v1/containers/{ident}/logs",
                                             params={"follow": "true"}, headers=OCTET) as r:
        return r.status_code == 200


def test_a_terminal_session_counts_and_is_refused_with_429_over_the_limit(
        server: Server) -> None:
    token = server.issue_token(_project(), "tty", "member")
    with server.client(token) as c:
        ident = _quiet_container(c, interactive=True)
        try:
            url = c.post(f"/v1/containers/{ident}/execute",
                         json={"command": "sh", "interactive": True}).json()["proxy_url"]
            with followers(server, token, ident) as f:
                f.open(10)
                assert f.statuses() == [200] * 10
                # The URL was handed out before the limit was reached; the session is
                # refused when it would open.
                with pytest.raises(InvalidStatus) as refused:
                    with ws_connect(url, open_timeout=10):
                        pass
                assert refused.value.response.status_code == 429
            # Below the limit a session opens, and while it is open it counts. The followers'
            # closes reach the server a moment after the clients hang up.
            def below_limit() -> str | None:
                r = c.post(f"/v1/containers/{ident}/execute",
                           json={"command": "sh", "interactive": True})
                assert r.status_code in (200, 429), r.text
                return str(r.json()["proxy_url"]) if r.status_code == 200 else None
            url = wait_for(below_limit, timeout=15, what="a terminal allowed again")
            with ws_connect(url, open_timeout=10) as ws, followers(server, token, ident) as f:
                ws.send(b"echo hi-$((1+1))\n")
                seen = b""
                while b"hi-2" not in seen:
                    seen += ws.recv(timeout=10)  # type: ignore[operator]
                f.open(10)
                assert f.statuses() == [200] * 9 + [429]
        finally:
            c.delete(f"/v1/containers/{ident}", params={"force": "true"})


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory, docker_api: docker.APIClient) -> Iterator[Server]:
    """A server whose stream limits are above anyio's 40 default threads, with small
    exec and archive bounds."""
    srv = start_server(tmp_path_factory.mktemp("roomy"), docker_api,
                       CAPSULED_API__STREAMS_PER_PROJECT="60", CAPSULED_API__STREAMS_TOTAL="100",
                       CAPSULED_API__EXEC_TIMEOUT="2", CAPSULED_API__ARCHIVE_MAX_BYTES="100000",
                       # The agent's own stop of a stopped-by-request container must not
                       # cut the stops under test short.
                       CAPSULED_AGENT__STOP_TIMEOUT="60")
    instance = srv.instance
    yield srv
    srv.stop()
    # The stopping server may still be removing a network of its own: sweep again.
    with contextlib.suppress(docker.errors.NotFound):
        remove_instance_objects(docker_api, instance)
    remove_instance_objects(docker_api, instance)


def test_streams_run_off_the_pool_ordinary_requests_use(roomy: Server) -> None:
    # 50 open streams are more than anyio's default 40 threads: were they relayed on those,
    # every sync handler (lists, /healthz) would wait for a free one.
    hog = roomy.issue_token(_project(), "hog", "member")
    other = roomy.issue_token(_project(), "other", "member")
    with roomy.client(hog) as c:
        ident = _quiet_container(c)
        with followers(roomy, hog, ident) as f:
            f.open(50)
            assert f.statuses() == [200] * 50
            _answers_quickly(roomy, other)


def test_stops_with_a_timeout_do_not_hold_the_pool_and_the_timeout_is_capped(
        roomy: Server) -> None:
    hog = roomy.issue_token(_project(), "hog", "member")
    other = roomy.issue_token(_project(), "other", "member")
    with roomy.client(hog) as c:
        for bad in ("100000", "301", "-1", "1.5", "\u00b2", "9" * 5000):
            r = c.post("/v1/containers/nope/stop", params={"timeout": bad})
            assert r.status_code == 400, (bad, r.text)
            assert "timeout: must be a whole number of seconds from 0 to 300" in r.text
        # A container that ignores SIGTERM (sleep as PID 1), stopped 45 times at once with
        # a 20 s timeout: each stop waits, on threads of their own, and other tenants'
        # requests do not queue behind them.
        ident = _quiet_container(c)
        try:
            results: list[int] = []

            def stop() -> None:
                with roomy.client(hog) as own:
                    results.append(own.post(f"/v1/containers/{ident}/stop",
                                            params={"timeout": "20"}, timeout=90).status_code)
            threads = [threading.Thread(target=stop, daemon=True) for _ in range(45)]
            for t in threads:
                t.start()
            time.sleep(3)  # let the stops reach their wait
            assert not results, "the stops did not wait"
            _answers_quickly(roomy, other)
            assert not results, "the stops ended before the check; it proved nothing"
            for t in threads:
                t.join(90)
            assert results == [202] * len(threads)
        finally:
            c.delete(f"/v1/containers/{ident}", params={"force": "true"})


def test_exec_output_is_capped_and_its_wait_bounded(server: Server, roomy: Server) -> None:
    token = server.issue_token(_project(), "exec", "member")
    with server.client(token) as c:
        ident = _quiet_container(c)
        try:
            r = c.post(f"/v1/containers/{ident}/execute", params={"run": "true"},
                       json={"command": "sh -c 'head -c 3000000 /dev/zero | tr \"\\\\0\" a'"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["output_truncated"] is True and body["timed_out"] is False
            assert base64.b64decode(body["output_base64"]) == b"a" * MiB
            assert body["output"] == "a" * MiB
            small = c.post(f"/v1/containers/{ident}/execute", params={"run": "true"},
                           json={"command": "sh -c 'echo hi; exit 3'"}).json()
            assert (small["output"], small["exit_code"]) == ("hi\n", 3)
            assert small["output_truncated"] is False and small["timed_out"] is False
        finally:
            c.delete(f"/v1/containers/{ident}", params={"force": "true"})
    # roomy's executes are waited for 2 s.
    token = roomy.issue_token(_project(), "exec", "member")
    with roomy.client(token) as c:
        ident = _quiet_container(c)
        started = time.monotonic()
        r = c.post(f"/v1/containers/{ident}/execute", params={"run": "true"},
                   json={"command": "sh -c 'echo started; sleep 30'"})
        assert time.monotonic() - started < 15
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["timed_out"] is True and body["exit_code"] is None
        assert body["output"] == "started\n"


def test_get_archive_past_the_cap_is_refused(server: Server, roomy: Server) -> None:
    token = server.issue_token(_project(), "arch", "member")
    with server.client(token) as c:
        ident = _quiet_container(c)
        try:
            assert c.post(f"/v1/containers/{ident}/execute", params={"run": "true"}, json={
                "command": "sh -c 'head -c 70000000 /dev/zero > /tmp/big'"}).json()["exit_code"] == 0
            r = c.get(f"/v1/containers/{ident}/get_archive", params={"path": "/tmp/big"})
            assert r.status_code == 413, r.text
            assert "path: the archive of /tmp/big is larger than the limit of 64 MiB" in r.text
            ok = c.get(f"/v1/containers/{ident}/get_archive", params={"path": "/etc/passwd"})
            assert ok.status_code == 200 and ok.json()["stat"]["name"] == "passwd"
        finally:
            c.delete(f"/v1/containers/{ident}", params={"force": "true"})
    # A directory's size is known only as its tar streams: refused once past the cap.
    token = roomy.issue_token(_project(), "arch", "member")
    with roomy.client(token) as c:
        ident = _quiet_container(c)
        r = c.get(f"/v1/containers/{ident}/get_archive", params={"path": "/bin"})
        assert r.status_code == 413, r.text
        assert "the archive of /bin is larger than the limit of 100000 bytes" in r.text


# -- the remote path: API → agent ops endpoint ------------------------------------------

@pytest.fixture(scope="module")
def agent(docker_api: docker.APIClient) -> Iterator[tuple[RemoteOps, Callable[[list[str]], str]]]:
    key = secrets.token_urlsafe(24)
    port = free_port()
    server, thread = serve_ops(create_ops_app(DockerRuntime(docker_api), key), "127.0.0.1", port)
    ops = RemoteOps(f"http://127.0.0.1:{port}", key, timeout=10)
    made: list[str] = []

    def run(command: list[str]) -> str:
        cid = docker_api.create_container("busybox", command=command,
                                          labels={"capsuled.test": "tenant-streams"})["Id"]
        docker_api.start(cid)
        made.append(cid)
        return str(cid)
    try:
        yield ops, run
    finally:
        ops.close()
        stop_ops(server, thread)
        for cid in made:
            docker_api.remove_container(cid, force=True)


def test_remote_exec_and_archive_are_bounded(agent: tuple[RemoteOps, Callable[[list[str]], str]]) -> None:
    ops, run = agent
    cid = run(["sleep", "3600"])
    big = ops.exec_run(cid, ["head", "-c", "300000", "/dev/zero"], 100_000, 30)
    assert (len(big.output), big.truncated, big.timed_out) == (100_000, True, False)
    started = time.monotonic()
    slow = ops.exec_run(cid, ["sleep", "30"], 1000, 2)
    assert time.monotonic() - started < 15
    assert (slow.timed_out, slow.exit_code) == (True, None)
    with pytest.raises(PayloadTooLarge, match="larger than the limit of 100000 bytes"):
        ops.get_archive(cid, "/bin", 100_000)
    data, stat = ops.get_archive(cid, "/etc/passwd", 100_000)
    assert stat["name"] == "passwd" and len(data) < 100_000


def test_the_agents_streams_do_not_starve_its_calls(
        agent: tuple[RemoteOps, Callable[[list[str]], str]]) -> None:
    ops, run = agent
    cid = run(["sleep", "3600"])
    streams: list[Any] = []

    def follow() -> None:
        streams.append(ops.follow_logs(cid, True, True, False, None, None))
    # In threads: were the streams' pumps on the agent's default pool, the later ones
    # would wait for a thread forever, and so would the call below.
    for t in [threading.Thread(target=follow, daemon=True) for _ in range(50)]:
        t.start()
    try:
        wait_for(lambda: len(streams) == 50, timeout=20, what="50 follows to open")
        time.sleep(1)  # each stream's pump is now blocked waiting for output
        answered: list[dict[str, Any]] = []
        caller = threading.Thread(target=lambda: answered.append(ops.top(cid, None)), daemon=True)
        started = time.monotonic()
        caller.start()
        caller.join(5)
        assert answered and answered[0]["Processes"], "the agent did not answer within 5 s"
        assert time.monotonic() - started < 5
    finally:
        for s in list(streams):
            s.close()


def test_an_agent_that_never_answers_is_given_up() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    ops = RemoteOps(f"http://127.0.0.1:{silent.getsockname()[1]}", "k", timeout=1)
    try:
        for call in (lambda: ops.follow_logs("c", True, True, False, None, None),
                     lambda: ops.exec_run("c", ["true"], 10, 1)):
            # In a thread: without a bound on the answer's head the call waits forever.
            failed: list[BaseException] = []

            def attempt(call: Callable[[], Any] = call) -> None:
                try:
                    call()
                except BaseException as exc:  # noqa: BLE001 - looked at below
                    failed.append(exc)
            caller = threading.Thread(target=attempt, daemon=True)
            caller.start()
            caller.join(10)
            assert failed, "the call still waits for an agent that never answers"
            assert isinstance(failed[0], Unavailable), failed[0]
            assert "is unreachable" in failed[0].message
    finally:
        ops.close()
        silent.close()


def test_plain_logs_answer_the_newest_bytes_within_the_cap(server: Server) -> None:
    from capsuled.hostops.protocol import LOGS_MAX_BYTES
    token = server.issue_token(_project(), "logs", "member")
    with server.client(token) as c:
        # 10 MiB of 'a', then a last line: more than the cap, written before it sleeps.
        ident = _quiet_container(c, command=[
            "sh", "-c", "head -c 10485760 /dev/zero | tr '\\0' a; echo; echo the-end; sleep 3600"])
        try:
            def logged() -> bytes | None:
                r = c.get(f"/v1/containers/{ident}/logs", headers=OCTET, timeout=60)
                return r.content if r.content.endswith(b"the-end\n") else None
            data = wait_for(logged, timeout=60, what="the whole log")
            assert len(data) == LOGS_MAX_BYTES
            assert set(data[:-len(b"the-end\n")]) <= {ord("a"), ord("\n")}
        finally:
            c.delete(f"/v1/containers/{ident}", params={"force": "true"})
