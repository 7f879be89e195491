"""What one API request costs the server, by kind: ms of the server process's CPU per
request (from /proc, every thread counted) and requests per second, with `GET /` (the
HTTP floor) measured in the same rounds. CPU per request moves far less with the
machine's noise than requests per second do, so compare it when asking whether a change
made a request cheaper.

    .venv/bin/python -m bench.request_costs [--capsules 2000] [--seconds 5] [--rounds 2]

An all-in-one `capsuled` (SQLite) seeded as case 4 seeds it, its simulated host alive,
4 client threads. The kinds, taking turns in each round:

- `GET /`: no authentication, no store;
- `GET /v1/capsules/{uuid}` of a capsule that does not exist: authentication, the
  policy, one query and an error body (404);
- `POST /v1/capsules` with a template refused for two bad fields: authentication, the
  policy and the template's checks, nothing stored (400);
- `POST /v1/capsules` that is accepted: the whole create (202);
- an agent's heartbeat (`POST /v1/agents/{host}/heartbeat`), all of whose work is in the
  event loop: with a thousand agents, a replica answers a hundred a second, so its cost
  is mostly the HTTP stack's (routing, dependencies) rather than capsuled's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cases import api as api_case
from bench.harness import Server, cpu_seconds, log

CLIENTS = 4
MISSING = "00000000-0000-0000-0000-000000000000"
REFUSED = {"template": {"kind": "capsule", "metadata": {"name": "x"}, "spec": {
    "containers": [{"name": "a", "image": "busybox", "cpu": "lots"}]}}}


def _measure(pid: int, call: Callable[[], bool], seconds: float) -> tuple[float, float]:
    """(requests/s, server CPU ms per request) with CLIENTS threads for `seconds`."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    rate = api_case._rate_each(lambda _i: call, CLIENTS, seconds)
    done = max(rate * (time.perf_counter() - t0), 1.0)
    return rate, (cpu_seconds(pid) - c0) / done * 1000


def _agent_token(admin: httpx.Client, host: str) -> str:
    r = admin.post("/v1/tokens", json={"project_id": "service", "user_id": f"agent-{host}",
                                       "roles": ["agent"], "host": host})
    r.raise_for_status()
    return str(r.json()["token"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.request_costs")
    ap.add_argument("--capsules", type=int, default=2000, help="capsules seeded first")
    ap.add_argument("--seconds", type=float, default=5.0, help="per kind and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the medians here")
    args = ap.parse_args(argv)

    server = Server("costs")
    try:
        api_case.seed(server, args.capsules)
        server.start()
        client = server.client(limits=httpx.Limits(max_connections=16))
        public = httpx.Client(base_url=server.url, timeout=60)
        server.unlimited_quota(client)
        api_case.heartbeat_sim_host(server)
        create = api_case.poster(client)
        agent = httpx.Client(base_url=server.url, timeout=60, headers={
            "X-Auth-Token": _agent_token(client, api_case.SIM_HOST)})
        kinds: dict[str, Callable[[], bool]] = {
            "GET /": lambda: public.get("/").status_code == 200,
            "GET a missing capsule (404)": lambda: client.get(
                f"/v1/capsules/{MISSING}").status_code == 404,
            "POST a refused template (400)": lambda: client.post(
                "/v1/capsules", json=REFUSED).status_code == 400,
            "POST a capsule (202)": create,
            "POST an agent's heartbeat": lambda: agent.post(
                f"/v1/agents/{api_case.SIM_HOST}/heartbeat").status_code in (200, 204),
        }
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            order = list(kinds)
            for kind in order[r % len(order):] + order[:r % len(order)]:
                api_case.heartbeat_sim_host(server)  # the simulated host stays alive
                got[kind].append(_measure(server.pid, kinds[kind], args.seconds))
        client.close()
        public.close()
        agent.close()
    finally:
        left = server.destroy(docker.APIClient())
        if left:
            log(f"removed what the server made in Docker: {left}")
    floor = statistics.median(cpu for _, cpu in got["GET /"])
    rows: dict[str, Any] = {}
    print(f"{'request':32} {'per second':>10} {'CPU ms':>8} {'× GET /':>8}")
    for kind, samples in got.items():
        rate = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        rows[kind] = {"per_second": rate, "cpu_ms": cpu, "cpu_vs_get_root": cpu / floor}
        print(f"{kind:32} {rate:10.0f} {cpu:8.2f} {cpu / floor:8.2f}")
    log(f"{args.capsules} capsules seeded, {CLIENTS} clients, {args.rounds} rounds of "
        f"{args.seconds:g} s per kind")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
