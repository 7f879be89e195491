"""The outbox's watch stream (GET /v1/events?watch=true) on the real server: each watcher
sees every change of its own project, in order, and nothing of another's; a reconnect
with `since` misses nothing; a slow watcher holds up nobody."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from conftest import LATEST, Server, sleeper, template, wait_for

pytestmark = [pytest.mark.docker]
NOWHERE = "no-such-zone"  # no host is there: creates end in Error without touching Docker


def _project() -> str:
    return f"w-{uuid.uuid4().hex[:8]}"


def _unplaceable(name: str, **labels: str) -> dict[str, Any]:
    t = template(name, [sleeper("c")], labels=labels)
    t["availabilityZone"] = NOWHERE
    return t


class Watcher:
    """A watch stream read by a thread until `stop()`; what it got is in `records`."""

    def __init__(self, server: Server, token: str, since: int | None = None,
                 **params: str) -> None:
        self.records: list[dict[str, Any]] = []
        self.heartbeats = 0
        self.status: int | None = None
        self._stop = threading.Event()
        query = {"watch": "true", **params}
        if since is not None:
            query["since"] = str(since)
        self._client = httpx.Client(base_url=server.url, headers={"X-Auth-Token": token, **LATEST},
                                    timeout=httpx.Timeout(30, read=60))
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(query,), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the watch stream did not open"

    def _run(self, query: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", "/v1/events", params=query) as r:
                self.status = r.status_code
                self._socket = r.extensions["network_stream"].get_extra_info("socket")
                self._ready.set()
                if r.status_code != 200:
                    r.read()
                    self.body = r.text
                    return
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    item = json.loads(line)
                    if item.get("heartbeat"):
                        self.heartbeats += 1
                    else:
                        self.records.append(item)
        except httpx.HTTPError:
            pass
        finally:
            self._ready.set()

    def stop(self) -> None:
        """Hang up (the socket's shutdown wakes the thread blocked reading it)."""
        self._stop.set()
        sock = getattr(self, "_socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._client.close()
        self._thread.join(timeout=10)

    def wait_count(self, n: int, timeout: float = 60) -> None:
        wait_for(lambda: len(self.records) >= n, timeout=timeout,
                 what=f"{n} records (have {len(self.records)})")


def _head(client: httpx.Client) -> int:
    r = client.get("/v1/events", params={"limit": "1"})
    assert r.status_code == 200, r.text
    return int(r.json()["head"])


def _page(client: httpx.Client, since: int, **params: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        r = client.get("/v1/events", params={"since": str(since), **params})
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["events"]
        if body["last_seq"] == since or body["last_seq"] >= body["head"]:
            return out
        since = body["last_seq"]


@pytest.fixture()
def tenants(server: Server) -> Iterator[dict[str, httpx.Client]]:
    clients = {p: server.client(server.issue_token(p, "u", "member"))
               for p in (_project(), _project())}
    yield clients
    for c in clients.values():
        c.close()


def _churn(client: httpx.Client, names: list[str]) -> list[str]:
    """Create each (an unplaceable capsule) and delete it: two changes per name."""
    uuids = []
    for name in names:
        r = client.post("/v1/capsules", json={"template": _unplaceable(name, app=name)})
        assert r.status_code == 202, r.text
        uuids.append(r.json()["uuid"])
        assert client.delete(f"/v1/capsules/{name}").status_code == 204
    return uuids


EXPECTED = ["capsule.create.start", "capsule.create.error", "capsule.delete.start",
            "capsule.delete.end"]


def test_100_concurrent_changes_two_projects_two_watchers_each(
        server: Server, tenants: dict[str, httpx.Client]) -> None:
    (p1, c1), (p2, c2) = tenants.items()
    tokens = {p: c.headers["X-Auth-Token"] for p, c in tenants.items()}
    start = _head(c1)
    watchers = {p: [Watcher(server, tokens[p], since=start) for _ in range(2)] for p in tenants}
    try:
        # 25 capsules per project, each created and deleted: 100 changes, from 10 threads.
        names = {p: [f"cap-{i}-{uuid.uuid4().hex[:6]}" for i in range(25)] for p in tenants}
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(_churn, tenants[p], names[p][i::5])
                       for p in tenants for i in range(5)]
            made = {p: set() for p in tenants}  # type: dict[str, set[str]]
            for f, p in zip(futures, [p for p in tenants for _ in range(5)], strict=True):
                made[p].update(f.result())
        for p, ws in watchers.items():
            for w in ws:
                w.wait_count(25 * 4)
        for p, ws in watchers.items():
            for w in ws:
                got = w.records
                seqs = [r["seq"] for r in got]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
                assert {r["project_id"] for r in got} == {p}
                assert {r["uuid"] for r in got} == made[p]
                for u in made[p]:
                    assert [r["event_type"] for r in got if r["uuid"] == u] == EXPECTED
            # Both watchers of a project saw the same thing, as the pages show it too.
            assert ws[0].records == ws[1].records == _page(tenants[p], start)
        time.sleep(0.5)  # nothing else arrives (no other project's records)
        assert all(len(w.records) == 100 for ws in watchers.values() for w in ws)
    finally:
        for ws in watchers.values():
            for w in ws:
                w.stop()


def test_a_reconnect_with_since_misses_nothing(server: Server,
                                               tenants: dict[str, httpx.Client]) -> None:
    client = next(iter(tenants.values()))
    token = client.headers["X-Auth-Token"]
    start = _head(client)
    w = Watcher(server, token, since=start)
    _churn(client, [f"a-{uuid.uuid4().hex[:6]}" for _ in range(3)])
    w.wait_count(12)
    w.stop()
    last = w.records[-1]["seq"]
    # Changes while nobody watches, then a watcher resuming after the last seq it saw.
    _churn(client, [f"b-{uuid.uuid4().hex[:6]}" for _ in range(3)])
    again = Watcher(server, token, since=last)
    try:
        _churn(client, [f"c-{uuid.uuid4().hex[:6]}" for _ in range(2)])
        again.wait_count(20)
        assert w.records + again.records == _page(client, start)
        assert again.records[0]["seq"] > last
    finally:
        again.stop()


def test_scoping_filters_and_all_projects(server: Server,
                                          tenants: dict[str, httpx.Client]) -> None:
    (p1, c1), (p2, c2) = tenants.items()
    start = _head(c1)
    # A member asking for every project is refused, stream or page.
    w = Watcher(server, c1.headers["X-Auth-Token"], all_projects="true")
    assert w.status == 403, w.status
    w.stop()
    r = c1.get("/v1/events", params={"all_projects": "true"})
    assert r.status_code == 403 and "event:get_all_all_projects" in r.text, r.text
    mine, theirs = f"m-{uuid.uuid4().hex[:6]}", f"t-{uuid.uuid4().hex[:6]}"
    _churn(c1, [mine])
    _churn(c2, [theirs])
    # Another project's capsule, by name or uuid, is simply not there.
    assert _page(c1, start, capsule=theirs) == []
    assert [r["name"] for r in _page(c1, start, capsule=mine)] == [mine] * 4
    assert [r["name"] for r in _page(c1, start, labels=f"app={mine}")] == [mine] * 4
    assert _page(c1, start, labels=f"app={theirs}") == []
    # An admin sees both with all_projects (and only its own project without it).
    with server.client() as admin:
        both = _page(admin, start, all_projects="true")
        assert {mine, theirs} <= {r["name"] for r in both}
        assert not {mine, theirs} & {r["name"] for r in _page(admin, start)}
    for bad, word in (({"since": "-1"}, "since"), ({"since": "x"}, "since"),
                      ({"watch": "maybe"}, "watch"), ({"watch": "true", "limit": "5"}, "limit")):
        r = c1.get("/v1/events", params=bad)
        assert r.status_code == 400 and word in r.text, (bad, r.text)


def test_server_sent_events(server: Server, tenants: dict[str, httpx.Client]) -> None:
    client = next(iter(tenants.values()))
    start = _head(client)
    name = f"s-{uuid.uuid4().hex[:6]}"
    _churn(client, [name])
    headers = {"Accept": "text/event-stream"}
    frames: list[str] = []
    with client.stream("GET", "/v1/events", params={"watch": "true", "since": str(start)},
                       headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            frames.append(line)
            if sum(f.startswith("data: ") for f in frames) == 4:
                break
    events = [f.removeprefix("event: ") for f in frames if f.startswith("event: ")]
    assert events == EXPECTED
    ids = [int(f.removeprefix("id: ")) for f in frames if f.startswith("id: ")]
    assert ids == sorted(ids) and ids[0] > start


def _bulky(client: httpx.Client, name: str) -> None:
    """An unplaceable capsule with ~16 KiB of labels, created and deleted: four records
    of that size each."""
    t = _unplaceable(name)
    t["metadata"]["labels"] = {f"k{i:02d}": "v" * 250 for i in range(64)}
    assert client.post("/v1/capsules", json={"template": t}).status_code == 202
    assert client.delete(f"/v1/capsules/{name}").status_code == 204


def test_a_slow_watcher_does_not_delay_creates(server: Server,
                                               tenants: dict[str, httpx.Client]) -> None:
    client = next(iter(tenants.values()))
    token = client.headers["X-Auth-Token"]
    start = _head(client)
    # A watcher that never reads: once more is sent than the sockets' buffers hold (4 MiB
    # on loopback), the server's writes to it wait.
    url = urlparse(server.url)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((url.hostname, url.port))
    slow.sendall(f"GET /v1/events?watch=true&since={start} HTTP/1.1\r\nHost: x\r\n"
                 f"X-Auth-Token: {token}\r\n\r\n".encode())
    fast = Watcher(server, token, since=start)
    try:
        took = []
        for _ in range(90):
            t0 = time.monotonic()
            _bulky(client, f"f-{uuid.uuid4().hex[:6]}")
            took.append(time.monotonic() - t0)
        fast.wait_count(360, timeout=60)
        sent = sum(len(json.dumps(r)) for r in fast.records)
        assert sent > 5 * 1_048_576, sent  # the slow one is stuck behind this much
        assert max(took) < 2.0, took
        with server.client() as admin:  # and the server answers everyone at once
            t0 = time.monotonic()
            assert admin.get("/v1/capsules").status_code == 200
            assert time.monotonic() - t0 < 1.0
    finally:
        slow.close()
        fast.stop()


def test_quota_refusals_and_bare_containers_are_records(
        server: Server, tenants: dict[str, httpx.Client], docker_api: Any) -> None:
    project, client = next(iter(tenants.items()))
    start = _head(client)
    with server.client() as admin:
        assert admin.put(f"/v1/quotas/{project}", json={"capsules": 0}).status_code == 200
    refused = f"q-{uuid.uuid4().hex[:6]}"
    r = client.post("/v1/capsules", json={"template": _unplaceable(refused)})
    assert r.status_code == 403, r.text
    [record] = _page(client, start, capsule=refused)
    assert (record["event_type"], record["reason"], record["status"]) == (
        "capsule.create.error", "QuotaExceeded", "Refused")
    name = f"bare-{uuid.uuid4().hex[:6]}"
    r = client.post("/v1/containers", params={"run": "true"},
                    json={"name": name, "image": "busybox", "command": ["sleep", "3600"]})
    assert r.status_code == 202, r.text
    ident = r.json()["uuid"]
    try:
        wait_for(lambda: any(e["event_type"] == "container.create.end"
                             for e in _page(client, start, capsule=name)), timeout=90,
                 what="container.create.end")
        assert docker_api.inspect_container(
            docker_api.containers(filters={"label": f"capsuled.container={ident}"})[0]["Id"]
        )["State"]["Running"]
    finally:
        assert client.delete(f"/v1/containers/{ident}", params={"stop": "true"}).status_code == 204
    wait_for(lambda: any(e["event_type"] == "container.delete.end"
                         for e in _page(client, start, capsule=ident)), timeout=60,
             what="container.delete.end")
    kinds = [e["event_type"] for e in _page(client, start, capsule=name)]
    assert kinds[0] == "container.create.start" and kinds[-1] == "container.delete.end", kinds
    assert {e["kind"] for e in _page(client, start, capsule=name)} == {"container"}


def test_heartbeats_and_a_pruned_since_is_gone(own_server: Any) -> None:
    srv = own_server(CAPSULED_API__WATCH_HEARTBEAT="0.3", CAPSULED_LIMITS__OUTBOX_RECORDS="100")
    project = _project()
    token = srv.issue_token(project, "u", "member")
    with srv.client(token) as client:
        w = Watcher(srv, token)
        try:
            wait_for(lambda: w.heartbeats >= 2, timeout=5, what="two heartbeats")
        finally:
            w.stop()
        _churn(client, [f"g-{i}-{uuid.uuid4().hex[:4]}" for i in range(80)])  # 320 records
        r = client.get("/v1/events", params={"since": "1"})
        assert r.status_code == 410 and "pruned" in r.text, r.text
        gone = Watcher(srv, token, since=1)
        assert gone.status == 410
        gone.stop()
        # Without since a page starts at the oldest record kept.
        body = client.get("/v1/events").json()
        kept = body["events"]
        assert 100 <= len(kept) < 320 and kept[-1]["seq"] == body["head"] == body["last_seq"]
        assert client.get("/v1/events", params={"since": str(kept[0]["seq"] - 1)}).status_code == 200


def test_a_real_capsule_tells_its_story(server: Server, tenants: dict[str, httpx.Client],
                                        docker_api: Any) -> None:
    client = next(iter(tenants.values()))
    start = _head(client)
    name = f"r-{uuid.uuid4().hex[:6]}"
    r = client.post("/v1/capsules", json={"template": template(name, [sleeper("app")])})
    assert r.status_code == 202, r.text
    capsule = r.json()["uuid"]
    try:
        wait_for(lambda: any(e["event_type"] == "capsule.create.end"
                             for e in _page(client, start, capsule=capsule)), timeout=90,
                 what="capsule.create.end")
        seen = _page(client, start, capsule=name)
        kinds = [e["event_type"] for e in seen]
        assert kinds[:2] == ["capsule.create.start", "capsule.update"]  # accepted, scheduled
        assert seen[-1]["status"] == "Running" or "capsule.create.end" in kinds
        ended = next(e for e in seen if e["event_type"] == "capsule.create.end")
        assert (ended["status"], ended["reason"]) == ("Running", "Running"), seen
        assert kinds.count("capsule.create.end") == 1, kinds  # one record per change
        # The agent's observations (image, sandbox, container started) came before it.
        assert len(kinds[:kinds.index("capsule.create.end")]) > 2, seen
        # What Docker really has: the container the records say started.
        running = docker_api.containers(filters={"label": f"capsuled.capsule={capsule}"})
        assert running, "no container of the capsule in Docker"
    finally:
        client.delete(f"/v1/capsules/{capsule}")
    wait_for(lambda: any(e["event_type"] == "capsule.delete.end"
                         for e in _page(client, start, capsule=capsule)), timeout=60,
             what="capsule.delete.end")


def test_watch_streams_count_against_the_stream_limits_until_they_hang_up(
        server: Server, tenants: dict[str, httpx.Client]) -> None:
    client = next(iter(tenants.values()))
    token = client.headers["X-Auth-Token"]
    open_ = [Watcher(server, token) for _ in range(10)]  # api.streams_per_project
    try:
        assert all(w.status == 200 for w in open_)
        over = Watcher(server, token)
        assert over.status == 429, over.status
        over.stop()
    finally:
        for w in open_:
            w.stop()

    def reopened() -> bool:
        w = Watcher(server, token)
        w.stop()
        return w.status == 200
    wait_for(reopened, timeout=10, what="the hung-up streams' places to be free")
