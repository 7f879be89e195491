"""Where new work goes, and whether it may grow: the one placement path for capsules, bare
containers, containers added to capsules and resizes.

Every step runs in the caller's transaction and under the locks DESIGN decision 6 names:
`admit` takes the project's quota lock row before reading usage, and `choose`, `ensure_room`
and `ensure_ports` read host capacities with the host rows locked, so concurrent creates
and resizes on any API replica never both take a project's or a host's last free unit (or
the same fixed host port). The claim itself is the row the caller then writes in the same
transaction (a capsule's host ports: store/host_ports.py, written by the capsule store).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from capsuled.api import metrics as m
from capsuled.api.metrics import ApiMetrics
from capsuled.api.services.quotas import Delta, QuotaService
from capsuled.domain.ports import HostPortKey, describe
from capsuled.domain.status import Status
from capsuled.errors import Conflict, InvalidInput
from capsuled.scheduler.select import NoValidHost, Request, Weigher, select_host
from capsuled.store import overlay
from capsuled.store.hosts import capacities
from capsuled.store.tables import utcnow

LOG = logging.getLogger(__name__)

# One create's placement transaction at a time in this process. The database serialises
# them anyway (project and host locks); queued here, the others wait on a mutex instead of
# on the database's locks, so the holder does not compete for the GIL with a crowd of
# threads that can do nothing but wait, at every round trip it makes while it holds the
# host rows (measured: a convoy of seconds per create with 8 request threads).
_TURN = threading.Lock()


@dataclass(frozen=True)
class Placed:
    """Where a new capsule or container goes: a host and Creating, or (no host fits) no
    host and Error, as Zun records it and answers 202. `reason` names no host (members
    read it); `detail` says why, host by host, for administrators only."""

    host: str | None
    status: Status
    reason: str | None = None
    detail: str | None = None


class Placement:
    def __init__(self, quotas: QuotaService, host_down_after: timedelta,
                 weigher: Weigher = "spread", metrics: ApiMetrics | None = None) -> None:
        self._quotas = quotas
        self._down_after = host_down_after
        self._weigher: Weigher = weigher
        # Decisions are counted here, not in the scheduler, which stays pure.
        self._metrics = metrics or ApiMetrics()

    @staticmethod
    @contextmanager
    def turn() -> Iterator[None]:
        """Hold around a create's whole transaction (begin to commit)."""
        with _TURN:
            yield

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
        try:
            hosts = capacities(s)
            if only_host is not None:
                hosts = [h for h in hosts if h.name == only_host]
                if not hosts:
                    result = m.UNKNOWN_HOST
                    raise InvalidInput(f"host: no host named {only_host}")
            host = select_host(hosts, want, utcnow(), self._down_after, self._weigher)
            # The project network's block on that host, when it spans hosts (the host
            # rows are locked: see store/overlay.py); no room left refuses the create.
            overlay.ensure_block(s, project_id, host,
                                 next(h.underlay for h in hosts if h.name == host))
            result = m.OK
            return Placed(host, Status.CREATING)
        except NoValidHost as exc:
            result = m.NO_VALID_HOST
            # Members read str(exc), which names no host; the per-host detail is logged.
            LOG.warning("no host for %s of project %s: %s", what, project_id, exc.detail)
            return Placed(None, Status.ERROR, str(exc), exc.detail)
        finally:
            self._metrics.decided(m.PLACE, result, time.perf_counter() - started)

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
        locks the host rows as the scheduler's claims do, so concurrent creates and
        resizes never overcommit it together. The message names neither the host nor its
        free capacity: a member must not learn about other tenants' load."""
        if host is None or (cpu <= 0 and memory <= 0 and disk <= 0):
            return
        started, result = time.perf_counter(), m.ERROR
        try:
            cap = next((h for h in capacities(s) if h.name == host), None)
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
        holds on `host`, under the host row locks as `choose` reads them; the capsule's
        own claims do not count. Names the holder only to its own project."""
        if host is None:
            return
        cap = next((h for h in capacities(s) if h.name == host), None)
        held = cap.ports if cap is not None else {}
        for key in ports:
            holder = held.get(key)
            if holder is None or holder.uuid == capsule_uuid:
                continue
            whose = (f"your {holder.kind} {holder.capsule}" if holder.project_id == project_id
                     else "another project")
            raise Conflict(f"hostPort: {describe(key)} is in use on the capsule's host "
                           f"(by {whose}).")
