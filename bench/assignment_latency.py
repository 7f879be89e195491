"""Latency from sending `POST /v1/capsules` to the host's agent holding the assignment,
with one API replica and with two (the POST on one, the agent's long poll on the other).

    .venv/bin/python bench/assignment_latency.py [--runs 200] [--database-url URL]

Needs PostgreSQL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres, where a
throwaway database is made and dropped). No Docker: the "agent" is this process, long
polling through the real HTTP agent channel as a registered fake host, so the figure is
the control plane's alone (API, store, channel), not container start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from capsuled.agent.http_channel import HttpChannel  # noqa: E402
from capsuled.domain.channel import HostInfo  # noqa: E402

VENV_BIN = Path(sys.executable).parent
HEADERS = {"OpenStack-API-Version": "container latest"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure(post_url: str, watch_url: str, token: str, agent_token: str, host: str,
            runs: int) -> list[float]:
    channel = HttpChannel(watch_url, agent_token)
    channel.register(HostInfo(name=host, cpus=10_000, memory_mb=10_000_000, disk_gb=10_000,
                              labels={"bench": host}))
    seen: dict[str, float] = {}
    stop = threading.Event()
    revision = channel.watch(host, -1, 0).revision

    errors: list[str] = []

    def watch() -> None:
        nonlocal revision
        while not stop.is_set():
            try:
                channel.heartbeat(host)  # a real agent's heartbeat keeps the host schedulable
                got = channel.watch(host, revision, 1)
            except Exception as exc:  # noqa: BLE001 - reported by the waiting side
                errors.append(str(exc))
                time.sleep(0.1)
                continue
            now = time.perf_counter()
            revision = got.revision
            for a in got.capsules:
                seen.setdefault(a.uuid, now)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out = []
    with httpx.Client(base_url=post_url, headers={"X-Auth-Token": token, **HEADERS}) as api:
        for i in range(runs):
            tmpl = {"kind": "capsule", "metadata": {"name": f"lat-{i}"},
                    "spec": {"nodeSelector": {"bench": host},
                             "containers": [{"image": "busybox", "command": ["true"]}]}}
            sent = time.perf_counter()
            r = api.post("/v1/capsules", json={"template": tmpl})
            r.raise_for_status()
            u = r.json()["uuid"]
            deadline = time.time() + 10
            while u not in seen and time.time() < deadline:
                time.sleep(0.001)
            if u not in seen:
                raise SystemExit(f"the assignment of {u} never arrived (watcher: {errors})")
            out.append(seen[u] - sent)
            time.sleep(0.02)
    stop.set()
    t.join()
    channel.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--database-url", default=os.environ.get(
        "CAPSULED_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    admin = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
    name = f"capsuled_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    db = make_url(args.database_url).set(database=name).render_as_string(hide_password=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            urls: list[str] = []
            for i in range(2):
                port = free_port()
                procs.append(subprocess.Popen(
                    [str(VENV_BIN / "capsuled"), "--state-dir", f"{tmp}/api{i}", "--listen",
                     f"127.0.0.1:{port}", "--database-url", db, "--log-level", "warning", "api"],
                    stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/api{i}.log", "wb")))
                urls.append(f"http://127.0.0.1:{port}")
                wait_up(urls[-1])  # one at a time: the first writes the admin token
            token = next(p.read_text().strip() for p in Path(tmp).glob("api*/admin-token"))
            with httpx.Client(base_url=urls[0], headers={"X-Auth-Token": token, **HEADERS}) as api:
                api.put("/v1/quotas/admin", json={"capsules": -1, "containers": -1,
                                                  "cpu": -1, "memory": -1}).raise_for_status()
                agent = api.post("/v1/tokens", json={"project_id": "service", "user_id": "bench",
                                                     "roles": ["agent"], "host": "bench-h"})
                agent.raise_for_status()
            agent_token = agent.json()["token"]
            results = {
                "one replica": measure(urls[0], urls[0], token, agent_token, "bench-h", args.runs),
                "two replicas": measure(urls[0], urls[1], token, agent_token, "bench-h", args.runs),
            }
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    table = {k: {"runs": len(v), "median_ms": round(statistics.median(v) * 1000, 1),
                 "p99_ms": round(pct(v, 99) * 1000, 1)} for k, v in results.items()}
    print(f"{'case':<14} {'runs':>5} {'median ms':>10} {'p99 ms':>8}")
    for k, v in table.items():
        print(f"{k:<14} {v['runs']:>5} {v['median_ms']:>10} {v['p99_ms']:>8}")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
