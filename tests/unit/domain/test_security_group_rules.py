"""Security groups as rules: what a rule and a list of names may be (each problem naming
its field), what remote groups stand for, and a unit's effective firewall."""

from __future__ import annotations

from typing import Any

import pytest

from capsuled.domain import security_groups as sg
from capsuled.domain.container_request import parse_container_request
from capsuled.domain.spec import Port
from capsuled.domain.template import parse_template
from capsuled.domain.template_out import render_template
from capsuled.errors import InvalidInput


def problems(value: Any) -> tuple[list[sg.Rule], list[str]]:
    found: list[str] = []
    rules = sg.parse_rules(value, "rules", lambda path, msg: found.append(f"{path}: {msg}"), 8)
    return rules, found


def test_rules_are_normalised() -> None:
    rules, found = problems([
        {"protocol": "TCP", "port_range_min": "80"},
        {"protocol": None, "remote_ip_prefix": "10.1.2.3/8"},
        {"protocol": "udp", "port_range_min": 53, "port_range_max": 54, "remote_group": "dns",
         "direction": "ingress", "ethertype": "IPv4", "description": "resolvers"},
        {"protocol": "tcp", "port_range_min": 80},  # the same as the first: once
    ])
    assert found == []
    assert [(r.protocol, r.port_range_min, r.port_range_max, r.remote_ip_prefix, r.remote_group)
            for r in rules] == [("tcp", 80, 80, None, None), ("any", None, None, "10.0.0.0/8", None),
                                ("udp", 53, 54, None, "dns")]


@pytest.mark.parametrize("rule,where", [
    ({"protocol": "gre"}, "rules[0].protocol"),
    ({"protocol": "tcp", "port_range_min": 70000}, "rules[0].port_range_min"),
    ({"protocol": "tcp", "port_range_min": True}, "rules[0].port_range_min"),
    ({"protocol": "tcp", "port_range_min": 9, "port_range_max": 8}, "rules[0].port_range_max"),
    ({"protocol": "any", "port_range_min": 9}, "rules[0].port_range_min"),
    ({"remote_ip_prefix": "fe80::/64"}, "rules[0].remote_ip_prefix"),
    ({"remote_ip_prefix": "10.0.0.0/8 -j ACCEPT"}, "rules[0].remote_ip_prefix"),
    ({"remote_group": "a b"}, "rules[0].remote_group"),
    ({"remote_group": "x", "remote_ip_prefix": "10.0.0.0/8"}, "rules[0]: give"),
    ({"direction": "egress"}, "rules[0].direction"),
    ({"ethertype": "IPv6"}, "rules[0].ethertype"),
    ({"description": "x" * 300}, "rules[0].description"),
    ({"port": 80}, "rules[0].port: unknown field"),
    ("tcp:80", "rules[0]: must be an object"),
])
def test_each_problem_names_its_field(rule: Any, where: str) -> None:
    rules, found = problems([rule])
    assert rules == [] and len(found) >= 1 and found[0].startswith(where), found


def test_lists_are_bounded() -> None:
    assert problems([{}] * 9)[1] == ["rules: a group has at most 8 rules, not 9"]
    assert problems("all")[1][0].startswith("rules: must be a list")
    found: list[str] = []
    add = lambda p, m: found.append(f"{p}: {m}")  # noqa: E731
    assert sg.parse_names(["a", "a", "0e8f3c1a-5b4d-4c3b-9a2f-1d2e3f4a5b6c", ""], "g", add, 8) == ["a"]
    assert [f.split(":")[0] for f in found] == ["g[1]", "g[2]", "g[3]"]
    found.clear()
    assert sg.parse_names([f"g{i}" for i in range(9)], "g", add, 8) is None and found


