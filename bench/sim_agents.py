"""The worker processes of bench/scale_sim.py: simulated agents and creating clients.

    python -m bench.sim_agents agents CONFIG.json OUT.json   # until stdin closes
    python -m bench.sim_agents clients CONFIG.json OUT.json  # until its creates are done

Two kinds of agent share an `agents` process:

- light (the many): one asyncio task group per host making the HTTP calls a real agent
  makes, on one connection pool per process: register (PUT /v1/agents/{host}), a
  heartbeat with the loop counters every `heartbeat_interval`, the assignments long
  poll (GET …/assignments?after=REV&timeout=30) and the services long poll (GET
  …/services?after=VERSION&timeout=30, as an agent with services enabled does), and for
  every new capsule one report of what the fake runtime shows once it made it (sandbox
  and every container running, converged), sent by at most `workers` syncs at once.
  Reports are built with the channel's own models (domain/channel.py), so their shape
  is the real one.
- real (a few, `real` per process): the real `Agent` loop (agent/loop.py: watch,
  relist, heartbeat, events, workers) on a `FakeRuntime` with in-memory volumes and
  networks, through the real `HttpChannel`. They keep the light ones honest: the same
  latency and the same "Running" at the end, from the real code.

Why not only real agents: one costs ~8 threads (watch, events, relist, heartbeat,
worker pool) and ~2 ms of CPU per sync of its own bookkeeping; a thousand of them on
this 2-core machine would take the CPU the API replicas are being measured with.

Every time is `time.monotonic()` (CLOCK_MONOTONIC: one clock for every process on the
machine), so the coordinator can subtract a client's send time from an agent's.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capsuled.agent.loop import FULL_SET_EVERY, WATCH_TIMEOUT  # noqa: E402
from capsuled.domain.channel import (AgentStats, CapsuleReport, ContainerReport,  # noqa: E402
                                     HostInfo)

HEADERS = {"Accept": "application/json"}


class Tally:
    """What one process's agents saw, written out as JSON at the end."""

    def __init__(self) -> None:
        self.held: dict[str, float] = {}  # capsule uuid → when an agent first held it
        self.reported: dict[str, float] = {}  # capsule uuid → when its Running report was accepted
        self.beats: list[float] = []  # heartbeat round trips, seconds
        self.beat_failures = 0
        self.resyncs = 0  # heartbeats answered "report everything again"
        self.beat_gaps: dict[str, float] = {}  # host → longest time between accepted beats
        self.report_failures = 0
        self.watch_failures = 0
        self.services_failures = 0
        self.services_answers = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def error(self, what: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(what[:300])

    def as_json(self) -> dict[str, Any]:
        return {"held": self.held, "reported": self.reported, "beats": self.beats,
                "beat_failures": self.beat_failures, "beat_gaps": self.beat_gaps,
                "resyncs": self.resyncs,
                "report_failures": self.report_failures, "watch_failures": self.watch_failures,
                "services_failures": self.services_failures,
                "services_answers": self.services_answers, "errors": self.errors}


def running_report(a: dict[str, Any], now: str) -> dict[str, Any]:
    """The report an agent sends once the fake runtime made capsule `a` (an assignment as
    the API sent it): sandbox and every container running, converged."""
    spec = a["spec"]
    containers = [ContainerReport(uuid=c["uuid"], name=c["name"], role=c.get("role", "app"),
                                  state="exited" if c.get("role") == "init" else "running",
                                  exit_code=0 if c.get("role") == "init" else None,
                                  runtime_id=f"fake-{c['uuid']}", started_at=now)
                  for c in [*spec.get("init_containers", []), *spec["containers"]]]
    return CapsuleReport(uuid=a["uuid"], generation=a["generation"],
                         sandbox_id=f"fake-sandbox-{a['uuid']}", sandbox_state="running",
                         converged=True, containers=containers).model_dump(mode="json")


def gone_report(a: dict[str, Any]) -> dict[str, Any]:
    return CapsuleReport(uuid=a["uuid"], generation=a["generation"], gone=True).model_dump(
        mode="json")


class LightAgent:
    def __init__(self, http: httpx.AsyncClient, host: str, token: str, cfg: dict[str, Any],
                 tally: Tally, stop: asyncio.Event) -> None:
        self.http, self.host, self.cfg, self.tally, self.stop = http, host, cfg, tally, stop
        self.auth = {"X-Auth-Token": token}
        self.path = f"/v1/agents/{host}"
        self.done: dict[str, int] = {}  # uuid → generation reported
        self.assigned: dict[str, dict[str, Any]] = {}  # uuid → its newest assignment
        self.syncs = asyncio.Semaphore(int(cfg.get("workers", 16)))
        self.stats = AgentStats().model_dump(mode="json")

    async def register(self) -> None:
        info = HostInfo(name=self.host, cpus=float(self.cfg["host_cpus"]),
                        memory_mb=int(self.cfg["host_memory_mb"]), disk_gb=10_000,
                        labels={"sim": "1"}, runtime="fake")
        for attempt in range(60):
            try:
                r = await self.http.put(self.path, json=info.model_dump(mode="json"),
                                        headers=self.auth, timeout=60)
                if r.status_code < 300:
                    return
                self.tally.error(f"register {self.host}: HTTP {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                self.tally.error(f"register {self.host}: {exc!r}")
            await asyncio.sleep(min(0.5 * 2 ** attempt, 5))
        raise SystemExit(f"{self.host} could not register")

    async def run(self) -> None:
        await asyncio.gather(self.heartbeats(), self.watch(), self.services())

    async def heartbeats(self) -> None:
        interval = float(self.cfg["heartbeat_interval"])
        # Agents start within a few seconds of each other, not in lockstep.
        await _sleep_or_stop(self.stop, random.uniform(0, interval))
        last_ok = time.monotonic()
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                r = await self.http.post(self.path + "/heartbeat", json={"stats": self.stats},
                                         headers=self.auth, timeout=interval * 3)
                # 200: accepted, and the host was silent long enough for something of it
                # to be Unknown: as agent/loop.py, report everything again.
                ok = r.status_code in (200, 204)
                if not ok:
                    self.tally.error(f"heartbeat {self.host}: HTTP {r.status_code}")
                elif r.status_code == 200 and r.json().get("resync"):
                    self.tally.resyncs += 1
                    for a in list(self.assigned.values()):
                        asyncio.create_task(self.sync(a))
            except httpx.HTTPError as exc:
                ok = False
                self.tally.error(f"heartbeat {self.host}: {exc!r}")
            now = time.monotonic()
            if ok:
                self.tally.beats.append(now - sent)
                gap = now - last_ok
                if gap > self.tally.beat_gaps.get(self.host, 0.0):
                    self.tally.beat_gaps[self.host] = gap
                last_ok = now
            else:
                self.tally.beat_failures += 1
            # As agent/loop.py: the next beat an interval after this one ended.
            await _sleep_or_stop(self.stop, interval)

    async def watch(self) -> None:
        revision = -1
        full_at = float("-inf")
        while not self.stop.is_set():
            # As agent/loop.py: "unchanged" for an idle poll, the whole set now and then.
            params: dict[str, Any] = {"after": revision, "timeout": WATCH_TIMEOUT}
            if revision >= 0 and time.monotonic() - full_at < FULL_SET_EVERY:
                params["full"] = "false"
            try:
                r = await self.http.get(self.path + "/assignments", headers=self.auth,
                                        params=params, timeout=WATCH_TIMEOUT + 10)
                if r.status_code != 200:
                    raise httpx.HTTPError(f"HTTP {r.status_code}: {r.text[:200]}")
                body = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                self.tally.watch_failures += 1
                self.tally.error(f"watch {self.host}: {exc!r}")
                await _sleep_or_stop(self.stop, 0.5)
                continue
            if body.get("unchanged"):
                continue
            now = time.monotonic()
            revision, full_at = body["revision"], now
            self.assigned = {a["uuid"]: a for a in body["capsules"]}
            for a in body["capsules"]:
                self.tally.held.setdefault(a["uuid"], now)
                if self.done.get(a["uuid"]) != a["generation"]:
                    self.done[a["uuid"]] = a["generation"]
                    asyncio.create_task(self.sync(a))

    async def sync(self, a: dict[str, Any]) -> None:
        """The fake runtime makes a capsule at once; what costs is the report."""
        async with self.syncs:
            body = gone_report(a) if a.get("deleting") else running_report(
                a, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            for _ in range(10):
                try:
                    r = await self.http.post(self.path + "/reports", headers=self.auth,
                                             json={"capsules": [body], "containers": []},
                                             timeout=60)
                    if r.status_code == 204:
                        self.tally.reported.setdefault(a["uuid"], time.monotonic())
                        return
                    self.tally.error(f"report {self.host}: HTTP {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.tally.error(f"report {self.host}: {exc!r}")
                self.tally.report_failures += 1
                await _sleep_or_stop(self.stop, 0.5)

    async def services(self) -> None:
        after: str | None = None
        while not self.stop.is_set():
            params: dict[str, Any] = {"timeout": WATCH_TIMEOUT}
            if after is not None:
                params["after"] = after
            try:
                r = await self.http.get(self.path + "/services", headers=self.auth,
                                        params=params, timeout=WATCH_TIMEOUT + 10)
                if r.status_code != 200:
                    raise httpx.HTTPError(f"HTTP {r.status_code}: {r.text[:200]}")
                after = r.json()["version"]
                self.tally.services_answers += 1
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.tally.services_failures += 1
                self.tally.error(f"services {self.host}: {exc!r}")
                await _sleep_or_stop(self.stop, 0.5)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


# -- real agents ---------------------------------------------------------------------------
def start_real_agent(url: str, host: str, token: str, cfg: dict[str, Any],
                     tally: Tally) -> Any:
    """The real agent loop on a FakeRuntime, through a channel that notes when an
    assignment first arrives and how long each heartbeat took."""
    from capsuled.agent.http_channel import HttpChannel
    from capsuled.agent.loop import Agent
    from capsuled.config import AgentSettings
    from capsuled.domain.channel import AgentStats as Stats
    from capsuled.domain.channel import Assignments, BareReport
    from capsuled.drivers.network.base import NetworkLayout, ProjectNetwork, network_name
    from capsuled.drivers.runtime.fake import FakeRuntime
    from capsuled.drivers.volume.base import VolumeRequest

    class Volumes:
        def ensure_volume(self, req: VolumeRequest) -> str:
            return req.name

        def remove_volume(self, name: str) -> None:
            pass

        def remove_owned(self, instance: str, capsule: str) -> list[str]:
            return []

    class Networks:
        def __init__(self) -> None:
            self.nets: dict[str, ProjectNetwork] = {}

        def ensure_network(self, instance: str, project: str,
                           layout: NetworkLayout | None = None) -> ProjectNetwork:
            return self.nets.setdefault(project, ProjectNetwork(
                f"net-{project}", network_name(instance, project), project))

        def forget_network(self, instance: str, project: str) -> None:
            pass

        def list_networks(self, instance: str) -> list[ProjectNetwork]:
            return list(self.nets.values())

        def remove_unused_networks(self, instance: str,
                                   projects: Collection[str]) -> list[ProjectNetwork]:
            return [self.nets.pop(p) for p in list(projects) if p in self.nets]

    class Recording(HttpChannel):
        last_ok = time.monotonic()

        def watch(self, host: str, after_revision: int, timeout: float,
                  full: bool = True) -> Assignments:
            got = super().watch(host, after_revision, timeout, full)
            now = time.monotonic()
            for a in got.capsules:
                tally.held.setdefault(a.uuid, now)
            return got

        def heartbeat(self, host: str, stats: Stats | None = None) -> None:
            sent = time.monotonic()
            try:
                super().heartbeat(host, stats)
            except Exception:
                tally.beat_failures += 1
                raise
            now = time.monotonic()
            tally.beats.append(now - sent)
            tally.beat_gaps[host] = max(tally.beat_gaps.get(host, 0.0), now - self.last_ok)
            self.last_ok = now

        def report(self, host: str, reports: list[CapsuleReport],
                   containers: list[BareReport] | None = None) -> None:
            super().report(host, reports, containers)
            now = time.monotonic()
            for r in reports:
                if r.converged and r.sandbox_state == "running":
                    tally.reported.setdefault(r.uuid, now)

    runtime = FakeRuntime(images=(cfg["infra_image"], "busybox"), cpus=64, memory_mb=1 << 20)
    settings = AgentSettings.model_validate({
        "host_name": host, "heartbeat_interval": cfg["heartbeat_interval"],
        "labels": {"sim": "1"},
        "cpu_allocation_ratio": float(cfg["host_cpus"]) / 64})
    agent = Agent(Recording(url, token), runtime, Volumes(), settings, cfg["instance"],
                  cfg["infra_image"], networks=Networks())
    agent.start()
    return agent


# -- processes ------------------------------------------------------------------------------
async def _agents_main(cfg: dict[str, Any], tally: Tally) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Stop when the coordinator closes our stdin.
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    light = [a for a in cfg["agents"] if not a.get("real")]
    real = [a for a in cfg["agents"] if a.get("real")]
    # One client (one connection pool) per agent, as each real agent has its own. One
    # pool shared by a process's agents held ~3 connections per agent, and httpcore walks
    # every connection of a pool on each request: that walk took 93 % of the simulator's
    # CPU at 250 agents a process, whose own lag then read as heartbeats taking seconds.
    clients = [httpx.AsyncClient(base_url=a["url"], headers=HEADERS, limits=httpx.Limits(
        max_connections=None, max_keepalive_connections=None, keepalive_expiry=120))
        for a in light]
    agents = [LightAgent(client, a["host"], a["token"], cfg, tally, stop)
              for client, a in zip(clients, light, strict=True)]
    # Register a few at a time, as hosts coming up would.
    sem = asyncio.Semaphore(32)

    async def register(a: LightAgent) -> None:
        async with sem:
            await a.register()

    await asyncio.gather(*(register(a) for a in agents))
    started = [await asyncio.to_thread(start_real_agent, a["url"], a["host"], a["token"], cfg,
                                       tally) for a in real]
    print("ready", flush=True)
    tasks = [asyncio.create_task(a.run()) for a in agents]
    await stop.wait()
    for t in tasks:
        t.cancel()
    for r in started:
        r.stop()
    for c in clients:
        await c.aclose()


def run_agents(cfg: dict[str, Any], out: Path) -> None:
    tally = Tally()
    asyncio.run(_agents_main(cfg, tally))
    out.write_text(json.dumps(tally.as_json()))


def run_clients(cfg: dict[str, Any], out: Path) -> None:
    """Create `count` capsules, `concurrency` at a time, alternating the API replicas:
    each as soon as a thread is free (a closed loop: how many the API takes), or, with a
    `rate` (per second, this process's share), each at its own time on a fixed schedule
    (an open loop: latency at a given load). On the schedule, a POST's latency counts from
    its time, not from when a thread was free to send it: waiting for a free thread is
    the API's slowness too."""
    sent: dict[str, list[float]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    names = iter(range(int(cfg["count"])))
    rate = float(cfg.get("rate") or 0.0)
    start = time.monotonic()
    # A bounded run (--quick on a loaded machine) stops creating at its deadline.
    deadline = start + float(cfg.get("seconds") or float("inf"))

    def work(url: str) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={
                "X-Auth-Token": cfg["token"], "OpenStack-API-Version": "container latest"}) as api:
            while True:
                with lock:
                    i = next(names, None)
                if i is None or time.monotonic() > deadline:
                    return
                tmpl = {"kind": "capsule", "metadata": {"name": f"{cfg['prefix']}-{i}"},
                        "spec": {"nodeSelector": {"sim": "1"}, "containers": [{
                            "image": "busybox", "command": ["sleep", "3600"],
                            "resources": {"requests": {"cpu": 0.1, "memory": 4}}}]}}
                t0 = time.monotonic()
                if rate:
                    t0 = start + i / rate
                    time.sleep(max(0.0, t0 - time.monotonic()))
                try:
                    r = api.post("/v1/capsules", json={"template": tmpl})
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"POST: {exc!r}")
                    continue
                t1 = time.monotonic()
                if r.status_code != 202:
                    with lock:
                        errors.append(f"POST: HTTP {r.status_code} {r.text[:200]}")
                    continue
                with lock:
                    sent[r.json()["uuid"]] = [t0, t1]

    urls = cfg["urls"]
    threads = [threading.Thread(target=work, args=(urls[(cfg["index"] + i) % len(urls)],))
               for i in range(int(cfg["concurrency"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.write_text(json.dumps({"sent": sent, "errors": errors[:50],
                               "error_count": len(errors)}))


def main() -> None:
    kind, cfg_path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    cfg = json.loads(cfg_path.read_text())
    {"agents": run_agents, "clients": run_clients}[kind](cfg, out)


if __name__ == "__main__":
    main()
