"""Case 5 — scheduler: placements per second over 1,000 simulated hosts, in process.

Hosts have realistic, mixed capacities: 8–128 CPUs with 4 or 8 GiB per CPU, three
availability zones, 30–70 % already claimed, 2 % disabled, 1 % forced down, 2 % with a
stale heartbeat. Requests are capsule-sized (0.1–4 CPU, 64 MiB–8 GiB, 10 % pinned to a
zone). Each placement is `select_host` (filters + spread weigher) followed by the claim
(the chosen host's usage grows, as the store's claim would make it), so the hosts fill up
as the run goes on.

Baseline: the cheapest placement Python can do over the same hosts: one `max()` over
them by free memory, no filters (what any pure-Python scheduler pays at least).
"""

from __future__ import annotations

import random
import time
from dataclasses import MISSING, fields, replace
from datetime import UTC, datetime, timedelta

from bench import stats
from bench.harness import Row, log


def hosts(n: int, rnd: random.Random) -> list:  # type: ignore[type-arg]
    from capsuled.store.hosts import HostCapacity

    now = datetime.now(UTC).replace(tzinfo=None)
    out = []
    for i in range(n):
        cpus = rnd.choice([8, 16, 32, 48, 64, 96, 128])
        mem = cpus * rnd.choice([4, 8]) * 1024
        used = rnd.uniform(0.3, 0.7)
        stale = rnd.random() < 0.02
        disk = rnd.choice([500, 1000, 2000])
        out.append(_capacity(HostCapacity,
            name=f"host-{i:04d}", enabled=rnd.random() >= 0.02,
            last_seen=now - timedelta(seconds=600 if stale else rnd.uniform(0, 10)),
            forced_down=rnd.random() < 0.01, availability_zone=rnd.choice(["nova", "az2", "az3"]),
            labels={"rack": f"r{i % 40}"}, cpus=float(cpus), memory_mb=mem,
            cpu_used=round(cpus * used, 1), memory_used=int(mem * used), disk_gb=disk,
            disk_used=int(disk * used), containers=int(cpus * used * 4)))
    return out


def _capacity(cls: type, **values: object) -> object:
    """A HostCapacity from what this version of it has (its fields grow over time)."""
    names = {f.name: f for f in fields(cls)}
    kw = {k: v for k, v in values.items() if k in names}
    for name, f in names.items():
        if name not in kw and f.default is MISSING and f.default_factory is MISSING:
            kw[name] = 0
    return cls(**kw)


def requests(n: int, rnd: random.Random) -> list:  # type: ignore[type-arg]
    from capsuled.scheduler.select import Request

    return [Request(cpu=rnd.choice([0.1, 0.25, 0.5, 1.0, 2.0, 4.0]),
                    memory=rnd.choice([64, 128, 256, 512, 1024, 2048, 4096, 8192]),
                    availability_zone=rnd.choice(["nova", "az2", "az3"]) if rnd.random() < 0.1 else None)
            for _ in range(n)]


def _ours(pool: list, reqs: list) -> float:  # type: ignore[type-arg]
    from capsuled.scheduler.select import select_host

    hs = list(pool)
    index = {h.name: i for i, h in enumerate(hs)}
    now = datetime.now(UTC).replace(tzinfo=None)
    t0 = time.perf_counter()
    for req in reqs:
        i = index[select_host(hs, req, now)]
        h = hs[i]
        hs[i] = replace(h, cpu_used=h.cpu_used + req.cpu, memory_used=h.memory_used + req.memory)
    return len(reqs) / (time.perf_counter() - t0)


def _floor(pool: list, reqs: list) -> float:  # type: ignore[type-arg]
    hs = list(pool)
    index = {h.name: i for i, h in enumerate(hs)}
    t0 = time.perf_counter()
    for req in reqs:
        best = max(hs, key=lambda h: h.memory_mb - h.memory_used)
        i = index[best.name]
        hs[i] = replace(best, cpu_used=best.cpu_used + req.cpu,
                        memory_used=best.memory_used + req.memory)
    return len(reqs) / (time.perf_counter() - t0)


def run(n_hosts: int, placements: int, rounds: int) -> list[Row]:
    rnd = random.Random(1234)
    pool = hosts(n_hosts, rnd)
    reqs = requests(placements, rnd)
    ours: list[float] = []
    floor: list[float] = []
    _ours(pool, reqs[:200])  # warm-up
    for _ in range(rounds):
        ours.append(_ours(pool, reqs))
        floor.append(_floor(pool, reqs))
    log(f"scheduler: {stats.median(ours):.0f} placements/s (floor {stats.median(floor):.0f}/s)")
    return [Row("5 scheduler", f"placements/s over {n_hosts:,} hosts", stats.median(ours), "/s",
                stats.median(floor), "one max() over the hosts, no filters", "≥ 2,000/s",
                stats.median(ours) >= 2000, rounds,
                {"capsuled": ours, "floor": floor, "placements_per_round": placements})]
