"""GET /metrics on the whole API, built in process by the composition root over SQLite (no
Docker, no agent): who may scrape, that hostile paths and methods add no label values,
that real requests, creates, placements, agent heartbeats and reports move the numbers,
and that a storm of scrapes reads the store once per cache period."""

from __future__ import annotations

import json
import random
import re
import string
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

with warnings.catch_warnings():  # Starlette would like httpx2; httpx is what we ship
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from capsuled.api.metrics import StoreCollector
from capsuled.cli import compose
from capsuled.config import Settings
from capsuled.domain.channel import HostInfo
from capsuled.errors import Unavailable
from capsuled.paths import ADMIN_TOKEN_FILE
from capsuled.store import outbox_readers
from capsuled.store.engine import Store

LATEST = {"OpenStack-API-Version": "container latest"}
ROOT = Path(__file__).resolve().parents[3]


def capsule_template(name: str, cpu: float = 0.1) -> dict[str, Any]:
    return {"template": {"kind": "capsule", "metadata": {"name": name}, "spec": {"containers": [
        {"name": "web", "image": "busybox", "command": ["sleep", "60"],
         "resources": {"requests": {"cpu": cpu, "memory": 64}}},
        {"name": "side", "image": "busybox", "command": ["sleep", "60"]}]}}}


@dataclass
class Api:
    http: TestClient
    store: Store
    built: compose.Api
    admin: str

    def client_headers(self, token: str) -> dict[str, str]:
        return {"X-Auth-Token": token, **LATEST}

    def token(self, project: str, *roles: str, host: str | None = None) -> str:
        body: dict[str, Any] = {"project_id": project, "user_id": "u", "roles": list(roles)}
        if host is not None:
            body["host"] = host
        r = self.http.post("/v1/tokens", json=body, headers=self.client_headers(self.admin))
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def scrape(self, token: str | None = None) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """name → {sorted labels: value} of every sample."""
        r = self.http.get("/metrics", headers={"X-Auth-Token": token or self.admin})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    def add_host(self, name: str = "h1") -> None:
        self.built.control.register(HostInfo(name=name, cpus=4, memory_mb=4096, disk_gb=50))


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str,
          **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings.model_validate({"state_dir": tmp_path, "api": {"metrics_cache": 60}})
    opened = compose.open_store(settings)

    def no_ops(host: str) -> Any:
        raise AssertionError("no host operations here")
    built = compose.build_api(settings, opened.store, no_ops)
    with TestClient(built.app, raise_server_exceptions=False) as http:
        yield Api(http, opened.store, built, (tmp_path / ADMIN_TOKEN_FILE).read_text().strip())
    opened.store.engine.dispose()


def test_only_admins_and_metrics_tokens_may_scrape(api: Api) -> None:
    assert api.http.get("/metrics").status_code == 401
    for roles in (("member",), ("reader",), ("member", "reader")):
        r = api.http.get("/metrics", headers=api.client_headers(api.token("tenant-a", *roles)))
        assert r.status_code == 403, r.text
        assert "metrics:get" in r.json()["errors"][0]["detail"]
        assert "capsuled_" not in r.text
    agent = api.token("service", "agent", host="h1")
    assert api.http.get("/metrics", headers={"X-Auth-Token": agent}).status_code == 403
    # A `metrics` token scrapes (also as Prometheus sends it: a bearer token) and does
    # nothing else.
    scraper = api.token("service", "metrics")
    r = api.http.get("/metrics", headers={"Authorization": f"Bearer {scraper}"})
    assert r.status_code == 200 and "capsuled_http_requests_total" in r.text
    assert api.http.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.http.get("/v1/capsules", headers=api.client_headers(scraper)).status_code == 403
    assert api.http.post("/v1/capsules", json=capsule_template("x"),
                         headers=api.client_headers(scraper)).status_code == 403
    assert api.scrape()["capsuled_store_up"] == {(): 1.0}


