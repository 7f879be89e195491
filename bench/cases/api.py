"""Case 4 — the API on a store seeded with N capsules (default 10,000), over real HTTP
against a real `capsuled` process.

The store is seeded before the server starts, with the store's own functions, on a
simulated host (`bench-sim`, no agent: the "fake runtime" of this case) that has room for
everything, so the creates measured here are placed there too and never reach Docker.

    list     GET /v1/capsules?limit=1000, walking the pages with `marker`
             baseline: the same page's rows (capsules + containers) read with sqlite3 and
             json.dumps'd in this process: the floor of the data involved
    show     GET /v1/capsules/{uuid}, random uuids
             baseline: GET / on the same server (HTTP + middleware, no auth, no store)
    creates  POST /v1/capsules accepted per second with C clients, and bare containers
             (POST /v1/containers, run: true) the same way
             baseline: GET / per second with the same C clients, in the same rounds
             (capsules, bare containers and GET / take turns); the goal is the ratio
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid as uuidlib
from typing import Any

import httpx

from bench import stats
from bench.harness import Row, Server, log
from bench.workloads import template

SIM_HOST = "bench-sim"


def seed(server: Server, n: int, by_store: int = 1000) -> None:
    """The schema, a simulated host and n capsules (2 containers each, Running): the first
    `by_store` through the store's own create_capsule, the rest copied from those at the
    SQL level with fresh uuids (the store takes ~5 ms a capsule; copies take ~0.1 ms)."""
    from capsuled.domain.channel import HostInfo
    from capsuled.domain.status import Status
    from capsuled.domain.template import parse_template
    from capsuled.store import capsules as capsule_repo
    from capsuled.store import hosts as host_repo
    from capsuled.store.engine import Store, make_engine, upgrade

    engine = make_engine(f"sqlite:///{server.db}")
    try:
        upgrade(engine)
        store = Store(engine)
        with store.transaction() as s:
            host_repo.register_host(s, HostInfo(name=SIM_HOST, cpus=100_000.0,
                                                memory_mb=1_000_000_000, disk_gb=1_000_000))
        specs = [parse_template(template(f"seed-{i}", labels={"app": f"app{i % 10}"}))
                 for i in range(10)]
        first = min(n, by_store)
        for start in range(0, first, 500):
            with store.transaction() as s:
                for i in range(start, min(first, start + 500)):
                    spec = specs[i % 10].model_copy(update={"name": f"seed-{i}"})
                    capsule_repo.create_capsule(s, spec, "admin", "admin", SIM_HOST,
                                                Status.RUNNING)
    finally:
        engine.dispose()
    if n > first:
        _replicate(server.db, n - first)
        _recount(server.db)


def _recount(path: Any) -> None:
    """The copies were made in SQL, past the store: its running totals of claims (what
    quotas and the scheduler read) are set from a recount, as `capsuled db recount
    --repair` would."""
    from capsuled.store import usage
    from capsuled.store.engine import Store, make_engine

    engine = make_engine(f"sqlite:///{path}")
    try:
        with Store(engine).transaction() as s:
            usage.repair(s)
    finally:
        engine.dispose()


def _replicate(path: Any, more: int) -> None:
    """Copy the simulated host's capsules (with their containers, labels and events) until
    `more` copies exist, each with fresh uuids, in the spec too."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        caps = [dict(r) for r in db.execute(
            "select * from capsules where host = ? order by id", (SIM_HOST,))]
        children: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for table in ("containers", "capsule_labels", "events", "volumes"):
            rows: dict[int, list[dict[str, Any]]] = {}
            for r in db.execute(f"select * from {table} where capsule_id is not null"):
                rows.setdefault(r["capsule_id"], []).append(dict(r))
            children[table] = rows
        with db:
            for i in range(more):
                src = caps[i % len(caps)]
                cap = {k: v for k, v in src.items() if k != "id"}
                cap["uuid"] = str(uuidlib.uuid4())
                cap["name"] = f"{src['name']}-copy{i}"
                spec = json.loads(cap["spec"])
                spec["name"] = cap["name"]
                renamed = {}
                for c in spec.get("init_containers", []) + spec.get("containers", []):
                    renamed[c["uuid"]] = c["uuid"] = str(uuidlib.uuid4())
                cap["spec"] = json.dumps(spec)
                new_id = _insert(db, "capsules", cap)
                for table, rows in children.items():
                    for row in rows.get(src["id"], []):
                        copy = {k: v for k, v in row.items() if k != "id"}
                        copy["capsule_id"] = new_id
                        if "uuid" in copy:
                            copy["uuid"] = renamed.get(copy["uuid"]) or str(uuidlib.uuid4())
                        _insert(db, table, copy)
    finally:
        db.close()


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
    cols = ",".join(row)
    cur = db.execute(f"insert into {table} ({cols}) values ({','.join('?' * len(row))})",
                     list(row.values()))
    return int(cur.lastrowid or 0)


