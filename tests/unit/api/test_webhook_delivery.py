"""Webhook subscriptions on SQLite with a fake HTTP transport: who may create what, what a
receiver gets (signed, filtered, at the checked address), retry → dead letter → probe,
redelivery, and the supervisor picking subscriptions up and letting them go."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from capsuled.api.policy import Policy
from capsuled.api.relay.egress import HttpPoster, Unresolvable
from capsuled.api.relay.supervisor import WebhookSupervisor
from capsuled.api.relay.webhooks import NOT_ATTEMPTED, WebhookSink
from capsuled.api.relay.worker import DeliveryFailed, OutboxRelay
from capsuled.api.services.subscriptions import SubscriptionService
from capsuled.config import WebhookSettings
from capsuled.domain.egress import IPAddress, parse_url
from capsuled.domain.webhooks import RetryPolicy, verify
from capsuled.errors import Conflict, Forbidden, InvalidInput, NotFound, OverQuota
from capsuled.identity.base import Principal
from capsuled.store import outbox, outbox_readers
from capsuled.store import subscriptions as repo
from capsuled.store.crypto import SecretBox
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.tables import utcnow

BOX = SecretBox("unit-test-key")
SECRET = "0123456789abcdef-secret"
SETTINGS = WebhookSettings(per_project=3, retry_initial=0.01, retry_max=0.05, timeout=2,
                           poll=0.1)
DNS: dict[str, list[str]] = {"hooks.example.com": ["93.184.215.14"], "localhost": ["127.0.0.1"],
                             "mixed.example.com": ["93.184.215.14", "10.0.0.7"]}
ALICE = Principal("p1", "alice", frozenset({"member"}))
BOB = Principal("p2", "bob", frozenset({"member"}))
ADMIN = Principal("ops", "root", frozenset({"admin"}))


def resolve(host: str, port: int) -> list[IPAddress]:
    from ipaddress import ip_address
    if host not in DNS:
        raise Unresolvable(f"cannot resolve {host}: unknown name")
    return [ip_address(a) for a in DNS[host]]


class Chunks(httpx.SyncByteStream):
    """An answer body as a network stream (httpx reads a plain `content=` eagerly)."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


def answer(status: int, *chunks: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, stream=Chunks(*chunks))