def test_random_paths_and_methods_add_no_label_values(api: Api) -> None:
    rng = random.Random(7)
    words = ["".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(200)]
    for w in words:
        api.http.get(f"/v1/{w}/{w}", headers=api.client_headers(api.admin))
        api.http.get(f"/{w}")
    for method in ("BREW", "PROPFIND", "X" * 40):
        api.http.request(method, "/v1/capsules", headers=api.client_headers(api.admin))
    api.http.get("/v1/capsules/some-capsule-name", headers=api.client_headers(api.admin))
    text = api.http.get("/metrics", headers={"X-Auth-Token": api.admin}).text
    assert not any(w in text for w in words) and "BREW" not in text and "XXXX" not in text
    samples = api.scrape()
    routes = {dict(k)["route"] for k in samples["capsuled_http_requests_total"]}
    methods = {dict(k)["method"] for k in samples["capsuled_http_requests_total"]}
    templates = set(api.http.get("/openapi.json").json()["paths"])
    assert routes <= templates | {"unmatched"}
    assert {"unmatched", "/v1/capsules", "/v1/capsules/{ident}", "/metrics"} <= routes
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert value(samples, "capsuled_http_requests_total", method="GET", route="unmatched",
                 status="404") == 400
    assert value(samples, "capsuled_http_requests_total", method="other",
                 route="/v1/capsules", status="405") == 3
    assert value(samples, "capsuled_http_requests_total", method="GET",
                 route="/v1/capsules/{ident}", status="404") == 1


def test_a_create_moves_the_request_counter_the_status_gauges_and_the_scheduler(api: Api) -> None:
    member = api.client_headers(api.token("team-a", "member"))
    before = api.scrape()
    # No host yet: accepted, but in Error, and the scheduler found no valid host.
    r = api.http.post("/v1/capsules", json=capsule_template("lost"), headers=member)
    assert r.status_code == 202, r.text
    api.add_host()
    r = api.http.post("/v1/capsules", json=capsule_template("web"), headers=member)
    assert r.status_code == 202, r.text
    r = api.http.post("/v1/capsules", json=capsule_template("huge", cpu=64), headers=member)
    assert r.status_code == 400, r.text  # refused before any placement
    api.built.app.state.metrics.store_collector._taken = float("-inf")  # next scrape reads
    after = api.scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)
    assert moved("capsuled_http_requests_total", method="POST", route="/v1/capsules",
                 status="202") == 2
    assert moved("capsuled_http_requests_total", method="POST", route="/v1/capsules",
                 status="400") == 1
    assert moved("capsuled_http_request_duration_seconds_count", method="POST",
                 route="/v1/capsules", status="202") == 2
    assert value(after, "capsuled_capsules", project="team-a", status="Error") == 1
    assert value(after, "capsuled_capsules", project="team-a", status="Creating") == 1
    assert value(after, "capsuled_containers", project="team-a", status="Creating") == 2
    assert not any(dict(k)["project"] == "admin" for k in after["capsuled_capsules"])
    assert moved("capsuled_scheduler_decisions_total", action="place", result="ok") == 1
    assert moved("capsuled_scheduler_decisions_total", action="place",
                 result="no_valid_host") == 1
    assert moved("capsuled_scheduler_duration_seconds_count", action="place") == 2
    # The two creates are change records in the outbox.
    assert moved("capsuled_events_published_total") >= 2
    assert value(after, "capsuled_outbox_head_seq") == value(after,
                                                             "capsuled_events_published_total")


def test_outbox_readers_lag_behind_the_head(api: Api) -> None:
    with api.store.transaction() as s:
        outbox_readers.ensure(s, "notifier", start=0)
    api.add_host()
    member = api.client_headers(api.token("team-a", "member"))
    for i in range(3):
        assert api.http.post("/v1/capsules", json=capsule_template(f"c{i}"),
                             headers=member).status_code == 202
    samples = api.scrape()
    head = value(samples, "capsuled_outbox_head_seq")
    assert head >= 3
    assert value(samples, "capsuled_outbox_reader_lag", reader="notifier") == head
    assert value(samples, "capsuled_outbox_reader_lag_max") == head
    assert value(samples, "capsuled_outbox_readers") == 1
    assert value(samples, "capsuled_outbox_pruned_through") == 0