def test_templates_and_zun_bodies_name_groups() -> None:
    spec = parse_template({"kind": "capsule", "metadata": {}, "spec": {
        "securityGroups": ["web", "default"], "containers": [{"image": "busybox"}]}})
    assert spec.security_groups == ["web", "default"]
    for absent in ({}, {"securityGroups": []}):
        spec = parse_template({"kind": "capsule", "metadata": {}, "spec": {
            **absent, "containers": [{"image": "busybox"}]}})
        assert spec.security_groups == ["default"]
    with pytest.raises(InvalidInput, match=r"spec.securityGroups\[1\]: web is listed twice"):
        parse_template({"kind": "capsule", "metadata": {}, "spec": {
            "securityGroups": ["web", "web"], "containers": [{"image": "busybox"}]}})
    assert parse_container_request({"image": "busybox"}).security_groups == ["default"]
    assert parse_container_request({"image": "busybox", "security_groups": ["a", "b"]}
                                   ).security_groups == ["a", "b"]
    with pytest.raises(InvalidInput, match="not allowed with capsule"):
        parse_container_request({"image": "busybox", "capsule": "web", "security_groups": ["a"]})
    # A bare container's groups change in place: no part of what recreates it.
    a = parse_container_request({"image": "busybox"})
    b = a.model_copy(update={"security_groups": ["web"]})
    assert a.runtime_hash() == b.runtime_hash()


MEMBERS = [
    sg.Member("w1", "h1", ("web",), ("10.208.0.2",), ("10.208.0.0/22",)),
    sg.Member("w2", "h2", ("web", "default"), ("10.208.4.2",), ("10.208.4.0/22",)),
    sg.Member("d1", "h3", ("default",), ("10.208.8.2",), ("10.208.8.0/22",)),
    sg.Member("d2", "h3", ("default",), ("10.208.8.3",), ("10.208.8.0/22",)),
]


def test_remote_groups_stand_for_their_members_and_default_for_the_project() -> None:
    assert sg.peers_of("web", MEMBERS, "h1") == sg.Peers(cidrs=["10.208.0.2/32", "10.208.4.2/32"])
    assert sg.peers_of("nobody", MEMBERS, "h1") == sg.Peers()
    # default: every member, whatever its groups: this host's network (own_network) and
    # the other hosts' subnets.
    assert sg.peers_of("default", MEMBERS, "h3") == sg.Peers(
        cidrs=["10.208.0.0/22", "10.208.4.0/22"], own_network=True)


def test_a_units_firewall_joins_its_groups_and_opens_its_published_ports() -> None:
    rules = {"default": list(sg.DEFAULT_RULES),
             "web": [sg.Rule(protocol="tcp", port_range_min=80, port_range_max=80,
                             remote_group="ops"),
                     sg.Rule(protocol="icmp")]}
    fw = sg.effective(["web", "default", "gone", "web"], rules,
                      lambda g: sg.peers_of(g, MEMBERS, "h1"),
                      [Port(container_port=8443, host_port=18443),
                       Port(container_port=53, protocol="UDP", host_port=0)])
    assert [(a.protocol, a.port_min, a.peers) for a in fw.allow] == [
        ("tcp", 80, "group:ops"), ("icmp", None, "cidr:0.0.0.0/0"), ("any", None, "group:default"),
        ("tcp", 8443, "cidr:0.0.0.0/0"), ("udp", 53, "cidr:0.0.0.0/0")]
    assert fw.peers["group:ops"] == sg.Peers()  # no members yet: admits no one
    assert fw.peers["group:default"].own_network
    closed = sg.effective(["gone"], rules, lambda g: sg.Peers())  # a group that is no more
    assert closed.allow == [] and closed.peers == {}


def test_a_templates_groups_survive_its_rendering() -> None:
    for groups in (["web", "default"], None):
        spec = parse_template({"kind": "capsule", "metadata": {"name": "kk"}, "spec": {
            **({"securityGroups": groups} if groups else {}), "containers": [{"image": "busybox"}]}})
        back = render_template(spec)
        assert ("securityGroups" in back["spec"]) == (groups is not None)
        assert parse_template(back).security_groups == spec.security_groups
