"""The churn: client threads of several tenants creating capsules (some with 2-3 containers
and a shared volume), updating their image or environment, deleting them, and killing
their member containers in Docker, against either API replica. Every request and its
answer is recorded, so that recovery can check each accepted one (checks.py)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import httpx

from .rig import LATEST


@dataclass
class Record:
    """One request: what, on which capsule, and what came back. `status` None: no answer
    (a replica died under it, or the call timed out): its outcome is unknown."""

    op: str
    name: str
    status: int | None
    t: float
    uuid: str = ""
    revision: int | None = None
    detail: str = ""


NOT_SENT = "not sent: "  # every replica refused the connection: nothing was accepted


def _record(op: str, name: str, r: httpx.Response | str, t: float, uuid: str = "") -> Record:
    if isinstance(r, str):
        return Record(op, name, None, t, uuid, detail=r[:300])
    return Record(op, name, r.status_code, t, uuid,
                  detail="" if r.status_code < 300 else r.text[:300])


@dataclass
class Known:
    """A capsule the churn made (or may have made: a create without an answer)."""

    name: str
    project: str
    token: str
    uuid: str = ""
    deleted: bool = False  # a delete was accepted (204)


@dataclass
class Churn:
    urls: list[str]
    tenants: dict[str, str]  # project → token
    engine: Callable[[], docker.APIClient]
    instance: str
    capsules: int  # how many creates in all
    seed: int = 0
    records: list[Record] = field(default_factory=list)
    known: dict[str, Known] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _made: int = 0
    _workers: list[threading.Thread] = field(default_factory=list)

    # -- the driver -----------------------------------------------------------------------
    def start(self, threads: int) -> None:
        """Client threads until stop()."""
        self._workers = [threading.Thread(target=self._worker, args=(i,), daemon=True)
                         for i in range(threads)]
        for w in self._workers:
            w.start()

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            w.join()

    def _worker(self, index: int) -> None:
        rnd = random.Random(self.seed * 1000 + index)
        clients = [httpx.Client(base_url=u, timeout=60, headers=LATEST) for u in self.urls]
        try:
            while not self._stop.is_set():
                op = rnd.choices(["create", "update", "delete", "kill"], [4, 3, 1, 2])[0]
                with self._lock:
                    accepted = sum(1 for k in self.known.values() if k.uuid)
                    live = [k for k in self.known.values() if k.uuid and not k.deleted]
                    # A third of the capsules is deleted: the rest are left for recovery
                    # to check (members, volumes, usage), and then deleted by the runner.
                    if op == "delete" and len(live) <= accepted * 2 // 3:
                        op = "update"
                    if op == "create" and (accepted >= self.capsules
                                           or self._made >= 3 * self.capsules):
                        op = "update"
                    if op == "create":
                        self._made += 1  # attempts: creates refused (503) are tried anew
                        n = self._made
                if op == "create":
                    self._create(rnd, clients, n)
                elif live:
                    target = rnd.choice(live)
                    if op == "update":
                        self._update(rnd, clients, target)
                    elif op == "delete":
                        self._delete(rnd, clients, target)
                    else:
                        self._kill(rnd, target)
                time.sleep(rnd.uniform(0.0, 0.2))
        finally:
            for c in clients:
                c.close()

    def _send(self, rnd: random.Random, clients: list[httpx.Client], token: str, method: str,
              path: str, **kw: Any) -> httpx.Response | str:
        """One request to a replica; a replica that refuses the connection (it is down)
        never saw it, so the other one is tried. A string: no answer, and why."""
        order = rnd.sample(range(len(clients)), len(clients))
        why = ""
        for _ in range(3):
            for i in order:
                try:
                    return clients[i].request(method, path, headers={"X-Auth-Token": token}, **kw)
                except httpx.ConnectError as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    continue
                except httpx.HTTPError as exc:
                    return f"{type(exc).__name__}: {exc}"
            time.sleep(1.0)  # both down (or the database is): a moment
        return NOT_SENT + why

    def _record(self, rec: Record) -> None:
        with self._lock:
            self.records.append(rec)

    def _create(self, rnd: random.Random, clients: list[httpx.Client], n: int) -> None:
        project = rnd.choice(sorted(self.tenants))
        name = f"chaos-{self.seed}-{n}"
        members = rnd.choice([1, 1, 2, 3])
        volume = members > 1 and rnd.random() < 0.6
        containers = []
        for i in range(members):
            c: dict[str, Any] = {"name": f"c{i}", "image": "busybox", "command": ["sleep", "36000"],
                                 "env": {"GEN": "0"},
                                 "resources": {"requests": {"cpu": 0.1, "memory": 8}}}
            if volume:
                c["volumeMounts"] = [{"name": "shared", "mountPath": "/shared"}]
            containers.append(c)
        spec: dict[str, Any] = {"containers": containers}
        if volume:
            spec["volumes"] = [{"name": "shared", "emptyDir": {}}]
        tmpl = {"kind": "capsule", "metadata": {"name": name}, "spec": spec}
        known = Known(name, project, self.tenants[project])
        with self._lock:
            self.known[name] = known
        t = time.monotonic()
        r = self._send(rnd, clients, known.token, "POST", "/v1/capsules", json={"template": tmpl})
        rec = _record("create", name, r, t)
        if isinstance(r, httpx.Response) and r.status_code == 202:
            body = r.json()
            rec.uuid, rec.revision = body["uuid"], body.get("revision")
            with self._lock:
                known.uuid = body["uuid"]
        self._record(rec)

    def _update(self, rnd: random.Random, clients: list[httpx.Client], k: Known) -> None:
        change: dict[str, Any] = {"name": "c0"}
        if rnd.random() < 0.3:
            change["image"] = rnd.choice(["busybox", "busybox:latest"])
        else:
            change["env"] = {"GEN": str(rnd.randrange(1_000_000))}
        t = time.monotonic()
        r = self._send(rnd, clients, k.token, "PATCH", f"/v1/capsules/{k.uuid}",
                       json={"containers": [change], "change_cause": "chaos"})
        rec = _record("update", k.name, r, t, k.uuid)
        if isinstance(r, httpx.Response) and r.status_code == 202:
            rec.revision = r.json().get("revision")
        self._record(rec)

    def _delete(self, rnd: random.Random, clients: list[httpx.Client], k: Known) -> None:
        t = time.monotonic()
        r = self._send(rnd, clients, k.token, "DELETE", f"/v1/capsules/{k.uuid}")
        rec = _record("delete", k.name, r, t, k.uuid)
        if isinstance(r, httpx.Response) and r.status_code in (204, 404):
            with self._lock:
                k.deleted = True
        self._record(rec)

    def _kill(self, rnd: random.Random, k: Known) -> None:
        """`docker kill` of one member container, behind capsuled's back."""
        t = time.monotonic()
        try:
            client = self.engine()
            found = client.containers(filters={"label": [f"capsuled.capsule={k.uuid}",
                                                         "capsuled.role=app"]})
            if found:
                client.kill(rnd.choice(found)["Id"])
            self._record(Record("kill", k.name, 200 if found else 404, t, k.uuid))
        except (docker.errors.DockerException, OSError) as exc:  # our own dockerd may be down
            self._record(Record("kill", k.name, None, t, k.uuid, detail=str(exc)[:200]))
