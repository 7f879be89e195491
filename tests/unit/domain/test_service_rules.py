"""The rules of capsule services (domain/services.py): what a create body may say (every
problem named at once), which capsules serve, the VIP pick, and the view the agents get
(stable version for equal content, no more of a foreign service than its published
ports)."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from capsuled.domain.services import (Candidate, ServiceLimits, ServicePort, ServiceRecord,
                                      build_view, matches, parse_service, serving,
                                      vip_candidates)
from capsuled.errors import InvalidInput

LIMITS = ServiceLimits(publish_min=30000, publish_max=32767, max_ports=3)
READY = ("Running", {"ready": True, "health": None, "probes": {}})
UNREADY = ("Running", {"ready": False, "health": None, "probes": {}})


def problems(body: Any) -> list[str]:
    with pytest.raises(InvalidInput) as got:
        parse_service(body, LIMITS)
    return got.value.problems


def test_a_good_body_is_normalised() -> None:
    new = parse_service({"name": "web", "selector": {"app": "web", "tier": 1},
                         "ports": [{"port": 80, "targetPort": 8080},
                                   {"port": 53, "protocol": "udp", "publish": 30053}]}, LIMITS)
    assert new.name == "web" and new.selector == {"app": "web", "tier": "1"}
    assert new.ports == (ServicePort(port=80, target_port=8080, protocol="TCP"),
                         ServicePort(port=53, target_port=53, protocol="UDP", publish=30053))
    assert new.published() == [("UDP", 30053)]


@pytest.mark.parametrize(("body", "expected"), [
    ("web", ["body: must be a JSON object"]),
    ({}, ["name: is required", "selector: is required", "ports: is required"]),
    ({"name": "Web_1", "selector": {"app": "x"}, "ports": [{"port": 1}]}, ["name: must be"]),
    ({"name": "9web", "selector": {"app": "x"}, "ports": [{"port": 1}]}, ["name: must be"]),
    ({"name": "a" * 64, "selector": {"app": "x"}, "ports": [{"port": 1}]}, ["name: must be"]),
    ({"name": "abcdef12-3456-7890-abcd-ef1234567890", "selector": {"a": "b"},
      "ports": [{"port": 1}]}, ["name: must be"]),
    ({"name": "web", "selector": {}, "ports": [{"port": 80}]}, ["selector: must name at least"]),
    ({"name": "web", "selector": ["app"], "ports": [{"port": 80}]}, ["selector: must be a map"]),
    ({"name": "web", "selector": {"bad key!": "x", "ok": True}, "ports": [{"port": 80}]},
     ["selector.bad key!: is not a valid label name", "selector.ok: must be a string"]),
    ({"name": "web", "selector": {"a": "x" * 256}, "ports": [{"port": 80}]},
     ["selector.a: must be at most 255"]),
    ({"name": "web", "selector": {"a": "b"}, "ports": []}, ["ports: must be a non-empty list"]),
    ({"name": "web", "selector": {"a": "b"}, "ports": [{"port": 0}, {"port": "80"},
                                                        {"port": 80, "targetPort": 70000},
                                                        ]}, ["ports[0].port: must be a port",
                                                             "ports[1].port: must be a port",
                                                             "ports[2].targetPort: must be"]),
    ({"name": "web", "selector": {"a": "b"}, "ports": [{"port": 80, "protocol": "SCTP"}]},
     ["ports[0].protocol: must be TCP or UDP"]),
    ({"name": "web", "selector": {"a": "b"}, "ports": [{"port": 80, "publish": 80}]},
     ["ports[0].publish: must be between 30000 and 32767"]),
    ({"name": "web", "selector": {"a": "b"}, "ports": [{"port": 80}, {"port": 80}]},
     ["ports[1].port: TCP port 80 is listed twice"]),
    ({"name": "web", "selector": {"a": "b"}, "ports": [{"port": 80, "publish": 30001},
                                                        {"port": 81, "publish": 30001}]},
     ["ports[1].publish: TCP port 30001 is published twice"]),
    ({"name": "web", "selector": {"a": "b"}, "ports": [{"port": p} for p in range(1, 5)]},
     ["ports: at most 3"]),
    ({"name": "web", "selector": {"a": "b"}, "ports": [{"port": 80, "nodePort": 1}],
      "type": "LoadBalancer"}, ["type: unknown field", "ports[0].nodePort: unknown field"]),
])
def test_a_bad_body_is_refused_naming_each_field(body: Any, expected: list[str]) -> None:
    got = problems(body)
    for want in expected:
        assert any(p.startswith(want) for p in got), (want, got)


def test_vip_candidates_are_distinct_and_inside_the_range_never_its_ends() -> None:
    rng = ipaddress.IPv4Network("10.96.0.0/29")
    picks = vip_candidates(rng, 64, random.Random(1))
    assert sorted(picks) == [f"10.96.0.{i}" for i in range(1, 7)]
    big = vip_candidates(ipaddress.IPv4Network("10.96.0.0/16"), 64, random.Random(2))
    assert len(set(big)) == 64 and all(ipaddress.IPv4Address(v) in
                                       ipaddress.IPv4Network("10.96.0.0/16") for v in big)
    assert vip_candidates(ipaddress.IPv4Network("10.96.0.0/31"), 4) == []


def candidate(uuid: str, **kw: Any) -> Candidate:
    base: dict[str, Any] = {"name": uuid, "project_id": "p1", "labels": {"app": "web"},
                            "status": "Running", "deleting": False, "draining": False,
                            "addr": "10.208.0.2", "members": (READY,)}
    return Candidate(uuid=uuid, **{**base, **kw})


def test_only_a_running_ready_capsule_with_an_address_serves() -> None:
    assert serving(candidate("a"))
    assert not serving(candidate("a", members=(READY, UNREADY)))
    assert not serving(candidate("a", status="Creating"))
    assert serving(candidate("a", status="Updating"))  # drained only while it is replaced
    assert not serving(candidate("a", status="Unknown"))  # its host is down
    assert not serving(candidate("a", deleting=True))
    assert not serving(candidate("a", draining=True))
    assert not serving(candidate("a", addr=None))
    assert not serving(candidate("a", members=()))
    # Without a readiness probe, running and not found unhealthy is ready.
    assert serving(candidate("a", members=(("Running", None),)))
    assert not serving(candidate("a", members=(("Running", {"health": "unhealthy"}),)))
    assert matches({"app": "web"}, {"app": "web", "x": "y"})
    assert not matches({"app": "web", "tier": "1"}, {"app": "web"})
    assert not matches({}, {"app": "web"})


def record(uuid: str, project: str = "p1", publish: int | None = None,
           foreign: bool = False) -> ServiceRecord:
    return ServiceRecord(uuid=uuid, name=f"svc-{uuid}", project_id=project, vip="10.96.0.9",
                         ports=[ServicePort(port=80, target_port=8080, publish=publish),
                                ServicePort(port=81, target_port=81)],
                         selector={"app": "web"}, foreign=foreign)


def test_the_view_lists_serving_backends_of_the_same_project_only() -> None:
    cands = [candidate("b2", addr="10.208.0.3"), candidate("b1"),
             candidate("other", project_id="p2"), candidate("sick", members=(UNREADY,)),
             candidate("db", labels={"app": "db"})]
    view = build_view("h1", ipaddress.IPv4Network("10.96.0.0/16"), ["p1"], [record("s1")], cands)
    assert [(b.capsule, str(b.addr)) for b in view.services[0].backends] == [
        ("b1", "10.208.0.2"), ("b2", "10.208.0.3")]
    assert view.hosts_for("p1") == [("svc-s1", "10.96.0.9")] and view.hosts_for("p2") == []
    assert view.backends() == {"b1": ("10.208.0.2", frozenset({8080, 81})),
                               "b2": ("10.208.0.3", frozenset({8080, 81}))}
    # The same content in another order has the same version; a change, another one.
    again = build_view("h1", ipaddress.IPv4Network("10.96.0.0/16"), ["p1"], [record("s1")],
                       list(reversed(cands)))
    assert again.version == view.version and len(view.version) == 32
    less = build_view("h1", ipaddress.IPv4Network("10.96.0.0/16"), ["p1"], [record("s1")],
                      cands[1:])
    assert less.version != view.version


def test_a_foreign_service_shows_only_its_published_ports_without_name_or_project() -> None:
    view = build_view("h1", None, ["p1"], [record("s9", project="p2", publish=30080,
                                                  foreign=True),
                                           record("s8", project="p3", foreign=True)],
                      [candidate("b", project_id="p2")])
    assert len(view.services) == 1  # p3's publishes nothing: this host forwards nothing of it
    only = view.services[0]
    assert (only.name, only.project_id) == ("", "")
    assert [(p.port, p.publish) for p in only.ports] == [(80, 30080)]
    assert [b.capsule for b in only.backends] == ["b"]
    assert view.hosts_for("") == [] and view.hosts_for("p2") == []
