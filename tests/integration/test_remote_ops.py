"""ContainerOps across the wire: the agent's ops endpoint serving a real DockerRuntime,
driven through the API's RemoteOps against real containers."""

from __future__ import annotations

import io
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
from conftest import free_port, wait_for

from capsuled.drivers.runtime.docker import DockerRuntime
from capsuled.errors import (DriverError, NotFound, RuntimeConflict, RuntimeRejected,
                             Unavailable)
from capsuled.hostops.client import RemoteOps, ops_for_hosts
from capsuled.hostops.protocol import RawStream
from capsuled.hostops.server import create_ops_app, serve_ops, stop_ops

pytestmark = [pytest.mark.docker]
LABEL = {"capsuled.test": "remote-ops"}


def _remove_labelled(api: docker.APIClient) -> None:
    for c in api.containers(all=True, filters={"label": ["capsuled.test=remote-ops"]}):
        api.remove_container(c["Id"], force=True)


@pytest.fixture(scope="module")
def agent(docker_api: docker.APIClient) -> Iterator[tuple[str, str, DockerRuntime]]:
    _remove_labelled(docker_api)
    runtime = DockerRuntime(docker_api)
    key = secrets.token_urlsafe(24)
    port = free_port()
    server, thread = serve_ops(create_ops_app(runtime, key), "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}", key, runtime
    finally:
        started = time.monotonic()
        stop_ops(server, thread)
        assert not thread.is_alive() and time.monotonic() - started < 8, "the ops server did not stop"
        _remove_labelled(docker_api)


@pytest.fixture(scope="module")
def ops(agent: tuple[str, str, DockerRuntime]) -> Iterator[RemoteOps]:
    url, key, _ = agent
    remote = RemoteOps(url, key, timeout=10)
    yield remote
    remote.close()


def run(api: docker.APIClient, command: list[str], tty: bool = False) -> str:
    host_config = api.create_host_config(log_config={"Type": "local", "Config": {}})
    cid = api.create_container("busybox", command=command, labels=LABEL, tty=tty, stdin_open=tty,
                               host_config=host_config, detach=True)["Id"]
    api.start(cid)
    return str(cid)


def state(api: docker.APIClient, cid: str) -> dict[str, Any]:
    return api.inspect_container(cid)["State"]  # type: ignore[no-any-return]


def read_until(stream: RawStream, needle: bytes, timeout: float = 10) -> bytes:
    """Everything received until `needle` appears (recv blocks, so a watchdog closes)."""
    got = b""
    timer = threading.Timer(timeout, stream.close)
    timer.start()
    try:
        while needle not in got:
            data = stream.recv(4096)
            if not data:
                break
            got += data
    finally:
        timer.cancel()
    assert needle in got, got
    return got


def test_lifecycle_actions_reach_the_container(ops: RemoteOps, docker_api: docker.APIClient) -> None:
    cid = run(docker_api, ["sleep", "3600"])
    ops.pause(cid)
    assert state(docker_api, cid)["Paused"] is True
    with pytest.raises(RuntimeConflict, match="paused"):
        ops.pause(cid)  # the runtime's 409, with its class and message
    ops.unpause(cid)
    assert state(docker_api, cid)["Paused"] is False
    ops.stop(cid, 0)
    assert state(docker_api, cid)["Running"] is False
    ops.start(cid)
    assert state(docker_api, cid)["Running"] is True
    before = state(docker_api, cid)["StartedAt"]
    ops.restart(cid, 0)
    after = state(docker_api, cid)
    assert after["Running"] is True and after["StartedAt"] != before
    with pytest.raises(RuntimeRejected):
        ops.kill(cid, "SIGNOPE")
    ops.kill(cid, "SIGKILL")
    wait_for(lambda: not state(docker_api, cid)["Running"], timeout=5, what="the kill")
    assert state(docker_api, cid)["ExitCode"] == 137

    ops.start(cid)
    ops.update_resources(cid, 500_000_000, 64 * 1024 * 1024)
    host_config = docker_api.inspect_container(cid)["HostConfig"]
    assert host_config["NanoCpus"] == 500_000_000 and host_config["Memory"] == 64 * 1024 * 1024
    ops.update_resources(cid, None, None)  # nothing to change is fine


def test_logs_exec_top_and_stats(ops: RemoteOps, docker_api: docker.APIClient) -> None:
    script = (r"printf 'line one\nline two\n'; head -c 2 /dev/zero; printf '\001\377\376bin\n';"
              r" printf 'to stderr\n' >&2; sleep 3600")
    cid = run(docker_api, ["sh", "-c", script])
    wait_for(lambda: b"to stderr" in ops.logs(cid, True, True, False, None, None), timeout=10)
    assert ops.logs(cid, True, False, False, None, None) == b"line one\nline two\n\x00\x00\x01\xff\xfebin\n"
    assert ops.logs(cid, False, True, False, None, None) == b"to stderr\n"
    # Docker applies tail before picking the streams, and orders the two streams by arrival.
    assert ops.logs(cid, True, True, False, 1, None) in (b"to stderr\n", b"\x00\x00\x01\xff\xfebin\n")
    assert ops.logs(cid, True, False, True, None, None).split(b" ", 1)[0].startswith(b"20")

    result = ops.exec_run(cid, ["sh", "-c", r"printf 'a\nb'; head -c 1 /dev/zero; printf '\377'; exit 3"])
    assert (result.exit_code, result.output) == (3, b"a\nb\x00\xff") and result.exec_id

    top = ops.top(cid, None)
    assert "PID" in top["Titles"] and any("sleep" in " ".join(p) for p in top["Processes"])
    assert "USER" in ops.top(cid, "aux")["Titles"]
    stats = ops.stats(cid)
    assert stats["memory_stats"]["usage"] > 0 and "cpu_stats" in stats


def test_follow_logs_yields_lines_as_they_are_written(ops: RemoteOps,
                                                      docker_api: docker.APIClient) -> None:
    cid = run(docker_api, ["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.3; done"])
    wait_for(lambda: ops.logs(cid, True, True, False, None, None), timeout=5, what="a first line")
    stream = ops.follow_logs(cid, True, True, False, 0, None)
    seen: list[tuple[float, bytes]] = []
    buf = b""
    for chunk in stream:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            seen.append((time.monotonic(), line))
        if len(seen) >= 3:
            break
    numbers = [int(line.split()[1]) for _, line in seen]
    assert numbers == list(range(numbers[0], numbers[0] + 3))
    assert seen[-1][0] - seen[0][0] > 0.3  # delivered as written, not all at the end
    started = time.monotonic()
    stream.close()  # type: ignore[attr-defined]
    assert time.monotonic() - started < 2

    # A follow of a quiet container ends when the container does.
    short = run(docker_api, ["sh", "-c", "echo one; sleep 1; printf 'two\\377\\n'"])
    assert b"".join(ops.follow_logs(short, True, True, False, None, None)) == b"one\ntwo\xff\n"


def test_archives_round_trip(ops: RemoteOps, docker_api: docker.APIClient) -> None:
    cid = run(docker_api, ["sleep", "3600"])
    payload = bytes(range(256)) * 64
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("blob.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    ops.put_archive(cid, "/tmp", buf.getvalue())
    assert ops.exec_run(cid, ["wc", "-c", "/tmp/blob.bin"]).output.split()[0] == str(len(payload)).encode()
    data, stat = ops.get_archive(cid, "/tmp/blob.bin")
    assert stat["name"] == "blob.bin" and stat["size"] == len(payload)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("blob.bin")
        assert member is not None and member.read() == payload
    with pytest.raises(RuntimeRejected, match="not a directory"):
        ops.put_archive(cid, "/tmp/blob.bin", buf.getvalue())
    with pytest.raises(NotFound):
        ops.get_archive(cid, "/no/such/path")


def test_attach_and_interactive_exec_over_the_websocket(ops: RemoteOps,
                                                        docker_api: docker.APIClient) -> None:
    cid = run(docker_api, ["sh"], tty=True)
    stream = ops.attach(cid)
    try:
        ops.resize(cid, 30, 100)
        stream.sendall(b"echo hi\n")
        read_until(stream, b"hi\r\n", timeout=10)
        stream.sendall(b"echo $((6*7))\n")
        read_until(stream, b"42", timeout=10)
    finally:
        stream.close()
    assert stream.recv(10) == b""
    assert state(docker_api, cid)["Running"] is True  # leaving the terminal leaves the shell

    exec_id = ops.exec_interactive(cid, ["sh"])
    session = ops.exec_stream(exec_id)
    try:
        ops.exec_resize(exec_id, 40, 120)
        session.sendall(b"echo hi; stty size\n")
        read_until(session, b"40 120", timeout=10)
        session.sendall(b"exit\n")
        # The exec ends, the agent closes the websocket, and recv says so.
        deadline = time.monotonic() + 10
        while session.recv(4096):
            assert time.monotonic() < deadline
    finally:
        session.close()
    assert docker_api.exec_inspect(exec_id)["Running"] is False


def test_errors_arrive_with_their_class_and_message(agent: tuple[str, str, DockerRuntime],
                                                    ops: RemoteOps) -> None:
    _, _, runtime = agent
    with pytest.raises(NotFound) as local:
        runtime.start("capsuled-no-such-container")
    with pytest.raises(NotFound) as remote:
        ops.start("capsuled-no-such-container")
    assert remote.value.message == local.value.message and "No such container" in remote.value.message
    with pytest.raises(NotFound, match="No such container"):
        ops.attach("capsuled-no-such-container")
    with pytest.raises(NotFound, match="No such container"):
        ops.follow_logs("capsuled-no-such-container", True, True, False, None, None)
    with pytest.raises(NotFound, match="No such exec"):
        ops.exec_stream("0" * 64)
    with pytest.raises(DriverError):
        ops.remove_image("capsuled-no-such-image:nope")


def test_a_wrong_key_is_refused_and_said_so(agent: tuple[str, str, DockerRuntime]) -> None:
    url, _, _ = agent
    wrong = RemoteOps(url, "not-the-key", timeout=5)
    try:
        for call in (lambda: wrong.list_images(), lambda: wrong.attach("x"), lambda: wrong.exec_stream("x"),
                     lambda: wrong.follow_logs("x", True, True, False, None, None)):
            with pytest.raises(Unavailable, match="refused the ops key"):
                call()
    finally:
        wrong.close()
    assert httpx.post(f"{url}/ops/list_images", json={}).status_code == 401


def test_an_unreachable_agent_is_unavailable_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    remote = RemoteOps(url, "k", timeout=2)
    try:
        with pytest.raises(Unavailable, match=url):
            remote.stats("x")
        with pytest.raises(Unavailable, match=url):
            remote.attach("x")
        with pytest.raises(Unavailable, match=url):
            remote.follow_logs("x", True, True, False, None, None)
    finally:
        remote.close()


def test_images_and_the_pool(agent: tuple[str, str, DockerRuntime]) -> None:
    url, key, _ = agent
    pool = ops_for_hosts(lambda host: (url, key) if host == "h1" else None)
    try:
        assert pool("h1") is pool("h1")
        assert any(i.repo == "busybox" and i.tag == "latest" for i in pool("h1").list_images())
        with pytest.raises(Unavailable, match="host h2 has no reachable agent"):
            pool("h2")
    finally:
        pool.close()


def test_stopping_the_server_cuts_open_streams_promptly(docker_api: docker.APIClient) -> None:
    cid = run(docker_api, ["sh"], tty=True)  # quiet: nothing to log, nothing to say
    port = free_port()
    app = create_ops_app(DockerRuntime(docker_api), "k")
    server, thread = serve_ops(app, "127.0.0.1", port)
    remote = RemoteOps(f"http://127.0.0.1:{port}", "k", timeout=5)
    try:
        logs = remote.follow_logs(cid, True, True, False, 0, None)
        terminal = remote.attach(cid)
        wait_for(lambda: len(app.state.sessions) == 2, timeout=5, what="both sessions to open")
        started = time.monotonic()
        stop_ops(server, thread)
        assert not thread.is_alive() and time.monotonic() - started < 3
        assert list(logs) == [] and terminal.recv(10) == b""
        assert len(app.state.sessions) == 0
        with pytest.raises(Unavailable, match="unreachable"):
            remote.list_images()
    finally:
        remote.close()
        stop_ops(server, thread)
