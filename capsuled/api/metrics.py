"""What the API tells operators on /metrics (Prometheus's text format, admin-only by the
policy rule `metrics:get`).

Every label takes its values from a finite set, whatever clients send:

- requests by method (unknown methods are `other`), route *template* (`/v1/capsules/
  {ident}`; a path no route matches is `unmatched`) and status code, counted in the
  middleware with no store access;
- scheduler decisions by action and result, counted where placement happens;
- agents' loops per host, as each agent reports them with its heartbeat, and the
  handling of their status reports as this API measures it; hosts are named by agent
  tokens only an admin issues;
- capsules and containers by project and status, and the outbox's head, pruning point
  and its durable readers' lag, read from the store at scrape time: one set of queries
  cached for `api.metrics_cache` seconds, so that a storm of scrapes costs the database
  one set per period. Projects are as many as have capsules or containers: bounded by
  the tenants an operator admits, not by anything a request can invent.

The metrics live in a registry of this object's own (not prometheus_client's global
one): every app built in one process (tests build many) counts only its own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (CollectorRegistry, Counter, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily, Metric)

from capsuled.domain.channel import AgentStats, LoopStats
from capsuled.store import counts as count_repo
from capsuled.store import outbox, outbox_readers
from capsuled.store.counts import StatusCount
from capsuled.store.engine import Store

LOG = logging.getLogger(__name__)
# No `<name>_created` series beside every counter and histogram: in the text format they
# are gauges of their own that double the series count and tell an operator nothing
# (Prometheus notices counter resets itself). A switch of the library's, for the process.
disable_created_metrics()

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a path no route matches
# Seconds. Long polls, watch streams and followed logs last as long as they are open:
# the top buckets catch them (and the route says which they are).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SCHEDULER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REPORT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Readers whose lag is a series of its own, the furthest behind first; every reader
# counts in capsuled_outbox_readers and capsuled_outbox_reader_lag_max.
READER_SERIES = 100
# An agent not heard from for this long (its host removed, or heartbeating to another
# replica now) drops out of this replica's agent series.
AGENT_STATS_TTL = 600.0

PLACE, GROW = "place", "grow"  # scheduler actions: a new claim; growing a placed one
# Results: a host (or the room); none fits; the host asked for by name does not exist;
# its host has no room to grow; an optimistic choice that did not hold under its host's
# lock (decided again, exactly); anything else went wrong (the database, a bug).
OK, NO_VALID_HOST, UNKNOWN_HOST, NO_ROOM, CONTENDED, ERROR = (
    "ok", "no_valid_host", "unknown_host", "no_room", "contended", "error")


class ApiMetrics:
    def __init__(self, store: Store | None = None, cache_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        r = self.registry
        self._requests = Counter("capsuled_http_requests", "HTTP requests answered",
                                 ["method", "route", "status"], registry=r)
        self._latency = Histogram("capsuled_http_request_duration_seconds",
                                  "Time from a request's arrival to the end of its answer",
                                  ["method", "route", "status"], buckets=HTTP_BUCKETS, registry=r)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._decisions = Counter("capsuled_scheduler_decisions",
                                  "Placement decisions: place (a host for new work) or grow "
                                  "(room on its host for a resize or an added container), by "
                                  "result (ok, no_valid_host, unknown_host, no_room, error; "
                                  "contended: an optimistic choice that did not hold under its "
                                  "host's lock, decided again under every host's)",
                                  ["action", "result"], registry=r)
        self._decision_time = Histogram("capsuled_scheduler_duration_seconds",
                                        "Time to read host capacities and decide",
                                        ["action"], buckets=SCHEDULER_BUCKETS,
                                        registry=r)
        self._reports = Histogram("capsuled_agent_report_duration_seconds",
                                  "Time this API took to store an agent's status report",
                                  ["host"], buckets=REPORT_BUCKETS, registry=r)
        self._report_errors = Counter("capsuled_agent_report_errors",
                                      "Agents' status reports this API failed to store",
                                      ["host"], registry=r)
        self._agents = _AgentBoard(clock)
        r.register(self._agents)
        self.store_collector = None if store is None else StoreCollector(store, cache_seconds,
                                                                         clock)
        if self.store_collector is not None:
            r.register(self.store_collector)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    # -- recording ---------------------------------------------------------------------------
    def request_done(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """One answered request (called by the middleware: keep it cheap)."""
        key = (method if method in METHODS else "other", route or UNMATCHED, status)
        pair = self._children.get(key)
        if pair is None:  # first time for this triple; labels() returns the same child again
            labels = (key[0], key[1], str(status))
            pair = (self._requests.labels(*labels), self._latency.labels(*labels))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def decided(self, action: str, result: str, seconds: float) -> None:
        self._decisions.labels(action, result).inc()
        self._decision_time.labels(action).observe(seconds)

    def report_stored(self, host: str, seconds: float, failed: bool) -> None:
        self._reports.labels(host).observe(seconds)
        if failed:
            self._report_errors.labels(host).inc()

    def agent_stats(self, host: str, stats: AgentStats) -> None:
        """The loop counters `host`'s agent sent with its heartbeat."""
        self._agents.put(host, stats)

    # -- serving -----------------------------------------------------------------------------
    def render(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header prefers."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


# -- agents ----------------------------------------------------------------------------------

class _AgentBoard:
    """The newest stats of each agent that heartbeats to this replica."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._stats: dict[str, tuple[float, AgentStats]] = {}

    def put(self, host: str, stats: AgentStats) -> None:
        with self._lock:
            self._stats[host] = (self._clock(), stats)

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        with self._lock:
            for host in [h for h, (at, _) in self._stats.items() if now - at > AGENT_STATS_TTL]:
                del self._stats[host]
            board = sorted(self._stats.items())
        rounds = CounterMetricFamily("capsuled_agent_loop_rounds", "Rounds of an agent's loop "
                                     "(sync: one capsule or bare container; relist: everything "
                                     "in Docker; watch: a long poll for the desired set; "
                                     "heartbeat), as the agent counts them", labels=["host", "loop"])
        errors = CounterMetricFamily("capsuled_agent_loop_errors", "Rounds of an agent's loop "
                                     "that failed", labels=["host", "loop"])
        unsettled = CounterMetricFamily("capsuled_agent_sync_unsettled", "Syncs that ended with "
                                        "work left, retried after back-off", labels=["host"])
        durations = HistogramMetricFamily("capsuled_agent_loop_duration_seconds", "Durations of "
                                          "an agent's syncs and relists, as the agent measures "
                                          "them", labels=["host", "loop"])
        age = GaugeMetricFamily("capsuled_agent_stats_age_seconds", "Seconds since this API "
                                "replica got the agent's stats (its last heartbeat here)",
                                labels=["host"])
        pool = CounterMetricFamily("capsuled_agent_sandbox_pool", "The warm sandbox pool's "
                                   "events on a host (claims: capsules that got a pooled "
                                   "sandbox; misses: ones that could have and found none; "
                                   "made; removed: idle ones; errors)", labels=["host", "event"])
        pool_idle = GaugeMetricFamily("capsuled_agent_sandbox_pool_idle", "Idle pooled "
                                      "sandboxes on a host, and its bound (size; 0: no pool)",
                                      labels=["host", "kind"])
        for host, (at, stats) in board:
            age.add_metric([host], max(0.0, now - at))
            for event in ("claims", "misses", "made", "removed", "errors"):
                pool.add_metric([host, event], getattr(stats.pool, event))
            pool_idle.add_metric([host, "idle"], stats.pool.idle)
            pool_idle.add_metric([host, "size"], stats.pool.size)
            unsettled.add_metric([host], stats.sync.unsettled)
            for loop, s in (("sync", stats.sync), ("relist", stats.relist),
                            ("watch", stats.watch), ("heartbeat", stats.heartbeat)):
                rounds.add_metric([host, loop], s.count)
                errors.add_metric([host, loop], s.errors)
                if s.bounds:
                    durations.add_metric([host, loop], _buckets(s), sum_value=s.seconds)
        yield from (rounds, errors, unsettled, durations, age, pool, pool_idle)


def _buckets(s: LoopStats) -> list[tuple[str, float]]:
    # str(float): "0.5", "1.0", "300.0", as prometheus_client writes its own `le` labels.
    return [*((str(float(b)), float(n)) for b, n in zip(s.bounds, s.buckets)),
            ("+Inf", float(s.count))]


# -- the store -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoreSnapshot:
    """What one scrape-time read of the store found (ok False: the read failed)."""

    ok: bool
    seconds: float = 0.0
    counts: list[StatusCount] = field(default_factory=list)
    head: int = 0
    pruned_through: int = 0
    readers: list[tuple[str, int]] = field(default_factory=list)  # the furthest behind
    reader_count: int = 0


class StoreCollector:
    """Reads the store when scraped, at most once per `cache_seconds`, one read at a time.
    A scrape that finds a read in progress answers with the previous snapshot instead of
    waiting for it: a slow database then holds one thread, not one per scrape (a scrape
    waits, up to `FIRST_READ_WAIT`, only when there is no snapshot yet)."""

    FIRST_READ_WAIT = 10.0

    def __init__(self, store: Store, cache_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._ttl = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: StoreSnapshot | None = None
        self._taken = -math.inf
        self.reads = 0  # how many times the store was read (tests, and the log)

    def snapshot(self) -> StoreSnapshot:
        previous = self._fresh()
        if previous is not None:
            return previous
        previous = self._snapshot
        if not self._lock.acquire(blocking=previous is None, timeout=(
                self.FIRST_READ_WAIT if previous is None else -1)):
            return previous or StoreSnapshot(ok=False)
        try:
            snap = self._fresh()  # another scrape may have read it meanwhile
            if snap is None:
                snap = self._snapshot = self._read()
                self._taken = self._clock()
            return snap
        finally:
            self._lock.release()

    def _fresh(self) -> StoreSnapshot | None:
        """The snapshot if it is younger than the cache period."""
        snap = self._snapshot
        return snap if snap is not None and self._clock() - self._taken < self._ttl else None

    def _read(self) -> StoreSnapshot:
        self.reads += 1
        started = time.monotonic()
        try:
            with self._store.transaction() as s:
                counts = count_repo.status_counts(s)
                cur = outbox.cursor(s)
                readers = outbox_readers.positions(s, READER_SERIES)
                reader_count = (len(readers) if len(readers) < READER_SERIES
                                else outbox_readers.count(s))
        except Exception:  # noqa: BLE001 - /metrics still answers (capsuled_store_up 0)
            LOG.warning("metrics: reading the store failed", exc_info=True)
            return StoreSnapshot(ok=False, seconds=time.monotonic() - started)
        return StoreSnapshot(ok=True, seconds=time.monotonic() - started, counts=counts,
                             head=cur.newest, pruned_through=cur.pruned_through,
                             readers=readers, reader_count=reader_count)

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield GaugeMetricFamily("capsuled_store_up", "1 if the last scrape-time read of the "
                                "store worked", value=1 if snap.ok else 0)
        yield GaugeMetricFamily("capsuled_store_read_seconds", "Time the last scrape-time "
                                "read of the store took", value=snap.seconds)
        if not snap.ok:
            return
        by_kind = {"capsule": GaugeMetricFamily("capsuled_capsules", "Capsules by project and "
                                                "status", labels=["project", "status"]),
                   "container": GaugeMetricFamily("capsuled_containers", "Containers (bare and "
                                                  "capsules' members) by project and status",
                                                  labels=["project", "status"])}
        for c in snap.counts:
            by_kind[c.kind].add_metric([c.project_id, c.status], c.count)
        yield from by_kind.values()
        # Outbox numbers are gapless and never reused: the head is how many change
        # records (events) were ever published, by every replica together.
        yield CounterMetricFamily("capsuled_events_published", "Change records written to the "
                                  "outbox (every API replica's; the outbox's head seq)",
                                  value=snap.head)
        yield GaugeMetricFamily("capsuled_outbox_head_seq", "The newest change record's seq",
                                value=snap.head)
        yield GaugeMetricFamily("capsuled_outbox_pruned_through", "Records up to this seq may "
                                "have been pruned", value=snap.pruned_through)
        yield GaugeMetricFamily("capsuled_outbox_readers", "Durable outbox readers (notifiers, "
                                "webhook subscriptions)", value=snap.reader_count)
        lag = GaugeMetricFamily("capsuled_outbox_reader_lag", "Records a durable reader has "
                                f"not handled yet (head - its cursor; the {READER_SERIES} "
                                "furthest behind)", labels=["reader"])
        for name, seq in snap.readers:
            lag.add_metric([name], max(0, snap.head - seq))
        yield lag
        yield GaugeMetricFamily("capsuled_outbox_reader_lag_max", "The largest lag of any "
                                "durable reader (0 without readers)",
                                value=max(0, snap.head - snap.readers[0][1]) if snap.readers else 0)
