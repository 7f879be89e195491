"""Published ports in the inputs: a template's hostPorts (one per protocol per capsule,
bounded, low ones a host-level ask), Zun's exposed_ports (validated, published on any host
port), and how a container body shows them."""

from __future__ import annotations

from typing import Any

import pytest

from capsuled.domain import ports
from capsuled.domain.container_request import parse_container_request
from capsuled.domain.host_access import capsule_spec_asks, template_asks
from capsuled.domain.spec import ContainerSpec, Port
from capsuled.domain.template import Limits, parse_template
from capsuled.errors import InvalidInput


def tmpl(*containers: dict[str, Any], inits: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers)}
    if inits:
        spec["initContainers"] = inits
    return {"kind": "capsule", "metadata": {"name": "web"}, "spec": spec}


def c(name: str, *port_list: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "ports": list(port_list)}


def problems(template: dict[str, Any], limits: Limits | None = None) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        parse_template(template, limits)
    return exc.value.problems


def test_host_ports_are_parsed_and_claimed_once_per_protocol() -> None:
    spec = parse_template(tmpl(
        c("web", {"containerPort": 8080, "hostPort": 18080}, {"containerPort": 9090}),
        c("dns", {"containerPort": 53, "hostPort": 18080, "protocol": "UDP"})))
    assert ports.capsule_host_ports(spec) == [("TCP", 18080), ("UDP", 18080)]
    assert [p.container_port for p in ports.capsule_published(spec)] == [8080, 53]
    assert ports.fingerprint(ports.capsule_published(spec)) == "18080:53/UDP,18080:8080/TCP"


def test_two_members_may_not_publish_one_host_port() -> None:
    # Members share the sandbox's network namespace; init containers count too.
    found = problems(tmpl(c("a", {"containerPort": 80, "hostPort": 18080}),
                          c("b", {"containerPort": 81, "hostPort": 18080},
                            {"containerPort": 82, "hostPort": 18081}),
                          inits=[c("prep", {"containerPort": 83, "hostPort": 18081})]))
    assert found == [
        "spec.containers[1].ports[0].hostPort: TCP host port 18080 is already published by "
        "spec.containers[0].ports[0]",
        "spec.containers[1].ports[1].hostPort: TCP host port 18081 is already published by "
        "spec.initContainers[0].ports[0]"]


def test_a_capsule_publishes_a_bounded_number_of_ports() -> None:
    many = c("a", *({"containerPort": 80 + i, "hostPort": 18000 + i} for i in range(3)))
    assert problems(tmpl(many), Limits(max_host_ports=2)) == [
        "spec.containers: a capsule publishes at most 2 host ports, not 3"]


def test_a_low_host_port_is_a_host_level_ask_in_both_looks() -> None:
    template = tmpl(c("web", {"containerPort": 80, "hostPort": 80},
                      {"containerPort": 8080, "hostPort": 18080}))
    ask = "spec.containers[0].ports[0].hostPort (80 is below 1024)"
    assert template_asks(template) == [ask]
    assert capsule_spec_asks(parse_template(template)) == [ask]
    assert capsule_spec_asks(parse_template(template), min_host_port=80) == []
    assert template_asks(template, min_host_port=1) == []


def bare(body: dict[str, Any], limits: Limits | None = None) -> list[Port]:
    return parse_container_request({"image": "busybox", **body}, limits).container.ports


def test_exposed_ports_are_published_on_any_host_port() -> None:
    got = bare({"exposed_ports": {"80/tcp": {}, "53/udp": {}, "8080": {}}})
    assert got == [Port(container_port=80, host_port=0), Port(container_port=53, protocol="UDP", host_port=0),
                   Port(container_port=8080, host_port=0)]
    assert bare({"exposed_ports": {}}) == [] and bare({}) == []


@pytest.mark.parametrize(("value", "problem"), [
    ([80], 'exposed_ports: must be an object such as {"80/tcp": {}, "53/udp": {}}'),
    ({"80/sctp": {}}, "exposed_ports.80/sctp: must be PORT or PORT/PROTOCOL: a port from 1 to "
                      "65535, protocol tcp or udp"),
    ({"0/tcp": {}}, "exposed_ports.0/tcp: must be PORT or PORT/PROTOCOL"),
    ({"70000": {}}, "exposed_ports.70000: must be PORT or PORT/PROTOCOL"),
    ({"80/TCP": {}}, "exposed_ports.80/TCP: must be PORT or PORT/PROTOCOL"),
    ({"80\n": {}}, "exposed_ports.80\n: must be PORT or PORT/PROTOCOL"),
    ({"80/tcp": {"HostPort": "80"}}, "exposed_ports.80/tcp: takes no options: {}"),
    ({f"{p}/tcp": {} for p in range(1, 19)}, "exposed_ports: at most 16 ports may be published, not 18"),
])
def test_bad_exposed_ports_are_a_400_naming_the_field(value: Any, problem: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        bare({"exposed_ports": value})
    assert len(exc.value.problems) == 1 and exc.value.problems[0].startswith(problem)


def test_a_container_joining_a_capsule_publishes_nothing_of_its_own() -> None:
    with pytest.raises(InvalidInput) as exc:
        bare({"capsule": "web", "exposed_ports": {"80/tcp": {}}})
    assert exc.value.problems[0].startswith("exposed_ports: a capsule's ports are published by "
                                            "its sandbox")


def test_the_view_shows_fixed_ports_and_the_ones_the_runtime_picked() -> None:
    spec = ContainerSpec(name="web", image="busybox", ports=[
        Port(container_port=80, host_port=0), Port(container_port=53, protocol="UDP", host_port=0),
        Port(container_port=8080, host_port=18080), Port(container_port=9090)])
    observed = [{"container_port": 80, "protocol": "TCP", "host_port": 49153, "host_ip": "0.0.0.0"},
                {"container_port": 80, "protocol": "TCP", "host_port": 49153, "host_ip": "::"},
                {"garbage": True}]
    assert ports.view(spec, observed) == [
        {"container_port": 80, "protocol": "TCP", "host_port": 49153},
        {"container_port": 53, "protocol": "UDP", "host_port": None},  # not running yet
        {"container_port": 8080, "protocol": "TCP", "host_port": 18080}]
    assert ports.view(None) == []
