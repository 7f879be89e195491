"""Recovery: wait (bounded) until the rig has converged, then count what must be zero.

Everything is read from outside, as an operator would: the API (admin, all projects) for
capsules, quotas and hosts, and the rig's own Docker Engine for what really exists. The
recount of quota and host usage sums the capsules' own resources, so that it checks the
store's figures whether they are derived from rows or kept as running totals."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import docker
import httpx

from .churn import NOT_SENT, Churn, Record
from .rig import HOST, Rig

TRANSITIONAL = {"Creating", "Deleting", "Updating", "Restarting", "Rebuilding", "Unknown"}
EPS = 1e-6


@dataclass
class Seen:
    """One look at the API and the engine."""

    capsules: list[dict[str, Any]]
    containers: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    agent_up: bool

    @property
    def by_uuid(self) -> dict[str, dict[str, Any]]:
        return {c["uuid"]: c for c in self.capsules}

    def transitional(self) -> list[str]:
        return [f"{c['name']}={c['status']}" + ("(rollout)" if c.get("rollout") else "")
                for c in self.capsules if c["status"] in TRANSITIONAL or c.get("rollout")]

    def orphans(self) -> list[str]:
        """Containers and volumes of this instance that no live capsule owns (a deleted
        capsule's, or a member its spec no longer has)."""
        live = self.by_uuid
        out = []
        for c in self.containers:
            labels = c["Labels"]
            owner = live.get(labels.get("capsuled.capsule", ""))
            if owner is None:
                out.append(f"container {c['Names'][0]}")
            elif labels.get("capsuled.role") in ("app", "init"):
                names = {m["name"] for m in owner["containers"] + owner["init_containers"]}
                if labels.get("capsuled.name") not in names:
                    out.append(f"container {c['Names'][0]} (not in its capsule's spec)")
        for v in self.volumes:
            if v["Labels"].get("capsuled.capsule", "") not in live:
                out.append(f"volume {v['Name']}")
        return out

    def duplicates(self) -> list[str]:
        """Two sandboxes or two containers for one capsule member."""
        count = Counter((c["Labels"].get("capsuled.capsule"), c["Labels"].get("capsuled.role"),
                         c["Labels"].get("capsuled.name", "")) for c in self.containers)
        return [f"{k}×{n}" for k, n in count.items() if n > 1]

    def missing(self) -> list[str]:
        """Members of a live, settled capsule that have no container in the engine."""
        have = {(c["Labels"].get("capsuled.capsule"), c["Labels"].get("capsuled.name"))
                for c in self.containers if c["Labels"].get("capsuled.role") == "app"}
        return [f"{c['name']}/{m['name']}" for c in self.capsules if c.get("host") == HOST
                and c["status"] == "Running" for m in c["containers"] if (c["uuid"], m["name"]) not in have]


def look(rig: Rig, engine: docker.APIClient) -> Seen:
    with rig.client(_replica(rig)) as api:
        capsules: list[dict[str, Any]] = []
        params: dict[str, str] = {"all_projects": "true", "limit": "1000"}
        while True:
            r = api.get("/v1/capsules", params=params)
            r.raise_for_status()
            page = r.json()["capsules"]
            capsules += page
            if len(page) < 1000:
                break
            params["marker"] = page[-1]["uuid"]
        up = any(s["host"] == HOST and s["state"] == "up"
                 for s in api.get("/v1/services").json()["services"])
    label = [f"capsuled.instance={rig.instance}"]
    containers = engine.containers(all=True, filters={"label": label})
    volumes = (engine.volumes(filters={"label": label}) or {}).get("Volumes") or []
    return Seen(capsules, containers, volumes, up)


def _replica(rig: Rig) -> int:
    return rig.urls.index(rig.live_url())


def converged(seen: Seen) -> bool:
    return (seen.agent_up and not seen.transitional() and not seen.orphans()
            and not seen.duplicates() and not seen.missing())


def wait_converged(rig: Rig, timeout: float) -> tuple[Seen, float, bool]:
    """The last look, how long convergence took, and whether it converged in `timeout`."""
    t0 = time.monotonic()
    engine = rig.engine.client()
    while True:
        try:
            seen = look(rig, engine)
            if converged(seen):
                return seen, time.monotonic() - t0, True
        except (httpx.HTTPError, docker.errors.DockerException, RuntimeError):
            pass  # a replica or the engine not answering yet: look again
        if time.monotonic() - t0 > timeout:
            return look(rig, engine), time.monotonic() - t0, False
        time.sleep(1.0)


def _memory(value: Any) -> int:
    return int(str(value).rstrip("MmBb") or 0)


def quota_mismatches(rig: Rig, seen: Seen, projects: list[str]) -> list[str]:
    """Each project's usage as GET /v1/quotas shows it vs the sum over its capsules."""
    out = []
    with rig.client(_replica(rig)) as api:
        for project in projects:
            mine = [c for c in seen.capsules if c["project_id"] == project]
            recount = {
                "capsules": float(len(mine)),
                "containers": float(sum(len(c["containers"]) + len(c["init_containers"]) for c in mine)),
                "cpu": sum(float(c["cpu"]) for c in mine),
                "memory": float(sum(_memory(c["memory"]) for c in mine)),
                "disk": float(sum(v.get("size") or 0 for c in mine for v in c["volumes"])),
            }
            r = api.get(f"/v1/quotas/{project}", params={"usages": "true"})
            r.raise_for_status()
            for resource, want in recount.items():
                got = float(r.json()[resource]["in_use"])
                if abs(got - want) > EPS:
                    out.append(f"{project} {resource}: in_use {got:g}, recount {want:g}")
    return out


def host_mismatches(rig: Rig, seen: Seen) -> list[str]:
    """The host's claimed CPU and memory (GET /v1/hosts) vs the sum over its capsules."""
    mine = [c for c in seen.capsules if c.get("host") == HOST]
    with rig.client(_replica(rig)) as api:
        hosts = {h["hostname"]: h for h in api.get("/v1/hosts").json()["hosts"]}
    h = hosts[HOST]
    out = []
    cpu = sum(float(c["cpu"]) for c in mine)
    mem = sum(_memory(c["memory"]) for c in mine)
    if abs(float(h["cpu_used"]) - cpu) > EPS:
        out.append(f"{HOST} cpu_used {h['cpu_used']}, recount {cpu:g}")
    if int(h["mem_used"]) != mem:
        out.append(f"{HOST} mem_used {h['mem_used']}, recount {mem}")
    if int(h["total_containers"]) != sum(len(c["containers"]) + len(c["init_containers"]) for c in mine):
        out.append(f"{HOST} total_containers {h['total_containers']}")
    return out


def unfulfilled(churn: Churn, seen: Seen) -> tuple[list[str], Counter[str]]:
    """Accepted requests whose effect is missing, and how every request ended."""
    live = seen.by_uuid
    deleted = {r.uuid for r in churn.records if r.op == "delete" and r.status in (204, 404)}
    out: list[str] = []
    ends: Counter[str] = Counter()
    for r in churn.records:
        ends[f"{r.op} {end(r)}"] += 1
        if r.status is None or r.status >= 300:
            continue
        if r.op == "create" and r.uuid not in live and r.uuid not in deleted:
            out.append(f"create {r.name} ({r.uuid}) accepted, gone, never deleted")
        elif r.op == "delete" and r.status == 204 and r.uuid in live:
            out.append(f"delete {r.name} ({r.uuid}) accepted, still there: {live[r.uuid]['status']}")
        elif r.op == "update" and r.uuid in live and r.revision is not None \
                and live[r.uuid]["revision"] < r.revision:
            out.append(f"update {r.name} to revision {r.revision} accepted, "
                       f"at {live[r.uuid]['revision']}")
    # Capsules nobody asked for: a name no create sent, or one name made twice (a create
    # whose answer was lost is allowed to have happened, once).
    names = Counter((c["project_id"], c["name"]) for c in seen.capsules)
    out += [f"capsule {p}/{n} ×{k}" for (p, n), k in names.items() if k > 1]
    out += [f"capsule {c['name']} that no create sent" for c in seen.capsules
            if c["name"] not in churn.known]
    return out, ends


def end(r: Record) -> str:
    """How a request ended: its status, "not sent" (every replica refused the
    connection) or "no answer" (sent; the replica died or the call timed out)."""
    if r.status is not None:
        return str(r.status)
    return "not sent" if r.detail.startswith(NOT_SENT) else "no answer"


def server_errors(churn: Churn) -> list[str]:
    """5xx answers: a request the server should have answered cleanly (a 503 while its
    database is down is such an answer; anything else is a bug)."""
    return [f"{r.op} {r.name}: {r.status} {r.detail[:200]}" for r in churn.records
            if r.status is not None and r.status >= 500 and r.status != 503]


@dataclass
class Report:
    requests: int = 0
    ends: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)  # a few details per end
    kills: dict[str, int] = field(default_factory=dict)
    kill_errors: list[str] = field(default_factory=list)
    accepted_after: int = 0  # 2xx answers once every process was up again
    converged: bool = False
    recovery_seconds: float = 0.0
    capsules_left: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    transitional: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    missing_members: list[str] = field(default_factory=list)
    quota_mismatches: list[str] = field(default_factory=list)
    host_mismatches: list[str] = field(default_factory=list)
    unfulfilled: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    left_after_delete_all: list[str] = field(default_factory=list)

    PROBLEMS = ("kill_errors", "transitional", "orphans", "duplicates", "missing_members",
                "quota_mismatches", "host_mismatches", "unfulfilled", "server_errors",
                "left_after_delete_all")

    def problems(self) -> dict[str, list[str]]:
        return {k: getattr(self, k) for k in self.PROBLEMS if getattr(self, k)}

    def summary(self) -> str:
        lines = [f"requests: {self.requests} ({', '.join(f'{k}: {v}' for k, v in sorted(self.ends.items()))})",
                 f"kills: {', '.join(f'{k}×{v}' for k, v in sorted(self.kills.items()))}",
                 f"accepted after every process was up again: {self.accepted_after}",
                 f"converged: {self.converged} in {self.recovery_seconds:.1f} s; "
                 f"capsules left: {self.capsules_left} {dict(sorted(self.statuses.items()))}"]
        for k in self.PROBLEMS:
            items = getattr(self, k)
            lines.append(f"{k}: {len(items)}" + (f"  e.g. {items[:3]}" if items else ""))
        return "\n".join(lines)
