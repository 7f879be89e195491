"""Case 7 — change events: what the outbox's readers cost the writers, and how soon a
watcher hears of a change.

Two `capsuled` processes on simulated hosts (no agent, creates never reach Docker, as in
case 4), alike but for [notifications]:

    creates   POST /v1/capsules accepted per second with C clients on the server whose
              AMQP notifier publishes every record to the loopback RabbitMQ (a topic of
              this run's own), alternating with the same on the server with notifications
              off (baseline). Then how long the notifier took to catch up once the
              creates stopped (its durable cursor reaching the outbox's head).
    watch     W watchers on `GET /v1/events?watch=true`; one writer POSTs capsules (two
              records each); latency = when a watcher read a record − the record's
              `created_at` (the same clock: one machine). Baseline: a `GET /` round trip
              on the same server, interleaved with the writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid as uuidlib
from datetime import UTC, datetime
from typing import Any

import httpx

from bench import stats
from bench.cases.api import _rate, heartbeat_sim_host, seed
from bench.harness import Row, Server, log
from bench.workloads import template

RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"


def notifying_env(topic: str) -> dict[str, str]:
    return {"CAPSULED_NOTIFICATIONS__ENABLED": "true",
            "CAPSULED_NOTIFICATIONS__TRANSPORT_URL": RABBIT,
            "CAPSULED_NOTIFICATIONS__TOPICS": json.dumps([topic])}


def _poster(client: httpx.Client) -> Any:
    body = {"template": template("ev")}

    def post() -> bool:
        body["template"]["metadata"]["name"] = f"ev-{uuidlib.uuid4().hex[:8]}"
        return client.post("/v1/capsules", json=body).status_code == 202
    return post


def _reader_lag(server: Server) -> tuple[int, int]:
    """(outbox head, the slowest durable reader's cursor) read from the server's SQLite."""
    db = sqlite3.connect(server.db)
    try:
        head = db.execute("select seq from outbox_counter where id = 1").fetchone()[0]
        row = db.execute("select min(seq) from outbox_readers").fetchone()
        return int(head), int(row[0]) if row and row[0] is not None else int(head)
    finally:
        db.close()


def creates(on: Server, off: Server, clients: int, seconds: float, rounds: int) -> list[Row]:
    c_on = on.client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    c_off = off.client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    ours: list[float] = []
    base: list[float] = []
    catch_up: list[float] = []
    try:
        for srv, c in ((on, c_on), (off, c_off)):
            srv.unlimited_quota(c)
        for i in range(rounds):
            order = [(on, c_on, ours), (off, c_off, base)]
            for srv, c, out in (order if i % 2 == 0 else order[::-1]):
                heartbeat_sim_host(srv)
                out.append(_rate(_poster(c), clients, seconds))
                if srv is on:
                    t0 = time.perf_counter()
                    while True:
                        head, cursor = _reader_lag(on)
                        if cursor >= head or time.perf_counter() - t0 > 120:
                            break
                        time.sleep(0.02)
                    catch_up.append(time.perf_counter() - t0)
    finally:
        c_on.close()
        c_off.close()
    log(f"events creates: {stats.median(ours):.0f}/s notifying, {stats.median(base):.0f}/s not; "
        f"notifier caught up {stats.median(catch_up):.2f}s after")
    return [
        Row("7 events", f"creates accepted/s, AMQP notifier on ({clients} clients)",
            stats.median(ours), "/s", stats.median(base), "same server, notifications off",
            "ratio ≥ 0.9", stats.median(ours) >= 0.9 * stats.median(base), rounds,
            {"on": ours, "off": base}),
        Row("7 events", "notifier caught up after the creates, median", stats.median(catch_up),
            "s", None, "", "reported", None, len(catch_up), {"samples": catch_up}),
    ]


def watch(server: Server, watchers: int, writes: int, rate: float) -> list[Row]:
    client = server.client()
    public = httpx.Client(base_url=server.url, timeout=30)
    latencies: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(watchers + 1)
    expected = 2 * writes  # each create: create.start + Scheduled
    done = threading.Event()
    counts: list[int] = []

    def watcher() -> None:
        seen = 0
        with server.client(timeout=httpx.Timeout(60, read=60)) as c, c.stream(
                "GET", "/v1/events", params={"watch": "true"}) as r:
            r.raise_for_status()
            ready.wait()
            for line in r.iter_lines():
                now = datetime.now(UTC).replace(tzinfo=None)
                if not line.strip():
                    continue
                rec = json.loads(line)
                if "seq" not in rec or not str(rec.get("name", "")).startswith("ev-"):
                    continue
                made = datetime.fromisoformat(rec["created_at"])
                if made.tzinfo is not None:
                    made = made.astimezone(UTC).replace(tzinfo=None)
                with lock:
                    latencies.append((now - made).total_seconds() * 1000)
                seen += 1
                if seen >= expected or done.is_set():
                    break
        with lock:
            counts.append(seen)

    server.unlimited_quota(client)
    heartbeat_sim_host(server)
    threads = [threading.Thread(target=watcher, daemon=True) for _ in range(watchers)]
    for t in threads:
        t.start()
    ready.wait(timeout=30)
    root_ms: list[float] = []
    post = _poster(client)
    for _ in range(writes):
        t0 = time.perf_counter()
        if not post():
            raise RuntimeError("watch: a create was refused")
        t1 = time.perf_counter()
        public.get("/").raise_for_status()
        root_ms.append((time.perf_counter() - t1) * 1000)
        time.sleep(max(0.0, 1 / rate - (time.perf_counter() - t0)))
    for t in threads:
        t.join(timeout=30)
    done.set()
    client.close()
    public.close()
    got = len(latencies)
    log(f"events watch: per watcher {counts}")
    log(f"events watch: p50 {stats.median(latencies):.1f} ms, p99 "
        f"{stats.percentile(latencies, 99):.1f} ms over {got} deliveries "
        f"({watchers} watchers × {expected} records)")
    p99 = stats.percentile(latencies, 99)
    return [
        Row("7 events", "change → watcher, p50", stats.median(latencies), "ms",
            stats.median(root_ms), "GET / round trip, same server", "reported", None, got,
            {"watch": stats.summary(latencies), "root": stats.summary(root_ms)}),
        Row("7 events", f"change → watcher, p99 ({watchers} watchers)", p99, "ms",
            stats.percentile(root_ms, 99), "GET / round trip, same server", "p99 ≤ 200 ms",
            p99 <= 200 and got == watchers * expected, got,
            {"delivered": got, "expected": watchers * expected}),
    ]


def run(p: dict[str, Any], api: Any) -> list[Row]:
    topic = f"capsuled-bench-{uuidlib.uuid4().hex[:8]}"
    on, off = Server("events-on", notifying_env(topic)), Server("events-off")
    try:
        for srv in (on, off):
            seed(srv, 0)
            srv.start()
        rows = creates(on, off, p["api_clients"], p["api_create_seconds"], p["events_rounds"])
        rows += watch(off, p["events_watchers"], p["events_writes"], p["events_rate"])
        return rows
    finally:
        for srv in (on, off):
            left = srv.destroy(api)
            if left:
                log(f"events: removed leftovers {left}")