def test_reader_series_are_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from capsuled.api import metrics

    monkeypatch.setattr(metrics, "READER_SERIES", 5)
    with api.store.transaction() as s:
        for i in range(12):
            outbox_readers.ensure(s, f"webhook-{i:02d}", start=i)
    samples = api.scrape()
    lags = samples["capsuled_outbox_reader_lag"]
    assert len(lags) == 5  # the five furthest behind
    assert {dict(k)["reader"] for k in lags} == {f"webhook-{i:02d}" for i in range(5)}
    assert value(samples, "capsuled_outbox_readers") == 12


def test_a_scrape_storm_reads_the_store_once_per_period(api: Api) -> None:
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)
    event.listen(api.store.engine, "before_cursor_execute", seen)
    try:
        api.scrape()  # a token lookup, and the one read of the period
        statements.clear()
        failures: list[int] = []

        def scrape_many() -> None:
            for _ in range(10):
                r = api.http.get("/metrics", headers={"X-Auth-Token": api.admin})
                if r.status_code != 200:
                    failures.append(r.status_code)
        threads = [threading.Thread(target=scrape_many) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
    finally:
        event.remove(api.store.engine, "before_cursor_execute", seen)
    assert [s for s in statements if "GROUP BY" in s.upper()] == []
    assert api.built.app.state.metrics.store_collector.reads == 1


def test_agents_heartbeat_stats_and_reports_per_host(api: Api) -> None:
    api.add_host("h1")
    agent = {"X-Auth-Token": api.token("service", "agent", host="h1")}
    stats = {"sync": {"count": 5, "errors": 1, "unsettled": 2, "seconds": 1.5,
                      "bounds": [0.1, 1.0], "buckets": [3, 4]},
             "relist": {"count": 2, "seconds": 0.2, "bounds": [0.1, 1.0], "buckets": [1, 2]},
             "watch": {"count": 7, "errors": 2}, "heartbeat": {"count": 3},
             "pool": {"size": 4, "idle": 3, "claims": 9, "misses": 1, "made": 12}}
    r = api.http.post("/v1/agents/h1/heartbeat", json={"stats": stats}, headers=agent)
    assert r.status_code == 204, r.text
    r = api.http.post("/v1/agents/h1/reports", json={"capsules": [], "containers": []},
                      headers=agent)
    assert r.status_code == 204, r.text
    # Another host's channel is refused, whatever the body.
    assert api.http.post("/v1/agents/h2/heartbeat", json={"stats": stats},
                         headers=agent).status_code == 403
    samples = api.scrape()
    assert value(samples, "capsuled_agent_loop_rounds_total", host="h1", loop="sync") == 5
    assert value(samples, "capsuled_agent_loop_errors_total", host="h1", loop="sync") == 1
    assert value(samples, "capsuled_agent_loop_errors_total", host="h1", loop="watch") == 2
    assert value(samples, "capsuled_agent_sync_unsettled_total", host="h1") == 2
    assert value(samples, "capsuled_agent_loop_duration_seconds_bucket", host="h1",
                 loop="sync", le="0.1") == 3
    assert value(samples, "capsuled_agent_loop_duration_seconds_bucket", host="h1",
                 loop="sync", le="+Inf") == 5
    assert value(samples, "capsuled_agent_loop_duration_seconds_sum", host="h1",
                 loop="sync") == 1.5
    assert value(samples, "capsuled_agent_report_duration_seconds_count", host="h1") == 1
    assert value(samples, "capsuled_agent_sandbox_pool_total", host="h1", event="claims") == 9
    assert value(samples, "capsuled_agent_sandbox_pool_total", host="h1", event="made") == 12
    assert value(samples, "capsuled_agent_sandbox_pool_idle", host="h1", kind="idle") == 3
    assert value(samples, "capsuled_agent_sandbox_pool_idle", host="h1", kind="size") == 4
    assert not any(dict(k).get("host") == "h2" for v in samples.values() for k in v)


@pytest.mark.parametrize("body", [
    b"not json",
    b'{"stats": {"sync": {"count": 1, "bounds": [1.0], "buckets": [5]}}}',  # more than count
    b'{"stats": {"sync": {"count": 2, "bounds": [2.0, 1.0], "buckets": [1, 2]}}}',
    b'{"stats": {"sync": {"count": -1}}}',
    b'{"stats": {"sync": {"count": 1, "bounds": [1.0], "buckets": []}}}',
    b'{"stats": [1, 2]}',
])
def test_bad_agent_stats_are_dropped_and_the_heartbeat_still_counts(api: Api,
                                                                    body: bytes) -> None:
    """A heartbeat is the host's sign of life: bad stats must not make it fail."""
    api.add_host("h1")
    agent = {"X-Auth-Token": api.token("service", "agent", host="h1"),
             "Content-Type": "application/json"}
    r = api.http.post("/v1/agents/h1/heartbeat", content=body, headers=agent)
    assert r.status_code == 204, r.text
    assert "capsuled_agent_loop_rounds_total" not in api.scrape()


def test_the_store_is_read_again_once_the_period_is_over(api: Api) -> None:
    now = [100.0]
    collector = StoreCollector(api.store, 2.0, clock=lambda: now[0])
    first = collector.snapshot()
    assert collector.snapshot() is first and collector.reads == 1
    now[0] += 1.9
    assert collector.snapshot() is first
    now[0] += 0.2
    assert collector.snapshot() is not first and collector.reads == 2


def test_a_store_that_fails_is_reported_not_raised(api: Api) -> None:
    class Down(Store):
        def transaction(self) -> Any:
            raise Unavailable("database unavailable")
    collector = StoreCollector(Down(api.store.engine), 0.0)
    families = {f.name: f for f in collector.collect()}
    assert families["capsuled_store_up"].samples[0].value == 0
    assert "capsuled_capsules" not in families


def test_the_grafana_dashboard_is_json_over_these_metric_names(api: Api) -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    # One of everything, so that every family has samples.
    api.add_host("h1")
    agent = {"X-Auth-Token": api.token("service", "agent", host="h1")}
    api.http.post("/v1/agents/h1/heartbeat", headers=agent, json={"stats": {
        "sync": {"count": 1, "seconds": 0.1, "bounds": [1.0], "buckets": [1]}}})
    api.http.post("/v1/agents/h1/reports", json={}, headers=agent)
    api.http.post("/v1/capsules", json=capsule_template("web"),
                  headers=api.client_headers(api.admin))
    with api.store.transaction() as s:
        outbox_readers.ensure(s, "notifier", start=0)
    api.built.app.state.metrics.store_collector._taken = float("-inf")
    exported = set(re.findall(r"\b(?:capsuled|process)_\w+",
                              api.http.get("/metrics", headers={"X-Auth-Token": api.admin}).text))
    used = {name for e in exprs for name in re.findall(r"\b(?:capsuled|process)_\w+", e)}
    assert used and used <= exported, used - exported


def test_a_slow_read_holds_one_scrape_the_others_get_the_last_snapshot(api: Api) -> None:
    release = threading.Event()
    entered = threading.Event()

    class Slow(Store):
        slow = False

        def transaction(self) -> Any:
            if self.slow:
                entered.set()
                release.wait(10)
            return super().transaction()
    store = Slow(api.store.engine)
    now = [0.0]
    collector = StoreCollector(store, 2.0, clock=lambda: now[0])
    first = collector.snapshot()
    store.slow, now[0] = True, 5.0  # stale, and the next read hangs
    reader = threading.Thread(target=collector.snapshot)
    reader.start()
    assert entered.wait(5)
    try:
        # Scrapes meanwhile answer at once, with what was read before.
        assert all(collector.snapshot() is first for _ in range(20))
    finally:
        release.set()
        reader.join(5)
    assert collector.reads == 2 and collector.snapshot() is not first
