"""Where new work goes, and whether it may grow: the one placement path for capsules, bare
containers, containers added to capsules and resizes.

Every step runs in the caller's transaction and under the locks DESIGN decision 6 names:
`admit` takes the project's quota lock row before reading usage, and `choose`, `ensure_room`
and `ensure_ports` read host capacities with host rows locked, so concurrent creates
and resizes on any API replica never both take a project's or a host's last free unit (or
the same fixed host port). The claim itself is the row the caller then writes in the same
transaction (a capsule's host ports: store/host_ports.py, written by the capsule store).

A new claim is optimistic on PostgreSQL and MariaDB (`run`, `choose`): the scheduler
chooses from a snapshot of every host's capacity (`_Snapshot`: read without locks at
most once a second, with this process's own claims since added), then only the chosen
host's row is locked and its capacity read again, exactly, and checked. Creates on
different hosts thus go on at once, from every replica; the lock is held from the check
to the commit only; and a create reads one host, not every one (at 1,000 hosts the full
read cost 25-40 ms of CPU, five times the rest of a create). If the check fails (another
replica's claim took the room, the host went down or changed), or the project needs a
new overlay block there (an allocation locks every host), the whole transaction runs
once more, exactly: every host row locked before the read. A refusal (no host fits in
the snapshot) is decided on every host read again, unlocked, in the create's
transaction: it claims nothing, so it holds no lock; a host that fits in that read is
then claimed as any other choice is. What is decided is thus always decided on capacity
as committed when the decision is taken; the snapshot only steers the choice (another
replica's recent claims are missing from it: spreading is a little coarser for
a second). SQLite has one writer at a time anyway and always runs exactly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TypeVar

from sqlalchemy.orm import Session

from capsuled.api import metrics as m
from capsuled.api.metrics import ApiMetrics
from capsuled.api.services.quotas import Delta, QuotaService
from capsuled.domain.ports import HostPortKey, describe
from capsuled.domain.status import Status
from capsuled.errors import Conflict, InvalidInput
from capsuled.scheduler.select import NoValidHost, Request, Weigher, select_host
from capsuled.store import overlay
from capsuled.store.engine import Store
from capsuled.store.hosts import HostCapacity, capacities
from capsuled.store.tables import utcnow

LOG = logging.getLogger(__name__)

# One exact create's transaction at a time in this process. The database serialises
# them anyway (every host row locked); queued here, the others wait on a mutex instead of
# on the database's locks, so the holder does not compete for the GIL with a crowd of
# threads that can do nothing but wait, at every round trip it makes while it holds the
# host rows (measured: a convoy of seconds per create with 8 request threads).
_TURN = threading.Lock()
# Optimistic creates lock one host row each and may go on together (each one's round
# trips overlap the others'), a few at a time, so that a burst of creates does not take
# every worker thread.
OPTIMISTIC_AT_ONCE = 4
_TRIES = threading.BoundedSemaphore(OPTIMISTIC_AT_ONCE)


_EXACT = "capsuled.placement.exact"  # session.info: this transaction locks every host
T = TypeVar("T")


class Contended(Exception):
    """An optimistic choice did not hold under its host's lock: run the transaction
    again, exactly (`Placement.run`)."""


@dataclass(frozen=True)
class Placed:
    """Where a new capsule or container goes: a host and Creating, or (no host fits) no
    host and Error, as Zun records it and answers 202. `reason` names no host (members
    read it); `detail` says why, host by host, for administrators only."""

    host: str | None
    status: Status
    reason: str | None = None
    detail: str | None = None


SNAPSHOT_SECONDS = 1.0  # how old the capacities an optimistic choice reads may be


class _Snapshot:
    """Every host's capacity as last read, for choosing only: read again once it is
    `max_age` old or a choice from it did not hold, and with this process's own claims
    applied meanwhile (spread then moves on to the next host at once)."""

    def __init__(self, max_age: float = SNAPSHOT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: list[HostCapacity] = []
        self._read_at: float | None = None
        self._reading = False  # a thread is reading it again: the others choose meanwhile

    def take(self, s: Session, want: Request, pick: Callable[[list[HostCapacity]], str],
             reread: bool = False) -> HostCapacity:
        """The host `pick` chooses from the snapshot (read again if it is too old, or
        `reread`), with `want` counted on it at once: creates choosing meanwhile, in
        other threads, see it taken and move on."""
        with self._lock:
            stale = self._read_at is None or self._clock() - self._read_at >= self._max_age
            # One thread reads an old snapshot again while the others choose from it (it
            # only steers): at 1,000 hosts each read is 30 ms of CPU, and every create
            # in flight reading it at once held the project locks they had taken for a
            # third of their time. A refusal's read (`reread`), and the first, are always
            # made.
            mine = reread or not self._hosts or (stale and not self._reading)
            if mine and not reread:
                self._reading = True
        if mine:
            try:
                hosts, at = capacities(s, lock=False), self._clock()
                with self._lock:
                    self._hosts, self._read_at = hosts, at
            finally:
                if not reread:
                    with self._lock:
                        self._reading = False
        with self._lock:
            name = pick(self._hosts)
            chosen = next(h for h in self._hosts if h.name == name)
            self._put(_plus(chosen, want))
            return chosen

    def claimed(self, exact: HostCapacity, want: Request) -> None:
        """`want` now claimed on `exact` (as read under its lock)."""
        with self._lock:
            self._put(_plus(exact, want))

    def _put(self, host: HostCapacity) -> None:
        self._hosts = [host if h.name == host.name else h for h in self._hosts]

    def forget(self) -> None:
        with self._lock:
            self._read_at = None


def _plus(host: HostCapacity, want: Request) -> HostCapacity:
    return replace(host, cpu_used=host.cpu_used + want.cpu,
                   memory_used=host.memory_used + want.memory,
                   disk_used=host.disk_used + want.disk, containers=host.containers + 1)


class Placement:
    def __init__(self, quotas: QuotaService, host_down_after: timedelta,
                 weigher: Weigher = "spread", metrics: ApiMetrics | None = None) -> None:
        self._quotas = quotas
        self._down_after = host_down_after
        self._weigher: Weigher = weigher
        self._snapshot = _Snapshot()
        # Decisions are counted here, not in the scheduler, which stays pure.
        self._metrics = metrics or ApiMetrics()

    @staticmethod
    def run(store: Store, work: Callable[[Session], T]) -> T:
        """`work` (a create's whole transaction, which calls `choose`): first with an
        optimistic claim, then, if that one did not hold, once more with every host row
        locked (nothing of the first try is kept), each in its turn in this process."""
        if store.engine.dialect.name == "sqlite":  # exact from the start (`choose`)
            with _TURN, store.transaction() as s:
                return work(s)
        try:
            with _TRIES, store.transaction() as s:
                return work(s)
        except Contended:
            pass
        with _TURN, store.transaction() as s:
            s.info[_EXACT] = True
            return work(s)

    def lock(self, s: Session, project_id: str) -> None:
        """Serialise the project's quota-checked changes; first in the transaction."""
        self._quotas.begin(s, project_id)

    def admit(self, s: Session, project_id: str, delta: Delta) -> None:
        """Lock the project and refuse what its quota has no room for."""
        self.lock(s, project_id)
        self.check_quota(s, project_id, delta)

    def check_quota(self, s: Session, project_id: str, delta: Delta) -> None:
        """Refuse what the project's quota has no room for; the caller holds its lock."""
        self._quotas.check(s, project_id, delta)

    def choose(self, s: Session, want: Request, what: str, project_id: str,
               only_host: str | None = None) -> Placed:
        """A host for `want` (only `only_host` when one is asked for by name). `what`
        ("capsule web") names it in the administrators' log when no host fits."""
        started, result = time.perf_counter(), m.ERROR
        optimistic = not s.info.get(_EXACT) and s.get_bind().dialect.name != "sqlite"
        try:
            if optimistic:
                try:
                    chosen = self._snapshot.take(s, want, lambda hosts: self._pick(
                        hosts, want, only_host, optimistic=True))
                except Contended:
                    # No host fits in the snapshot. A refusal claims nothing, so it needs
                    # no lock: it is decided on every host's capacity read again now,
                    # unlocked. Under every host's lock instead, a member's stream of
                    # creates no host can take (a nodeSelector nothing matches) held up
                    # every other create, on every replica.
                    chosen = self._snapshot.take(s, want, lambda hosts: self._pick(
                        hosts, want, only_host, optimistic=False), reread=True)
                host, underlay = chosen.name, chosen.underlay
                self._snapshot.claimed(self._confirm(s, want, project_id, host, underlay),
                                       want)
            else:
                hosts = capacities(s)
                host = self._pick(hosts, want, only_host, optimistic=False)
                underlay = next(h.underlay for h in hosts if h.name == host)
            # The project network's block on that host, when it spans hosts (the host
            # rows are locked: see store/overlay.py); no room left refuses the create.
            overlay.ensure_block(s, project_id, host, underlay)
            result = m.OK
            return Placed(host, Status.CREATING)
        except Contended:
            result = m.CONTENDED
            self._snapshot.forget()
            raise
        except InvalidInput:
            result = m.UNKNOWN_HOST
            raise
        except NoValidHost as exc:
            result = m.NO_VALID_HOST
            # Members read str(exc), which names no host; the per-host detail is logged.
            LOG.warning("no host for %s of project %s: %s", what, project_id, exc.detail)
            return Placed(None, Status.ERROR, str(exc), exc.detail)
        finally:
            self._metrics.decided(m.PLACE, result, time.perf_counter() - started)

    def _pick(self, hosts: list[HostCapacity], want: Request, only_host: str | None,
              optimistic: bool) -> str:
        """The scheduler's choice among `hosts`. From a snapshot (`optimistic`), a refusal
        is Contended: it is decided on a read of now."""
        if only_host is not None:
            hosts = [h for h in hosts if h.name == only_host]
            if not hosts and optimistic:
                raise Contended()
            if not hosts:
                raise InvalidInput(f"host: no host named {only_host}")
        try:
            return select_host(hosts, want, utcnow(), self._down_after, self._weigher)
        except NoValidHost:
            if optimistic:
                raise Contended() from None
            raise

    def _confirm(self, s: Session, want: Request, project_id: str, host: str,
                 underlay: str | None) -> HostCapacity:
        """Lock the chosen host's row alone and check the choice on its capacity as it is
        now (returned); Contended if it no longer fits, or if the project has no overlay
        block there yet (allocating one locks every host row, which a holder of one must
        not ask for: two of them would deadlock)."""
        exact = capacities(s, only=host)
        try:
            select_host(exact, want, utcnow(), self._down_after, self._weigher)
        except NoValidHost:
            raise Contended() from None
        if exact[0].underlay != underlay or (
                underlay is not None and not overlay.has_block(s, project_id, host)):
            raise Contended()
        return exact[0]

    def grow(self, s: Session, project_id: str, delta: Delta, host: str | None, whose: str,
             cpu: float, memory: int) -> None:
        """Refuse growing a claim by `cpu` cores and `memory` MiB on `host` beyond the
        project's quota (`delta`) or the host's free room. The caller holds the project
        lock (`lock` or `admit`)."""
        self._quotas.check(s, project_id, delta)
        self.ensure_room(s, host, whose, cpu, memory)

    def ensure_room(self, s: Session, host: str | None, whose: str, cpu: float,
                    memory: int, disk: int = 0) -> None:
        """Refuse growing a claim on a host that has not the room for it. `capacities`
        locks the host's row, as every claim on it does, so concurrent creates and
        resizes never overcommit it together. The message names neither the host nor its
        free capacity: a member must not learn about other tenants' load."""
        if host is None or (cpu <= 0 and memory <= 0 and disk <= 0):
            return
        started, result = time.perf_counter(), m.ERROR
        try:
            cap = next(iter(capacities(s, only=host)), None)
            result = m.OK
            if cap is None:
                return  # the host row is gone: nothing runs there to protect
            if cpu > 0 and cap.cpus - cap.cpu_used < cpu:
                result = m.NO_ROOM
                raise Conflict(f"cpu: the {whose} host has not enough free CPU for {cpu:g} "
                               "more cores.")
            if memory > 0 and cap.memory_mb - cap.memory_used < memory:
                result = m.NO_ROOM
                raise Conflict(f"memory: the {whose} host has not enough free memory for "
                               f"{memory} more MiB.")
            if disk > 0 and cap.disk_gb - cap.disk_used < disk:
                result = m.NO_ROOM
                raise Conflict(f"disk: the {whose} host has not enough free disk for {disk} "
                               "more GiB.")
        finally:
            self._metrics.decided(m.GROW, result, time.perf_counter() - started)

    @staticmethod
    def ensure_ports(s: Session, host: str | None, capsule_uuid: str,
                     ports: Iterable[HostPortKey], project_id: str) -> None:
        """Refuse fixed host ports (a capsule update's new hostPorts) that another capsule
        holds on `host`, under its row's lock as `choose` reads it; the capsule's own
        claims do not count. Names the holder only to its own project."""
        if host is None:
            return
        cap = next(iter(capacities(s, only=host)), None)
        held = cap.ports if cap is not None else {}
        for key in ports:
            holder = held.get(key)
            if holder is None or holder.uuid == capsule_uuid:
                continue
            whose = (f"your {holder.kind} {holder.capsule}" if holder.project_id == project_id
                     else "another project")
            raise Conflict(f"hostPort: {describe(key)} is in use on the capsule's host "
                           f"(by {whose}).")
