"""Case 1 — start-up: one capsule of sandbox + 2 busybox containers, from POST
/v1/capsules to Running as seen through the API, against the same three containers made
with raw docker SDK calls and, where installed, with podman. The arms take turns in a
rotating order (A B C, B C A, C A B, …) so that the machine's noise hits all of them.

The warm arm runs on a second capsuled whose agent keeps a pool of idle sandboxes
(`agent.sandbox_pool_size`): before each of its samples the bench waits, untimed, until
the pool has one ready (the pool refills in the background after a claim), and after it
checks that the capsule did run in a pooled sandbox (`hits` in the JSON). The baseline
is the same raw SDK arm, which makes its sandbox, as a capsule without a pool does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import docker

import httpx

from bench import stats
from bench.harness import Row, log
from bench.workloads import (Podman, RawDocker, create, delete_and_wait, template, wait_running,
                             wait_running_held)

# Seconds between status reads while polling for Running. Each read costs the server a
# few ms of CPU, so reading very often slows Docker on the same 2 cores: the observer
# slows what it observes. The goal is judged on the long poll (`wait_while`, what
# `capsule create --wait` uses); polling every 50 ms is shown beside it.
POLL = 0.05


POOL_SIZE = 2  # the warm server's pool: one capsule is measured at a time


@dataclass
class Warm:
    """The second capsuled (its pool on) and how to see its pool."""

    client: httpx.Client
    instance: str
    docker_api: docker.APIClient

    def ready(self) -> bool:
        """An idle pooled sandbox exists (running, on no network)."""
        for row in self.docker_api.containers(filters={"label": [
                f"capsuled.instance={self.instance}", "capsuled.role=pool"]}):
            if not ((row.get("NetworkSettings") or {}).get("Networks") or {}):
                return True
        return False

    def pooled(self, uid: str) -> bool:
        """Whether the capsule's members joined a pooled sandbox."""
        rows = self.docker_api.containers(filters={"label": [f"capsuled.capsule={uid}"]})
        mode = str(((rows[0].get("HostConfig") or {}).get("NetworkMode") or "")) if rows else ""
        if not mode.startswith("container:"):
            return False
        found = self.docker_api.containers(all=True, filters={
            "id": mode.removeprefix("container:"), "label": "capsuled.role=pool"})
        return bool(found)


def ours(client: httpx.Client, poll: float | None = None,
         after: Callable[[str], None] | None = None) -> float:
    """POST → Running; `poll` None: the long poll, else reads every `poll` seconds.
    `after` sees the capsule (untimed) before it is deleted."""
    tmpl = template(f"bench-{uuid.uuid4().hex[:8]}")
    t0 = time.perf_counter()
    uid = create(client, tmpl)
    if poll is None:
        wait_running_held(client, uid)
    else:
        wait_running(client, uid, poll)
    elapsed = time.perf_counter() - t0
    if after is not None:
        after(uid)
    delete_and_wait(client, uid)
    return elapsed


def warm(w: Warm, hits: list[bool]) -> float:
    deadline = time.monotonic() + 60
    while not w.ready() and time.monotonic() < deadline:
        time.sleep(0.05)  # untimed: the row measures a start with a ready pool
    return ours(w.client, after=lambda uid: hits.append(w.pooled(uid)))


def raw(docker_raw: RawDocker, parallel: bool) -> float:
    t0 = time.perf_counter()
    ids = docker_raw.create_trio(members_in_parallel=parallel)
    elapsed = time.perf_counter() - t0
    docker_raw.remove_trio(ids)
    return elapsed


def pod(podman: Podman) -> float:
    t0 = time.perf_counter()
    name = podman.create_pod()
    elapsed = time.perf_counter() - t0
    podman.remove_pod(name)
    return elapsed


def run(client: httpx.Client, docker_raw: RawDocker, podman: Podman | None, runs: int,
        warm_pool: Warm | None = None) -> list[Row]:
    arms: dict[str, Callable[[], float]] = {
        "capsuled": lambda: ours(client), "capsuled_poll": lambda: ours(client, POLL),
            "raw": lambda: raw(docker_raw, True), "raw_seq": lambda: raw(docker_raw, False)}
    hits: list[bool] = []
    if warm_pool is not None:
        arms["capsuled_warm"] = lambda: warm(warm_pool, hits)
    if podman is not None:
        arms["podman"] = lambda: pod(podman)
    for fn in arms.values():  # warm-up: page cache, image cache, connections, caches
        fn()
    hits.clear()  # the warm server's first capsule finds no pool: its project is new there
    times: dict[str, list[float]] = {k: [] for k in arms}
    names = list(arms)
    for i in range(runs):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            times[name].append(arms[name]())
    log("start-up: " + ", ".join(f"{k} p50 {stats.median(v):.3f}s" for k, v in times.items()))
    med = {k: stats.median(v) for k, v in times.items()}
    paired = stats.median(stats.paired_ratios(times["capsuled"], times["raw"]))
    metric = "POST → Running (long poll), median"
    rows = [Row("1 start-up", metric, med["capsuled"], "s", med["raw"],
                "raw docker SDK (members in parallel)", "ratio ≤ 1.15",
                med["capsuled"] / med["raw"] <= 1.15, runs,
                {"capsuled": stats.summary(times["capsuled"]), "raw": stats.summary(times["raw"]),
                 "median_of_paired_ratios": round(paired, 4)}),
            Row("1 start-up", f"POST → Running (poll {POLL * 1000:.0f} ms), median",
                med["capsuled_poll"], "s", med["raw"], "raw docker SDK (members in parallel)", "",
                None, runs, {"capsuled_poll": stats.summary(times["capsuled_poll"])}),
            Row("1 start-up", metric, med["capsuled"], "s", med["raw_seq"],
                "raw docker SDK (one call after another)", "ratio ≤ 1.15",
                med["capsuled"] / med["raw_seq"] <= 1.15, runs,
                {"raw_seq": stats.summary(times["raw_seq"])})]
    if podman is not None:
        rows.append(Row("1 start-up", metric, med["capsuled"], "s", med["podman"],
                        "podman pod create + 2 × podman run --pod", "faster than podman",
                        med["capsuled"] < med["podman"], runs,
                        {"podman": stats.summary(times["podman"])}))
    if warm_pool is not None:
        wmetric = "POST → Running, warm pool (long poll), median"
        detail = {"capsuled_warm": stats.summary(times["capsuled_warm"]),
                  "hits": f"{sum(hits)}/{len(hits)} in a pooled sandbox",
                  "median_of_paired_ratios": round(stats.median(
                      stats.paired_ratios(times["capsuled_warm"], times["raw"])), 4)}
        rows.append(Row("1 start-up", wmetric, med["capsuled_warm"], "s", med["raw"],
                        "raw docker SDK, sandbox made (members in parallel)", "ratio ≤ 0.8",
                        med["capsuled_warm"] / med["raw"] <= 0.8 and all(hits), runs, detail))
        if podman is not None:
            rows.append(Row("1 start-up", wmetric, med["capsuled_warm"], "s", med["podman"],
                            "podman pod create + 2 × podman run --pod", "faster than podman",
                            med["capsuled_warm"] < med["podman"], runs, {}))
    return rows
