"""Case 9 — creates across two API replicas on PostgreSQL.

Two `capsuled api` processes share one PostgreSQL database (a throwaway one of this run),
seeded with N capsules (default 1,000) through the store on a simulated host with no
agent (as in case 4: creates never reach Docker). C client threads (default 16) spread
over both replicas:

    creates  POST /v1/capsules accepted per second, and bare containers (POST
             /v1/containers) the same way
             baseline: GET / per second with the same clients on the same replicas, in
             the same rounds (they take turns)

The admin URL (a user that may CREATE DATABASE) is $CAPSULED_BENCH_POSTGRESQL_URL, by
default postgresql+psycopg://postgres@127.0.0.1:5432/postgres, as the tests use.
"""

from __future__ import annotations

import os
import uuid as uuidlib

import httpx

from bench.cases.api import CREATE_GOAL, creates, create_rows
from bench.harness import Row, Server, log, wait_for
from bench.workloads import template

ADMIN_URL = os.environ.get("CAPSULED_BENCH_POSTGRESQL_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SIM_HOST = "bench-sim"


def _seed(url: str, n: int) -> None:
    from capsuled.domain.channel import HostInfo
    from capsuled.domain.status import Status
    from capsuled.domain.template import parse_template
    from capsuled.store import capsules as capsule_repo
    from capsuled.store import hosts as host_repo
    from capsuled.store.engine import Store, make_engine, upgrade

    engine = make_engine(url)
    try:
        upgrade(engine)
        store = Store(engine)
        with store.transaction() as s:
            host_repo.register_host(s, HostInfo(name=SIM_HOST, cpus=100_000.0,
                                                memory_mb=1_000_000_000, disk_gb=1_000_000))
        spec = parse_template(template("seed"))
        for start in range(0, n, 500):
            with store.transaction() as s:
                for i in range(start, min(n, start + 500)):
                    capsule_repo.create_capsule(s, spec.model_copy(update={"name": f"seed-{i}"}),
                                                "admin", "admin", SIM_HOST, Status.RUNNING)
    finally:
        engine.dispose()


def _heartbeat(url: str) -> None:
    from capsuled.store import hosts as host_repo
    from capsuled.store.engine import Store, make_engine
    from capsuled.store.tables import utcnow

    engine = make_engine(url)
    try:
        with Store(engine).transaction() as s:
            host_repo.heartbeats(s, {SIM_HOST: (utcnow(), 1)})
    finally:
        engine.dispose()


def run(n: int, clients: int, seconds: float, rounds: int) -> list[Row]:
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"capsuled_bench_{uuidlib.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    replicas = [Server(f"replica{i}", args=("--database-url", url, "api")) for i in range(2)]
    users: list[httpx.Client] = []
    roots: list[httpx.Client] = []
    try:
        _seed(url, n)
        log(f"replicas: seeded {n:,} capsules on PostgreSQL")
        for r in replicas:
            r.start()
        # Whichever replica bootstrapped the database wrote the admin token.
        token = wait_for(lambda: _token(replicas), timeout=60, interval=0.2,
                         what="the bootstrap admin token")
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        for r in replicas:
            users.append(httpx.Client(base_url=r.url, timeout=120, limits=limits, headers={
                "X-Auth-Token": token, "OpenStack-API-Version": "container latest"}))
            roots.append(httpx.Client(base_url=r.url, timeout=60, limits=limits))
        users[0].put("/v1/quotas/admin", json={r: -1 for r in (
            "capsules", "containers", "cpu", "memory", "disk")}).raise_for_status()
        created, bare, floor = creates(None, users, roots, clients, seconds, rounds,
                                       lambda: _heartbeat(url))
        return create_rows("9 replicas", clients, created, bare, floor, CREATE_GOAL)
    finally:
        for c in (*users, *roots):
            c.close()
        for r in replicas:
            r.stop()
            r.destroy_state()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def _token(replicas: list[Server]) -> str | None:
    for r in replicas:
        try:
            return r.token
        except OSError:
            continue
    return None

