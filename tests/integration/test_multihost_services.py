"""Capsule services across hosts, on the two-host rig (multihost_rig.py): one service over
three busybox httpd capsules, one on host A and two on host B, and a client capsule on
host A. Its VIP is translated on host A; connections to the backends on host B then go
over the project's VXLAN segment (docs/networking.md, "Services across hosts").

- 1,000 requests from the client are spread over all three (each gets at least 20 %).
- A backend on host B made unready by its readiness probe gets no new connection later
  than 1 s after the probe's verdict: the verdict travels host B's agent → API → host A's
  agent's load balancer (the probe stamps the kernel's uptime when it fails, the client
  stamps each request with it: one clock for both hosts' containers).
- Deleting a backend on host B while the client sends requests back to back loses none:
  host B's agent drains it (out of every host's load balancer, then its connections)
  before its containers stop.
- A service made after a capsule resolves in it by name (its /etc/hosts predates the
  service: the answer comes from its host's DNS responder), and not in another project's
  capsule on the same host.

PostgreSQL only: the data path is the same on any database, and the suite's time budget
is spent once.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import httpx
import pytest
from conftest import exec_in, member, template, wait_for
from multihost_rig import Cluster, cluster  # noqa: F401 (the fixture)
from multihost_rig import delete_all, wait_status
from service_load import SPREAD, backend, start_load, stop_load

pytestmark = [pytest.mark.docker,
              pytest.mark.parametrize("cluster", ["postgresql"], indirect=True)]

PLACES = {"web0": "host-a", "web1": "host-b", "web2": "host-b"}


@dataclass
class Setup:
    cluster: Cluster
    api: httpx.Client
    service: dict[str, object]
    backends: dict[str, str]  # name → capsule uuid
    client: docker.APIClient  # the client capsule's engine (host A's)
    client_id: str  # the client capsule's container
    other: httpx.Client  # a member of another project
    early: str  # a container on host B of the project, made before any service but `web`
    stranger: str  # a container on host B of the other project

    def engine(self, name: str) -> docker.APIClient:
        return self.cluster.dockers[PLACES[name]]

    def serving(self) -> set[str]:
        r = self.api.get("/v1/capsule_services/web")
        return {b["name"] for b in r.json()["backends"] if b["serving"]} \
            if r.status_code == 200 else set()


def _sleeper(name: str, host: str) -> dict[str, object]:
    return template(name, [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
                    nodeSelector={"name": host})


def _member(cluster: Cluster, project: str, replica: int) -> httpx.Client:
    with cluster.client() as admin:
        r = admin.post("/v1/tokens", json={"project_id": project, "user_id": "u",
                                           "roles": ["member"]})
        assert r.status_code == 201, r.text
    return cluster.client(replica, r.json()["token"])


@pytest.fixture(scope="module")
def setup(cluster: Cluster) -> Iterator[Setup]:  # noqa: F811 (the fixture imported above)
    tag = secrets.token_hex(4)
    api, other = _member(cluster, f"mhsvc-{tag}", 0), _member(cluster, f"mhsvc-x{tag}", 1)
    made: list[tuple[httpx.Client, str]] = []
    try:
        r = api.post("/v1/capsule_services", json={
            "name": "web", "selector": {"app": tag}, "ports": [{"port": 80, "targetPort": 8080}]})
        assert r.status_code == 201, r.text
        service = r.json()
        todo = [(api, backend(name, tag, nodeSelector={"name": host}))
                for name, host in PLACES.items()]
        todo += [(api, _sleeper("client", "host-a")), (api, _sleeper("early", "host-b")),
                 (other, _sleeper("stranger", "host-b"))]
        for who, tmpl in todo:
            r = who.post("/v1/capsules", json={"template": tmpl})
            assert r.status_code == 202, r.text
            made.append((who, r.json()["uuid"]))
        with cluster.client() as admin:  # admins see the host
            hosts = [wait_status(admin, u, "Running", timeout=120)["host"] for _, u in made]
        assert hosts == [*PLACES.values(), "host-a", "host-b", "host-b"]
        a, b = cluster.dockers["host-a"], cluster.dockers["host-b"]
        uuids = [u for _, u in made]
        yield Setup(cluster, api, service, dict(zip(PLACES, uuids[:3], strict=True)), a,
                    member(a, uuids[3], "c")["Id"], other, member(b, uuids[4], "c")["Id"],
                    member(b, uuids[5], "c")["Id"])
    finally:
        api.delete("/v1/capsule_services/web")
        try:
            for who, u in made:
                who.delete(f"/v1/capsules/{u}")
            for who, u in made:
                delete_all(who, [u])
        finally:
            api.close()
            other.close()


def test_requests_spread_over_backends_on_both_hosts(setup: Setup) -> None:
    wait_for(lambda: setup.serving() == set(PLACES), timeout=30, what="three serving backends")
    code, hosts = exec_in(setup.client, setup.client_id, "cat", "/etc/hosts")
    assert f"{setup.service['vip']}\tweb" in hosts
    # The first connection to a backend on host B waits for ARP across the segment: warm up.
    for name in PLACES:
        wait_for(lambda n=name: n in exec_in(setup.client, setup.client_id, "sh", "-c",
                                             "for i in 1 2 3; do printf 'GET / HTTP/1.0\\r\\n"
                                             "\\r\\n' | nc -w 2 web 80; done")[1],
                 timeout=20, what=f"{name} answering through the VIP")
    code, out = exec_in(setup.client, setup.client_id, "sh", "-c", SPREAD)
    got = Counter(line for line in out.split() if line.startswith("web"))
    assert sum(got.values()) == 1000 and set(got) == set(PLACES), got
    assert min(got.values()) >= 200, got  # round robin: about a third each


def test_an_unready_backend_on_the_other_host_gets_no_connection_a_second_after_its_probe(
        setup: Setup) -> None:
    wait_for(lambda: setup.serving() == set(PLACES), timeout=30, what="three serving backends")
    name = "web1"
    engine = setup.engine(name)
    target = member(engine, setup.backends[name], "httpd")["Id"]
    start_load(setup.client, setup.client_id)
    try:
        time.sleep(1.0)
        exec_in(engine, target, "touch", "/tmp/unready")
        wait_for(lambda: exec_in(engine, target, "cat", "/tmp/fails")[0] == 0,
                 timeout=10, what="the readiness probe to fail")
        time.sleep(2.0)
    finally:
        log = stop_load(setup.client, setup.client_id)
    verdict = float(exec_in(engine, target, "cat", "/tmp/fails")[1].split()[0])
    answers = Counter(a for _, a in log)
    assert all(answer in PLACES for _, answer in log), answers
    assert answers[name] > 0 and len(answers) == 3, answers  # it served before
    last = max(t for t, answer in log if answer == name)
    assert last - verdict <= 1.0, (last, verdict)
    assert any(t > verdict + 1.0 for t, _ in log)  # the load went on, to the others
    assert name not in setup.serving()
    exec_in(engine, target, "rm", "-f", "/tmp/unready", "/tmp/fails")
    wait_for(lambda: name in setup.serving(), timeout=15, what="ready again")


def _made_again(setup: Setup, name: str) -> None:
    """A retry of a test that deleted backend `name` (the module's setup is shared, so the
    retry found two backends and waited for three in vain): make it again."""
    if setup.api.get(f"/v1/capsules/{setup.backends[name]}").status_code != 404:
        return
    r = setup.api.post("/v1/capsules", json={"template": backend(
        name, setup.service["selector"]["app"], nodeSelector={"name": PLACES[name]})})
    assert r.status_code == 202, r.text
    setup.backends[name] = r.json()["uuid"]


def test_deleting_a_backend_on_the_other_host_under_load_loses_no_request(setup: Setup) -> None:
    name = "web2"
    _made_again(setup, name)
    wait_for(lambda: setup.serving() == set(PLACES), timeout=90, what="three serving backends")
    uuid = setup.backends[name]
    start_load(setup.client, setup.client_id)
    try:
        time.sleep(1.5)
        deleted = float(open("/proc/uptime").read().split()[0])
        assert setup.api.delete(f"/v1/capsules/{uuid}").status_code == 204
        wait_for(lambda: setup.api.get(f"/v1/capsules/{uuid}").status_code == 404,
                 timeout=60, what="the backend deleted")
        gone = float(open("/proc/uptime").read().split()[0])
        time.sleep(1.0)
    finally:
        log = stop_load(setup.client, setup.client_id)
    answers = Counter(a for _, a in log)
    failed = [(t, a) for t, a in log if a not in PLACES]
    assert failed == [], (failed[:5], answers, deleted, gone)
    assert any(a == name for t, a in log if t < deleted)  # it served until the delete
    assert not any(a == name for t, a in log if t > gone)
    assert any(t > gone for t, _ in log) and len(log) > 50, answers
    assert not setup.engine(name).containers(all=True, filters={
        "label": [f"capsuled.capsule={uuid}"]})


def test_a_service_made_after_a_capsule_resolves_in_it_by_name_in_its_project_only(
        setup: Setup) -> None:
    """Its sandbox's /etc/hosts was written before the service existed: the name comes from
    the DNS responder on its host's project network (agent/dns.py), which answers the
    project's subnet only."""
    engine = setup.cluster.dockers["host-b"]
    r = setup.api.post("/v1/capsule_services", json={
        "name": "late", "selector": setup.service["selector"],
        "ports": [{"port": 80, "targetPort": 8080}]})
    assert r.status_code == 201, r.text
    try:
        vip = r.json()["vip"]
        assert "late" not in exec_in(engine, setup.early, "cat", "/etc/hosts")[1]
        wait_for(lambda: exec_in(engine, setup.early, "sh", "-c",
                                 "timeout 3 wget -qO- http://late/")[1].strip() in PLACES,
                 timeout=20, what="the new service answering by name in the earlier capsule")
        code, out = exec_in(engine, setup.early, "nslookup", "late")
        assert code == 0 and vip in out, out
        # Another project's capsule on the same host and engine: the name means nothing.
        code, out = exec_in(engine, setup.stranger, "sh", "-c", "timeout 5 nslookup late")
        assert vip not in out, out
        assert exec_in(engine, setup.stranger, "sh", "-c",
                       "timeout 3 wget -qO- http://late/")[0] != 0
    finally:
        setup.api.delete("/v1/capsule_services/late")
