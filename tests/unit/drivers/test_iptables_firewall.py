"""IptablesFirewall: the chains it renders admit exactly what the rules allow (a packet
walk over the rendered table, for random rules too), it writes only what changed and in one
restore, it leaves other deployments and kept units alone, it removes what is gone, and
it does the same in a real kernel (a network namespace of its own)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsuled.domain.security_groups import Allow, Firewall, Peers
from capsuled.drivers.firewall.base import Guard
from capsuled.drivers.firewall.iptables import (Commands, IptablesFirewall, Names, Table,
                                                render)
from capsuled.errors import DriverError
from tests.unit.drivers.fake_iptables import FakeIptables, Packet

INSTANCE = "deployment-1"
WEB = "10.208.0.2"  # the guarded unit's address on its /22
PEER = "10.208.0.9"  # another member of the project on this host
ELSEWHERE = "10.99.0.5"


def web_rules() -> Firewall:
    """tcp 8080 from the project; tcp 9000-9010, udp 53 and icmp from group `ops`'s members;
    tcp 443 from anywhere (a published port)."""
    ops = [f"10.1.0.{i}/32" for i in range(1, 6)]
    return Firewall(
        peers={"group:default": Peers(own_network=True), "group:ops": Peers(cidrs=ops),
               "cidr:0.0.0.0/0": Peers(cidrs=["0.0.0.0/0"])},
        allow=[Allow(protocol="tcp", port_min=8080, port_max=8080, peers="group:default"),
               Allow(protocol="tcp", port_min=9000, port_max=9010, peers="group:ops"),
               Allow(protocol="udp", port_min=53, port_max=53, peers="group:ops"),
               Allow(protocol="icmp", peers="group:ops"),
               Allow(protocol="tcp", port_min=443, port_max=443, peers="cidr:0.0.0.0/0")])


def guard(unit: str = "web", address: str = WEB, rules: Firewall | None = None,
          seen: int = 1) -> Guard:
    return Guard(unit=unit, addresses=(f"{address}/22",), firewall=rules or web_rules(), seen=seen)


def test_a_guarded_unit_admits_what_its_rules_allow_and_drops_the_rest() -> None:
    kernel = FakeIptables()
    IptablesFirewall(kernel).ensure(INSTANCE, [guard()], None)

    def judge(src: str, proto: str = "tcp", port: int | None = 80, dst: str = WEB,
              established: bool = False) -> str:
        return kernel.verdict(Packet(src, dst, proto, port, established))

    assert judge(PEER, port=8080) == "ACCEPT"  # the project (its own network)
    assert judge(PEER, port=8081) == "DROP"  # a port no rule opens: it times out
    assert judge(ELSEWHERE, port=8080) == "DROP"  # not the project
    assert judge("10.1.0.3", port=9005) == "ACCEPT" and judge("10.1.0.3", "udp", 53) == "ACCEPT"
    assert judge("10.1.0.3", "icmp", None) == "ACCEPT" and judge("10.1.0.9", "icmp", None) == "DROP"
    assert judge("10.1.0.3", port=9011) == "DROP" and judge("10.1.0.3", "udp", 9005) == "DROP"
    assert judge(ELSEWHERE, port=443) == "ACCEPT"  # published: open to every source
    assert judge(ELSEWHERE, port=22, established=True) == "ACCEPT"  # replies to its own
    # Other addresses are not this unit's business; nothing here ever ACCEPTs by itself:
    # what is admitted goes on to Docker's rules (here the policy).
    assert judge(ELSEWHERE, port=22, dst="10.208.0.77") == "ACCEPT"
    assert not any("-j ACCEPT" in r for c, rules in kernel.chains.items()
                   if c.startswith(("CSG-", "CAPSULED-")) for r in rules)


def test_a_group_of_many_sources_and_rules_takes_lines_for_each_not_their_product() -> None:
    members = [f"10.1.{i // 250}.{i % 250 + 1}/32" for i in range(500)]
    rules = Firewall(peers={"group:big": Peers(cidrs=members)},
                     allow=[Allow(protocol="tcp", port_min=p, port_max=p, peers="group:big")
                            for p in range(1000, 1040)])
    rendered = render(Names.of(INSTANCE), guard(rules=rules))
    assert sum(len(r) for r in rendered.chains.values()) < 600
    kernel = FakeIptables()
    IptablesFirewall(kernel).ensure(INSTANCE, [guard(rules=rules)], None)
    assert kernel.verdict(Packet("10.1.1.200", WEB, "tcp", 1039)) == "ACCEPT"
    assert kernel.verdict(Packet("10.1.1.200", WEB, "tcp", 1040)) == "DROP"
    assert kernel.verdict(Packet("10.1.2.200", WEB, "tcp", 1000)) == "DROP"


def _reference(rules: Firewall, own: str, pkt: Packet) -> str:
    """What the rules mean, said directly."""
    if pkt.established:
        return "ACCEPT"
    for a in rules.allow:
        peers = rules.peers[a.peers]
        nets = [*peers.cidrs, *([own] if peers.own_network else [])]
        if not any(ipaddress.IPv4Address(pkt.src) in ipaddress.IPv4Network(n) for n in nets):
            continue
        if a.protocol not in ("any", pkt.proto):
            continue
        if a.port_min is not None and a.protocol != "icmp" and not (
                pkt.dport is not None and a.port_min <= pkt.dport <= (a.port_max or a.port_min)):
            continue
        return "ACCEPT"
    return "DROP"


_SOURCES = ["10.1.0.1/32", "10.1.0.2/32", "10.1.0.0/30", "10.2.0.0/16", "0.0.0.0/0", "10.1.0.7/32"]
_allow = st.builds(
    lambda proto, lo, span, peers: Allow(
        protocol=proto, port_min=None if proto in ("icmp", "any") or lo is None else lo,
        port_max=None if proto in ("icmp", "any") or lo is None else lo + span, peers=peers),
    st.sampled_from(["tcp", "udp", "icmp", "any"]), st.one_of(st.none(), st.integers(1, 40)),
    st.integers(0, 5), st.sampled_from(["a", "b", "c", "d"]))
_peers = st.builds(lambda cidrs, own: Peers(cidrs=cidrs, own_network=own),
                   st.lists(st.sampled_from(_SOURCES), max_size=5, unique=True), st.booleans())
_packet = st.builds(Packet, st.sampled_from(["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.7",
                                             "10.2.3.4", "10.208.1.1", "192.0.2.1"]),
                    st.just(WEB), st.sampled_from(["tcp", "udp", "icmp"]),
                    st.integers(1, 48), st.booleans())


@settings(max_examples=150, derandomize=True, deadline=None)
@given(allows=st.lists(_allow, max_size=12),
       peers=st.fixed_dictionaries({k: _peers for k in "abcd"}),
       packets=st.lists(_packet, min_size=1, max_size=20))
def test_the_rendered_chains_mean_what_the_rules_say(allows: list[Allow], peers: dict[str, Peers],
                                                     packets: list[Packet]) -> None:
    rules = Firewall(peers=peers, allow=allows)
    kernel = FakeIptables()
    IptablesFirewall(kernel).ensure(INSTANCE, [guard(rules=rules)], None)
    for pkt in packets:
        if pkt.proto == "icmp":
            pkt = Packet(pkt.src, pkt.dst, "icmp", None, pkt.established)
        assert kernel.verdict(pkt) == _reference(rules, "10.208.0.0/22", pkt), pkt


def test_it_writes_only_what_changed_in_one_restore_and_nothing_when_nothing_did() -> None:
    kernel = FakeIptables()
    fw = IptablesFirewall(kernel)
    a, b = guard("a", "10.208.0.2"), guard("b", "10.208.0.3", Firewall())
    fw.ensure(INSTANCE, [a, b], None)
    assert len(kernel.restores) == 1
    assert kernel.chains["DOCKER-USER"] == [f"-j {Names.of(INSTANCE).dispatch}", "-j RETURN"]
    fw.ensure(INSTANCE, [a, b], None)
    assert len(kernel.restores) == 1  # read, found as wanted: no write
    names = Names.of(INSTANCE)
    b2 = guard("b", "10.208.0.3", Firewall(peers={"x": Peers(own_network=True)},
                                          allow=[Allow(protocol="any", peers="x")]))
    fw.ensure(INSTANCE, [a, b2], None)
    assert len(kernel.restores) == 2
    assert names.unit("b") in kernel.restores[-1] and f":{names.unit('a')} " not in kernel.restores[-1]
    assert kernel.verdict(Packet(PEER, "10.208.0.3", "tcp", 5)) == "ACCEPT"
    # A unit's chain emptied by hand is noticed (its digest no longer vouches for it).
    kernel.chains[names.unit("a")] = []
    fw.ensure(INSTANCE, [a, b2], None)
    assert kernel.verdict(Packet(ELSEWHERE, WEB, "tcp", 8080)) == "DROP"
    # The jump removed by hand (or by a restarted engine) comes back, once.
    kernel.chains["DOCKER-USER"] = ["-j RETURN"]
    fw.ensure(INSTANCE, [a, b2], None)
    fw.ensure(INSTANCE, [a, b2], None)
    assert kernel.chains["DOCKER-USER"] == [f"-j {names.dispatch}", "-j RETURN"]


def test_gone_units_lose_their_chains_kept_ones_stay_and_other_deployments_are_untouched() -> None:
    kernel = FakeIptables()
    mine, theirs = IptablesFirewall(kernel), IptablesFirewall(kernel)
    theirs.ensure("other-deployment", [guard("x", "10.208.4.2", Firewall())], None)
    mine.ensure(INSTANCE, [guard("a", "10.208.0.2"), guard("b", "10.208.0.3"),
                           guard("c", "10.208.0.4", Firewall())], None)
    names = Names.of(INSTANCE)
    # b's address is not known just now (kept as it is); a is gone; c stays guarded.
    mine.ensure(INSTANCE, [guard("c", "10.208.0.4", Firewall())], keep={"b"})
    assert not any(c.startswith(names.unit("a")) for c in kernel.chains)
    assert names.unit("b") in kernel.chains
    assert kernel.verdict(Packet(ELSEWHERE, "10.208.0.3", "tcp", 8080)) == "DROP"  # b still guarded
    assert kernel.verdict(Packet(ELSEWHERE, "10.208.0.2", "tcp", 8080)) == "ACCEPT"  # a's address: free
    # keep=None (before the first relist): every other unit's chain stays.
    mine.ensure(INSTANCE, [], None)
    assert names.unit("b") in kernel.chains and names.unit("c") in kernel.chains
    mine.ensure(INSTANCE, [], keep=set())
    assert not any(c.startswith(names.unit_prefix) for c in kernel.chains)
    assert kernel.verdict(Packet(ELSEWHERE, "10.208.4.2", "tcp", 1)) == "DROP"  # theirs
    mine.remove_all(INSTANCE)
    assert names.dispatch not in kernel.chains
    assert kernel.chains["DOCKER-USER"] == [f"-j {Names.of('other-deployment').dispatch}", "-j RETURN"]
    assert theirs.deployments() == {Names.of("other-deployment").tag}


def test_an_address_two_units_claim_goes_to_the_one_seen_last() -> None:
    """A unit removed a moment ago and the one that got its address since."""
    kernel = FakeIptables()
    fw = IptablesFirewall(kernel)
    old = guard("old", WEB, Firewall(), seen=3)
    new = guard("new", WEB, Firewall(peers={"p": Peers(cidrs=["0.0.0.0/0"])},
                                     allow=[Allow(protocol="any", peers="p")]), seen=7)
    fw.ensure(INSTANCE, [new, old], None)
    assert kernel.verdict(Packet(ELSEWHERE, WEB, "tcp", 1)) == "ACCEPT"
    fw.ensure(INSTANCE, [new], keep={"old"})  # the old one's kept chain loses the address
    assert kernel.verdict(Packet(ELSEWHERE, WEB, "tcp", 1)) == "ACCEPT"
    assert Names.of(INSTANCE).unit("old") not in kernel.chains


def test_without_docker_user_it_hooks_forward_and_a_refusal_changes_nothing() -> None:
    kernel = FakeIptables(docker_user=False)
    IptablesFirewall(kernel).ensure(INSTANCE, [guard()], None)
    assert kernel.chains["FORWARD"] == [f"-j {Names.of(INSTANCE).dispatch}"]
    assert kernel.verdict(Packet(ELSEWHERE, WEB, "tcp", 8080)) == "DROP"

    class Refusing(FakeIptables):
        def restore(self, text: str) -> None:
            raise DriverError("security groups: iptables-restore failed: no")
    broken = Refusing()
    with pytest.raises(DriverError, match="iptables-restore"):
        IptablesFirewall(broken).ensure(INSTANCE, [guard()], None)
    assert Names.of(INSTANCE).dispatch not in broken.chains


def test_malformed_sources_never_reach_the_kernel() -> None:
    rules = Firewall(peers={"p": Peers(cidrs=["10.0.0.0/8 -j ACCEPT", "1.2.3.4/33", "10.3.0.0/16"])},
                     allow=[Allow(protocol="tcp", port_min=80, port_max=80, peers="p")])
    lines = [r for rules_ in render(Names.of(INSTANCE), guard(rules=rules)).chains.values()
             for r in rules_]
    assert not any("ACCEPT" in r or "/33" in r for r in lines)
    assert any("-s 10.3.0.0/16" in r for r in lines)


def test_table_parse_reads_iptables_save() -> None:
    t = Table.parse("*filter\n:FORWARD DROP [0:0]\n:X - [0:0]\n-A FORWARD -j X\n-A X -j RETURN\nCOMMIT\n")
    assert t.chains == {"FORWARD": ["-j X"], "X": ["-j RETURN"]}


# -- a real kernel ----------------------------------------------------------------------

@pytest.fixture()
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or not shutil.which("iptables-restore") or not shutil.which("ip"):
        pytest.skip("needs root, ip and iptables")
    name = f"sgtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    path = f"/run/netns/{name}"
    try:
        subprocess.run(["nsenter", f"--net={path}", "iptables", "-w", "-N", "DOCKER-USER"], check=True)
        subprocess.run(["nsenter", f"--net={path}", "iptables", "-w", "-A", "FORWARD", "-j",
                        "DOCKER-USER"], check=True)
        yield path
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_the_real_iptables_takes_the_rendering_and_gives_it_back(netns: str) -> None:
    commands = Commands(netns)
    fw = IptablesFirewall(commands)
    members = [f"10.1.0.{i}/32" for i in range(1, 20)]
    many = Firewall(peers={"g": Peers(cidrs=members), "d": Peers(own_network=True)},
                    allow=[Allow(protocol="tcp", port_min=p, port_max=p + 1, peers="g")
                           for p in range(9000, 9010)]
                    + [Allow(protocol="icmp", peers="d"), Allow(protocol="udp", port_min=53,
                                                                port_max=53, peers="d")])
    units = [guard("a", "10.208.0.2"), guard("b", "10.208.0.3", many)]
    fw.ensure(INSTANCE, units, None)
    saved = commands.save()
    names = Names.of(INSTANCE)
    table = Table.parse(saved)
    assert table.chains["DOCKER-USER"] == [f"-j {names.dispatch}"]
    assert len(table.chains[names.dispatch]) == 2
    for u in units:  # what the kernel holds is what was rendered
        for chain, rules in render(names, u).chains.items():
            assert table.chains[chain] == rules
    fw.ensure(INSTANCE, units, None)
    assert commands.save() == saved or Table.parse(commands.save()).chains == table.chains
    fw.ensure(INSTANCE, units[:1], keep=set())
    assert not any(c.startswith(names.unit("b")) for c in Table.parse(commands.save()).chains)
    fw.remove_all(INSTANCE)
    after = Table.parse(commands.save()).chains
    assert not any(c.startswith(("CSG-", "CAPSULED-")) for c in after)
    assert after["DOCKER-USER"] == []