class Receiver:
    """A fake receiver behind httpx.MockTransport: records requests, answers `status`."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return answer(self.status, b"ok" if self.status < 300 else b"busy\x00now")

    def seqs(self) -> list[int]:
        return [int(r.headers["X-Capsuled-Delivery"]) for r in self.requests]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    upgrade(engine)
    return Store(engine)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def poster(receiver: Receiver) -> Iterator[HttpPoster]:
    p = HttpPoster(2, 1024, resolve=resolve, transport=httpx.MockTransport(receiver))
    yield p
    p.close()


@pytest.fixture
def service(store: Store) -> SubscriptionService:
    return SubscriptionService(store, BOX, Policy(), SETTINGS, resolve)


def _write(store: Store, *events: str, project: str = "p1") -> None:
    for i, event_type in enumerate(events):
        with store.transaction() as s:
            outbox.record(s, project_id=project, kind=event_type.split(".")[0], uuid=f"u{i}",
                          name=f"n{i}", event_type=event_type, reason="Test", status="Running")


def _relay(store: Store, uuid: str, sink: WebhookSink, project: str = "p1") -> OutboxRelay:
    return OutboxRelay(store, repo.reader_name(uuid), sink, project_id=project, owner="me")


def _sink(store: Store, uuid: str, poster: HttpPoster, clock: list[datetime] | None = None,
          policy: RetryPolicy = RetryPolicy(1, 60, 600, 100)) -> WebhookSink:
    now = clock or [utcnow()]
    return WebhookSink(store, BOX, uuid, poster, policy, keep=3, budget=30,
                       clock=lambda: now[0])


# -- creating ------------------------------------------------------------------------------

def test_a_member_may_not_point_a_webhook_at_loopback_or_private_addresses(
        service: SubscriptionService) -> None:
    for url in ("http://127.0.0.1:9000/h", "http://localhost/h", "http://[::1]/h",
                "http://[::ffff:127.0.0.1]/h", "http://169.254.169.254/latest/meta-data",
                "http://10.0.0.1/", "http://mixed.example.com/"):
        with pytest.raises(Forbidden) as exc:
            service.create(ALICE, {"url": url})
        assert "url: " in exc.value.message and "only administrators" in exc.value.message
    made = service.create(ADMIN, {"url": "http://127.0.0.1:9000/h"})
    assert made.allow_private and made.secret


def test_bad_bodies_name_every_field(service: SubscriptionService) -> None:
    with pytest.raises(InvalidInput) as exc:
        service.create(ALICE, {"url": "ftp://x", "events": ["Capsule"], "secret": "short",
                               "name": "-x", "colour": "red"})
    assert sorted(p.split(":")[0] for p in exc.value.problems) == [
        "colour", "events[0]", "name", "secret", "url"]
    with pytest.raises(InvalidInput, match="url: cannot resolve nowhere.example"):
        service.create(ALICE, {"url": "https://nowhere.example/"})


def test_the_secret_is_shown_once_and_stored_sealed(service: SubscriptionService,
                                                    store: Store) -> None:
    made = service.create(ALICE, {"url": "https://hooks.example.com/in", "name": "hook"})
    assert made.secret and len(made.secret) >= 32
    assert service.get(ALICE, "hook").secret is None
    assert service.list(ALICE, False, 10)[0].secret is None
    with store.transaction() as s:
        row = repo.by_uuid(s, made.uuid)
        assert row is not None and made.secret not in row.secret_enc
        assert BOX.open(row.secret_enc) == made.secret
    given = service.create(ALICE, {"url": "https://hooks.example.com/2", "secret": SECRET})
    assert given.secret == SECRET


def test_projects_see_only_their_own(service: SubscriptionService) -> None:
    made = service.create(ALICE, {"url": "https://hooks.example.com/in", "name": "hook"})
    for ident in (made.uuid, "hook"):
        with pytest.raises(NotFound):
            service.get(BOB, ident)
        with pytest.raises(NotFound):
            service.delete(BOB, ident)
        with pytest.raises(NotFound):
            service.dead_letters(BOB, ident, None, 10)
        with pytest.raises(NotFound):
            service.redeliver(BOB, ident, None)
    assert service.list(BOB, False, 10) == []
    with pytest.raises(Forbidden):
        service.list(BOB, True, 10)
    assert [v.uuid for v in service.list(ADMIN, True, 10)] == [made.uuid]
    assert service.get(ADMIN, made.uuid).project_id == "p1"


def test_the_per_project_limit_and_unique_names(service: SubscriptionService) -> None:
    service.create(ALICE, {"url": "https://hooks.example.com/1", "name": "one"})
    with pytest.raises(Conflict):
        service.create(ALICE, {"url": "https://hooks.example.com/1", "name": "one"})
    service.create(ALICE, {"url": "https://hooks.example.com/2"})
    service.create(ALICE, {"url": "https://hooks.example.com/3"})
    with pytest.raises(OverQuota, match="subscriptions: the project has 3 of at most 3"):
        service.create(ALICE, {"url": "https://hooks.example.com/4"})
    service.create(BOB, {"url": "https://hooks.example.com/4"})  # another project's own


def test_a_subscription_is_a_durable_reader_until_deleted(service: SubscriptionService,
                                                          store: Store) -> None:
    _write(store, "capsule.update")
    made = service.create(ALICE, {"url": "https://hooks.example.com/in"})
    with store.transaction() as s:
        assert outbox_readers.position(s, repo.reader_name(made.uuid)) == 1  # no replay
    service.delete(ALICE, made.uuid)
    with store.transaction() as s:
        assert outbox_readers.position(s, repo.reader_name(made.uuid)) is None


# -- delivering ----------------------------------------------------------------------------

def test_the_receiver_gets_signed_wanted_events_at_the_checked_address(
        service: SubscriptionService, store: Store, poster: HttpPoster,
        receiver: Receiver) -> None:
    made = service.create(ALICE, {"url": "https://hooks.example.com:8443/in?k=v",
                                  "events": ["capsule.*"], "secret": SECRET})
    _write(store, "capsule.create.start", "container.update", "capsule.update")
    _write(store, "capsule.update", project="p2")  # another project's
    relay = _relay(store, made.uuid, _sink(store, made.uuid, poster))
    relay.run_once()
    assert receiver.seqs() == [1, 3]
    first = receiver.requests[0]
    assert str(first.url) == "https://93.184.215.14:8443/in?k=v"  # the address checked
    assert first.headers["Host"] == "hooks.example.com:8443"
    assert first.extensions["sni_hostname"] == "hooks.example.com"
    assert first.headers["X-Capsuled-Event"] == "capsule.create.start"
    assert first.headers["X-Capsuled-Subscription"] == made.uuid
    assert verify(SECRET, first.headers["X-Capsuled-Timestamp"], first.content,
                  first.headers["X-Capsuled-Signature"])
    body = json.loads(first.content)
    assert (body["seq"], body["event_type"], body["project_id"]) == (1, "capsule.create.start", "p1")
    view = service.get(ALICE, made.uuid)
    assert (view.position, view.delivered, view.last_delivered_seq, view.state) == (
        4, 2, 3, "active")  # the cursor passed the skipped record and p2's too


def test_a_name_that_now_resolves_privately_is_not_contacted(
        service: SubscriptionService, store: Store, poster: HttpPoster,
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    made = service.create(ALICE, {"url": "http://hooks.example.com/in"})
    monkeypatch.setitem(DNS, "hooks.example.com", ["10.0.0.5"])  # DNS rebinding
    _write(store, "capsule.update")
    relay = _relay(store, made.uuid, _sink(store, made.uuid, poster))
    with pytest.raises(DeliveryFailed, match="resolves to 10.0.0.5, a private address"):
        relay.run_once()
    assert receiver.requests == []
    view = service.get(ALICE, made.uuid)
    assert (view.state, view.retry_seq, view.retry_attempts) == ("retrying", 1, 1)
    assert view.last_error and "10.0.0.5" in view.last_error


def test_failures_are_retried_then_dead_lettered_then_probed(
        service: SubscriptionService, store: Store, poster: HttpPoster,
        receiver: Receiver) -> None:
    made = service.create(ALICE, {"url": "https://hooks.example.com/in"})
    clock = [datetime(2026, 1, 1)]
    relay = _relay(store, made.uuid, _sink(store, made.uuid, poster, clock,
                                           RetryPolicy(1, 60, 600, 100)))
    receiver.status = 503
    _write(store, *["capsule.update"] * 6)
    with pytest.raises(DeliveryFailed):
        relay.run_once()
    clock[0] += timedelta(seconds=300)
    with pytest.raises(DeliveryFailed):
        relay.run_once()
    assert receiver.seqs() == [1, 1]  # the same event, nothing after it
    assert service.get(ALICE, made.uuid).retry_attempts == 2
    clock[0] += timedelta(seconds=300)  # the window is over
    relay.run_once()
    # seq 1 gave up; 2..6 dead-lettered without a request; only 3 are kept (keep=3)
    assert receiver.seqs() == [1, 1, 1]
    view = service.get(ALICE, made.uuid)
    assert (view.state, view.dead_letters, view.dead_lettered, view.dead_letters_dropped,
            view.position) == ("dead_lettering", 3, 6, 3, 6)
    letters = service.dead_letters(ALICE, made.uuid, None, 10)
    assert [d.seq for d in letters] == [4, 5, 6]
    assert letters[0].last_error == NOT_ATTEMPTED and letters[0].attempts == 0
    assert letters[0].event["seq"] == 4
    assert view.last_error is not None and "HTTP 503: busy now" in view.last_error
    # After retry_max a real attempt: the receiver is back, delivery resumes.
    receiver.status = 200
    _write(store, "capsule.update")
    clock[0] += timedelta(seconds=61)
    relay.run_once()
    assert receiver.seqs()[-1] == 7
    assert service.get(ALICE, made.uuid).state == "active"


def test_dead_letters_are_redelivered_once_each(service: SubscriptionService, store: Store,
                                                poster: HttpPoster, receiver: Receiver) -> None:
    made = service.create(ALICE, {"url": "https://hooks.example.com/in", "secret": SECRET})
    sink = _sink(store, made.uuid, poster, policy=RetryPolicy(1, 60, 600, 1))
    relay = _relay(store, made.uuid, sink)
    receiver.status = 500
    _write(store, "capsule.update", "capsule.update")
    relay.run_once()
    assert [d.seq for d in service.dead_letters(ALICE, made.uuid, None, 10)] == [1, 2]
    assert service.redeliver(ALICE, made.uuid, 2) == 1
    receiver.status = 200
    receiver.requests.clear()
    assert sink.redeliver_queued() is False
    assert receiver.seqs() == [2]
    r = receiver.requests[0]
    assert verify(SECRET, r.headers["X-Capsuled-Timestamp"], r.content,
                  r.headers["X-Capsuled-Signature"])
    assert [d.seq for d in service.dead_letters(ALICE, made.uuid, None, 10)] == [1]
    assert service.discard(ALICE, made.uuid, None) == 1
    assert service.dead_letters(ALICE, made.uuid, None, 10) == []


# -- the HTTP side -------------------------------------------------------------------------

def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_deadline() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        try:
            for _ in range(40):  # a byte every 0.1 s: each read is quick, the whole is not
                conn.sendall(b"H")
                time.sleep(0.1)
        except OSError:
            pass
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    poster = HttpPoster(0.6, 1024)
    started = time.monotonic()
    reply = poster.post(parse_url(f"http://127.0.0.1:{port}/"), True, {}, b"{}")
    assert time.monotonic() - started < 2
    assert not reply.ok and reply.error == "timed out after 0.6s"
    listener.close()
    poster.close()


def test_redirects_are_not_followed(store: Store) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return answer(302, Location="http://127.0.0.1/")

    poster = HttpPoster(2, 1024, resolve=resolve, transport=httpx.MockTransport(handler))
    reply = poster.post(parse_url("https://hooks.example.com/"), False, {}, b"{}")
    assert (reply.ok, reply.status, reply.error) == (False, 302, "HTTP 302")


# -- the supervisor ------------------------------------------------------------------------

def test_the_supervisor_serves_new_subscriptions_and_lets_deleted_ones_go(
        store: Store, poster: HttpPoster, receiver: Receiver) -> None:
    sup = WebhookSupervisor(store, BOX, SETTINGS, poster)
    service = SubscriptionService(store, BOX, Policy(), SETTINGS, resolve, changed=sup.rescan)
    sup.start()
    try:
        made = service.create(ALICE, {"url": "https://hooks.example.com/in"})
        deadline = time.monotonic() + 5
        while made.uuid not in sup.entries() and time.monotonic() < deadline:
            time.sleep(0.02)
        _write(store, "capsule.update", "container.update")
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.seqs() == [1, 2]
        service.delete(ALICE, made.uuid)
        while made.uuid in sup.entries() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert made.uuid not in sup.entries()
        _write(store, "capsule.update")
        time.sleep(0.3)
        assert receiver.seqs() == [1, 2]
    finally:
        sup.stop()


def test_the_supervisor_backs_off_and_recovers(store: Store, poster: HttpPoster,
                                               receiver: Receiver) -> None:
    sup = WebhookSupervisor(store, BOX, SETTINGS, poster)
    service = SubscriptionService(store, BOX, Policy(), SETTINGS, resolve, changed=sup.rescan)
    receiver.status = 500
    sup.start()
    try:
        made = service.create(ALICE, {"url": "https://hooks.example.com/in"})
        _write(store, "capsule.update")
        deadline = time.monotonic() + 5
        while len(receiver.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        receiver.status = 200
        while service.get(ALICE, made.uuid).delivered < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        view = service.get(ALICE, made.uuid)
        assert (view.delivered, view.state, view.dead_letters) == (1, "active", 0)
        assert view.failed_attempts >= 3 and set(receiver.seqs()) == {1}
    finally:
        sup.stop()


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.utcnow()  # noqa: DTZ003
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_goes_to_the_checked_address_and_verifies_the_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection is to 127.0.0.1 (what the name resolved to), yet TLS is asked for
    and verified against the URL's name (SNI), and Host carries the name."""
    import ssl
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from capsuled.api.relay.egress import tls_context

    cert, key = _self_signed(tmp_path, "hooks.example.com")
    seen: dict[str, str | None] = {}
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    def note_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen["sni"] = name

    server_ctx.sni_callback = note_sni  # type: ignore[assignment]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            seen["host"] = self.headers["Host"]
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setitem(DNS, "hooks.example.com", ["127.0.0.1"])
    monkeypatch.setitem(DNS, "other.example.com", ["127.0.0.1"])
    poster = HttpPoster(3, 1024, resolve=resolve, verify=tls_context(cert))
    try:
        ok = poster.post(parse_url(f"https://hooks.example.com:{port}/in"), True, {}, b"{}")
        assert (ok.ok, ok.status) == (True, 204), ok
        assert seen == {"sni": "hooks.example.com", "host": f"hooks.example.com:{port}"}
        wrong = poster.post(parse_url(f"https://other.example.com:{port}/in"), True, {}, b"{}")
        assert not wrong.ok and wrong.status is None and "certificate" in (wrong.error or "")
        # A member's subscription to the same name is refused before any connection.
        refused = poster.post(parse_url(f"https://hooks.example.com:{port}/in"), False, {}, b"{}")
        assert refused.error is not None and "loopback" in refused.error
    finally:
        httpd.shutdown()
        httpd.server_close()
        poster.close()
