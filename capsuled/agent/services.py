"""Capsule services on this host: the agent's side of domain/services.py.

    watch loop     long-polls the API for this host's view (its projects' services with
                   their serving backends on every host, and every published service)
    reconcile      view + this host's project networks − what is drained or found not
                   serving here → the load balancer's whole state (`plan`), applied when
                   it changed, and again every resync period (repairs rules removed by
                   hand; the driver replaces its table atomically)
    network_ready  a project network was just ensured: its capsules' rules go in before
                   the first container on it starts (called by ProjectNetworks)
    hosts_for      a new sandbox's /etc/hosts entries: its project's service names
    names_to       where the names go as they change (the overlay's DNS responders:
                   a service made after a capsule resolves in it too)
    observed       a capsule's report, just before it is sent: a local capsule that
                   stopped serving (readiness lost, crashed) leaves the load balancer at
                   once, without waiting for the API's round trip; other hosts learn it
                   from the API, as they learn everything
    drain          before a serving capsule's containers stop (a delete, or a replacement
                   of its containers): no new connections here at once, the API told (a
                   delete it knows; a replacement is announced in a report), the other
                   hosts given `drain_grace` to apply the same and then as long as new
                   connections still reach it (one of them has not), and the connections
                   it holds waited for, up to `drain_timeout`

Level-triggered: a missed view costs latency, not correctness, since each reconcile
computes everything from the latest view and the host's networks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from capsuled.domain.backoff import Backoff
from capsuled.domain.channel import CapsuleReport
from capsuled.domain.services import ServiceChannel, ServicesView
from capsuled.drivers.lb.base import Frontend, LbState, LoadBalancer, Segment
from capsuled.errors import CapsuledError

if TYPE_CHECKING:
    from capsuled.drivers.network.base import ProjectNetwork

LOG = logging.getLogger(__name__)
WATCH_TIMEOUT = 30.0
COVER_WAIT = 2.0  # a new project's view comes with its first assignment: milliseconds
VIEW_WAIT = 5.0  # a drain waits this long at most for the API to drop the capsule
DRAIN_POLL = 0.1
DEPARTED_KEEP = 600.0  # seconds a former backend's address is remembered for a drain


def plan(view: ServicesView, segments: Mapping[str, list[Segment]],
         excluded: set[str]) -> LbState:
    """The load balancer's state for `view` on a host whose project networks are
    `segments`, without the backends of `excluded` capsules. Pure."""
    fronts = []
    for s in view.services:
        clients = tuple(sorted(set(segments.get(s.project_id, ())))) if s.project_id else ()
        backends = tuple(sorted({b.addr for b in s.backends if b.capsule not in excluded}))
        for p in s.ports:
            if not clients and p.publish is None:
                continue  # nothing on this host can reach it
            fronts.append(Frontend(label=f"{s.uuid} {p.protocol} {p.port}", vip=s.vip,
                                   protocol=p.protocol, port=p.port, target_port=p.target_port,
                                   clients=clients, backends=backends, publish=p.publish))
    return LbState(view.vip_range if fronts else None, tuple(fronts))


def serving_here(report: CapsuleReport) -> bool:
    """Whether a local capsule's report says it can take connections: its sandbox and
    every app container running and ready (domain/conditions.container_ready's rule)."""
    apps = [c for c in report.containers if c.role == "app"]
    return (not report.gone and report.sandbox_state == "running" and bool(apps)
            and all(c.state == "running" and (c.ready if c.ready is not None
                                              else c.health != "unhealthy") for c in apps))


class ServiceAgent:
    def __init__(self, channel: ServiceChannel, lb: LoadBalancer,
                 segments: Callable[[], dict[str, list[Segment]]], host: str,
                 drain_timeout: float = 30.0, drain_grace: float = 1.0, resync: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._channel = channel
        self._lb = lb
        self._segments = segments
        self._host = host
        self._drain_timeout = drain_timeout
        self._drain_grace = drain_grace
        self._resync = resync
        self._clock = clock
        self._cond = threading.Condition()
        self._view: ServicesView | None = None
        self._backends: dict[str, tuple[str, frozenset[int]]] = {}  # the view's, by capsule
        self._watching = False  # the last watch answered: waits for views are worth it
        self._local_out: set[str] = set()  # local capsules whose last report: not serving
        self._draining: set[str] = set()
        # uuid → (address, TCP target ports, when it left the view): a drain may start
        # after the API already dropped the capsule (a delete does that at once).
        self._departed: dict[str, tuple[str, frozenset[int], float]] = {}
        self._apply_lock = threading.Lock()
        self._names_sink: Callable[[dict[str, dict[str, str]]], None] | None = None
        self._names: dict[str, dict[str, str]] | None = None  # the last sent to the sink
        self._applied: LbState | None = None
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for target in (self._watch_loop, self._resync_loop):
            t = threading.Thread(target=target, daemon=True,
                                 name=f"services-{target.__name__.strip('_')}")
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop watching; the rules stay, so services keep working across a restart."""
        self._stop.set()
        self._kick.set()
        with self._cond:
            self._cond.notify_all()

    # -- the view --------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        after: str | None = None
        backoff = Backoff(0.5, 30.0)
        while not self._stop.is_set():
            try:
                view = self._channel.services(self._host, after, WATCH_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - logged; backs off and goes on
                self._watching = False
                _log_failure("service watch", exc)
                self._stop.wait(backoff.next())
                continue
            backoff.reset()
            self._watching = True
            after = view.version
            self.take(view)

    def take(self, view: ServicesView) -> None:
        """Make `view` the latest and apply it."""
        now = self._clock()
        with self._cond:
            old, new = self._backends, view.backends()
            for uuid, (addr, ports) in old.items():
                if uuid not in new:
                    self._departed[uuid] = (addr, ports, now)
            for uuid in new:
                self._departed.pop(uuid, None)
            for uuid, (_, _, since) in list(self._departed.items()):
                if now - since > DEPARTED_KEEP:
                    del self._departed[uuid]
            self._local_out &= set(new)  # what the API dropped needs no override
            self._view, self._backends = view, new
            self._cond.notify_all()
        self._reconcile_or_retry()
        self._send_names(view)

    def names_to(self, sink: Callable[[dict[str, dict[str, str]]], None]) -> None:
        """Give `sink` every project's service names (name → VIP) now and on each change."""
        with self._cond:
            self._names_sink, self._names, view = sink, None, self._view
        if view is not None:
            self._send_names(view)

    def _send_names(self, view: ServicesView) -> None:
        names = {p: dict(view.hosts_for(p)) for p in view.projects}
        with self._cond:
            sink = self._names_sink
            if sink is None or names == self._names:
                return
            self._names = names
        try:
            sink(names)
        except Exception as exc:  # noqa: BLE001 - names are a convenience; rules went in
            self._names = None  # sent again with the next view
            _log_failure("serving service names", exc)

    # -- applying --------------------------------------------------------------------------
    def reconcile(self, force: bool = False) -> None:
        """Apply what the latest view says for this host's networks now. Before the first
        view nothing is touched: an agent restart keeps the rules of before working."""
        with self._apply_lock:
            with self._cond:
                view = self._view
                excluded = self._local_out | self._draining
            if view is None:
                return
            state = plan(view, self._segments(), excluded)
            if force or state != self._applied:
                self._lb.apply(state)
                self._applied = state

    def _reconcile_or_retry(self) -> None:
        try:
            self.reconcile()
        except Exception as exc:  # noqa: BLE001 - logged; the resync loop retries
            _log_failure("applying services", exc)
            self._kick.set()

    def _resync_loop(self) -> None:
        while not self._stop.is_set():
            kicked = self._kick.wait(self._resync)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self.reconcile(force=not kicked)
            except Exception as exc:  # noqa: BLE001 - logged; tried again shortly
                _log_failure("applying services", exc)
                if self._stop.wait(1.0):
                    return
                self._kick.set()

    # -- what the executors ask ------------------------------------------------------------
    def network_ready(self, project: str, net: ProjectNetwork) -> None:
        """A network of `project` exists now (ProjectNetworks calls this before each create
        joins it): make sure its capsules' rules are in before the container starts."""
        if not self._covers(project):
            return
        with self._cond:
            has = self._view is not None and any(s.project_id == project
                                                 for s in self._view.services)
        if not has:
            return
        bridge = getattr(net, "bridge", None) or f"br-{net.id[:12]}"
        applied = self._applied
        if applied is not None and any(seg.bridge == bridge for f in applied.frontends
                                       for seg in f.clients):
            return  # the common case: nothing to do, no call to Docker
        self._reconcile_or_retry()

    def hosts_for(self, project: str | None) -> tuple[tuple[str, str], ...]:
        """(name, VIP) of the project's services, for a new sandbox's /etc/hosts."""
        if project is None or not self._covers(project):
            return ()
        with self._cond:
            return tuple(self._view.hosts_for(project)) if self._view is not None else ()

    def _covers(self, project: str) -> bool:
        """Wait (briefly) for a view that covers `project`: its first capsule's assignment
        and the view that adds the project come from one commit, by two long polls."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._stop.is_set() or not self._watching or (
                    self._view is not None and project in self._view.projects),
                timeout=COVER_WAIT) and self._view is not None and project in self._view.projects

    def observed(self, report: CapsuleReport | None) -> None:
        """A local capsule's report, about to be sent: one that stopped serving leaves
        this host's load balancer now (the API's view follows); one serving again waits
        for the API to list it."""
        if report is None:
            return
        now_serving = serving_here(report)
        with self._cond:
            listed = report.uuid in self._backends
            if not now_serving and listed and report.uuid not in self._local_out:
                self._local_out.add(report.uuid)
            elif now_serving and report.uuid in self._local_out:
                self._local_out.discard(report.uuid)
            else:
                return
        self._reconcile_or_retry()

    # -- drains ----------------------------------------------------------------------------
    def is_draining(self, uuid: str) -> bool:
        with self._cond:
            return uuid in self._draining

    def drain(self, uuid: str, announce: Callable[[], None] | None = None) -> None:
        """Before a capsule's containers stop: if it serves (or served until moments ago),
        take it out of every load balancer and wait for its connections (see the module
        docstring). Returns at once for a capsule no service uses. `announce` tells the
        API it is draining (a replacement: nothing else would)."""
        started = self._clock()
        with self._cond:
            current = self._backends.get(uuid)
            gone = self._departed.get(uuid)
            if current is not None:
                addr, ports = current
            elif gone is not None:
                addr, ports = gone[0], gone[1]
            else:
                return
            self._draining.add(uuid)
        self._reconcile_or_retry()
        LOG.info("draining capsule %s (%s) before its containers stop", uuid, addr)
        if announce is not None:
            try:
                announce()
            except Exception as exc:  # noqa: BLE001 - the API learns it at the next report
                _log_failure("announcing a drain", exc)
        deadline = started + self._drain_timeout
        with self._cond:  # the API no longer lists it: every host's next view drops it
            self._cond.wait_for(lambda: self._stop.is_set() or uuid not in self._backends,
                                timeout=max(0.0, min(VIEW_WAIT, deadline - self._clock())))
            left = self._departed.get(uuid)
        since = left[2] if left is not None else self._clock()
        self._wait_quiet(addr, ports, since, deadline)
        LOG.info("drained capsule %s in %.2fs", uuid, self._clock() - started)

    def _wait_quiet(self, addr: str, ports: frozenset[int], since: float,
                    deadline: float) -> None:
        """Until `drain_grace` has passed since the capsule left the view (`since`) and
        since the last new connection to it, and none is open; or `deadline`. The grace
        is what other hosts get to apply a view without it; a new connection after it
        says one of them has not (a slow agent, a load balancer not yet rewritten), and
        its clients would otherwise find the containers gone."""
        if not ports:
            self._stop.wait(max(0.0, min(since + self._drain_grace, deadline) - self._clock()))
            return
        seen: frozenset[str] | None = None
        last_new = since
        while not self._stop.is_set() and self._clock() < deadline:
            try:
                flows = self._lb.connections(addr, ports)
            except CapsuledError as exc:
                LOG.warning("reading the connections of %s failed: %s", addr, exc.message)
                self._stop.wait(max(0.0, min(since + self._drain_grace, deadline)
                                    - self._clock()))
                return
            now = self._clock()
            if seen is not None and flows.keys - seen:
                last_new = now
            seen = flows.keys
            if flows.open == 0 and now - last_new >= self._drain_grace:
                return
            self._stop.wait(DRAIN_POLL)

    def release(self, uuid: str) -> None:
        """The capsule's containers are on their spec again (or it is gone): it may serve
        again once it is ready and the API lists it."""
        with self._cond:
            if uuid not in self._draining:
                return
            self._draining.discard(uuid)
        self._reconcile_or_retry()


def _log_failure(what: str, exc: Exception) -> None:
    if isinstance(exc, CapsuledError):
        LOG.warning("%s failed: %s", what, exc.message)
    else:
        LOG.exception("%s failed unexpectedly", what, exc_info=exc)
