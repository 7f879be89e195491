"""A fleet update (`capsule update -l … --max-unavailable 1 --max-surge 1`) of four capsules
behind continuous traffic, on a real server and engine: with a healthy new version no
request fails and the fleet never has fewer ready capsules than before; with an unhealthy
one the CLI stops at the first batch, whose capsule rolls back by itself, and the others
stay on their revision, still serving.

The load balancer is the test's: it sends requests to the capsules the API lists as ready
(status Running, all containers ready), re-reading the list every 100 ms, and, like nginx's
proxy_next_upstream (its default `error` condition), tries the next ready capsule when a
connection is refused, or closed or reset before any response came back (a GET is idempotent: a
container stopped between the list and the request). A request fails when no ready
capsule answers it with 200."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import LATEST, Server, template, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

HTTPD = "mkdir -p /www && echo {v} > /www/index.html && exec httpd -f -p 8080 -h /www"


def version(v: str, label: str, serves: bool = True) -> dict[str, Any]:
    web = {"name": "web", "image": "busybox",
           "command": ["sh", "-c", HTTPD.format(v=v) if serves else
                       "mkdir -p /www && exec httpd -f -p 8080 -h /www"],
           "readinessProbe": {"httpGet": {"port": 8080, "path": "/index.html"},
                              "periodSeconds": 1, "failureThreshold": 1}}
    return template(None, [web], labels={"app": label}, minReadySeconds=1,
                    progressDeadlineSeconds=8)


class Balancer:
    def __init__(self, server: Server, label: str) -> None:
        self._api = httpx.Client(base_url=server.url, timeout=10,
                                 headers={"X-Auth-Token": server.token, **LATEST})
        self._label = label
        self.backends: list[str] = []
        self.served: Counter[str] = Counter()
        self.failures: list[str] = []
        self.ready_counts: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._refresh, daemon=True),
                         threading.Thread(target=self._traffic, daemon=True)]

    def __enter__(self) -> Balancer:
        self._read()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._api.close()

    def _read(self) -> None:
        listed = self._api.get("/v1/capsules", params={"labels": f"app={self._label}"}).json()
        ready = [entry["addr"] for c in listed["capsules"]
                 if c["status"] == "Running" and c["all_ready"]
                 for entries in c["addresses"].values() for entry in entries]
        self.backends = ready
        self.ready_counts.append(len(ready))

    def _refresh(self) -> None:
        while not self._stop.wait(0.1):
            self._read()

    def _traffic(self) -> None:
        turn = itertools.count()
        with httpx.Client(timeout=2) as http:
            while not self._stop.wait(0.02):
                backends = list(self.backends)
                if not backends:
                    self.failures.append("no ready capsule")
                    continue
                start = next(turn)
                for i in range(len(backends)):
                    addr = backends[(start + i) % len(backends)]
                    try:
                        r = http.get(f"http://{addr}:8080/index.html")
                    except httpx.ConnectError:
                        continue  # refused: nothing reached it; the next one
                    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                        text = str(exc)
                        if "without sending a response" in text or "reset by peer" in text:
                            continue  # closed or reset with no answer at all: the next one
                        self.failures.append(f"{addr}: {exc!r}")
                        break
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{addr}: {exc!r}")
                        break
                    if r.status_code == 200:
                        self.served[r.text.strip()] += 1
                    else:
                        self.failures.append(f"{addr}: HTTP {r.status_code}")
                    break
                else:
                    self.failures.append(f"every ready capsule refused: {backends}")


@pytest.fixture()
def fleet(server: Server, unique: Callable[[str], str]) -> Iterator[tuple[str, list[str]]]:
    label = unique("fleet")
    names = [f"{label}-{i}" for i in range(4)]
    with server.client() as api:
        for name in names:
            tmpl = version("v1", label)
            tmpl["metadata"]["name"] = name
            assert api.post("/v1/capsules", json={"template": tmpl}).status_code == 202
        yield label, names
        for c in api.get("/v1/capsules", params={"labels": f"app={label}"}).json()["capsules"]:
            api.delete(f"/v1/capsules/{c['uuid']}")
        wait_for(lambda: not api.get("/v1/capsules", params={"labels": f"app={label}"}).json()[
            "capsules"], timeout=60, what="the fleet gone")  # the shared server's CPU


def revisions_of(server: Server, names: list[str]) -> list[int]:
    with server.client() as api:
        return [api.get(f"/v1/capsules/{n}").json()["revision"] for n in names]


def test_a_fleet_update_behind_traffic(server: Server, fleet: tuple[str, list[str]],
                                       tmp_path: Path) -> None:
    label, names = fleet
    with server.client() as api:
        def all_ready() -> bool:
            found = api.get("/v1/capsules", params={"labels": f"app={label}"}).json()["capsules"]
            return len(found) == 4 and all(c["all_ready"] for c in found)
        wait_for(all_ready, timeout=90, what="four ready capsules")
    v2, v3 = tmp_path / "v2.yaml", tmp_path / "v3.yaml"
    v2.write_text(yaml.safe_dump(version("v2", label)))
    v3.write_text(yaml.safe_dump(version("v3", label, serves=False)))

    with Balancer(server, label) as lb:
        wait_for(lambda: lb.served["v1"] > 10, timeout=20, what="traffic to flow")
        done = server.cli("update", "-l", f"app={label}", "-f", str(v2), "--max-unavailable", "1",
                          "--max-surge", "1", timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: lb.served["v2"] > 10, timeout=20, what="v2 traffic")
    assert lb.failures == [], lb.failures[:5]
    assert min(lb.ready_counts) >= 4  # the surge capsule came first: capacity never dropped
    assert "surge" in done.stdout and "fleet: 4 of 4 capsule(s) on the new revision" in done.stdout
    assert revisions_of(server, names) == [2, 2, 2, 2]

    with Balancer(server, label) as lb:
        wait_for(lambda: lb.served["v2"] > 10, timeout=20, what="traffic to flow")
        failed = server.cli("update", "-l", f"app={label}", "-f", str(v3), "--max-unavailable",
                            "1", timeout=300)
        assert failed.returncode == 1
        served_v2 = lb.served["v2"]
        wait_for(lambda: lb.served["v2"] > served_v2 + 10, timeout=20, what="v2 traffic still")
    assert lb.failures == [], lb.failures[:5]
    assert min(lb.ready_counts) >= 3  # one batch of one capsule at a time
    assert lb.served["v3"] == 0
    assert f"capsule/{names[0]}: revision 3 failed: not ready within progressDeadlineSeconds" \
        in failed.stderr
    assert "fleet: stopped at batch 1/4" in failed.stdout
    # The first rolled back by itself (revision 4 is revision 2's spec); the rest untouched.
    assert revisions_of(server, names) == [4, 2, 2, 2]
