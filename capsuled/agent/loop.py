"""The agent: wakes on assignment changes (watch), Docker events and a slow relist, and
hands capsules to their workers. Level-triggered throughout: a missed wake-up costs
latency, never correctness, because each sync compares the whole desired capsule with
everything Docker reports for it."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from capsuled.agent.bare import BareExecutor
from capsuled.agent.execute import CapsuleExecutor
from capsuled.agent.firewall import Firewall, Wanted
from capsuled.agent.firewall import addresses as firewall_addresses
from capsuled.agent.image_ledger import ImageLedger
from capsuled.agent.meters import AgentMeters
from capsuled.agent.networks import ProjectNetworks
from capsuled.agent.overlay import Overlay
from capsuled.agent.own_events import OwnEvents
from capsuled.agent.pool_claims import ClaimBook
from capsuled.agent.pulls import ImageGate
from capsuled.agent.prober import Prober, ProbeDriver
from capsuled.agent.sandbox_pool import SandboxPool
from capsuled.agent.services import ServiceAgent
from capsuled.agent.workers import CapsuleWorkers
from capsuled.config import AgentSettings
from capsuled.domain import labels as L
from capsuled.domain.backoff import Backoff
from capsuled.domain.addresses import Address
from capsuled.domain.channel import AgentChannel, Assignment, Assignments, ContainerAssignment
from capsuled.drivers.firewall.base import FirewallDriver
from capsuled.drivers.network.base import NetworkDriver
from capsuled.drivers.runtime.base import Runtime, Summary
from capsuled.drivers.volume.base import VolumeDriver
from capsuled.errors import CapsuledError, Unavailable

LOG = logging.getLogger(__name__)
_EXIT = re.compile(r"\((-?\d+)\)")
WATCH_TIMEOUT = 30.0
# An idle watch times out with "unchanged" instead of the whole desired set (one number
# read), except that the agent takes the whole set at least this often: under the
# revision numbers, the level-triggered check that nothing was changed without a bump.
FULL_SET_EVERY = 120.0
# Pauses of the watch loop after failures in a row: doubling from the first up to the
# longest, which is long enough not to hammer a sick API and short enough that its
# recovery is noticed within a minute (the relist loop starts from its own period).
LOOP_BACKOFF_INITIAL = 0.5
LOOP_BACKOFF_MAX = 30.0


class Agent:
    def __init__(self, channel: AgentChannel, runtime: Runtime, volumes: VolumeDriver,
                 settings: AgentSettings, instance: str, infra_image: str,
                 networks: NetworkDriver, ops_endpoint: tuple[str, str] | None = None,
                 on_ops_key: Callable[[str], None] | None = None,
                 image_ledger: ImageLedger | None = None,
                 probe_driver: ProbeDriver | None = None,
                 overlay: Overlay | None = None,
                 firewall: FirewallDriver | None = None,
                 services: ServiceAgent | None = None,
                 claims: ClaimBook | None = None) -> None:
        self._channel = channel
        self._services = services  # capsule services on this host (None: not programmed)
        # (url, per-boot nonce) of our ops server; the API answers a registration with the
        # key it derived for that nonce, which the ops server must accept (on_ops_key).
        self._ops_endpoint = ops_endpoint
        self._on_ops_key = on_ops_key
        self._runtime = runtime
        self._settings = settings
        self._host = settings.host_name
        self._instance = instance
        self._desired: dict[str, Assignment] = {}
        self._desired_bare: dict[str, ContainerAssignment] = {}
        # Each unit's addresses as this agent last saw and reported them: newer than the
        # store's copy in the desired set (the API does not wake this host for them), and
        # what a remade sandbox or container asks for again.
        self._reported: dict[str, list[Address]] = {}
        self._lock = threading.Lock()
        # Per container: id, state, exit code, unhealthy.
        self._fingerprints: dict[str, tuple[tuple[str, str, str, bool], ...]] = {}
        self._stop = threading.Event()
        self._parallel = ThreadPoolExecutor(max_workers=32, thread_name_prefix="docker")
        # A project's network goes once it has had nothing on it for a whole relist period.
        self._networks = ProjectNetworks(
            networks, instance, grace=settings.relist_interval, overlay=overlay,
            on_ready=services.network_ready if services is not None else None)
        # Project networks across hosts (None: this host's networks are its own).
        self._overlay = overlay
        if overlay is not None and services is not None:
            services.names_to(overlay.service_names)  # resolvable in capsules made before
        # One gate for both executors: which cached images each project may use.
        images = ImageGate(runtime, image_ledger)
        # HTTP/TCP/exec probes of capsule containers; a change in a container's condition
        # syncs its capsule, whose report then carries it.
        self._prober = None if probe_driver is None else Prober(
            probe_driver, on_change=lambda uuid: self.workers.enqueue(uuid),
            concurrency=settings.probe_concurrency)
        publish = str(settings.publish_address)
        # Security groups in the kernel (None: not enforced on this host).
        self._firewall = None if firewall is None else Firewall(firewall, instance)
        # What the loops did, sent with each heartbeat (the API's /metrics, per host).
        self.meters = AgentMeters()
        # Idle sandboxes made ahead (size 0: none; the claims of an earlier run still hold).
        self.pool = SandboxPool(runtime, self._networks, claims or ClaimBook(), instance,
                                infra_image, settings.sandbox_pool_size,
                                settings.sandbox_pool_idle_seconds,
                                hosts_for=services.hosts_for if services is not None
                                else lambda project: (), meter=self.meters.pool)
        self._own_events = own_events = OwnEvents()  # both kinds of sync note what they made
        self._executor = CapsuleExecutor(runtime, volumes, self._networks, instance, infra_image,
                                         settings.stop_timeout, self._parallel, images,
                                         self._prober, publish_address=publish,
                                         guard=None if self._firewall is None
                                         else self._firewall.observe,
                                         services=services,
                                         announce=lambda r: self._channel.report(self._host, [r]),
                                         pool=self.pool, own_events=own_events)
        self._bare = BareExecutor(runtime, self._networks, volumes, instance, settings.stop_timeout,
                                  announce=lambda r: self._channel.report(self._host, [], [r]),
                                  images=images, publish_address=publish,
                                  own_events=own_events)
        self.workers = CapsuleWorkers(self._sync, settings.workers, settings.backoff_initial,
                                      settings.backoff_max, meter=self.meters.sync)
        self._threads: list[threading.Thread] = []
        self._first_watch = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.register()
        for target in (self._watch_loop, self._event_loop, self._relist_loop, self._heartbeat_loop):
            t = threading.Thread(target=target, name=f"agent-{target.__name__.strip('_')}", daemon=True)
            t.start()
            self._threads.append(t)
        if self._prober is not None:
            self._prober.start()
        if self._services is not None:
            self._services.start()
        self.pool.start()

    def register(self) -> None:
        """Tell the control plane about this host, retrying while it cannot be reached (an
        agent may start before the API); a refused token is fatal and raised."""
        info = self._runtime.host_info(self._host, self._settings.availability_zone)
        # CPU is compressible: like Nova's cpu_allocation_ratio, the host offers its cores
        # times the ratio to the scheduler (claims stay exact; limits are still per container).
        info = info.model_copy(update={"labels": dict(self._settings.labels),
                                       "cpus": info.cpus * self._settings.cpu_allocation_ratio})
        if self._settings.underlay_address is not None:
            info = info.model_copy(update={"underlay_address": self._settings.underlay_address})
        if self._ops_endpoint is not None:
            info = info.model_copy(update={"ops_url": self._ops_endpoint[0],
                                           "ops_nonce": self._ops_endpoint[1]})
        delay = 0.5
        while True:
            try:
                got = self._channel.register(info)
                if got is not None and got.ops_key and self._on_ops_key is not None:
                    self._on_ops_key(got.ops_key)
                return
            except Unavailable as exc:
                LOG.warning("cannot register with the control plane yet: %s", exc.message)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 10.0)

    def stop(self) -> None:
        """Stop reconciling; containers are left running for the next start to adopt."""
        self._stop.set()
        self.pool.stop()
        if self._services is not None:
            self._services.stop()
        if self._prober is not None:
            self._prober.stop()
        self.workers.stop()
        self._parallel.shutdown(wait=False, cancel_futures=True)

    # -- one capsule ---------------------------------------------------------------------
    def _sync(self, uuid: str) -> bool:
        if self._stop.is_set():
            return True
        with self._lock:
            desired = self._desired.get(uuid)
            bare = self._desired_bare.get(uuid)
            seen = self._reported.get(uuid)
        if seen is not None:
            desired = desired.model_copy(update={"addresses": seen}) if desired else None
            bare = bare.model_copy(update={"addresses": seen}) if bare else None
        if desired is None and bare is None and not self._first_watch.is_set():
            return False  # don't judge anything an orphan before the first desired set
        # Docker's create and start events of what this sync makes are held meanwhile
        # (agent/own_events.py): only those of something else sync the unit again.
        self._own_events.begin(uuid)
        try:
            return self._sync_unit(uuid, desired, bare)
        finally:
            if self._own_events.end(uuid):
                self.workers.enqueue(uuid)

    def _sync_unit(self, uuid: str, desired: Assignment | None,
                   bare: ContainerAssignment | None) -> bool:
        if bare is not None:
            done = self._bare.sync(uuid, bare)
            if done.report is not None:
                found = done.report.container.addresses if done.report.container else []
                self._guard(uuid, done.report.gone, found)
                self._note(uuid, done.report.gone, found)
                self._channel.report(self._host, [], [done.report])
            return done.settled
        # A capsule, or an orphan of either kind: removing everything labelled with the
        # uuid is right for both.
        if desired is None:
            self._bare.forget(uuid)
        outcome = self._executor.sync(uuid, desired)
        if outcome.report is not None:
            self._guard(uuid, outcome.report.gone, outcome.report.addresses)
            self._note(uuid, outcome.report.gone, outcome.report.addresses)
            if self._services is not None:
                self._services.observed(outcome.report)  # this host's rules first
            self._channel.report(self._host, [outcome.report])
        elif outcome.settled:
            self._guard(uuid, True, [])  # an orphan, removed
            self._note(uuid, True, [])
        return outcome.settled

    def _note(self, uuid: str, gone: bool, found: list[Address]) -> None:
        """Keep the unit's addresses as seen (none seen, e.g. stopped: the last stay, as in
        the store); forget them once it is gone."""
        with self._lock:
            if gone:
                self._reported.pop(uuid, None)
            elif found:
                self._reported[uuid] = list(found)

    def _guard(self, uuid: str, gone: bool, found: list[Address]) -> None:
        """Its security groups follow what the sync saw: its address, or that it is gone.
        A failure is logged; the next sync or relist applies them."""
        if self._firewall is None:
            return
        try:
            if gone:
                self._firewall.forget(uuid)
            else:
                self._firewall.observe(uuid, found)
        except CapsuledError as exc:
            LOG.warning("security groups of %s: %s", uuid, exc.message)

    # -- wake-ups ------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        revision = -1
        full_at = float("-inf")  # monotonic time of the last whole set taken
        backoff = Backoff(LOOP_BACKOFF_INITIAL, LOOP_BACKOFF_MAX)
        while not self._stop.is_set():
            # Nothing may end this loop but stop(): an agent that no longer watches keeps
            # heartbeating, so the control plane would never notice it went deaf.
            try:
                full = revision < 0 or time.monotonic() - full_at >= FULL_SET_EVERY
                with self.meters.watch.round():
                    got = self._channel.watch(self._host, revision, WATCH_TIMEOUT, full=full)
                if got.unchanged:  # never taken as a set: its lists are empty
                    if got.revision != revision:  # not from a correct API: ask for all
                        full_at = float("-inf")
                    backoff.reset()
                    continue
                self._take_desired(got)
                revision = got.revision
                full_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - logged; the loop backs off and goes on
                _log_failure("watch", exc)
                self._stop.wait(backoff.next())
                continue
            backoff.reset()

    def _take_desired(self, got: Assignments) -> None:
        """Make `got` the desired set and wake the workers of what changed in it."""
        if self._overlay is not None:
            # Before any create of this set: a new network must be laid out as allocated.
            self._overlay.update(got.overlays)
        fresh = {a.uuid: a for a in got.capsules}
        fresh_bare = {a.uuid: a for a in got.containers}
        with self._lock:
            old, self._desired = self._desired, fresh
            old_bare, self._desired_bare = self._desired_bare, fresh_bare
        if self._firewall is not None:
            # Before the workers act on it: an address a removed unit gives up is no longer
            # admitted anywhere by the time another unit can get it.
            wanted = {a.uuid: Wanted(a.firewall, firewall_addresses(a.addresses))
                      for a in got.capsules}
            wanted.update({a.uuid: Wanted(a.firewall, firewall_addresses(a.addresses))
                           for a in got.containers})
            self._firewall.desire(wanted)
        self.pool.active({a.project_id for a in got.capsules
                          if a.project_id is not None and not a.deleting})
        self._first_watch.set()
        for uuid, gen in [*((u, a.generation) for u, a in fresh.items()),
                          *((u, a.generation) for u, a in fresh_bare.items())]:
            prev = old.get(uuid) or old_bare.get(uuid)
            if prev is None or prev.generation != gen:
                self.workers.enqueue(uuid)
        for uuid in (old.keys() | old_bare.keys()) - fresh.keys() - fresh_bare.keys():
            self.workers.enqueue(uuid)

    def _event_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                for ev in self._runtime.events(self._instance):
                    delay = 0.5
                    # A pooled sandbox's event: its capsule, if one claimed it.
                    capsule = ev.capsule or self.pool.owner(ev.container_id)
                    if capsule and not self._own_events.hold(capsule, ev.container_id,
                                                             ev.action):
                        self.workers.enqueue(capsule)
                    if self._stop.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - logged; reconnects after a pause
                _log_failure("docker event stream", exc)
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)
            try:
                self.relist()  # events may have been missed while disconnected
            except Exception as exc:  # noqa: BLE001 - the relist loop repairs it later
                _log_failure("relist after the event stream", exc)

    def _relist_loop(self) -> None:
        self._first_watch.wait(timeout=WATCH_TIMEOUT)
        period = self._settings.relist_interval
        backoff = Backoff(period, max(period, LOOP_BACKOFF_MAX))
        while not self._stop.is_set():
            try:
                self.relist()
                backoff.reset()
                wait = period
            except Exception as exc:  # noqa: BLE001 - logged; the loop backs off and goes on
                _log_failure("relist", exc)
                wait = backoff.next()
            self._stop.wait(wait)

    def relist(self) -> None:
        """Sync every capsule whose Docker picture changed since the last relist, every
        desired capsule with nothing in Docker yet, and every orphan; collect the networks
        of projects with nothing left on this host."""
        with self.meters.relist.round():
            self._relist()

    def _relist(self) -> None:
        # List Docker before reading the desired set: a container can only exist for a
        # capsule that was desired before it was created, so this order never mistakes a
        # brand-new capsule for an orphan.
        summaries = self._runtime.list_summaries(self._instance)
        with self._lock:
            desired: dict[str, Assignment | ContainerAssignment] = {**self._desired,
                                                                    **self._desired_bare}
        grouped: dict[str, list[Summary]] = defaultdict(list)
        owners = {c.sandbox: uuid for uuid, c in self.pool.claims.all().items()}
        for s in summaries:
            # A claimed pooled sandbox counts as its capsule's: an orphan then is one too.
            uuid = s.labels.get(L.CAPSULE) or owners.get(s.id)
            if uuid:
                grouped[uuid].append(s)
        for uuid in owners.values():
            grouped.setdefault(uuid, [])  # its sandbox gone: the sync drops the claim
        for uuid in grouped.keys() | desired.keys():
            # Docker's status line ends in "(unhealthy)" when a health check fails.
            fp = tuple(sorted((s.id, s.state, _exit_code(s.status), "(unhealthy)" in s.status)
                              for s in grouped.get(uuid, [])))
            if uuid not in desired or self._fingerprints.get(uuid) != fp:
                self._fingerprints[uuid] = fp
                self.workers.enqueue(uuid)
        for uuid in list(self._fingerprints.keys() - grouped.keys() - desired.keys()):
            self._fingerprints.pop(uuid, None)
        if self._first_watch.is_set():
            # Stopped containers hold no endpoint on their network, yet need it to start
            # again: a project is in use while anything of it is desired or in Docker.
            in_use = {a.project_id for a in desired.values()
                      if a.project_id is not None and not a.deleting}
            in_use |= {s.labels[L.PROJECT] for s in summaries if L.PROJECT in s.labels}
            self._networks.collect(in_use)
            if self._firewall is not None:
                self._firewall.relist(grouped.keys())
        if self._overlay is not None:
            self._overlay.reconcile(repair=True)

    def _heartbeat_loop(self) -> None:
        # Failures do not slow the heartbeat down: it is this host's sign of life, and its
        # period already bounds how often a sick API is asked.
        lost = False
        resync_after = 0.0
        while not self._stop.wait(self._settings.heartbeat_interval):
            try:
                if lost:
                    # Back after an outage: the control plane may have marked this host down
                    # and its capsules Unknown, or forgotten the host. Register again and
                    # report everything afresh, changed or not.
                    self.register()
                    self._fingerprints.clear()
                    self.relist()
                else:
                    with self.meters.heartbeat.round():
                        resync = self._channel.heartbeat(self._host, self.meters.snapshot())
                    if resync and time.monotonic() >= resync_after:
                        # Late, not lost: the control plane marked this host's work Unknown
                        # meanwhile, and nothing this agent observes changed to say otherwise.
                        # At most once a relist period (something may stay Unknown).
                        LOG.info("the control plane marked this host down meanwhile: "
                                 "reporting everything again")
                        resync_after = time.monotonic() + self._settings.relist_interval
                        self._fingerprints.clear()
                        self.relist()
                lost = False
            except Exception as exc:  # noqa: BLE001 - logged; the next beat tries again
                _log_failure("heartbeat", exc)
                lost = True


def _log_failure(what: str, exc: Exception) -> None:
    """A known failure (the API or Docker unreachable, a refusal) in one line; anything
    else with its traceback, since it is a bug or a surprise worth reading."""
    if isinstance(exc, CapsuledError):
        LOG.warning("%s failed: %s", what, exc.message)
    else:
        LOG.exception("%s failed unexpectedly", what, exc_info=exc)


def _exit_code(status: str) -> str:
    m = _EXIT.search(status) if status.startswith(("Exited", "Restarting")) else None
    return m.group(1) if m else ""