def heartbeat_sim_host(server: Server) -> None:
    """The simulated host's heartbeat, as one UPDATE: a transaction that writes first waits
    for SQLite's write lock (busy timeout), where a read turned write (the store's
    heartbeat) is refused at once when the server committed meanwhile, as it does all the
    time while creates run."""
    from capsuled.store.tables import utcnow

    db = sqlite3.connect(server.db, timeout=60)
    try:
        with db:
            db.execute("update host_beats set last_seen = ? where host = ?", (str(utcnow()), SIM_HOST))
    finally:
        db.close()


def _raw_page(db: sqlite3.Connection, after_id: int) -> tuple[int, str]:
    db.row_factory = sqlite3.Row
    caps = [dict(r) for r in db.execute(
        "select * from capsules where id > ? order by id limit 1000", (after_id,))]
    ids = [c["id"] for c in caps]
    marks = ",".join("?" * len(ids))
    by_capsule: dict[int, list[dict[str, Any]]] = {}
    for r in db.execute(f"select * from containers where capsule_id in ({marks}) "
                        "order by position", ids):
        by_capsule.setdefault(r["capsule_id"], []).append(dict(r))
    for c in caps:
        c["containers"] = by_capsule.get(c["id"], [])
    return (ids[-1] if ids else 0), json.dumps(caps, default=str)


