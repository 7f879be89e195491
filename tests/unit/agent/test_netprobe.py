"""netprobe against listeners in this process's own network namespace (entered by pid,
as the prober enters a sandbox's): TCP, HTTP status rules, bounded waits, and the pid
check that keeps a reused pid from being entered."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from capsuled.agent import netprobe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="setns needs root")


def me() -> int:
    return os.getpid()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        code = 200 if self.path == "/ok" and self.headers.get("X-Probe") == "1" else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_port() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def test_tcp_connects_or_says_refused(http_port: int) -> None:
    netprobe.check_tcp(me, http_port, 1)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(netprobe.ProbeFailed, match="refused"):
        netprobe.check_tcp(me, port, 1)


def test_http_status_decides(http_port: int) -> None:
    assert netprobe.check_http(me, http_port, "/ok", "HTTP", [("X-Probe", "1")], 1) == 200
    with pytest.raises(netprobe.ProbeFailed, match="status 404"):
        netprobe.check_http(me, http_port, "/ok", "HTTP", [], 1)


def test_a_silent_server_times_out_within_the_bound() -> None:
    quiet = socket.socket()
    quiet.bind(("127.0.0.1", 0))
    quiet.listen(1)
    try:
        start = time.monotonic()
        with pytest.raises(netprobe.ProbeFailed, match="timed out"):
            netprobe.check_http(me, quiet.getsockname()[1], "/", "HTTP", [], 1)
        assert time.monotonic() - start < 2
    finally:
        quiet.close()


def test_a_pid_that_changes_while_opening_is_not_entered() -> None:
    answers = iter([os.getpid(), 1])
    with pytest.raises(netprobe.ProbeFailed, match="sandbox changed"):
        netprobe.check_tcp(lambda: next(answers), 80, 1)
