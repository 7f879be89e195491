"""The nftables load balancer's text and its two readings of the kernel: the rules a state
becomes (only the project's bridge and subnet reach a VIP; round robin over backends; the
VIP range refused otherwise; published ports and masquerade), the one-transaction
replacement `apply` sends, and open connections counted from the connection table."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from pathlib import Path
from typing import Any

import pytest

from capsuled.drivers.lb.base import Flows, Frontend, LbState, Segment
from capsuled.drivers.lb.nft import (NftLoadBalancer, flows_to, remove_tables, render,
                                     table_name)
from capsuled.errors import DriverError

RANGE = N("10.96.0.0/16")
SEG = Segment("br-0123456789ab", N("10.208.4.0/22"))


def web(**kw: Any) -> Frontend:
    base: dict[str, Any] = {"label": "s1 TCP 80", "vip": A("10.96.0.7"), "protocol": "TCP",
                            "port": 80, "target_port": 8080, "clients": (SEG,),
                            "backends": (A("10.208.4.2"), A("10.208.4.3"), A("10.208.4.4"))}
    return Frontend(**{**base, **kw})


def test_a_frontend_becomes_a_guarded_round_robin_over_its_backends() -> None:
    text = render("t", LbState(RANGE, (web(),)))
    assert ('iifname "br-0123456789ab" ip saddr 10.208.4.0/22 ip daddr 10.96.0.7 tcp dport 80 '
            'goto fe0') in text
    assert "numgen inc mod 3 vmap { 0 : goto fe0b0, 1 : goto fe0b1, 2 : goto fe0b2 }" in text
    assert "meta l4proto tcp dnat to 10.208.4.3:8080" in text
    assert "ip daddr 10.96.0.0/16 jump vips" in text
    assert "ct status dnat ct original ip daddr 10.96.0.0/16 masquerade" in text
    # Where the bridge un-NATs replies, only a capsule that reached itself is masqueraded.
    bridged = render("t", LbState(RANGE, (web(),)), replies_bridged=True)
    assert ("ct status dnat ct original ip daddr 10.96.0.0/16 ip saddr . ip daddr "
            "{ 10.208.4.2 . 10.208.4.2, 10.208.4.3 . 10.208.4.3, 10.208.4.4 . 10.208.4.4 } "
            "masquerade") in bridged
    assert "10.96.0.0/16 masquerade" not in bridged
    # Anything else to the range is refused, forwarded or from the host itself.
    assert text.count("ip daddr 10.96.0.0/16 meta l4proto tcp reject with tcp reset") == 2
    assert "published" not in text  # nothing published: the host's ports are untouched


def test_udp_publish_and_a_frontend_without_backends() -> None:
    dns = web(label="s2 UDP 53", protocol="UDP", port=53, target_port=5353, publish=30053,
              backends=(A("10.208.4.9"),))
    empty = web(label="s3 TCP 81", port=81, backends=())
    text = render("t", LbState(RANGE, (dns, empty)))
    assert "udp dport 30053 goto fe0" in text and "meta l4proto udp dnat to 10.208.4.9:5353" in text
    assert "fib daddr type local ip daddr != 127.0.0.0/8 jump published" in text  # the host too
    assert "ct status dnat meta l4proto udp ct original proto-dst { 30053 } masquerade" in text
    # No backend: no DNAT at all, so the VIP's port is refused by the guard.
    assert "dport 81" not in text and "fe1" not in text


def test_an_interface_name_that_is_not_one_is_left_out() -> None:
    bad = Segment('br-x" accept; #', N("10.208.8.0/22"))
    text = render("t", LbState(RANGE, (web(clients=(bad, SEG)),)))
    assert "accept;" not in text.replace("policy accept;", "") and "br-0123456789ab" in text


def test_table_names_are_per_deployment_and_host() -> None:
    a, b = table_name("8217367151c9", "host-a"), table_name("8217367151c9", "host-b")
    assert a != b and a.startswith("capsuled_svc_8217367151c9_")
    assert table_name("x-y.z", "h") .replace("_", "").isalnum()


class Recorder:
    def __init__(self, code: int = 0, stderr: str = "") -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.code, self.stderr = code, stderr

    def __call__(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((args, kw.get("input")))
        return subprocess.CompletedProcess(args, self.code, "", self.stderr)


def nft(run: Recorder) -> tuple[list[str], str | None]:
    return [c for c in run.calls if c[0][0] == "nft"][-1]


def test_apply_replaces_the_table_in_one_transaction_and_empty_deletes_it(tmp_path: Path) -> None:
    run = Recorder()
    sysctl = tmp_path / "bridge-nf-call-iptables"
    sysctl.write_text("1\n")
    lb = NftLoadBalancer("capsuled_svc_x", comment='say "hi"', run=run, bridge_nf=sysctl)
    lb.apply(LbState(RANGE, (web(),)))
    assert "ip saddr . ip daddr" in (nft(run)[1] or "")
    sysctl.write_text("0\n")
    lb.apply(LbState(RANGE, (web(),)))
    assert "10.96.0.0/16 masquerade" in (nft(run)[1] or "")
    args, script = nft(run)
    assert args == ["nft", "-f", "-"] and script is not None
    assert script.startswith("table ip capsuled_svc_x\ndelete table ip capsuled_svc_x\n"
                             "table ip capsuled_svc_x {\n  comment \"say _hi_\"")
    lb.apply(LbState())
    assert nft(run)[1] == "table ip capsuled_svc_x\ndelete table ip capsuled_svc_x\n"


def test_apply_puts_the_served_bridges_ports_in_hairpin_mode() -> None:
    class Ip(Recorder):
        def __call__(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
            self.calls.append((args, kw.get("input")))
            out = ""
            if args[:2] == ["ip", "-d"]:
                out = ("7481: veth518e2ef@if7480: <UP> mtu 1500 master br-0123456789ab \\ "
                       "    veth \\    bridge_slave state forwarding hairpin off guard off\n"
                       "7483: veth99@if7482: <UP> mtu 1500 master br-0123456789ab \\ "
                       "    veth \\    bridge_slave state forwarding hairpin on guard off\n"
                       "7490: vx-p1: <UP> mtu 1450 master br-0123456789ab \\ "
                       "    vxlan id 42 \\    bridge_slave state forwarding hairpin off\n")
            return subprocess.CompletedProcess(args, 0, out, "")
    run = Ip()
    NftLoadBalancer("t", run=run).apply(LbState(RANGE, (web(),)))
    assert [c[0] for c in run.calls[1:]] == [
        ["ip", "-d", "-o", "link", "show", "master", "br-0123456789ab"],
        ["ip", "link", "set", "dev", "veth518e2ef", "type", "bridge_slave", "hairpin", "on"]]


def test_a_refused_apply_is_a_driver_error_with_nft_s_words() -> None:
    lb = NftLoadBalancer("t", run=Recorder(1, "Error: Could not process rule: Operation not permitted"))
    with pytest.raises(DriverError, match="Operation not permitted"):
        lb.apply(LbState(RANGE, (web(),)))


PROC = [
    # established through a VIP (masqueraded: the reply goes to the bridge's address)
    "ipv4     2 tcp      6 431998 ESTABLISHED src=10.208.4.5 dst=10.96.0.7 sport=36572 "
    "dport=80 src=10.208.4.3 dst=10.208.4.1 sport=8080 dport=36572 [ASSURED] mark=0 zone=0 use=2",
    # finished ones do not count
    "ipv4     2 tcp      6 110 TIME_WAIT src=10.208.4.5 dst=10.96.0.7 sport=36574 dport=80 "
    "src=10.208.4.3 dst=10.208.4.1 sport=8080 dport=36574 [ASSURED] mark=0 zone=0 use=2",
    # the address as a client, not as the backend
    "ipv4     2 tcp      6 431998 ESTABLISHED src=10.208.4.3 dst=1.2.3.4 sport=5000 "
    "dport=8080 src=1.2.3.4 dst=10.208.4.3 sport=8080 dport=5000 [ASSURED] mark=0 zone=0 use=2",
    # another port of it
    "ipv4     2 tcp      6 431998 ESTABLISHED src=10.208.4.5 dst=10.208.4.3 sport=1 dport=22 "
    "src=10.208.4.3 dst=10.208.4.5 sport=22 dport=1 [ASSURED] mark=0 zone=0 use=2",
    "ipv4     2 udp      17 20 src=10.208.4.5 dst=10.96.0.7 sport=5 dport=53 src=10.208.4.3 "
    "dst=10.208.4.1 sport=8080 dport=5 mark=0 zone=0 use=2",
    # a connection the backend never answered holds no request of it
    "ipv4     2 tcp      6 100 SYN_SENT src=10.208.4.5 dst=10.96.0.7 sport=3 dport=80 "
    "[UNREPLIED] src=10.208.4.3 dst=10.208.4.5 sport=8080 dport=3 mark=0 zone=0 use=2",
    # `conntrack -L` prints the same without the family columns
    "tcp      6 60 SYN_RECV src=10.208.4.6 dst=10.208.4.3 sport=9 dport=8080 src=10.208.4.3 "
    "dst=10.208.4.6 sport=8080 dport=9 mark=0 use=1",
    "garbage",
]


def test_open_connections_are_those_the_backend_answers_on_its_ports() -> None:
    assert flows_to(PROC, "10.208.4.3", {8080}).open == 2
    assert flows_to(PROC, "10.208.4.3", {22, 8080}).open == 3
    assert flows_to(PROC, "10.208.4.2", {8080}) == Flows()


def test_every_connection_to_the_backend_is_keyed_open_closed_or_unanswered() -> None:
    """A drain tells new connections from the ones it saw by these keys (the client's
    side of each tuple): finished and unanswered ones count as made, not as open."""
    assert flows_to(PROC, "10.208.4.3", {8080}).keys == {
        "10.208.4.5:36572>10.96.0.7:80", "10.208.4.5:36574>10.96.0.7:80",
        "10.208.4.5:3>10.96.0.7:80", "10.208.4.6:9>10.208.4.3:8080"}


def test_connections_reads_the_kernel_table_file(tmp_path: Path) -> None:
    f = tmp_path / "nf_conntrack"
    f.write_text("\n".join(PROC) + "\n")
    lb = NftLoadBalancer("t", conntrack_file=f, run=Recorder())
    assert lb.connections("10.208.4.3", [8080]).open == 2


def test_in_another_namespace_every_command_and_read_is_made_there(tmp_path: Path) -> None:
    run = Recorder()
    lb = NftLoadBalancer("t", run=run, netns=Path("/run/netns/cap-b"))
    lb.apply(LbState(RANGE, (web(),)))
    lb.connections("10.208.4.3", [8080])
    assert all(c[0][:2] == ["nsenter", "--net=/run/netns/cap-b"] for c in run.calls)
    assert ["nsenter", "--net=/run/netns/cap-b", "nft", "-f", "-"] in [c[0] for c in run.calls]
    assert any(c[0][2:] == ["cat", "/proc/net/nf_conntrack"] for c in run.calls)


def test_a_sweep_deletes_the_deployment_s_tables_only_and_in_its_namespace() -> None:
    calls: list[list[str]] = []
    listed = "\n".join(["table ip nat", f"table ip {table_name('abc', 'h1')}",
                        f"table ip {table_name('abc', 'h2')}", f"table ip {table_name('abc_d', 'h1')}",
                        f"table ip {table_name('abcd', 'h1')}", "table ip capsuled_svc_abc_x"])

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, listed if "list" in argv else "", "")
    gone = remove_tables("abc", Path("/run/netns/b"), run=run)
    assert gone == [table_name("abc", "h1"), table_name("abc", "h2")]
    assert calls[0] == ["nsenter", "--net=/run/netns/b", "nft", "list", "tables", "ip"]
    assert [c[-1] for c in calls[1:]] == gone and all(c[3] == "delete" for c in calls[1:])
