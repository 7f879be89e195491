"""Webhooks through the real server: a local receiver checks every signature and gets every
change of its project in seq order, also after being down for a while; members cannot aim
at loopback (admins may) nor reach another project's subscriptions; an endpoint that keeps
failing fills the dead letters, which are redelivered once it answers again."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import docker
import httpx
import pytest
from conftest import (Server, free_port, remove_instance_objects, start_server, template,
                      wait_for)

pytestmark = [pytest.mark.docker]
NOWHERE = "no-such-zone"  # no host is there: creates end in Error without touching Docker
# Short retries so that "down for a while" and "gave up" both fit in seconds.
ENV = {"CAPSULED_WEBHOOKS__RETRY_INITIAL": "0.2", "CAPSULED_WEBHOOKS__RETRY_MAX": "1",
       "CAPSULED_WEBHOOKS__RETRY_WINDOW": "6", "CAPSULED_WEBHOOKS__TIMEOUT": "2",
       "CAPSULED_WEBHOOKS__POLL": "0.5", "CAPSULED_WEBHOOKS__PER_PROJECT": "3"}


class Receiver:
    """A webhook receiver on 127.0.0.1 (http.server in a thread) that checks signatures as
    a receiver should: HMAC-SHA256 of "<timestamp>.<body>" under the secret."""

    def __init__(self) -> None:
        self.port = free_port()
        self.secret = ""
        self.status = 200
        self.got: list[dict[str, Any]] = []  # what it answered 2xx to, in arrival order
        self.refused = 0
        self.bad_signatures = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stamp = self.headers["X-Capsuled-Timestamp"]
                mac = hmac.new(receiver.secret.encode(), stamp.encode() + b"." + body,
                               hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(f"sha256={mac}",
                                             self.headers["X-Capsuled-Signature"])
                event = json.loads(body)
                with receiver._lock:
                    if not signed:
                        receiver.bad_signatures += 1
                    if receiver.status < 300 and signed:
                        assert self.headers["X-Capsuled-Delivery"] == str(event["seq"])
                        assert self.headers["X-Capsuled-Event"] == event["event_type"]
                        receiver.got.append(event)
                    else:
                        receiver.refused += 1
                self.send_response(receiver.status if signed else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def seqs(self) -> list[int]:
        """Seqs received, each once (delivery is at least once: receivers dedupe on seq)."""
        with self._lock:
            out: list[int] = []
            for e in self.got:
                if e["seq"] not in out:
                    out.append(e["seq"])
            return out


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory,
          docker_api: docker.APIClient) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("webhooks"), docker_api, **ENV)
    instance = srv.instance
    yield srv
    srv.stop()
    remove_instance_objects(docker_api, instance)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture()
def admin(hooks: Server) -> Iterator[httpx.Client]:
    with hooks.client() as c:
        yield c
        for s in c.get("/v1/subscriptions").json()["subscriptions"]:
            c.delete(f"/v1/subscriptions/{s['uuid']}")


def _subscribe(client: httpx.Client, receiver: Receiver, **extra: Any) -> dict[str, Any]:
    r = client.post("/v1/subscriptions", json={"url": receiver.url, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    receiver.secret = body["secret"]
    return body


def _churn(client: httpx.Client, name: str) -> None:
    """An unplaceable capsule, created and deleted: four change records."""
    t = template(name, [{"name": "c", "image": "busybox"}])
    t["availabilityZone"] = NOWHERE
    r = client.post("/v1/capsules", json={"template": t})
    assert r.status_code == 202, r.text
    assert client.delete(f"/v1/capsules/{name}").status_code == 204
    wait_for(lambda: client.get(f"/v1/capsules/{name}").status_code == 404, timeout=30,
             what=f"{name} to be gone")


def _expected(client: httpx.Client, since: int) -> list[int]:
    r = client.get("/v1/events", params={"since": str(since)})
    assert r.status_code == 200, r.text
    return [e["seq"] for e in r.json()["events"]]


def test_every_event_arrives_signed_and_in_order_even_after_the_receiver_was_down(
        admin: httpx.Client, receiver: Receiver) -> None:
    sub = _subscribe(admin, receiver)
    assert admin.get(f"/v1/subscriptions/{sub['uuid']}").json().get("secret") is None
    start = sub["position"]
    _churn(admin, f"hook-a-{uuid.uuid4().hex[:6]}")
    first = _expected(admin, start)
    assert len(first) == 4
    wait_for(lambda: receiver.seqs() == first, timeout=15, what="the first four events")

    receiver.stop()  # the receiver goes down; changes go on
    _churn(admin, f"hook-b-{uuid.uuid4().hex[:6]}")
    def retried() -> dict[str, Any] | None:
        view: dict[str, Any] = admin.get(f"/v1/subscriptions/{sub['uuid']}").json()
        return view if view["state"] == "retrying" and view["failed_attempts"] >= 2 else None

    # No longer than that: the receiver must be back within the retry window (6 s from the
    # first failure), which a busy machine's churn above has already eaten into.
    down = wait_for(retried, timeout=5, what="delivery to be retrying, a second time")
    assert down["retrying"]["seq"] == first[-1] + 1, down
    assert "connect" in (down["last_error"] or ""), down
    receiver.start()  # back within the retry window (6 s)
    _churn(admin, f"hook-c-{uuid.uuid4().hex[:6]}")
    every = _expected(admin, start)
    assert len(every) == 12
    wait_for(lambda: receiver.seqs() == every, timeout=20, what="all twelve events")
    assert receiver.bad_signatures == 0
    seqs = [e["seq"] for e in receiver.got]
    assert seqs == sorted(seqs)  # in order (a repeat, if any, right after itself)
    kinds = [e["event_type"] for e in receiver.got[:4]]
    assert kinds == ["capsule.create.start", "capsule.create.error", "capsule.delete.start",
                     "capsule.delete.end"]
    after = admin.get(f"/v1/subscriptions/{sub['uuid']}").json()
    assert (after["state"], after["dead_letters"], after["last_delivered_seq"]) == (
        "active", 0, every[-1]), after


def test_a_filter_delivers_only_the_wanted_events(admin: httpx.Client,
                                                  receiver: Receiver) -> None:
    sub = _subscribe(admin, receiver, events=["capsule.delete.*"])
    _churn(admin, f"hook-f-{uuid.uuid4().hex[:6]}")
    wait_for(lambda: len(receiver.seqs()) == 2, timeout=15, what="the two delete events")
    assert [e["event_type"] for e in receiver.got] == ["capsule.delete.start",
                                                      "capsule.delete.end"]
    wait_for(lambda: admin.get(f"/v1/subscriptions/{sub['uuid']}").json()["position"]
             >= receiver.seqs()[-1], timeout=5, what="the cursor past the skipped ones")


def test_members_may_not_aim_at_loopback_or_private_addresses(
        hooks: Server, admin: httpx.Client, receiver: Receiver) -> None:
    member = hooks.client(hooks.issue_token(f"hk-{uuid.uuid4().hex[:6]}", "m", "member"))
    for url in (receiver.url, f"http://localhost:{receiver.port}/", "http://[::1]/",
                "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/latest/meta-data/",
                "http://10.1.2.3/", "http://0.0.0.0/"):
        r = member.post("/v1/subscriptions", json={"url": url})
        assert r.status_code == 403, (url, r.text)
        assert "url: " in r.json()["errors"][0]["detail"], r.text
    r = member.post("/v1/subscriptions", json={"url": "ftp://x/", "events": ["Bad"],
                                               "secret": "short", "extra": 1})
    assert r.status_code == 400, r.text
    detail = r.json()["errors"][0]["detail"]
    for field in ("url:", "events[0]:", "secret:", "extra:"):
        assert field in detail, detail
    assert member.get("/v1/subscriptions").json()["subscriptions"] == []
    _subscribe(admin, receiver)  # an admin may
    member.close()


def test_another_projects_subscriptions_are_not_found(hooks: Server,
                                                      admin: httpx.Client) -> None:
    a = hooks.client(hooks.issue_token(f"hk-{uuid.uuid4().hex[:6]}", "a", "member"))
    b = hooks.client(hooks.issue_token(f"hk-{uuid.uuid4().hex[:6]}", "b", "member"))
    # A public address, and a filter nothing in this project produces: nothing is sent.
    r = a.post("/v1/subscriptions", json={"url": "https://93.184.215.14/in", "name": "mine",
                                          "events": ["container.delete.end"]})
    assert r.status_code == 201, r.text
    made = r.json()
    for ident in (made["uuid"], "mine"):
        assert b.get(f"/v1/subscriptions/{ident}").status_code == 404
        assert b.delete(f"/v1/subscriptions/{ident}").status_code == 404
        assert b.get(f"/v1/subscriptions/{ident}/dead_letters").status_code == 404
        assert b.post(f"/v1/subscriptions/{ident}/dead_letters/redeliver").status_code == 404
    assert b.get("/v1/subscriptions").json()["subscriptions"] == []
    assert b.get("/v1/subscriptions", params={"all_projects": "true"}).status_code == 403
    assert [s["uuid"] for s in a.get("/v1/subscriptions").json()["subscriptions"]] == [
        made["uuid"]]
    everyone = admin.get("/v1/subscriptions", params={"all_projects": "true"}).json()
    assert made["uuid"] in {s["uuid"] for s in everyone["subscriptions"]}
    for n in range(2):  # the per-project limit (3 in this server)
        assert a.post("/v1/subscriptions", json={"url": f"https://93.184.215.14/{n}",
                                                 "events": ["container.delete.end"]}
                      ).status_code == 201
    over = a.post("/v1/subscriptions", json={"url": "https://93.184.215.14/x"})
    assert over.status_code == 403 and "subscriptions:" in over.text, over.text
    assert a.delete(f"/v1/subscriptions/{made['uuid']}").status_code == 204
    assert a.get(f"/v1/subscriptions/{made['uuid']}").status_code == 404
    for s in a.get("/v1/subscriptions").json()["subscriptions"]:
        a.delete(f"/v1/subscriptions/{s['uuid']}")
    a.close()
    b.close()


def test_an_endpoint_that_keeps_failing_fills_the_dead_letters_until_redelivered(
        admin: httpx.Client, receiver: Receiver) -> None:
    receiver.status = 500
    sub = _subscribe(admin, receiver, events=["capsule.create.*"])
    _churn(admin, f"hook-d-{uuid.uuid4().hex[:6]}")
    path = f"/v1/subscriptions/{sub['uuid']}"

    def dead() -> list[dict[str, Any]]:
        r = admin.get(f"{path}/dead_letters")
        assert r.status_code == 200, r.text
        return list(r.json()["dead_letters"])

    wait_for(lambda: len(dead()) == 2, timeout=30, what="two dead letters")
    letters = dead()
    assert [d["event"]["event_type"] for d in letters] == ["capsule.create.start",
                                                          "capsule.create.error"]
    assert letters[0]["attempts"] >= 2 and "HTTP 500" in letters[0]["last_error"], letters[0]
    view = admin.get(path).json()
    assert (view["state"], view["dead_letters"], view["dead_lettered"]) == (
        "dead_lettering", 2, 2), view
    assert receiver.got == [] and receiver.refused >= 2

    receiver.status = 200
    r = admin.post(f"{path}/dead_letters/redeliver")
    assert (r.status_code, r.json()) == (202, {"queued": 2}), r.text
    wait_for(lambda: receiver.seqs() == [d["seq"] for d in letters], timeout=15,
             what="the redelivered events")
    wait_for(lambda: dead() == [], timeout=5, what="the dead letters to go")
    assert admin.get(path).json()["state"] == "active"
    assert admin.delete(f"{path}/dead_letters").json() == {"discarded": 0}


def test_the_cli_manages_subscriptions(hooks: Server, admin: httpx.Client,
                                       receiver: Receiver) -> None:
    secret = "a-secret-of-enough-length"
    made = hooks.cli("subscription", "create", "--url", receiver.url, "--name", "cli-hook",
                     "--event", "capsule.*", "--secret-stdin", "-o", "json", input=secret + "\n")
    assert made.returncode == 0, made.stderr
    body = json.loads(made.stdout)
    assert body["secret"] == secret and body["events"] == ["capsule.*"]
    listed = hooks.cli("subscription", "list")
    assert listed.returncode == 0 and "cli-hook" in listed.stdout and secret not in listed.stdout
    shown = hooks.cli("subscription", "show", "cli-hook")
    assert shown.returncode == 0 and "active" in shown.stdout and secret not in shown.stdout
    letters = hooks.cli("subscription", "dead-letters", "cli-hook")
    assert letters.returncode == 0 and "No dead letters found." in letters.stderr
    bad = hooks.cli("subscription", "create", "--url", "ftp://nope/")
    assert bad.returncode == 1 and "url:" in bad.stderr
    gone = hooks.cli("subscription", "delete", "cli-hook")
    assert gone.returncode == 0 and "subscription/cli-hook deleted" in gone.stdout
    assert hooks.cli("subscription", "show", "cli-hook").returncode == 1
