"""Case 6 — the agent at rest: CPU share of one core used by the `capsuled` process (API
and agent: it is all-in-one) over a window in which nothing changes, with N running
capsules (sandbox + 2 busybox each, so 3N containers).

Baseline: the same process at rest with no capsule, measured in the same run just
before. Docker's own daemons (dockerd + containerd) over the same window are recorded
for context: what the engine itself spends keeping 3N containers.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.harness import Row, Server, cpu_seconds, log
from bench.workloads import create, list_by_label, template

PER_CONTAINER_MIB = 20  # a busybox sleep + its containerd shim, measured on this machine: ~12


def _pids(name: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == name:
                        out.append(int(d))
    return out


def _share(pids: list[int], seconds: float) -> float:
    """CPU seconds per wall second (1.0 = one whole core) of these processes."""
    def total() -> float:
        s = 0.0
        for p in pids:
            with contextlib.suppress(OSError):
                s += cpu_seconds(p)
        return s
    c0, t0 = total(), time.perf_counter()
    time.sleep(seconds)
    return (total() - c0) / (time.perf_counter() - t0)


def affordable(wanted: int) -> int:
    """How many capsules fit in the memory available now, keeping 4 GiB free."""
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    avail_mib = info.get("MemAvailable", 0) // 1024 - 4096
    return max(0, min(wanted, avail_mib // (3 * PER_CONTAINER_MIB)))


def run(server: Server, client: httpx.Client, wanted: int, window: float, baseline_window: float,
        settle: float) -> tuple[list[Row], list[str]]:
    notes = []
    n = affordable(wanted)
    if n < wanted:
        notes.append(f"memory allows {n} capsules, not {wanted}")
    engine = _pids("dockerd") + _pids("containerd")
    time.sleep(2)
    empty = _share([server.pid], baseline_window)
    log(f"idle: capsuled with no capsule {empty * 100:.2f}% of a core")
    tag = uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: create(client, template(f"idle-{tag}-{i}", labels={"idle": tag})),
                      range(n)))
    while True:
        rows = list_by_label(client, "idle", tag)
        if sum(r["status"] == "Running" for r in rows) == n:
            break
        if any(r["status"] == "Error" for r in rows):
            raise RuntimeError("a capsule failed: " + next(
                str(r["status_reason"]) for r in rows if r["status"] == "Error"))
        time.sleep(1)
    log(f"idle: {n} capsules Running after {time.perf_counter() - t0:.1f}s; settling {settle:g}s")
    time.sleep(settle)  # the first relist after the burst re-syncs every capsule once
    c_engine0 = sum(cpu_seconds(p) for p in engine if os.path.exists(f"/proc/{p}"))
    w0 = time.perf_counter()
    busy = _share([server.pid], window)
    engine_share = (sum(cpu_seconds(p) for p in engine if os.path.exists(f"/proc/{p}"))
                    - c_engine0) / (time.perf_counter() - w0)
    log(f"idle: capsuled with {n} capsules {busy * 100:.2f}% of a core over {window:g}s "
        f"(dockerd+containerd {engine_share * 100:.1f}%)")
    t1 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda r: client.delete(f"/v1/capsules/{r['uuid']}"), rows))
    while list_by_label(client, "idle", tag):
        time.sleep(1)
    log(f"idle: {n} capsules removed in {time.perf_counter() - t1:.1f}s")
    return [Row("6 at rest", f"CPU, {n} capsules ({3 * n} containers), {window:g}s",
                busy * 100, "% core", empty * 100, "same process, no capsule",
                "< 2 %", busy * 100 < 2, 1,
                {"engine_share_pct": round(engine_share * 100, 2), "capsules": n})], notes
