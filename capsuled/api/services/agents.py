"""The control plane's side of the agent channel: registration, heartbeats, the desired
set per host (watch), and folding status reports into the store.

In all-in-one mode the agent calls this object directly (it satisfies
`domain.channel.AgentChannel`); the HTTP agent endpoints of the multi-host mode will call
the same methods.

Ops keys (multi-host): the API presents a key to an agent's ops endpoint, so the API must
be able to produce it, yet a copy of the database alone must not let anyone reach the
agents. So the key is derived, never stored: key = HMAC-SHA256(ops secret, host name,
the agent's per-boot nonce). The database keeps the nonce and the key's SHA-256; the
agent learns the key in the answer to its registration and keeps only the SHA-256 too.
The ops secret is `api.ops_secret`, the same on every replica; without it a random one
is kept in the database's meta table, which still keeps keys out of the host rows but
no longer out of a database copy (set the setting for that).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Network

import anyio.to_thread

from capsuled.api.metrics import ApiMetrics
from capsuled.api.services.heartbeats import Heartbeats
from capsuled.api.services.signals import Signal
from capsuled.api.services.watch_board import WatchBoard
from capsuled.domain.channel import (AgentStats, Assignments, BareReport, CapsuleReport,
                                     HostInfo, Registration, ops_key_digest)
from capsuled.domain.services import ServicesView
from capsuled.errors import Conflict, Unavailable
from capsuled.store import capsule_services as service_repo
from capsuled.store import capsules as capsule_repo
from capsuled.store import containers as container_repo
from capsuled.store import hosts as host_repo
from capsuled.store import overlay as overlay_repo
from capsuled.store import registries as registry_repo
from capsuled.store import security_groups as sg_repo
from capsuled.store.crypto import SecretBox
from capsuled.store.engine import Store
from capsuled.store.meta import claim_meta, get_meta

LOG = logging.getLogger(__name__)

# How often the watch board (api/services/watch_board.py) re-reads every host's revision
# while agents wait, for what another replica commits on an engine without notices: an
# assignment reaches its agent well within a second whichever replica accepted it. One
# query per replica, however many agents wait.
_POLL_SECONDS = 0.25
# A waiting agent re-reads its own desired set this often whatever the board says: the
# safety net under a lost wake-up (level-triggered: it costs latency, not correctness).
_WATCH_RECHECK_SECONDS = 5.0
# Without notices from the other replicas (MariaDB) a service view, which also depends
# on reports any replica stores, is read again this often while services exist.
_SERVICES_POLL_SECONDS = 0.5


ASSIGNED, REPORTED, SERVICES = "assigned", "reported", "services"
_OPS_SECRET_META = "ops_secret"


class OpsKeys:
    """Derives agents' ops keys (see the module docstring) and finds a host's ops endpoint."""

    def __init__(self, store: Store, secret: str | None = None) -> None:
        self._store = store
        self._secret = secret.encode() if secret else None
        self._lock = threading.Lock()

    def derive(self, host: str, nonce: str) -> str:
        mac = hmac.new(self._get_secret(), b"capsuled-ops-key\0" + host.encode() + b"\0"
                       + nonce.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    def endpoint(self, host: str) -> tuple[str, str] | None:
        """(ops URL, key) of the host's agent, or None if it registered no ops endpoint."""
        with self._store.transaction() as s:
            row = host_repo.find_host(s, host)
            info = dict(row.info or {}) if row is not None else {}
        url, nonce = info.get("ops_url"), info.get("ops_nonce")
        if not url:
            return None
        if not nonce:
            legacy = info.get("ops_key")  # an agent from before derived keys
            return (url, legacy) if legacy else None
        key = self.derive(host, nonce)
        if info.get("ops_key_sha256") != ops_key_digest(key):
            raise Unavailable(f"host {host}'s agent registered under another ops secret (is "
                              "api.ops_secret the same on every API replica?); it must "
                              "register again")
        return url, key

    def _get_secret(self) -> bytes:
        with self._lock:
            if self._secret is None:
                self._secret = self._stored_secret().encode()
            return self._secret

    def _stored_secret(self) -> str:
        """The secret in the meta table, made by the first replica that needs one."""
        with self._store.transaction() as s:
            found = get_meta(s, _OPS_SECRET_META)
        if found:
            return found
        LOG.warning("api.ops_secret is not set: agents' ops keys derive from a secret kept in "
                    "the database; set CAPSULED_API__OPS_SECRET on every API replica to keep "
                    "them out of it")
        try:
            with self._store.transaction() as s:
                claim_meta(s, _OPS_SECRET_META, secrets.token_urlsafe(32))
        except Conflict:
            pass  # another replica was first: use its secret
        with self._store.transaction() as s:
            found = get_meta(s, _OPS_SECRET_META)
        if not found:
            raise Unavailable("the ops secret could not be stored in the database; try again")
        return found


