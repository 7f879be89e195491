"""The warm pool: idle sandboxes made ahead of time per project network on this host, so
that a new capsule only creates and starts its members (issue 16). Off unless
`agent.sandbox_pool_size` > 0.

An idle sandbox is the infra container, started on its project's network (so Docker has
made its namespaces, its veth and its DNS resolver: the slow part of a sandbox) and then
disconnected from it. It holds no address, so nothing can reach it; it is in no store, so
no API shows it and no quota counts it. It is labelled `capsuled.role=pool`,
`capsuled.project` and `capsuled.pool-hosts` (the /etc/hosts lines it was made with).

    active(projects)  each watch: the projects with a desired capsule here. A project is
                      served while it has one, and for `idle_seconds` after its last
    take(capsule)     a capsule about to make its first sandbox asks; the newest idle one
                      of its project (made with the /etc/hosts its new sandbox would get,
                      younger than `idle_seconds`) is claimed in the ClaimBook, durably,
                      before the executor joins it to the network with the capsule's
                      aliases and renames it (agent/execute.py)
    run_once          the background round, one Docker listing: idle sandboxes past
                      `idle_seconds`, of projects no longer served, made with old /etc/hosts
                      lines, over their project's share, or not running go; then the
                      shares are filled, one sandbox at a time, and never within
                      REFILL_PAUSE of a claim (the capsule that claimed is making its
                      members on the same Docker Engine)

The pool's `size` bounds the idle sandboxes on this host, all projects together; it is
shared out evenly among the served projects, those that claimed most recently first.

What a pooled sandbox cannot carry, and how the pool handles it:
- hostname: Docker fixes it at create and refuses members one of their own (with
  `container:` networking each member's UTS namespace gets the sandbox's), so a capsule on
  a pooled sandbox has the sandbox's hostname, its container id (12 hex digits, Docker's
  default), not the capsule's name. Its name and uuid still resolve on the project
  network (aliases, given when it joins). Turning the pool on is choosing that.
- interface: it joins its network a second time, so its interface is `eth1`, not `eth0`.
- published ports cannot be added after create, and a remade sandbox asks for its old
  address: the pool serves only a capsule's first sandbox without hostPorts
  (execute.py decides).
- labels: it keeps `role=pool` and names no capsule; the ClaimBook does (pool_claims.py).

Crash safety: the claim is recorded before the sandbox is used; a restarted agent finishes
or undoes it (execute.py, loop.py's relist). A pooled sandbox with members but no claim
(a lost record) is never offered or removed here; the capsule's own sync replaces it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from capsuled.agent.meters import PoolMeter
from capsuled.agent.networks import ProjectNetworks
from capsuled.agent.pool_claims import Claim, ClaimBook
from capsuled.domain import labels as L
from capsuled.drivers.network.base import ProjectNetwork
from capsuled.drivers.runtime.base import Observed, Runtime, SandboxRequest, Summary
from capsuled.errors import CapsuledError

LOG = logging.getLogger(__name__)
REFILL_PAUSE = 1.0  # seconds after a claim before the pool makes sandboxes again
ROUND = 5.0  # seconds between rounds when nothing wakes the pool
RETRY = 10.0  # seconds before making sandboxes again after a failure

Hosts = tuple[tuple[str, str], ...]


def hosts_fingerprint(hosts: Hosts) -> str:
    """A short, label-safe digest of /etc/hosts lines (order does not matter)."""
    text = "\n".join(f"{n} {a}" for n, a in sorted(hosts))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Idle:
    id: str
    project: str
    hosts: str  # hosts_fingerprint of the lines it was made with
    made: float  # Unix seconds


class SandboxPool:
    def __init__(self, runtime: Runtime, networks: ProjectNetworks, claims: ClaimBook,
                 instance: str, infra_image: str, size: int, idle_seconds: float,
                 hosts_for: Callable[[str], Hosts] = lambda project: (),
                 meter: PoolMeter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._rt = runtime
        self._networks = networks
        self.claims = claims
        self._instance = instance
        self._infra = infra_image
        self._size = size
        self._ttl = idle_seconds
        self._hosts_for = hosts_for
        self._meter = meter if meter is not None else PoolMeter()
        self._meter.size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: dict[str, _Idle] = {}
        self._current: set[str] = set()  # projects with a desired capsule now
        self._left: dict[str, float] = {}  # project → when its last desired capsule went
        self._claimed_at: dict[str, float] = {}  # project → its last claim
        self._last_claim = 0.0
        self._failed_at = 0.0
        self._rounds = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """False with size 0: nothing is offered, though claims made while it was on
        are still honoured (and leftover idle sandboxes removed by one round at start)."""
        return self._size > 0

    # -- what the agent tells it, and asks -----------------------------------------------
    def active(self, projects: Iterable[str]) -> None:
        """The projects with a desired capsule on this host now (each watch)."""
        now, fresh = self._clock(), set(projects)
        with self._lock:
            for p in self._current - fresh:
                self._left[p] = now
            for p in fresh:
                self._left.pop(p, None)
            changed, self._current = fresh != self._current, fresh
        if changed:
            self._wake.set()

    def take(self, capsule: str, project: str, epoch: int, hosts: Hosts) -> str | None:
        """Claim an idle sandbox of `project` for `capsule` (recorded before this returns);
        its id, or None when there is none to give."""
        if not self.enabled:
            return None
        fp, now = hosts_fingerprint(hosts), self._clock()
        with self._lock:
            fits = [e for e in self._idle.values() if e.project == project and e.hosts == fp
                    and now - e.made < self._ttl]
            if not fits:
                self._meter.count(misses=1)
                return None
            e = max(fits, key=lambda x: x.made)
            del self._idle[e.id]
            if not self.claims.take(capsule, Claim(sandbox=e.id, epoch=epoch)):
                self._meter.count(misses=1, errors=1)
                return None  # the next round sees it again, unclaimed, and keeps it
            self._last_claim = self._claimed_at[project] = now
            self._meter.idle = len(self._idle)
        self._meter.count(claims=1)
        self._wake.set()
        return e.id

    def claim_of(self, capsule: str) -> Claim | None:
        return self.claims.get(capsule)

    def release(self, capsule: str) -> None:
        """The capsule's claimed sandbox is gone (removed, or found missing)."""
        self.claims.release(capsule)

    def owner(self, container_id: str) -> str | None:
        """The capsule that claimed this pooled sandbox, if any."""
        return self.claims.owner(container_id)

    # -- the background rounds -----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="agent-sandbox-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop refilling; idle sandboxes stay for the next start to adopt."""
        self._stop.set()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.enabled and self._rounds > 0:
                return  # off: the first round removed what an earlier run left idle
            self._wake.clear()
            self._rounds += 1
            try:
                more = self.run_once()
            except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                more = False
                if isinstance(exc, CapsuledError):
                    LOG.warning("sandbox pool round failed: %s", exc.message)
                else:
                    LOG.exception("sandbox pool round failed unexpectedly")
            pause = self._last_claim + REFILL_PAUSE - self._clock()
            self._wake.wait(max(pause, 0.05) if more else ROUND)

    def run_once(self) -> bool:
        """One round: remove what must go, then make at most one sandbox. Whether more are
        missing (the loop then comes back soon)."""
        summaries = self._rt.list_summaries(self._instance)
        pooled = [s for s in summaries if s.labels.get(L.ROLE) == L.ROLE_POOL]
        # Sandboxes some container joined: a claimed one's members, or those of one whose
        # claim was lost. Never offered, never removed here.
        joined = {s.network_mode.removeprefix("container:") for s in summaries
                  if s.network_mode.startswith("container:")}
        found = [self._adopt(s) for s in self._adoptable(pooled, joined)]
        now = self._clock()
        with self._lock:
            served = list(self._targets(now))
        # Outside the lock: the services agent may wait briefly for its view of a project.
        fps = {p: hosts_fingerprint(self._hosts_for(p)) for p in served}
        with self._lock:
            for e in found:
                if e is not None and self.claims.owner(e.id) is None:
                    self._idle.setdefault(e.id, e)
            doomed = self._settle(pooled, joined, fps, now)
            missing = self._missing(now)
            self._meter.idle = len(self._idle)
        for cid in doomed:
            self._remove(cid)
        if not missing or now - self._failed_at < RETRY:
            return False
        if now - self._last_claim < REFILL_PAUSE:
            return True  # the loop comes back when the pause is over
        self._make(missing[0])
        return len(missing) > 1

    def _adoptable(self, pooled: list[Summary], joined: set[str]) -> list[Summary]:
        """Pooled sandboxes this run does not know yet (made before a restart), unclaimed
        and holding no members: worth an inspect to see whether they can be offered."""
        claimed = {c.sandbox for c in self.claims.all().values()}
        with self._lock:
            known = set(self._idle)
        return [s for s in pooled if s.id not in known and s.id not in claimed
                and s.id not in joined and s.state == "running"]

    def _adopt(self, s: Summary) -> _Idle | None:
        """An idle sandbox from before, if it is one: running and on no network (one still
        on its network was made but never disconnected, or claimed and its record lost
        before its members came: `_settle` removes it)."""
        try:
            obs = self._rt.observe_container(s.id)
        except CapsuledError:
            return None
        if obs is None or obs.state != "running" or obs.networks or not s.labels.get(L.PROJECT):
            return None
        return _Idle(id=s.id, project=s.labels[L.PROJECT], hosts=s.labels.get(L.POOL_HOSTS, ""),
                     made=s.created)

    def _settle(self, pooled: list[Summary], joined: set[str], fps: dict[str, str],
                now: float) -> list[str]:
        """Under the lock: forget idle entries Docker no longer has; the ids of pooled
        sandboxes to remove (taken out of the idle set at once, so none is claimed now):
        unclaimed ones that cannot be offered, and idle ones past their time, of projects
        no longer served, made with old /etc/hosts lines or beyond their project's share."""
        present = {s.id for s in pooled}
        for cid in [c for c in self._idle if c not in present]:
            del self._idle[cid]
        claimed = {c.sandbox for c in self.claims.all().values()}
        doomed = [s.id for s in pooled
                  if s.id not in claimed and s.id not in self._idle and s.id not in joined]
        targets = self._targets(now)
        by_project: dict[str, list[_Idle]] = {}
        for e in self._idle.values():
            by_project.setdefault(e.project, []).append(e)
        for project, entries in by_project.items():
            keep = targets.get(project, 0)
            for e in sorted(entries, key=lambda x: x.made, reverse=True):
                if keep > 0 and now - e.made < self._ttl and e.hosts == fps.get(project, e.hosts):
                    keep -= 1
                else:
                    doomed.append(e.id)
                    del self._idle[e.id]
        return doomed

    def _missing(self, now: float) -> list[str]:
        """Under the lock: one project per sandbox still to make, fullest need first."""
        have: dict[str, int] = {}
        for e in self._idle.values():
            have[e.project] = have.get(e.project, 0) + 1
        out = []
        for project, want in self._targets(now).items():
            out += [project] * max(0, want - have.get(project, 0))
        return out

    def _targets(self, now: float) -> dict[str, int]:
        """Under the lock: how many idle sandboxes each served project should have."""
        for p in [p for p, t in self._left.items() if now - t >= self._ttl]:
            del self._left[p]
            self._claimed_at.pop(p, None)
        served = sorted(self._current | self._left.keys(),
                        key=lambda p: (p not in self._current, -self._claimed_at.get(p, 0.0), p))
        out: dict[str, int] = {}
        for i in range(self._size if served else 0):
            p = served[i % len(served)]
            out[p] = out.get(p, 0) + 1
        return out

    def _make(self, project: str) -> None:
        hosts = self._hosts_for(project)
        labels = {L.INSTANCE: self._instance, L.ROLE: L.ROLE_POOL, L.PROJECT: project,
                  L.POOL_HOSTS: hosts_fingerprint(hosts)}

        def create(net: ProjectNetwork | None) -> Observed:
            assert net is not None  # a project always has one
            made = self._rt.create_sandbox(SandboxRequest(
                name=f"capsuled-pool_{secrets.token_hex(8)}", image=self._infra, hostname="",
                labels=labels, network=net.name, dns=net.dns, extra_hosts=hosts))
            try:
                # Off the network again: the namespaces and the resolver stay made, the
                # address goes back, and nothing can reach it while it waits.
                self._rt.disconnect_network(made.id, net.name)
            except CapsuledError:
                self._rt.remove_container(made.id, 0)
                raise
            return made

        try:
            self._rt.ensure_image(self._infra, "IfNotPresent")
            made = self._networks.with_network(project, create)
        except CapsuledError as exc:
            LOG.warning("making a pooled sandbox for project %s failed: %s", project, exc.message)
            self._failed_at = self._clock()
            self._meter.count(errors=1)
            return
        with self._lock:
            self._idle[made.id] = _Idle(id=made.id, project=project, hosts=labels[L.POOL_HOSTS],
                                        made=self._clock())
            self._meter.idle = len(self._idle)
        self._meter.count(made=1)

    def _remove(self, cid: str) -> None:
        try:
            self._rt.remove_container(cid, 0)
            self._meter.count(removed=1)
        except CapsuledError as exc:
            LOG.warning("removing pooled sandbox %s failed: %s", cid[:12], exc.message)
            self._meter.count(errors=1)
