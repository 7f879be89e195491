"""Many hosts: simulated agents against two `capsuled api` replicas on PostgreSQL.

    .venv/bin/python -m bench.scale_sim --quick          # 50 agents, 500 capsules, < 60 s
    .venv/bin/python -m bench.scale_sim                  # sweep 100,250,500,1000,1500 agents
    .venv/bin/python -m bench.scale_sim --agents 1000 --per-host 20 --json /tmp/s.json

Each step of the sweep makes a throwaway database, starts two API replicas on it, and
measures, before any agent exists, the baselines of the same run: a `GET /` round trip
on a replica (the HTTP floor) and each replica's CPU at rest. Then it starts N
simulated agents in a few processes (bench/sim_agents.py says what they do and why most
are lightweight stand-ins and a few the real agent loop on the fake runtime), creates
`per_host` × N capsules through the API from a few client processes (the scheduler
spreads them) and measures. The clients send as fast as they are answered (a closed
loop: the most the API takes, and every latency at saturation, where it is the clients'
queue), or, with `--rate`, on a fixed schedule (an open loop: the latency at that load):

- assignment latency: POST sent → the host's agent holds it (its long poll answered
  with it), median and p99; also from the 202;
- running: POST sent → the agent's Running report accepted; every capsule must be
  Running in the API at the end;
- heartbeats: none failed, the longest gap between a host's accepted heartbeats, and,
  read from the database every second, the oldest `last_seen` of any simulated host
  (a host is down after `--down-after`) and capsules turned Unknown (HostDown events);
- CPU: each replica's CPU seconds (from /proc) per 100 agents per minute, while the
  capsules are created and at rest afterwards (heartbeats and long polls only), and
  the database's backends of this database over the same windows.

A step breaks when the assignment p99 passes 1 s or a heartbeat is missed; the sweep
stops after the first broken step. Needs PostgreSQL (default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres, where the throwaway databases are
made and dropped); no Docker.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HEADERS = {"OpenStack-API-Version": "container latest"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOAL_P99 = 1.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children: none here), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Params:
    agents: int
    capsules: int
    agent_procs: int
    client_procs: int
    client_threads: int
    heartbeat_interval: float
    down_after: float
    real_per_proc: int
    rest_window: float
    baseline_window: float
    settle: float
    create_seconds: float  # 0: until every capsule is created
    rate: float = 0.0  # creates offered per second, all clients together (0: closed loop)


@dataclass
class Deployment:
    """A throwaway database and two API replicas on it."""

    admin_url: str
    down_after: float
    tmp: Path
    name: str = field(default_factory=lambda: f"capsuled_sim_{uuid.uuid4().hex[:8]}")
    urls: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    token: str = ""
    db: Engine | None = None

    def start(self) -> Deployment:
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"CREATE DATABASE {self.name}"))
        admin.dispose()
        url = make_url(self.admin_url).set(database=self.name).render_as_string(
            hide_password=False)
        self.db = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=2)
        env = {**os.environ, "CAPSULED_API__HOST_DOWN_AFTER": str(self.down_after)}
        for i in range(2):
            port = free_port()
            self.procs.append(subprocess.Popen(
                [str(VENV_BIN / "capsuled"), "--state-dir", f"{self.tmp}/api{i}", "--listen",
                 f"127.0.0.1:{port}", "--database-url", url, "--log-level", "warning", "api"],
                stdout=subprocess.DEVNULL, stderr=open(f"{self.tmp}/api{i}.log", "wb"), env=env))
            self.urls.append(f"http://127.0.0.1:{port}")
            wait_up(self.urls[-1])  # one at a time: the first migrates and writes the token
        self.token = next(p.read_text().strip() for p in self.tmp.glob("api*/admin-token"))
        return self

    def project_token(self, project: str) -> str:
        """A member's token of `project`, whose quota is unlimited."""
        with self.client(0) as api:
            api.put(f"/v1/quotas/{project}", json={"capsules": -1, "containers": -1, "cpu": -1,
                                                   "memory": -1}).raise_for_status()
            r = api.post("/v1/tokens", json={"project_id": project, "user_id": "sim",
                                             "roles": ["member"]})
            r.raise_for_status()
            return str(r.json()["token"])

    def client(self, i: int) -> httpx.Client:
        return httpx.Client(base_url=self.urls[i], timeout=60,
                            headers={"X-Auth-Token": self.token, **HEADERS})

    def agent_tokens(self, hosts: list[str]) -> dict[str, str]:
        def one(host: str) -> tuple[str, str]:
            with self.client(0) as api:
                r = api.post("/v1/tokens", json={"project_id": "service", "user_id": host,
                                                 "roles": ["agent"], "host": host})
                r.raise_for_status()
                return host, r.json()["token"]
        with ThreadPoolExecutor(8) as pool:
            return dict(pool.map(one, hosts))

    def cpu(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.procs]

    def db_cpu(self) -> dict[int, float]:
        """CPU seconds of each PostgreSQL backend serving this database."""
        assert self.db is not None
        with self.db.connect() as c:
            pids = [r[0] for r in c.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": self.name})]
        return {pid: cpu_seconds(pid) for pid in pids}

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.db is not None:
            self.db.dispose()
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"))
        admin.dispose()


# Routes whose server-side latency the result gives (the replicas' own histograms).
SERVER_ROUTES = {"create": ("POST", "/v1/capsules"),
                 "heartbeat": ("POST", "/v1/agents/{host}/heartbeat")}


def server_latency(dep: Deployment) -> dict[str, dict[str, float]]:
    """p50 and p99 (interpolated within the histogram's buckets) of each route in
    SERVER_ROUTES, from arrival to answer inside the replicas, both together: beside
    the clients' own timings, what is the API's and what is the waiting of clients and
    simulated agents for a CPU on a shared machine."""
    from prometheus_client.parser import text_string_to_metric_families
    counts: dict[str, dict[float, float]] = {k: {} for k in SERVER_ROUTES}
    for i in range(len(dep.urls)):
        with dep.client(i) as api:
            text_ = api.get("/metrics").text
        for family in text_string_to_metric_families(text_):
            if family.name != "capsuled_http_request_duration_seconds":
                continue
            for sample in family.samples:
                if not sample.name.endswith("_bucket"):
                    continue
                for key, (method, route) in SERVER_ROUTES.items():
                    if (sample.labels.get("method"), sample.labels.get("route")) == (method, route):
                        le = float(sample.labels["le"])
                        counts[key][le] = counts[key].get(le, 0.0) + sample.value
    return {key: _bucket_quantiles(c) for key, c in counts.items()}


def _bucket_quantiles(cumulative: dict[float, float]) -> dict[str, float]:
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    out: dict[str, float] = {"n": total}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        want, lo, below = q * total, 0.0, 0.0
        value = float("nan")
        for b in bounds:
            at = cumulative[b]
            if total and at >= want:
                value = b if math.isinf(b) else lo + (b - lo) * (want - below) / max(at - below, 1e-9)
                break
            lo, below = (b if not math.isinf(b) else lo), at
        out[name] = round(value * 1000, 1)
    return out


def wait_up(url: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def db_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """Backends that lived through the window count their difference; new ones all of
    theirs (pooled connections mostly live through it)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class Watchman(threading.Thread):
    """Reads, every second, how stale the oldest simulated host's heartbeat is and how
    many capsules the API turned Unknown, straight from the database."""

    def __init__(self, dep: Deployment) -> None:
        super().__init__(daemon=True)
        self.dep = dep
        self.worst = 0.0  # seconds: the oldest last_seen seen
        self.down_hosts: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        assert self.dep.db is not None
        while not self.stop.wait(1.0):
            try:
                with self.dep.db.connect() as c:
                    rows = c.execute(text(
                        "SELECT h.name, EXTRACT(EPOCH FROM (now() AT TIME ZONE 'utc') - b.last_seen)"
                        " FROM hosts h LEFT JOIN host_beats b ON b.host = h.name"
                        " WHERE h.labels::text LIKE '%sim%'")).all()
            except Exception as exc:  # noqa: BLE001 - a missed sample, not a result
                log(f"watchman: {exc}")
                continue
            for name, age in rows:
                age = float(age or 0.0)
                self.worst = max(self.worst, age)
                if age > self.dep.down_after:
                    self.down_hosts.add(name)


def spawn(kind: str, cfg: dict[str, Any], tmp: Path, tag: str) -> tuple[subprocess.Popen[str], Path]:
    cfg_path, out = tmp / f"{tag}.json", tmp / f"{tag}.out.json"
    cfg_path.write_text(json.dumps(cfg))
    p = subprocess.Popen([sys.executable, "-m", "bench.sim_agents", kind, str(cfg_path),
                          str(out)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=open(tmp / f"{tag}.log", "w"), text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return p, out


def http_floor(url: str, n: int = 200) -> list[float]:
    out = []
    with httpx.Client(base_url=url) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            c.get("/")
            out.append(time.perf_counter() - t0)
    return out


def count_statuses(dep: Deployment) -> dict[str, int]:
    assert dep.db is not None
    with dep.db.connect() as c:
        return {s: n for s, n in c.execute(text(
            "SELECT status, count(*) FROM capsules GROUP BY status")).all()}


def api_statuses(dep: Deployment) -> dict[str, int]:
    """Every capsule's status as the API shows it to an administrator (all projects)."""
    out: dict[str, int] = {}
    with dep.client(1) as api:
        url: str | None = "/v1/capsules?all_projects=true&limit=1000"
        while url:
            r = api.get(url)
            r.raise_for_status()
            body = r.json()
            for c in body["capsules"]:
                out[c["status"]] = out.get(c["status"], 0) + 1
            url = body.get("next")
    return out


def host_down_events(dep: Deployment) -> int:
    assert dep.db is not None
    with dep.db.connect() as c:
        return int(c.execute(text(
            "SELECT count(*) FROM events WHERE reason = 'HostDown'")).scalar() or 0)


def run_step(p: Params, admin_url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="capsuled-sim-") as tmp_s:
        tmp = Path(tmp_s)
        dep = Deployment(admin_url, p.down_after, tmp)
        agents: list[tuple[subprocess.Popen[str], Path]] = []
        try:
            dep.start()
            return _measure(p, dep, tmp, agents)
        finally:
            for proc, _ in agents:
                if proc.poll() is None:
                    proc.kill()
            dep.stop()


def _measure(p: Params, dep: Deployment,  tmp: Path,
             agents: list[tuple[subprocess.Popen[str], Path]]) -> dict[str, Any]:
    log(f"step: {p.agents} agents, {p.capsules} capsules; baselines")
    floor = http_floor(dep.urls[0])
    c0, w0 = dep.cpu(), time.monotonic()
    time.sleep(p.baseline_window)
    rest_base = [(b - a) / (time.monotonic() - w0) * 60 for a, b in zip(c0, dep.cpu())]

    hosts = [f"sim-{i:05d}" for i in range(p.agents)]
    tokens = dep.agent_tokens(hosts)
    per_proc = math.ceil(p.agents / p.agent_procs)
    for k in range(p.agent_procs):
        mine = hosts[k * per_proc:(k + 1) * per_proc]
        if not mine:
            continue
        cfg = {"heartbeat_interval": p.heartbeat_interval, "host_cpus": 1000,
               "host_memory_mb": 10_000_000, "workers": 16, "instance": "sim",
               "infra_image": "capsuled/infra:latest",
               "agents": [{"host": h, "token": tokens[h], "url": dep.urls[i % 2],
                           "real": i < p.real_per_proc} for i, h in enumerate(mine)]}
        agents.append(spawn("agents", cfg, tmp, f"agents{k}"))
    t_reg = time.monotonic()
    for proc, _ in agents:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            raise SystemExit(f"an agent process failed to start: see {tmp}")
    registered_in = time.monotonic() - t_reg
    log(f"{p.agents} agents registered in {registered_in:.1f} s")
    watchman = Watchman(dep)
    watchman.start()
    time.sleep(p.settle)

    per_client = math.ceil(p.capsules / p.client_procs)
    # One project per client process: tenants' creates wait for each other only on the
    # host rows a claim locks, not on one project's quota lock as well.
    project_tokens = [dep.project_token(f"sim-{k}") for k in range(p.client_procs)]
    cpu0, db0, t0 = dep.cpu(), dep.db_cpu(), time.monotonic()
    clients = [spawn("clients", {"urls": dep.urls, "token": project_tokens[k], "index": k,
                                 "count": min(per_client, p.capsules - k * per_client),
                                 "concurrency": p.client_threads, "prefix": f"c{k}",
                                 "seconds": p.create_seconds,
                                 "rate": p.rate / p.client_procs},
                     tmp, f"clients{k}") for k in range(p.client_procs)]
    for proc, _ in clients:
        proc.wait()
    created_in = time.monotonic() - t0
    sent: dict[str, list[float]] = {}
    client_errors: list[str] = []
    for _, out in clients:
        got = json.loads(out.read_text())
        sent.update(got["sent"])
        client_errors += got["errors"]
    log(f"{len(sent)} capsules accepted in {created_in:.1f} s ({len(sent) / created_in:.0f}/s)")
    # Every capsule reported Running, or give up after a while.
    deadline = time.monotonic() + max(60.0, p.capsules / 50)
    while time.monotonic() < deadline:
        statuses = count_statuses(dep)
        if statuses.get("Running", 0) >= len(sent):
            break
        time.sleep(1.0)
    busy_t = time.monotonic() - t0
    cpu1, db1 = dep.cpu(), dep.db_cpu()
    busy = [(b - a) / busy_t * 60 for a, b in zip(cpu0, cpu1)]
    busy_db = db_cpu_delta(db0, db1) / busy_t * 60
    log(f"all Running after {busy_t:.1f} s; at rest for {p.rest_window:.0f} s")
    t1 = time.monotonic()
    time.sleep(p.rest_window)
    rest_t = time.monotonic() - t1
    cpu2, db2 = dep.cpu(), dep.db_cpu()
    rest = [(b - a) / rest_t * 60 for a, b in zip(cpu1, cpu2)]
    rest_db = db_cpu_delta(db1, db2) / rest_t * 60
    watchman.stop.set()
    statuses = api_statuses(dep)
    server = server_latency(dep)
    down_events = host_down_events(dep)

    for proc, _ in agents:
        if proc.stdin:
            proc.stdin.close()
    tallies = []
    for proc, out in agents:
        proc.wait(60)
        tallies.append(json.loads(out.read_text()))
    held: dict[str, float] = {}
    reported: dict[str, float] = {}
    for t in tallies:
        held.update(t["held"])
        reported.update(t["reported"])
    assign = [held[u] - s[0] for u, s in sent.items() if u in held]
    from_202 = [held[u] - s[1] for u, s in sent.items() if u in held]
    post = [s[1] - s[0] for s in sent.values()]
    running = [reported[u] - s[0] for u, s in sent.items() if u in reported]
    beats = [b for t in tallies for b in t["beats"]]
    gaps = [g for t in tallies for g in t["beat_gaps"].values()]
    per100 = 100 / p.agents
    missed = len(watchman.down_hosts) + down_events + sum(t["beat_failures"] for t in tallies)
    result = {
        "agents": p.agents, "capsules": p.capsules, "accepted": len(sent),
        "client_errors": client_errors[:10], "registered_s": round(registered_in, 1),
        "creates_per_s": round(len(sent) / created_in, 1), "offered_per_s": p.rate or None,
        "held": len(assign), "reported_running": len(running), "statuses": statuses,
        "assign_ms": _ms(assign), "assign_from_202_ms": _ms(from_202), "post_ms": _ms(post),
        "running_ms": _ms(running), "http_floor_ms": _ms(floor),
        "server_create_ms": server["create"], "server_heartbeat_ms": server["heartbeat"],
        "heartbeat_ms": _ms(beats), "heartbeat_failures": sum(t["beat_failures"] for t in tallies),
        "resyncs": sum(t.get("resyncs", 0) for t in tallies),
        "longest_beat_gap_s": round(max(gaps, default=0.0), 2),
        "oldest_last_seen_s": round(watchman.worst, 2), "hosts_seen_down": len(watchman.down_hosts),
        "host_down_events": down_events, "missed_heartbeats": missed,
        "watch_failures": sum(t["watch_failures"] for t in tallies),
        "report_failures": sum(t["report_failures"] for t in tallies),
        "services_answers": sum(t["services_answers"] for t in tallies),
        "agent_errors": [e for t in tallies for e in t["errors"]][:10],
        "cpu_per_min_baseline_rest": [round(x, 2) for x in rest_base],
        "cpu_per_min_busy": [round(x, 2) for x in busy],
        "cpu_per_min_rest": [round(x, 2) for x in rest],
        "cpu_s_per_100_agents_per_min_busy": [round(x * per100, 3) for x in busy],
        "cpu_s_per_100_agents_per_min_rest": [round((x - b) * per100, 3)
                                              for x, b in zip(rest, rest_base)],
        "db_cpu_per_min_busy": round(busy_db, 2), "db_cpu_per_min_rest": round(rest_db, 2),
        "load": os.getloadavg()[0],
    }
    result["broken"] = bool(missed or result["assign_ms"]["p99"] > GOAL_P99 * 1000
                            or len(running) < len(sent) or statuses.get("Running", 0) < len(sent)
                            or len(sent) < p.capsules)
    return result


def _ms(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(statistics.median(values) * 1000, 1) if values else
            float("nan"), "p99": round(pct(values, 99) * 1000, 1), "max": round(
                max(values, default=float("nan")) * 1000, 1)}


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'agents':>6} {'capsules':>8} {'offered/s':>9} {'creates/s':>9} "
            f"{'assign p50':>10} {'p99':>7} "
            f"{'running p50':>11} {'p99':>7} {'GET / p50':>9} {'beat p99':>8} {'gap':>5} "
            f"{'missed':>6} {'cpu/100/min busy':>16} {'rest':>11} {'idle':>11} {'db busy':>7} "
            f"{'ok':>3}")
    lines = [head]
    for r in results:
        lines.append(
            f"{r['agents']:>6} {r['accepted']:>8} {r.get('offered_per_s') or 'max':>9} "
            f"{r['creates_per_s']:>9} "
            f"{r['assign_ms']['p50']:>8}ms {r['assign_ms']['p99']:>5}ms "
            f"{r['running_ms']['p50']:>9}ms {r['running_ms']['p99']:>5}ms "
            f"{r['http_floor_ms']['p50']:>7}ms {r['heartbeat_ms']['p99']:>6}ms "
            f"{r['longest_beat_gap_s']:>5} {r['missed_heartbeats']:>6} "
            f"{'/'.join(f'{x:.2f}' for x in r['cpu_s_per_100_agents_per_min_busy']):>16} "
            f"{'/'.join(f'{x:.2f}' for x in r['cpu_s_per_100_agents_per_min_rest']):>11} "
            f"{'/'.join(f'{x:.2f}' for x in r['cpu_per_min_baseline_rest']):>11} "
            f"{r['db_cpu_per_min_busy']:>7} {'no' if r['broken'] else 'yes':>3}")
    return "\n".join(lines)


