"""What one agent costs an API replica: CPU per heartbeat and per minute of an idle
assignments long poll, against `GET /` measured in the same run (the HTTP floor).

    .venv/bin/python -m bench.agent_costs                     # both modes, ~3 min
    .venv/bin/python -m bench.agent_costs --hosts 100 --beats 3000 --idle-window 60

Two API replicas on a throwaway PostgreSQL database (bench/scale_sim.Deployment); only
replica 0 is talked to and measured (its CPU from /proc, so the heartbeat batch writer's
thread counts too). Each mode is a fresh deployment:

- before: `api.agent_token_cache_ttl` = 0, every agent request reads its token from the
  database;
  and every idle long poll that times out answers the whole desired set;
- after: the default 30 s: an agent token is read once per TTL per replica; the polls
  allow "unchanged" (`full=false`, as agent/loop.py asks), and their rechecks read the
  watch board's revisions instead of the store.

Heartbeats are stored in host_beats in both modes (their lock freedom is proven by
tests/integration/test_host_beats.py; the simulation, bench/scale_sim.py, shows it under
load). Printed: ms of CPU per request of each kind and its ratio to `GET /`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.scale_sim import Deployment, log
from capsuled.domain.channel import AgentStats, HostInfo


def _cpu_per(dep: Deployment, n: int, fn: Any) -> float:
    """ms of replica 0's CPU per call of `fn`, over `n` calls."""
    c0 = dep.cpu()[0]
    for i in range(n):
        fn(i)
    return (dep.cpu()[0] - c0) / n * 1000


async def _idle_polls(url: str, tokens: dict[str, str], timeout: float, window: float,
                      full: bool) -> int:
    """Every host holds the assignments long poll for `window` seconds; how many polls
    were answered (nothing is assigned: each ends at its timeout). Not `full`: as the
    agent polls now, "unchanged" allowed after its first whole set."""
    answered = 0
    deadline = time.monotonic() + window

    async def one(http: httpx.AsyncClient, host: str, token: str) -> None:
        nonlocal answered
        revision = -1
        while time.monotonic() < deadline:
            params: dict[str, Any] = {"after": revision, "timeout": timeout}
            if not full and revision >= 0:
                params["full"] = "false"
            r = await http.get(f"/v1/agents/{host}/assignments",
                               headers={"X-Auth-Token": token}, params=params,
                               timeout=timeout + 30)
            r.raise_for_status()
            revision = r.json()["revision"]
            answered += 1

    limits = httpx.Limits(max_connections=len(tokens) + 5)
    async with httpx.AsyncClient(base_url=url, limits=limits) as http:
        await asyncio.gather(*(one(http, h, t) for h, t in tokens.items()))
    return answered


def measure(mode: str, ttl: float, full: bool, args: argparse.Namespace,
            tmp: Path) -> dict[str, Any]:
    os.environ["CAPSULED_API__AGENT_TOKEN_CACHE_TTL"] = str(ttl)
    dep = Deployment(args.database_url, 60.0, tmp / mode)
    (tmp / mode).mkdir()
    try:
        dep.start()
        url = dep.urls[0]
        hosts = [f"cost-{i:04d}" for i in range(args.hosts)]
        tokens = dep.agent_tokens(hosts)
        with httpx.Client(base_url=url, timeout=60) as http:
            floor = _cpu_per(dep, args.floor, lambda i: http.get("/").raise_for_status())
            for h in hosts:
                info = HostInfo(name=h, cpus=8, memory_mb=8192, disk_gb=100, runtime="fake")
                http.put(f"/v1/agents/{h}", json=info.model_dump(mode="json"),
                         headers={"X-Auth-Token": tokens[h]}).raise_for_status()
            stats = {"stats": AgentStats().model_dump(mode="json")}

            def beat(i: int) -> None:
                h = hosts[i % len(hosts)]
                http.post(f"/v1/agents/{h}/heartbeat", json=stats,
                          headers={"X-Auth-Token": tokens[h]}).raise_for_status()
            time.sleep(1.0)  # the registrations' own work settles
            heartbeat = _cpu_per(dep, args.beats, beat)
        time.sleep(1.0)
        c0 = dep.cpu()[0]
        polls = asyncio.run(_idle_polls(url, tokens, args.watch_timeout, args.idle_window,
                                        full))
        idle_cpu = dep.cpu()[0] - c0
        per_agent_min = idle_cpu * 1000 / args.hosts / (args.idle_window / 60)
        out = {"mode": mode, "agent_token_cache_ttl": ttl, "full_polls": full, "get_root_ms": round(floor, 3),
               "heartbeat_ms": round(heartbeat, 3),
               "heartbeat_ratio": round(heartbeat / floor, 2),
               "idle_poll_ms_per_agent_min": round(per_agent_min, 2),
               "idle_poll_ms_per_poll": round(idle_cpu * 1000 / max(polls, 1), 3),
               "idle_poll_ratio_per_poll": round(idle_cpu * 1000 / max(polls, 1) / floor, 2),
               "polls": polls}
        log(json.dumps(out))
        return out
    finally:
        dep.stop()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.agent_costs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=50, help="agents (hosts) simulated")
    ap.add_argument("--beats", type=int, default=2000, help="heartbeats sent, round robin")
    ap.add_argument("--floor", type=int, default=1000, help="GET / requests (the baseline)")
    ap.add_argument("--watch-timeout", type=float, default=30.0,
                    help="the long poll's timeout (the agent's: 30 s)")
    ap.add_argument("--idle-window", type=float, default=60.0,
                    help="seconds every agent holds its idle long poll")
    ap.add_argument("--database-url", default=os.environ.get(
        "CAPSULED_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-costs-") as d:
        rows = [measure("before", 0.0, True, args, Path(d)),
                measure("after", 30.0, False, args, Path(d))]
    before, after = rows
    print(f"{'':28}{'before':>10}{'after':>10}{'after/before':>14}")
    for key, what in (("get_root_ms", "GET / (ms CPU)"), ("heartbeat_ms", "heartbeat (ms CPU)"),
                      ("heartbeat_ratio", "heartbeat / GET /"),
                      ("idle_poll_ms_per_poll", "idle long poll (ms/poll)"),
                      ("idle_poll_ms_per_agent_min", "idle long poll (ms/min)"),
                      ("idle_poll_ratio_per_poll", "idle poll / GET /")):
        print(f"{what:28}{before[key]:>10}{after[key]:>10}"
              f"{after[key] / before[key] if before[key] else float('nan'):>14.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