def _rate(fn: Any, clients: int, seconds: float) -> float:
    """Calls of fn() that succeeded per second, with `clients` threads for `seconds`."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            if fn():
                counts[i] += 1
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def run(server: Server, n: int, list_rounds: int, shows: int, create_seconds: float,
        create_clients: int, rounds: int) -> list[Row]:
    client = server.client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    public = httpx.Client(base_url=server.url, timeout=60)
    server.unlimited_quota(client)
    uuids = [r[0] for r in sqlite3.connect(server.db).execute(
        "select uuid from capsules where host = ?", (SIM_HOST,))]
    # warm-up
    client.get("/v1/capsules", params={"limit": 1000})
    public.get("/")

    # list: walk all pages, alternating with the raw read of the same page
    page_ms: list[float] = []
    raw_ms: list[float] = []
    db = sqlite3.connect(server.db)
    for _ in range(list_rounds):
        marker, after = None, 0
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if marker:
                params["marker"] = marker
            t0 = time.perf_counter()
            r = client.get("/v1/capsules", params=params)  # the whole body read, not parsed
            page_ms.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            body = r.json()
            t0 = time.perf_counter()
            after, _ = _raw_page(db, after)
            raw_ms.append((time.perf_counter() - t0) * 1000)
            if not body["capsules"] or not body.get("next"):
                break
            marker = body["capsules"][-1]["uuid"]
    db.close()
    log(f"api list: p50 {stats.median(page_ms):.1f} ms over {len(page_ms)} pages "
        f"(raw read {stats.median(raw_ms):.1f} ms)")

    # show, alternating with GET /
    show_ms: list[float] = []
    root_ms: list[float] = []
    for uid in random.sample(uuids, min(shows, len(uuids))):
        t0 = time.perf_counter()
        client.get(f"/v1/capsules/{uid}").raise_for_status()
        show_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        public.get("/").raise_for_status()
        root_ms.append((time.perf_counter() - t0) * 1000)
    log(f"api show: p50 {stats.median(show_ms):.2f} ms (GET / {stats.median(root_ms):.2f} ms)")

    # creates per second (capsules, bare containers), taking turns with GET / per second
    created, bare, floor = creates(server, client, public, create_clients, create_seconds,
                                   rounds, lambda: heartbeat_sim_host(server))
    client.close()
    public.close()
    return [
        Row("4 API", f"list 1,000 of {n:,}, p50", stats.median(page_ms), "ms", stats.median(raw_ms),
            "same rows via sqlite3 + json.dumps, in-process", "p50 < 100 ms",
            stats.median(page_ms) < 100, len(page_ms),
            {"capsuled": stats.summary(page_ms), "raw": stats.summary(raw_ms)}),
        Row("4 API", f"show 1 of {n:,}, p50", stats.median(show_ms), "ms", stats.median(root_ms),
            "GET / (HTTP floor)", "p50 < 5 ms", stats.median(show_ms) < 5, len(show_ms),
            {"capsuled": stats.summary(show_ms), "floor": stats.summary(root_ms)}),
        *create_rows("4 API", create_clients, created, bare, floor, CREATE_GOAL),
    ]


CREATE_GOAL = 0.25  # issue 16: creates/s at least a quarter of GET /'s in the same run


def poster(client: httpx.Client, bare: bool = False) -> Any:
    """One create a call (a fresh name each): True when accepted (202)."""
    if bare:
        def post_bare() -> bool:
            return _accepted(client.post("/v1/containers", json={
                "name": f"b-{uuidlib.uuid4().hex[:8]}", "image": "busybox",
                "command": ["sleep", "3600"], "run": True}))
        return post_bare
    body = {"template": template("c")}

    def post() -> bool:
        body["template"]["metadata"]["name"] = f"c-{uuidlib.uuid4().hex[:8]}"
        return _accepted(client.post("/v1/capsules", json=body))
    return post


REFUSED: dict[str, int] = {}  # what creates answered other than 202, for the log


def _accepted(r: httpx.Response) -> bool:
    if r.status_code == 202:
        return True
    key = f"{r.status_code} {r.text[:120]}"
    REFUSED[key] = REFUSED.get(key, 0) + 1
    return False


def creates(server: Any, client: httpx.Client | list[httpx.Client],
            public: httpx.Client | list[httpx.Client], clients: int, seconds: float,
            rounds: int, keep_alive: Any) -> tuple[list[float], list[float], list[float]]:
    """Per round: capsule creates/s, bare container creates/s and GET /s, each with
    `clients` threads (client i uses clients[i % len]), rotating which goes first."""
    users = client if isinstance(client, list) else [client]
    roots = public if isinstance(public, list) else [public]
    created: list[float] = []
    bare: list[float] = []
    floor: list[float] = []
    arms = [
        (created, lambda i: poster(users[i % len(users)])),
        (bare, lambda i: poster(users[i % len(users)], bare=True)),
        (floor, lambda i: lambda: roots[i % len(roots)].get("/").status_code == 200)]
    for r in range(rounds):
        for out, make in arms[r % 3:] + arms[:r % 3]:
            keep_alive()  # the simulated host must look alive to the scheduler
            out.append(_rate_each(make, clients, seconds))
    log(f"api creates: {stats.median(created):.0f}/s capsules, {stats.median(bare):.0f}/s "
        f"bare containers (GET / {stats.median(floor):.0f}/s)")
    for answer, n in sorted(REFUSED.items(), key=lambda kv: -kv[1])[:5]:
        log(f"api creates: {n} answered {answer}")
    REFUSED.clear()
    return created, bare, floor


def create_rows(case: str, clients: int, created: list[float], bare: list[float],
                floor: list[float], goal: float) -> list[Row]:
    base = stats.median(floor)
    return [
        Row(case, f"capsule creates accepted/s ({clients} clients)", stats.median(created),
            "/s", base, "GET / per second, same clients", f"ratio ≥ {goal:g}",
            stats.median(created) >= goal * base, len(created),
            {"capsuled": created, "floor": floor}),
        Row(case, f"bare container creates accepted/s ({clients} clients)", stats.median(bare),
            "/s", base, "GET / per second, same clients", f"ratio ≥ {goal:g}",
            stats.median(bare) >= goal * base, len(bare), {"capsuled": bare, "floor": floor}),
    ]


def _rate_each(make: Any, clients: int, seconds: float) -> float:
    """Like _rate, with a call of its own per client thread (make(i))."""
    calls = [make(i) for i in range(clients)]
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            if calls[i]():
                counts[i] += 1
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)
