"""/metrics and JSON logs on a real `capsuled` (started with --log-format json) driving
the real Docker Engine: a member is refused, an admin reads the text format, and a real
capsule moves the request counter, the per-project status gauges and the agent's sync
counters (a capsule's start is one sync: Docker's events of what it made do not sync it
again); every line the server writes is a JSON object, and a request's lines carry its
request id."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (Capsules, Server, containers_of, remove_instance_objects, sleeper,
                      start_server, template, wait_for)

pytestmark = [pytest.mark.docker, pytest.mark.e2e]
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory,
             docker_api: docker.APIClient) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("observed"), docker_api,
                       args=("--log-format", "json"), CAPSULED_AGENT__HEARTBEAT_INTERVAL="0.5",
                       CAPSULED_API__METRICS_CACHE="0.5")
    instance = srv.instance
    try:
        yield srv
    finally:
        srv.stop()
        remove_instance_objects(docker_api, instance)


def scrape(server: Server, token: str | None = None) -> Samples:
    r = httpx.get(f"{server.url}/metrics", headers={"X-Auth-Token": token or server.token})
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_a_real_capsule_moves_the_metrics(observed: Server, docker_api: docker.APIClient) -> None:
    member = observed.issue_token("metrics-a", "mia", "member")
    r = httpx.get(f"{observed.url}/metrics", headers={"X-Auth-Token": member})
    assert r.status_code == 403 and "capsuled_" not in r.text
    before = scrape(observed)
    with observed.client(member) as c:
        caps = Capsules(c)
        try:
            made = caps.create(template("observed-web", [sleeper("web")]))
            caps.wait_status(made["uuid"], "Running")
            (web,) = [x for x in containers_of(docker_api, made["uuid"])
                      if x["Labels"].get("capsuled.name") == "web"]
            assert docker_api.inspect_container(web["Id"])["State"]["Running"]

            def running() -> Samples | None:
                got = scrape(observed)
                ok = (value(got, "capsuled_capsules", project="metrics-a", status="Running") == 1
                      and value(got, "capsuled_containers", project="metrics-a",
                                status="Running") == 1
                      and any(v >= 1 for k, v in got.get("capsuled_agent_loop_rounds_total",
                                                         {}).items()
                              if dict(k)["loop"] == "sync"))
                return got if ok else None
            after = wait_for(running, timeout=20, what="the capsule and the agent's syncs")
        finally:
            caps.cleanup()
    assert value(after, "capsuled_http_requests_total", method="POST", route="/v1/capsules",
                 status="202") - value(before, "capsuled_http_requests_total", method="POST",
                                       route="/v1/capsules", status="202") == 1
    assert value(after, "capsuled_scheduler_decisions_total", action="place", result="ok") >= 1
    (host,) = {dict(k)["host"] for k in after["capsuled_agent_loop_rounds_total"]}
    assert value(after, "capsuled_agent_loop_duration_seconds_count", host=host,
                 loop="sync") >= 1
    assert value(after, "capsuled_agent_report_duration_seconds_count", host=host) >= 1
    assert value(after, "capsuled_events_published_total") > value(
        before, "capsuled_events_published_total")
    # Gone: the gauges follow once the cache period (0.5 s here) is over.
    wait_for(lambda: value(scrape(observed), "capsuled_capsules", project="metrics-a",
                           status="Running") == 0, timeout=10, what="the gauge to drop")


def test_every_log_line_is_json_and_a_request_s_lines_carry_its_id(observed: Server) -> None:
    assert observed.log is not None
    member = observed.issue_token("metrics-b", "mo", "member")
    nowhere = {**template("observed-nowhere", [sleeper("web")]), "availabilityZone": "nowhere"}
    with observed.client(member) as c:
        r = c.post("/v1/capsules", json={"template": nowhere})
        assert r.status_code == 202, r.text
        c.delete(f"/v1/capsules/{r.json()['uuid']}")
    request_id = r.headers["x-openstack-request-id"]

    def logged() -> list[dict[str, Any]] | None:
        lines = [json.loads(line) for line in Path(observed.log or "").read_text().splitlines()
                 if line.strip()]
        return lines if any(x.get("request_id") == request_id for x in lines) else None
    lines = wait_for(logged, timeout=5, what="the request's log line")
    assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    (warned,) = [x for x in lines if x.get("request_id") == request_id]
    assert warned["logger"] == "capsuled.api.services.placement"
    assert warned["level"] == "WARNING" and "observed-nowhere" in warned["message"]
    # uvicorn's own lines are JSON too, and claim no request.
    assert any(x["logger"].startswith("uvicorn") and "request_id" not in x for x in lines)


def test_a_capsule_start_is_one_sync_on_the_real_engine(tmp_path: Path,
                                                        docker_api: docker.APIClient) -> None:
    # Docker's create and start events of the containers a sync made are its own doing
    # (agent/own_events.py): they no longer sync the capsule a second time. No relist in
    # the window, so every sync counted is the start's or an event's.
    srv = start_server(tmp_path, docker_api, CAPSULED_AGENT__HEARTBEAT_INTERVAL="0.3",
                       CAPSULED_AGENT__RELIST_INTERVAL="3600", CAPSULED_API__METRICS_CACHE="0.2")
    instance = srv.instance

    def syncs() -> float:
        return sum(v for k, v in scrape(srv).get("capsuled_agent_loop_rounds_total", {}).items()
                   if dict(k)["loop"] == "sync")

    def settled() -> tuple[float] | None:
        first = syncs()
        time.sleep(1.0)  # three heartbeats: the count the API shows is the agent's
        return (first,) if syncs() == first else None
    try:
        (before,) = wait_for(settled, timeout=30, what="the agent's sync count to settle")
        with srv.client() as c:
            caps = Capsules(c)
            made = caps.create(template("one-sync", [sleeper("web"), sleeper("side")]))
            caps.wait_status(made["uuid"], "Running")
            assert len(containers_of(docker_api, made["uuid"])) == 3
            (after,) = wait_for(settled, timeout=30, what="the agent's sync count to settle")
            assert after - before == 1
            # A death is not the sync's doing: it syncs the capsule again.
            (web,) = [x for x in containers_of(docker_api, made["uuid"])
                      if x["Labels"].get("capsuled.name") == "web"]
            docker_api.kill(web["Id"])
            wait_for(lambda: syncs() > after, timeout=20, what="a sync after the kill")
            caps.cleanup()
    finally:
        srv.stop()
        remove_instance_objects(docker_api, instance)
