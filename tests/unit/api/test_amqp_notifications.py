"""The AMQP notification sink on SQLite with oslo.messaging's in-memory `fake://` transport
and a real oslo.messaging notification listener: what each change becomes (event type,
priority, Zun body, context), and that a failed send is retried, never lost, and never
logs the payload. The real broker is in tests/integration/test_amqp_broker.py."""

from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from capsuled.api.relay.amqp import AmqpSink, make_transport
from capsuled.api.relay.worker import DeliveryFailed, OutboxRelay
from capsuled.config import NotificationSettings, Settings
from capsuled.domain.container_request import parse_container_request
from capsuled.domain.status import Status
from capsuled.domain.template import Limits, parse_template
from capsuled.errors import InvalidInput
from capsuled.store import capsules as capsule_repo
from capsuled.store import containers as container_repo
from capsuled.store import outbox_readers
from capsuled.store.engine import Store, make_engine, upgrade

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # eventlet's deprecation, as in capsuled/api/relay/amqp.py
    import oslo_messaging

TOPIC = "unit-notes"
BASE = "http://api.example:9517"
SECRET = "s3cr3t-env-value"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'n.db'}")
    upgrade(engine)
    return Store(engine)


def _settings(**kw: Any) -> NotificationSettings:
    return NotificationSettings(enabled=True, topics=[TOPIC], publisher_id="capsuled.test",
                                **{"transport_url": SecretStr("fake://"), **kw})


class Consumer:
    """An oslo.messaging notification listener on the sink's transport: what it got."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def _keep(self, priority: str, ctxt: dict[str, Any], publisher_id: str, event_type: str,
              payload: dict[str, Any]) -> None:
        with self.lock:
            self.got.append({"priority": priority, "ctxt": ctxt, "publisher_id": publisher_id,
                             "event_type": event_type, "payload": payload})

    def info(self, ctxt: dict[str, Any], publisher_id: str, event_type: str,
             payload: dict[str, Any], metadata: dict[str, Any]) -> None:
        self._keep("info", ctxt, publisher_id, event_type, payload)

    def error(self, ctxt: dict[str, Any], publisher_id: str, event_type: str,
              payload: dict[str, Any], metadata: dict[str, Any]) -> None:
        self._keep("error", ctxt, publisher_id, event_type, payload)

    def wait(self, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= count:
                    return list(self.got)
            time.sleep(0.02)
        raise AssertionError(f"got {len(self.got)} notifications, wanted {count}")


@pytest.fixture
def wire() -> Iterator[tuple[Any, Consumer]]:
    transport = make_transport(_settings())
    consumer = Consumer()
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic=TOPIC)], [consumer], executor="threading")
    listener.start()
    yield transport, consumer
    listener.stop()
    listener.wait()
    transport.cleanup()


def _relay(store: Store, sink: AmqpSink) -> OutboxRelay:
    with store.transaction() as s:
        outbox_readers.ensure(s, "n", start=0)
    return OutboxRelay(store, "n", sink, owner="test")


def _capsule(store: Store, name: str, host: str | None, **kw: Any) -> str:
    tmpl = {"kind": "capsule", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                                     "env": {"TOKEN": SECRET}}]}}
    with store.transaction() as s:
        return capsule_repo.create_capsule(s, parse_template(tmpl), "p1", "u1", host, **kw).uuid


def test_each_change_is_one_notification_with_its_type_priority_and_zun_body(
        store: Store, wire: tuple[Any, Consumer]) -> None:
    transport, consumer = wire
    web = _capsule(store, "web", "h1")
    nowhere = _capsule(store, "nowhere", None, status=Status.ERROR,
                       status_reason="no host has enough free memory")
    with store.transaction() as s:
        bare = container_repo.create_bare(
            s, parse_container_request({"image": "busybox", "labels": {"tier": "db"}}, Limits()),
            "db", "p2", "u2", "h1", "running").uuid
    with store.transaction() as s:
        capsule_repo.mark_deleting(s, capsule_repo.get_capsule(s, nowhere, "p1"))
    sink = AmqpSink(store, _settings(), BASE, transport=transport)
    try:
        _relay(store, sink).run_once()
        got = consumer.wait(8)
    finally:
        sink.close()

    # Each priority is a queue of its own (<topic>.info, <topic>.error), delivered in the
    # order it was published; across the two, `event.seq` orders them.
    for priority in ("info", "error"):
        seqs = [n["payload"]["event"]["seq"] for n in got if n["priority"] == priority]
        assert seqs == sorted(seqs)
    got.sort(key=lambda n: n["payload"]["event"]["seq"])
    assert [(n["event_type"], n["priority"], n["payload"]["uuid"]) for n in got] == [
        ("capsule.create.start", "info", web), ("capsule.update", "info", web),
        ("capsule.create.start", "info", nowhere), ("capsule.create.error", "error", nowhere),
        ("container.create.start", "info", bare), ("container.update", "info", bare),
        ("capsule.delete.start", "info", nowhere), ("capsule.delete.end", "info", nowhere)]
    assert [n["payload"]["event"]["seq"] for n in got] == list(range(1, 9))
    assert {n["publisher_id"] for n in got} == {"capsuled.test"}

    first = got[0]
    body = first["payload"]
    # The capsule's Zun body at the newest microversion, as an admin sees it ...
    assert (body["name"], body["labels"], body["host"]) == ("web", {"app": "web"}, "h1")
    assert body["containers"][0]["name"] == "main"
    assert body["containers"][0]["environment"] == {"TOKEN": SECRET}
    assert body["links"][0]["href"] == f"{BASE}/v1/capsules/{web}"
    # ... with the record's status and the record itself.
    assert body["status"] == "Creating"
    assert body["event"] | {"created_at": None} == {
        "seq": 1, "type": "capsule.create.start", "reason": "Accepted",
        "message": "capsule accepted", "status": "Creating", "created_at": None}
    assert (first["ctxt"]["project_id"], first["ctxt"]["user_id"]) == ("p1", "u1")

    container = got[4]
    assert container["payload"]["name"] == "db"
    assert container["payload"]["labels"] == {"tier": "db"}
    assert (container["ctxt"]["project_id"], container["ctxt"]["user_id"]) == ("p2", "u2")
    # Gone by the time it is published: what the record knows.
    for n in got[2:4] + got[6:]:
        assert set(n["payload"]) == {"uuid", "name", "project_id", "labels", "status", "event"}
    assert got[-1]["payload"] | {"event": None} == {
        "uuid": nowhere, "name": "nowhere", "project_id": "p1", "labels": {"app": "nowhere"},
        "status": "Deleted", "event": None}
    assert got[3]["payload"]["event"]["message"] == "no host has enough free memory"


def test_a_failed_send_is_retried_from_that_change_and_logs_no_payload(
        store: Store, wire: tuple[Any, Consumer], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    transport, consumer = wire
    for name in ("aa", "bb", "cc"):
        _capsule(store, name, None)  # one record each: create.start (no host, no update)
    driver = transport._driver
    real = driver.send_notification
    calls = 0

    def second_fails(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise oslo_messaging.MessageDeliveryFailure("broker went away")
        real(*args, **kwargs)

    monkeypatch.setattr(driver, "send_notification", second_fails)
    sink = AmqpSink(store, _settings(), BASE, transport=transport)
    relay = _relay(store, sink)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(DeliveryFailed) as failed:
            relay.run_once()
        assert failed.value.delivered == 1
        assert "seq 2 (capsule.create.start)" in str(failed.value)
        assert "broker went away" in str(failed.value)
        with store.transaction() as s:
            assert outbox_readers.position(s, "n") == 1  # past what went out, no further
        relay.run_once()
        got = consumer.wait(3)
    finally:
        sink.close()
    assert [n["payload"]["event"]["seq"] for n in got] == [1, 2, 3]  # each once, in order
    assert [n["payload"]["name"] for n in got] == ["aa", "bb", "cc"]
    assert SECRET not in caplog.text and "Payload" not in caplog.text


def test_a_broker_that_refuses_fails_the_send_at_once(store: Store) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    _capsule(store, "xx", None)
    sink = AmqpSink(store, _settings(transport_url=SecretStr(
        f"rabbit://guest:guest@127.0.0.1:{port}/")), BASE)
    relay = _relay(store, sink)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryFailed) as failed:
            relay.run_once()
    finally:
        sink.close()
    assert time.monotonic() - started < 3
    assert failed.value.delivered == 0
    with store.transaction() as s:
        assert outbox_readers.position(s, "n") == 0


def test_a_broker_that_never_answers_fails_the_send_within_the_connect_bound(
        store: Store) -> None:
    """A peer that accepts TCP and then says nothing (a hung broker) holds the relay for
    kombu's connect timeout (5 s), not for ever."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    port = hole.getsockname()[1]
    _capsule(store, "xx", None)
    sink = AmqpSink(store, _settings(transport_url=SecretStr(
        f"rabbit://guest:guest@127.0.0.1:{port}/"), send_timeout=2), BASE)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryFailed):
            _relay(store, sink).run_once()
    finally:
        sink.close()
        hole.close()
    assert time.monotonic() - started < 12


