"""OpenStack notifications on the loopback RabbitMQ: a real consumer (oslo.messaging's
notification listener, as Ceilometer and Searchlight consume Nova's) receives every change
of a 50-capsule run in per-capsule order with Zun bodies, and, after the broker was
stopped and started again, every change made while it was down; the API answered
promptly all along. Each run has an exchange and topic of its own."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import Server, sleeper, template, wait_for
from pydantic import SecretStr

from capsuled.api.relay.amqp import make_transport
from capsuled.config import NotificationSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # eventlet's deprecation, as in capsuled/api/relay/amqp.py
    import kombu
    import oslo_messaging

pytestmark = [pytest.mark.docker]
RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"
NOWHERE = "no-such-zone"  # no host is there: creates end in Error without touching Docker
PROMPT = 3.0  # seconds an API call may take while the broker is down (it never waits on it)


class Consumer:
    """A notification listener on exchange/topic of its own; `got` in arrival order."""

    def __init__(self) -> None:
        run = uuid.uuid4().hex[:8]
        self.exchange, self.topic = f"capsuled-test-{run}", f"notes-{run}"
        self.got: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._transport = make_transport(NotificationSettings(
            transport_url=SecretStr(RABBIT), control_exchange=self.exchange))
        self._listener = oslo_messaging.get_notification_listener(
            self._transport, [oslo_messaging.Target(topic=self.topic)], [self],
            executor="threading")
        self._listener.start()

    def info(self, ctxt: dict[str, Any], publisher_id: str, event_type: str,
             payload: dict[str, Any], metadata: dict[str, Any]) -> None:
        self._keep("info", ctxt, event_type, payload)

    def error(self, ctxt: dict[str, Any], publisher_id: str, event_type: str,
              payload: dict[str, Any], metadata: dict[str, Any]) -> None:
        self._keep("error", ctxt, event_type, payload)

    def _keep(self, priority: str, ctxt: dict[str, Any], event_type: str,
              payload: dict[str, Any]) -> None:
        with self._lock:
            self.got.append({"priority": priority, "ctxt": ctxt, "event_type": event_type,
                             "payload": payload, "seq": payload["event"]["seq"]})

    def seqs(self) -> set[int]:
        with self._lock:
            return {n["seq"] for n in self.got}

    def close(self) -> None:
        self._listener.stop()
        self._listener.wait()
        self._transport.cleanup()
        # The queues oslo.messaging declared (<topic>.<priority>) and the exchange: ours only.
        with kombu.Connection(RABBIT.replace("rabbit://", "amqp://")) as conn:
            channel = conn.channel()
            for priority in ("info", "error"):
                channel.queue_delete(f"{self.topic}.{priority}")
            channel.exchange_delete(self.exchange)


@pytest.fixture()
def consumer() -> Iterator[Consumer]:
    c = Consumer()
    yield c
    c.close()


def _rabbitmqctl(command: str) -> None:
    done = subprocess.run(["rabbitmqctl", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _records(client: httpx.Client, since: int) -> list[dict[str, Any]]:
    """The outbox as the API shows it: the truth the notifications must match."""
    out: list[dict[str, Any]] = []
    while True:
        body = client.get("/v1/events", params={"since": str(since), "limit": "500"}).json()
        out += body["events"]
        if body["last_seq"] == since or body["last_seq"] >= body["head"]:
            return out
        since = body["last_seq"]


def _timed(call: Callable[[], httpx.Response], expect: int) -> httpx.Response:
    started = time.monotonic()
    r = call()
    took = time.monotonic() - started
    assert r.status_code == expect, r.text
    assert took < PROMPT, f"the API took {took:.1f}s with the broker down"
    return r


def _unplaceable(name: str) -> dict[str, Any]:
    t = template(name, [sleeper("main")], labels={"run": name.split("-")[0]})
    t["availabilityZone"] = NOWHERE
    return t


def _delivered_in_order(consumer: Consumer, records: list[dict[str, Any]]) -> dict[int, Any]:
    """Every record arrived (at least once) as a notification of its type; each capsule's
    arrived in the order they happened on each queue (info, error). By seq."""
    wanted = {r["seq"] for r in records}
    wait_for(lambda: wanted <= consumer.seqs(), timeout=60,
             what=f"{len(wanted)} notifications (missing {sorted(wanted - consumer.seqs())[:10]})")
    got = [n for n in consumer.got if n["seq"] in wanted]
    by_seq = {n["seq"]: n for n in got}
    for r in records:
        n = by_seq[r["seq"]]
        assert (n["event_type"], n["payload"]["uuid"]) == (r["event_type"], r["uuid"])
        assert n["priority"] == ("error" if r["event_type"].endswith(".error") else "info")
    for u in {r["uuid"] for r in records}:
        for priority in ("info", "error"):
            seqs = [n["seq"] for n in got if n["payload"]["uuid"] == u
                    and n["priority"] == priority]
            assert seqs == sorted(seqs), f"{u} out of order on the {priority} queue: {seqs}"
    return by_seq


def test_every_change_of_a_50_capsule_run_reaches_a_consumer_even_across_a_broker_stop(
        own_server: Callable[..., Server], consumer: Consumer) -> None:
    server = own_server(
        CAPSULED_NOTIFICATIONS__ENABLED="true", CAPSULED_NOTIFICATIONS__TRANSPORT_URL=RABBIT,
        CAPSULED_NOTIFICATIONS__CONTROL_EXCHANGE=consumer.exchange,
        CAPSULED_NOTIFICATIONS__TOPICS=json.dumps([consumer.topic]),
        CAPSULED_NOTIFICATIONS__PUBLISHER_ID="capsuled.test",
        CAPSULED_NOTIFICATIONS__RETRY_MAX="1", CAPSULED_NOTIFICATIONS__SEND_TIMEOUT="5",
        CAPSULED_QUOTA__CAPSULES="-1", CAPSULED_QUOTA__CONTAINERS="-1")
    project = f"n-{uuid.uuid4().hex[:8]}"
    with server.client(server.issue_token(project, "alice", "member")) as api:
        start = int(api.get("/v1/events", params={"limit": "1"}).json()["head"])
        # 50 capsules: 3 that run (create.start, update, create.end) and 47 that no host
        # can take (create.start, create.error), a bare container; then all deleted.
        real = [api.post("/v1/capsules", json={"template": template(
            f"real-{i}", [sleeper("main")], labels={"run": "real"})}).json()["uuid"]
            for i in range(3)]
        stuck = [api.post("/v1/capsules", json={"template": _unplaceable(f"stuck-{i}")})
                 .json()["uuid"] for i in range(47)]
        bare = api.post("/v1/containers", json={
            "name": "bare-1", "image": "busybox", "command": ["sleep", "60"],
            "availability_zone": NOWHERE}).json()["uuid"]
        for u in real:
            wait_for(lambda u=u: api.get(f"/v1/capsules/{u}").json()["status"] == "Running",
                     timeout=90, what=f"{u} to run")
        for u in real + stuck:
            assert api.delete(f"/v1/capsules/{u}").status_code == 204
        assert api.delete(f"/v1/containers/{bare}").status_code == 204
        for u in real:
            wait_for(lambda u=u: api.get(f"/v1/capsules/{u}").status_code == 404,
                     timeout=60, what=f"{u} to go")
        before = _records(api, start)
        assert len({r["uuid"] for r in before if r["kind"] == "capsule"}) == 50
        by_seq = _delivered_in_order(consumer, before)

        types = {r["event_type"] for r in before}
        assert {"capsule.create.start", "capsule.create.end", "capsule.update",
                "capsule.create.error", "capsule.delete.start", "capsule.delete.end",
                "container.create.start", "container.create.error",
                "container.delete.end"} <= types
        # The payload is the capsule's Zun body (admin view) with the record's status ...
        ran = next(by_seq[r["seq"]] for r in before
                   if r["uuid"] == real[0] and r["event_type"] == "capsule.create.end")
        body = ran["payload"]
        assert (body["uuid"], body["name"], body["status"]) == (real[0], "real-0", "Running")
        assert body["containers"][0]["name"] == "main" and body["host"]
        assert body["labels"] == {"run": "real"}
        assert (ran["ctxt"]["project_id"], ran["ctxt"]["user_id"]) == (project, "alice")
        # ... and, once it is gone, what the record knows.
        gone = next(by_seq[r["seq"]] for r in before
                    if r["uuid"] == stuck[0] and r["event_type"] == "capsule.delete.end")
        assert gone["payload"] | {"event": None} == {
            "uuid": stuck[0], "name": "stuck-0", "project_id": project,
            "labels": {"run": "stuck"}, "status": "Deleted", "event": None}

        # The broker stops: changes go on, the API answers at once, nothing is lost.
        head = max(r["seq"] for r in before)
        down: list[str] = []
        try:
            _rabbitmqctl("stop_app")
            for i in range(5):
                r = _timed(lambda i=i: api.post("/v1/capsules", json={
                    "template": _unplaceable(f"down-{i}")}), 202)
                down.append(r.json()["uuid"])
            _timed(lambda: api.get("/v1/capsules"), 200)
            for u in down[:3]:
                _timed(lambda u=u: api.delete(f"/v1/capsules/{u}"), 204)
            time.sleep(2)  # the relay tries, fails and backs off meanwhile
            _timed(lambda: api.get(f"/v1/capsules/{down[4]}"), 200)
        finally:
            _rabbitmqctl("start_app")
        during = _records(api, head)
        assert {r["uuid"] for r in during} == set(down) and len(during) == 5 * 2 + 3 * 2
        _delivered_in_order(consumer, during)
        for u in down[3:]:
            api.delete(f"/v1/capsules/{u}")
    log = server.log.read_text() if server.log else ""
    assert "delivery failed" in log  # it did try while the broker was down
