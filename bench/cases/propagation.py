"""Case 3 — status propagation: a capsule member killed with `docker kill` until the API
shows it exited. The baseline is the Docker Engine's own notice of the same kill: the
`die` event reaching a subscriber of the event stream (this process's own), timed from
the same instant. Capsules use restartPolicy Never so the killed container stays exited."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import docker
import httpx

from bench import stats
from bench.harness import Row, log
from bench.workloads import create, delete_and_wait, template, wait_running

POLL = 0.01  # seconds between reads of the capsule while waiting


class DieWatcher:
    """perf_counter() at which each container's `die` event arrived."""

    def __init__(self, instance: str) -> None:
        self.seen: dict[str, float] = {}
        self._cond = threading.Condition()
        self._api = docker.APIClient(base_url="unix:///var/run/docker.sock", version="auto")
        self._stream = self._api.events(decode=True, filters={
            "type": "container", "event": "die", "label": [f"capsuled.instance={instance}"]})
        threading.Thread(target=self._loop, daemon=True, name="die-watcher").start()

    def _loop(self) -> None:
        try:
            for ev in self._stream:
                with self._cond:
                    self.seen[ev.get("id", "")] = time.perf_counter()
                    self._cond.notify_all()
        except Exception:  # closed
            return

    def wait(self, cid: str, timeout: float = 10) -> float:
        with self._cond:
            self._cond.wait_for(lambda: cid in self.seen, timeout=timeout)
            return self.seen[cid]

    def close(self) -> None:
        self._stream.close()


def run(client: httpx.Client, api: docker.APIClient, instance: str, capsules: int,
        per_capsule: int) -> list[Row]:
    uids = [create(client, template(f"kill-{uuid.uuid4().hex[:8]}", containers=per_capsule,
                                    restart="Never")) for _ in range(capsules)]
    for uid in uids:
        wait_running(client, uid, 0.05)
    targets: list[tuple[str, str, str]] = []  # capsule uuid, container uuid, docker id
    for uid in uids:
        for c in api.containers(filters={"label": [f"capsuled.capsule={uid}", "capsuled.role=app"]}):
            targets.append((uid, c["Labels"]["capsuled.container"], c["Id"]))
    random.shuffle(targets)
    watcher = DieWatcher(instance)
    time.sleep(0.5)  # the subscription is live
    ours: list[float] = []
    engine: list[float] = []
    try:
        for uid, container, cid in targets:
            time.sleep(random.uniform(0.05, 0.25))  # not in step with any period of the agent
            t0 = time.perf_counter()
            api.kill(cid)
            while True:
                body: dict[str, Any] = client.get(f"/v1/capsules/{uid}").json()
                row = next(c for c in body["containers"] if c["uuid"] == container)
                if row["status"] != "Running":
                    break
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(f"container {container} still Running 30 s after the kill")
                time.sleep(POLL)
            ours.append(time.perf_counter() - t0)
            engine.append(watcher.wait(cid) - t0)
    finally:
        watcher.close()
        for uid in uids:
            delete_and_wait(client, uid)
    s_ours, s_engine = stats.summary(ours), stats.summary(engine)
    log(f"propagation: p50 {s_ours['median'] * 1000:.0f} ms, p99 {s_ours['p99'] * 1000:.0f} ms "
        f"(docker event p50 {s_engine['median'] * 1000:.1f} ms)")
    return [
        Row("3 status", "docker kill → API shows exited, median", s_ours["median"] * 1000, "ms",
            s_engine["median"] * 1000, "Docker `die` event reaches a subscriber", "", None,
            len(ours), {"capsuled": s_ours, "engine": s_engine}),
        Row("3 status", "docker kill → API shows exited, p99", s_ours["p99"] * 1000, "ms",
            s_engine["p99"] * 1000, "Docker `die` event reaches a subscriber", "p99 ≤ 1000 ms",
            s_ours["p99"] <= 1.0, len(ours)),
    ]