def test_a_bad_transport_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidInput) as bad:
        make_transport(_settings(transport_url=SecretStr("nosuch://user:hunter2@host/")))
    assert "notifications.transport_url" in bad.value.message
    assert "hunter2" not in bad.value.message


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSULED_NOTIFICATIONS__ENABLED", "true")
    monkeypatch.setenv("CAPSULED_NOTIFICATIONS__TOPICS", '["notifications", "audit"]')
    monkeypatch.setenv("CAPSULED_NOTIFICATIONS__TRANSPORT_URL", "rabbit://u:p@mq:5672/")
    conf = Settings().notifications
    assert conf.enabled and conf.topics == ["notifications", "audit"]
    assert conf.transport_url.get_secret_value() == "rabbit://u:p@mq:5672/"
    assert "u:p" not in repr(conf)
    assert conf.publisher_id == f"capsuled.{socket.gethostname()}"
    assert Settings.model_fields["notifications"].default_factory is not None
    monkeypatch.delenv("CAPSULED_NOTIFICATIONS__ENABLED")
    assert Settings().notifications.enabled is False


def test_the_composition_root_builds_no_relay_when_off_and_refuses_a_bad_url(
        store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from capsuled.cli import compose

    assert compose.notifications(Settings(state_dir=tmp_path), store) is None
    bad = Settings(state_dir=tmp_path, notifications=_settings(
        transport_url=SecretStr("nosuch://user:hunter2@host/")))
    with pytest.raises(typer.Exit):
        compose.notifications(bad, store)
    err = capsys.readouterr().err
    assert "notifications.transport_url" in err and "hunter2" not in err