def params_for(n: int, args: argparse.Namespace) -> Params:
    capsules = args.capsules if args.capsules else n * args.per_host
    return Params(agents=n, capsules=capsules,
                  agent_procs=args.agent_procs or min(8, max(2, math.ceil(n / 250))),
                  client_procs=args.client_procs, client_threads=args.client_threads,
                  heartbeat_interval=args.heartbeat_interval, down_after=args.down_after,
                  real_per_proc=args.real, rest_window=args.rest_window,
                  baseline_window=args.baseline_window, settle=args.settle,
                  create_seconds=args.create_seconds, rate=args.rate)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale_sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="50 agents, 500 capsules, heartbeats every 2 s, down after 10 s (< 60 s)")
    ap.add_argument("--agents", default="100,250,500,1000,1500",
                    help="comma-separated agent counts, swept in order until one breaks")
    ap.add_argument("--per-host", type=int, default=20, help="capsules per agent (default 20)")
    ap.add_argument("--capsules", type=int, default=0, help="capsules per step (overrides --per-host)")
    ap.add_argument("--agent-procs", type=int, default=0, help="agent processes (default N/250, 2..8)")
    ap.add_argument("--client-procs", type=int, default=4)
    ap.add_argument("--client-threads", type=int, default=2)
    ap.add_argument("--real", type=int, default=1, help="real agent loops per agent process")
    ap.add_argument("--heartbeat-interval", type=float, default=10.0)
    ap.add_argument("--down-after", type=float, default=60.0)
    ap.add_argument("--rest-window", type=float, default=30.0)
    ap.add_argument("--baseline-window", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--create-seconds", type=float, default=0.0,
                    help="stop creating after this long (0: create them all; --quick: 30)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="creates per second on a fixed schedule (an open loop: the latency "
                         "at that load); 0, the default: each client sends its next create "
                         "as soon as the last is answered (a closed loop: the most the API "
                         "takes, and latency at saturation)")
    ap.add_argument("--keep-going", action="store_true", help="run every step even after a break")
    ap.add_argument("--database-url", default=os.environ.get(
        "CAPSULED_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.agents, args.capsules, args.heartbeat_interval, args.down_after = "50", 500, 2.0, 10.0
        args.rest_window, args.baseline_window, args.settle = 5.0, 3.0, 2.0
        args.create_seconds = args.create_seconds or 30.0
    results = []
    for n in (int(x) for x in args.agents.split(",") if x.strip()):
        r = run_step(params_for(n, args), args.database_url)
        results.append(r)
        log(json.dumps(r))
        print(table(results[-1:]).splitlines()[-1] if len(results) > 1 else table(results),
              flush=True)
        if r["broken"] and not args.keep_going:
            log(f"broken at {n} agents")
            break
    print()
    print(table(results))
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared with other engineers)")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "results": results},
                                        indent=2))
    return 1 if any(r["broken"] for r in results) else 0


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # the steps' `finally` clean up


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    signal.signal(signal.SIGTERM, _interrupted)
    sys.exit(main())
