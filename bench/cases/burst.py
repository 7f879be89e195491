"""Case 2 — burst: N capsules submitted at once until all are Running (seen through the
API), against raw docker SDK calls making the same N x 3 containers with the agent's
parallelism (`workers` capsules at a time, each capsule's members in parallel). Clean-up
(delete all until the API lists none, against stop + remove with the agent's stop
timeout) is timed too. Rounds alternate: ours, raw, ours, raw, …"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench import stats
from bench.harness import Row, log
from bench.workloads import RawDocker, create, list_by_label, template

POLL = 0.2  # seconds between list calls while waiting (a list of N capsules is not free)


def ours(client: httpx.Client, n: int) -> tuple[float, float, float]:
    """(all accepted, all Running, all gone) in seconds."""
    tag = uuid.uuid4().hex[:8]
    tmpls = [template(f"burst-{tag}-{i}", labels={"burst": tag}) for i in range(n)]
    with ThreadPoolExecutor(max_workers=n) as pool:
        t0 = time.perf_counter()
        uids = list(pool.map(lambda t: create(client, t), tmpls))
        accepted = time.perf_counter() - t0
        while True:
            rows = list_by_label(client, "burst", tag)
            bad = [r for r in rows if r["status"] == "Error"]
            if bad:
                raise RuntimeError(f"capsule {bad[0]['uuid']} failed: {bad[0]['status_reason']}")
            if len(rows) == n and all(r["status"] == "Running" for r in rows):
                break
            time.sleep(POLL)
        running = time.perf_counter() - t0
        t1 = time.perf_counter()
        list(pool.map(lambda u: client.delete(f"/v1/capsules/{u}").raise_for_status(), uids))
        while list_by_label(client, "burst", tag):
            time.sleep(POLL)
        gone = time.perf_counter() - t1
    return accepted, running, gone


def raw(docker_raw: RawDocker, n: int, workers: int, stop_timeout: int) -> tuple[float, float]:
    """(all running, all removed) in seconds."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        t0 = time.perf_counter()
        trios = list(pool.map(lambda _: docker_raw.create_trio(), range(n)))
        running = time.perf_counter() - t0
        t1 = time.perf_counter()
        list(pool.map(lambda ids: docker_raw.remove_trio(ids, stop_timeout), trios))
        gone = time.perf_counter() - t1
    return running, gone


def run(client: httpx.Client, docker_raw: RawDocker, n: int, rounds: int, workers: int,
        stop_timeout: int) -> list[Row]:
    up: dict[str, list[float]] = {"capsuled": [], "raw": []}
    down: dict[str, list[float]] = {"capsuled": [], "raw": []}
    accepted: list[float] = []
    for i in range(rounds):
        for arm in (("capsuled", "raw") if i % 2 == 0 else ("raw", "capsuled")):
            if arm == "capsuled":
                a, r, g = ours(client, n)
                accepted.append(a)
            else:
                r, g = raw(docker_raw, n, workers, stop_timeout)
            up[arm].append(r)
            down[arm].append(g)
            log(f"burst {arm}: {n} running in {r:.2f}s, removed in {g:.2f}s")
    med_up = {k: stats.median(v) for k, v in up.items()}
    med_down = {k: stats.median(v) for k, v in down.items()}
    return [
        Row("2 burst", f"{n} capsules → all Running, median", med_up["capsuled"], "s", med_up["raw"],
            f"raw SDK, {workers} capsules at a time", "ratio ≤ 1.3",
            med_up["capsuled"] / med_up["raw"] <= 1.3, rounds,
            {"capsuled": up["capsuled"], "raw": up["raw"], "all_accepted_s": accepted}),
        Row("2 burst", f"{n} capsules → all gone, median", med_down["capsuled"], "s", med_down["raw"],
            f"raw SDK stop ({stop_timeout}s timeout) + remove", "reported", None, rounds,
            {"capsuled": down["capsuled"], "raw": down["raw"]}),
    ]
