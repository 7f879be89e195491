"""The simulation's create clients (bench/sim_agents.run_clients) with a rate send each
create at its own time on a fixed schedule (an open loop), and a create that waited for
a free client thread counts that wait in its latency: on a closed loop, or timed from
the moment of sending, a slow API would read as a fast one (coordinated omission)."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bench.sim_agents import run_clients  # noqa: E402


def _server(delay: float) -> tuple[ThreadingHTTPServer, list[float]]:
    arrived: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            arrived.append(time.monotonic())
            time.sleep(delay)
            body = json.dumps({"uuid": f"u{len(arrived)}"}).encode()
            self.send_response(202)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, arrived


def _clients(tmp_path: Path, url: str, **cfg: Any) -> dict[str, list[float]]:
    out = tmp_path / "out.json"
    run_clients({"urls": [url], "token": "t", "index": 0, "prefix": "c", **cfg}, out)
    got = json.loads(out.read_text())
    assert got["errors"] == []
    return got["sent"]


def test_with_a_rate_creates_go_on_schedule_and_a_wait_for_a_thread_counts(tmp_path: Path) -> None:
    server, arrived = _server(delay=0.2)
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        # 20 a second, one thread, 0.2 s per answer: the API takes 5 a second.
        sent = _clients(tmp_path, url, count=8, concurrency=1, rate=20.0)
        starts = sorted(t0 for t0, _ in sent.values())
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(abs(g - 0.05) < 1e-6 for g in gaps), gaps  # the schedule, not the sends
        latencies = sorted(t1 - t0 for t0, t1 in sent.values())
        assert latencies[-1] > 8 * 0.2 - 8 * 0.05 - 0.1, latencies  # the queue is in it
        # Closed loop: each create is timed from its own send, one after another.
        sent = _clients(tmp_path, url, count=4, concurrency=1)
        assert all(0.2 <= t1 - t0 < 0.5 for t0, t1 in sent.values()), sent
    finally:
        server.shutdown()
    assert len(arrived) == 12