class ControlPlane:
    def __init__(self, store: Store, publish: Callable[[str], None] | None = None,
                 ops_keys: OpsKeys | None = None, secrets: SecretBox | None = None,
                 metrics: ApiMetrics | None = None,
                 vip_range: IPv4Network | None = IPv4Network("10.96.0.0/16")) -> None:
        self._store = store
        self._vip_range = vip_range  # services.vip_range: the agents guard it
        self._metrics = metrics or ApiMetrics()
        # Opens registry credentials for the pulls an assignment carries (None: no
        # registries can exist, as in tests that build a bare control plane).
        self._secrets = secrets
        self.ops_keys = ops_keys or OpsKeys(store)
        self.heartbeats = Heartbeats(store)
        self.assigned = Signal()  # some desired set changed: the board reads revisions
        self.reported = Signal()  # some agent report landed
        # Which agents to wake: only those whose desired set (or service view) changed.
        self.board = WatchBoard(self._revisions, self.assigned, _POLL_SECONDS)
        # Whether any capsule service exists, as the board's last read saw it: without
        # one, every service view is a function of its host's desired set alone.
        self._services_exist = True
        # host → (its revision when read, the view): the view without services last read
        # for each host that polls, answered again while `_services_stale` says it holds.
        self._views: dict[str, tuple[int, ServicesView]] = {}
        # SQLite serves one process: every change is this process's, so signals say it all.
        self._alone = store.engine.dialect.name == "sqlite"
        # Tells the other API replicas (store/notify.py); without it they re-read.
        self.publish = publish

    def notify(self) -> None:
        """Wake watchers after a commit that changed some desired set (or a service)."""
        self.assigned.fire()
        if self._services_exist:
            self.board.services_all()  # a delete or an update may change who serves
        if self.publish is not None:
            self.publish(ASSIGNED)

    def services_changed(self) -> None:
        """Wake every service view's watcher: a service changed, or who serves one."""
        self._services_exist = True
        self.assigned.fire()  # the board re-reads revisions (and whether services exist)
        self.board.services_all()
        if self.publish is not None:
            self.publish(SERVICES)

    def on_notice(self, topic: str) -> None:
        """Another replica (or this one) published `topic`."""
        if topic == REPORTED:
            self.reported.fire()
        elif topic == SERVICES:
            self._services_exist = True
            self.board.services_all()
        else:
            self.assigned.fire()
            if self._services_exist:
                self.board.services_all()

    def _revisions(self) -> dict[str, int]:
        with self._store.transaction() as s:
            self._services_exist = service_repo.any_exist(s)
            return host_repo.revisions(s)

    def instance_id(self) -> str:
        with self._store.transaction() as s:
            return get_meta(s, "instance_id") or ""

    def register(self, host: HostInfo) -> Registration:
        key = None
        if host.ops_url and host.ops_nonce:
            key = self.ops_keys.derive(host.name, host.ops_nonce)
        with self._store.transaction() as s:
            host_repo.register_host(s, host, ops_key_digest(key) if key else None)
            overlay_repo.allocate_present(s, host.name)
        return Registration(ops_key=key)

    def heartbeat(self, host: str, stats: AgentStats | None = None) -> bool:
        """Noted now, stored with the other hosts' within half a second (heartbeats.py);
        never waits for the store, so it may run in the event loop. True: something of the
        host is Unknown (it was silent for a while): its agent should report everything
        again."""
        resync = self.heartbeats.beat(host)
        if stats is not None:
            self._metrics.agent_stats(host, stats)
        return resync

    def watch(self, host: str, after_revision: int, timeout: float,
              full: bool = True) -> Assignments:
        """The host's desired set once its revision passes `after_revision`, or as it is
        after `timeout` seconds (in a thread: the all-in-one agent); with `full=False`,
        `unchanged` then instead of the set, when its revision is still `after_revision`."""
        deadline = time.monotonic() + timeout
        signal = self.board.assigned(host)
        with self.board.waiting():
            while True:
                seen = signal.seq
                due, final = self._due(host, after_revision, deadline)
                got = self._unchanged(host, after_revision, final, full)
                if got is None and due:
                    got = self._assignments(host, after_revision, final, full)
                if got is not None:
                    return got
                signal.wait_blocking(seen, min(_WATCH_RECHECK_SECONDS,
                                               max(0.0, deadline - time.monotonic())))

    async def watch_async(self, host: str, after_revision: int, timeout: float,
                          full: bool = True) -> Assignments:
        """`watch` for the HTTP channel: a waiting agent holds no thread."""
        deadline = time.monotonic() + timeout
        signal = self.board.assigned(host)
        with self.board.waiting():
            while True:
                seen = signal.seq
                due, final = self._due(host, after_revision, deadline)
                got = self._unchanged(host, after_revision, final, full)
                if got is None and due:
                    got = await anyio.to_thread.run_sync(
                        self._assignments, host, after_revision, final, full)
                if got is not None:
                    return got
                await signal.wait(seen, min(_WATCH_RECHECK_SECONDS,
                                            max(0.0, deadline - time.monotonic())))

    def _due(self, host: str, after_revision: int, deadline: float) -> tuple[bool, bool]:
        """(read the store now?, is this the final read?). Before the deadline only when
        the host's set may have moved past `after_revision`: the watch board's recent
        reading says so when it has one (no query: a recheck of an idle agent's long poll
        is then free), else the store is read."""
        final = time.monotonic() >= deadline
        known = self.board.revision(host)
        return final or known is None or known != after_revision, final

    def _unchanged(self, host: str, after_revision: int, final: bool,
                   full: bool) -> Assignments | None:
        """The answer of an idle poll that allows "unchanged", when the watch board's recent
        reading says the host's revision is still `after_revision`: no store read (it was
        one transaction per idle poll, most of an idle agent's cost). A commit newer than
        that reading is seen by the agent's next poll."""
        if final and not full and self.board.revision(host) == after_revision:
            return Assignments(host=host, revision=after_revision, capsules=[], unchanged=True)
        return None

    def _assignments(self, host: str, after_revision: int, final: bool,
                     full: bool = True) -> Assignments | None:
        with self._store.transaction() as s:
            revision = host_repo.host_revision(s, host)
            if revision <= after_revision and not final:
                return None
            if revision == after_revision and not full:
                return Assignments(host=host, revision=revision, capsules=[], unchanged=True)
            capsules = capsule_repo.assignments_for(s, host)
            containers = container_repo.bare_assignments_for(s, host)
            if self._secrets is not None:
                capsules, containers = registry_repo.with_pulls(s, self._secrets, capsules,
                                                                containers)
            capsules, containers = sg_repo.with_firewalls(s, host, capsules, containers)
            return Assignments(host=host, revision=revision, capsules=capsules,
                               containers=containers,
                               overlays=overlay_repo.overlays_for(s, host))

    def report(self, host: str, reports: list[CapsuleReport],
               containers: list[BareReport] | None = None) -> None:
        started, failed = time.perf_counter(), True
        try:
            with self._store.transaction() as s:
                for r in reports:
                    capsule_repo.apply_report(s, host, r)
                for b in containers or []:
                    container_repo.apply_bare_report(s, host, b)
                renamed = overlay_repo.take_changed(s)
                # Reports of capsules no service selects change no service view.
                serving = self._services_exist and service_repo.any_for_capsules(
                    s, [r.uuid for r in reports])
            if renamed:
                # The project's other hosts answer for these names: wake them (after the
                # report's commit, in the lock order placement uses).
                with self._store.transaction() as s:
                    overlay_repo.bump_peers(s, renamed, host)
                self.notify()
            failed = False
        finally:
            self._metrics.report_stored(host, time.perf_counter() - started, failed)
        self.reported.fire()
        if serving:
            self.services_changed()  # readiness decides which capsules serve
        if self.publish is not None:
            self.publish(REPORTED)

    # -- services (domain/services.py) -------------------------------------------------
    def services(self, host: str, after: str | None, timeout: float) -> ServicesView:
        """The host's service view once its version differs from `after`, or as it is
        after `timeout` seconds (in a thread: the all-in-one agent)."""
        deadline = time.monotonic() + timeout
        signal = self.board.services_for(host)
        with self.board.waiting():
            read_at, view = self._last_view(host)
            while True:
                seen = signal.seq
                if view is None or self._services_stale(host, read_at):
                    read_at = self.board.revision(host)
                    view = self._services_view(host)
                    self._keep_view(host, read_at, view)
                left = deadline - time.monotonic()
                if view.version != after or left <= 0:
                    return view
                signal.wait_blocking(seen, min(self._services_recheck(), left))
                if signal.seq != seen:
                    view = None  # woken: something of this host's view may have changed

    async def services_async(self, host: str, after: str | None, timeout: float) -> ServicesView:
        """`services` for the HTTP channel: a waiting agent holds no thread."""
        deadline = time.monotonic() + timeout
        signal = self.board.services_for(host)
        with self.board.waiting():
            read_at, view = self._last_view(host)
            while True:
                seen = signal.seq
                if view is None or self._services_stale(host, read_at):
                    read_at = self.board.revision(host)
                    view = await anyio.to_thread.run_sync(self._services_view, host)
                    self._keep_view(host, read_at, view)
                left = deadline - time.monotonic()
                if view.version != after or left <= 0:
                    return view
                await signal.wait(seen, min(self._services_recheck(), left))
                if signal.seq != seen:
                    view = None  # woken: something of this host's view may have changed

    def _last_view(self, host: str) -> tuple[int | None, ServicesView | None]:
        """The view last read for `host` and the revision it was read at, while it holds
        (`_services_stale`): without any capsule service, a poll that begins then reads
        nothing. Each idle agent's poll began with a read of its view, every 30 s, which
        at 1,000 agents was a seventh of a replica's CPU."""
        kept = self._views.get(host)
        if kept is None or self._services_stale(host, kept[0]):
            return None, None
        return kept

    def _keep_view(self, host: str, read_at: int | None, view: ServicesView) -> None:
        # Only a view without services: one read while a service existed must not be
        # answered after its deletion, the host's revision unmoved.
        if read_at is not None and not view.services:
            self._views[host] = (read_at, view)

    def _services_stale(self, host: str, read_at: int | None) -> bool:
        """Whether a recheck (no wake-up) must read the view again. Without any capsule
        service (as the watch board's last read saw it) a view is a function of its host's
        desired set alone, whose revision the board knows: an idle agent's recheck is then
        free, as its assignments poll's is (measured: 500 idle agents' rechecks took a
        third of each replica's CPU), and so is the answer at the deadline: the view read
        when the poll began, the host's revision unmoved since."""
        if self._services_exist or read_at is None:
            return True
        return self.board.revision(host) != read_at

    def _services_recheck(self) -> float:
        # Alone, or told of every other replica's commits (PostgreSQL), the signals say
        # it all; otherwise a report stored by another replica is only found by reading.
        if self.publish is None and self._services_exist and not self._alone:
            return _SERVICES_POLL_SECONDS
        return _WATCH_RECHECK_SECONDS

    def _services_view(self, host: str) -> ServicesView:
        with self._store.transaction() as s:
            return service_repo.agent_view(s, host, self._vip_range)
