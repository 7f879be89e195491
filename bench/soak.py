"""Soak: mixed traffic of several tenants against two API replicas for a long time, then
the latency of each endpoint (p50/p99), the requests that failed although they should
have succeeded, and whether each process's memory stayed flat.

    .venv/bin/python -m bench.soak                       # 30 minutes (not in CI)
    .venv/bin/python -m bench.soak --minutes 5 --json /tmp/soak.json

It runs on the chaos rig (tests/chaos/rig.py: its own PostgreSQL, its own dockerd, two
`capsuled api` replicas and an agent), and kills nothing. RSS of every process of the rig
is sampled every 10 s; "flat" (judged for the replicas and the agent; PostgreSQL and
dockerd are shown for context, their caches grow with the containers) means the least-squares line through the samples of the
last 20 minutes (the last two thirds of a shorter run) grows by less than
max(10 MiB, 5 %) over that window. docs/benchmarks.md, "Chaos and soak".
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/soak.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.stats import percentile
from tests.chaos.rig import LATEST, Rig, start_rig, stop_rig

SAMPLE_EVERY = 10.0
FLAT_WINDOW = 20 * 60.0
FLAT_MIB = 10.0
FLAT_RATIO = 0.05
POOL = 8  # capsules each tenant keeps at most
OURS = ("api0", "api1", "agent")  # judged flat or not; PostgreSQL and dockerd are context


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)  # answers the state explains (409)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, endpoint: str, seconds: float, status: int | None, detail: str = "") -> None:
        with self.lock:
            if status is not None and status < 300:
                self.latencies[endpoint].append(seconds)
            elif status == 409 and endpoint.startswith("PATCH"):
                self.refusals[endpoint] += 1  # an update already under way: said, not failed
            else:
                self.failures.append(f"{endpoint}: {status} {detail[:200]}")


class Tenant(threading.Thread):
    """One tenant's client: keeps a few capsules, looks at them, updates and replaces them."""

    def __init__(self, urls: list[str], project: str, token: str, deadline: float,
                 results: Results, seed: int) -> None:
        super().__init__(daemon=True)
        self.clients = [httpx.Client(base_url=u, timeout=60,
                                     headers={"X-Auth-Token": token, **LATEST}) for u in urls]
        self.project, self.deadline, self.results = project, deadline, results
        self.rnd = random.Random(seed)
        self.mine: list[str] = []
        self.n = 0

    def call(self, endpoint: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
        t = time.monotonic()
        try:
            r = self.rnd.choice(self.clients).request(method, path, **kw)
        except httpx.HTTPError as exc:
            self.results.add(endpoint, time.monotonic() - t, None, repr(exc))
            return None
        self.results.add(endpoint, time.monotonic() - t, r.status_code, r.text)
        return r

    def fill(self) -> None:
        """The tenant's capsules made before the clock starts: the measured window then
        holds a steady number of capsules, so growth in it is not the working set's."""
        while len(self.mine) < POOL:
            before = len(self.mine)
            self.step("create")
            if len(self.mine) == before:
                time.sleep(1.0)

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            self.step()
            time.sleep(self.rnd.uniform(0.2, 0.8))
        for u in self.mine:
            self.call("DELETE /v1/capsules/{id}", "DELETE", f"/v1/capsules/{u}")
        for c in self.clients:
            c.close()

    def step(self, op: str | None = None) -> None:
        op = op or self.rnd.choices(["create", "show", "list", "update", "delete", "quota"],
                                    [2, 6, 3, 2, 2, 1])[0]
        if op == "create" and len(self.mine) < POOL:
            self.n += 1
            tmpl = {"kind": "capsule", "metadata": {"name": f"{self.project}-{self.n}"},
                    "spec": {"containers": [{"name": "c0", "image": "busybox",
                                             "command": ["sleep", "36000"], "env": {"GEN": "0"},
                                             "resources": {"requests": {"cpu": 0.1, "memory": 8}}}]}}
            r = self.call("POST /v1/capsules", "POST", "/v1/capsules", json={"template": tmpl})
            if r is not None and r.status_code == 202:
                self.mine.append(r.json()["uuid"])
        elif op == "list" or not self.mine:
            self.call("GET /v1/capsules", "GET", "/v1/capsules")
        elif op == "show":
            self.call("GET /v1/capsules/{id}", "GET", f"/v1/capsules/{self.rnd.choice(self.mine)}")
        elif op == "update":
            self.call("PATCH /v1/capsules/{id}", "PATCH", f"/v1/capsules/{self.rnd.choice(self.mine)}",
                      json={"containers": [{"name": "c0", "env": {"GEN": str(self.rnd.random())}}]})
        elif op == "delete" or (op == "create" and len(self.mine) >= POOL):
            u = self.mine.pop(self.rnd.randrange(len(self.mine)))
            self.call("DELETE /v1/capsules/{id}", "DELETE", f"/v1/capsules/{u}")
        else:
            self.call("GET /v1/quotas/{project}", "GET", f"/v1/quotas/{self.project}",
                      params={"usages": "true"})


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def processes(rig: Rig) -> dict[str, int | None]:
    assert rig.agent is not None
    return {"api0": rig.apis[0].pid, "api1": rig.apis[1].pid, "agent": rig.agent.pid,
            "postgres": rig.pg.pid(), "dockerd": rig.engine.pid()}


def growth(samples: list[tuple[float, float]]) -> float:
    """How much the least-squares line through (t, MiB) rises from the first to the last t."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    slope = sum((t - mt) * (v - mv) for t, v in samples) / var if var else 0.0
    return slope * (samples[-1][0] - samples[0][0])


def flatness(series: dict[str, list[tuple[float, float]]], end: float, window: float) -> dict[str, Any]:
    out = {}
    for name, samples in series.items():
        last = [(t, v) for t, v in samples if t >= end - window]
        g = growth(last)
        mean = sum(v for _, v in last) / len(last) if last else 0.0
        allowed = max(FLAT_MIB, FLAT_RATIO * mean)
        out[name] = {"samples": len(last), "mean_mib": round(mean, 1), "growth_mib": round(g, 1),
                     "allowed_mib": round(allowed, 1), "flat": g <= allowed, "judged": name in OURS}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--json", type=Path, default=Path("bench/results/soak.json"))
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="capsuled-soak-"))
    rig = start_rig(tmp, engine=("soak", 4), log=log)
    try:
        report = soak(rig, args.minutes * 60, args.tenants)
    finally:
        stop_rig(rig)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(render(report))
    ok = not report["failures"] and all(f["flat"] for f in report["memory"].values() if f["judged"])
    return 0 if ok else 1


def soak(rig: Rig, seconds: float, tenants: int) -> dict[str, Any]:
    tokens = {}
    with rig.client() as api:
        for i in range(tenants):
            project = f"soak-t{i}"
            api.put(f"/v1/quotas/{project}", json={"capsules": -1, "containers": -1, "cpu": -1,
                                                    "memory": -1, "disk": -1}).raise_for_status()
            r = api.post("/v1/tokens", json={"project_id": project, "user_id": f"u{i}", "roles": ["member"]})
            r.raise_for_status()
            tokens[project] = r.json()["token"]
    results = Results()
    workers = [Tenant(rig.urls, p, t, 0.0, results, seed=i) for i, (p, t) in enumerate(tokens.items())]
    log(f"{tenants} tenants make {POOL} capsules each")
    fills = [threading.Thread(target=w.fill) for w in workers]
    for f in fills:
        f.start()
    for f in fills:
        f.join()
    start = time.monotonic()
    deadline = start + seconds
    log(f"{tenants} tenants for {seconds / 60:g} min against {', '.join(rig.urls)}")
    for w in workers:
        w.deadline = deadline
        w.start()
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    while time.monotonic() < deadline:
        now = time.monotonic() - start
        for name, pid in processes(rig).items():
            mib = rss_mib(pid)
            if mib is not None:
                series[name].append((now, mib))
        time.sleep(SAMPLE_EVERY)
    for w in workers:
        w.join()
    window = min(FLAT_WINDOW, seconds * 2 / 3)
    return {
        "minutes": seconds / 60, "tenants": tenants, "flat_window_minutes": window / 60,
        "endpoints": {ep: {"n": len(v), "p50_ms": round(percentile(v, 50) * 1000, 1),
                           "p99_ms": round(percentile(v, 99) * 1000, 1)}
                      for ep, v in sorted(results.latencies.items())},
        "failures": results.failures, "refusals": dict(results.refusals),
        "memory": flatness(series, seconds, window),
        "rss_series": {k: [(round(t), round(v, 1)) for t, v in s] for k, s in series.items()},
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"soak: {report['minutes']:g} min, {report['tenants']} tenants; "
             f"failed requests that should succeed: {len(report['failures'])}; "
             f"409 refusals (update under way): {sum(report['refusals'].values())}",
             f"{'endpoint':32} {'n':>6} {'p50 ms':>8} {'p99 ms':>8}"]
    for ep, s in report["endpoints"].items():
        lines.append(f"{ep:32} {s['n']:>6} {s['p50_ms']:>8} {s['p99_ms']:>8}")
    lines.append(f"memory over the last {report['flat_window_minutes']:g} min (RSS, MiB):")
    for name, f in report["memory"].items():
        lines.append(f"  {name:9} mean {f['mean_mib']:>7} growth {f['growth_mib']:>6} "
                     f"(allowed {f['allowed_mib']}) {'flat' if f['flat'] else 'GROWS'}"
                     + ("" if f["judged"] else " (context, not judged)"))
    lines += [f"  failure: {f}" for f in report["failures"][:10]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
