"""The agent's DNS responder for a project's names on other hosts: it answers its own
project's subnet only, refuses what is not its to say (so Docker asks the next server),
never answers a response, and survives garbage; served for real over UDP on loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from capsuled.agent.dns import DnsResponder, Zone, answer, host_resolvers

ZONE = Zone(ipaddress.IPv4Network("10.224.0.0/20"), {"web-b": "10.224.1.7", "4b1d": "10.224.1.7"})


def _ask(name: str, rdtype: str = "A", source: str = "10.224.0.9", zone: Zone = ZONE) -> dns.message.Message:
    wire = answer(dns.message.make_query(name, rdtype).to_wire(), source, zone)
    assert wire is not None
    return dns.message.from_wire(wire)


def test_a_name_of_the_project_is_answered_to_the_project() -> None:
    r = _ask("web-b.")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    (rrset,) = r.answer
    assert [str(x) for x in rrset] == ["10.224.1.7"] and rrset.ttl == 5
    assert _ask("WEB-B").answer[0][0].to_text() == "10.224.1.7"  # names ignore case
    assert _ask("4b1d").rcode() == dns.rcode.NOERROR


def test_another_subnet_learns_nothing_and_unknown_names_are_refused() -> None:
    # A container of another project can send to this address (the host's own) but is
    # refused whatever it asks.
    other = _ask("web-b", source="10.224.16.3")
    assert other.rcode() == dns.rcode.REFUSED and not other.answer
    assert _ask("web-b", source="not-an-ip").rcode() == dns.rcode.REFUSED
    # Not the project's name: REFUSED, so Docker's resolver asks the next server.
    assert _ask("example.org").rcode() == dns.rcode.REFUSED
    # A known name of another type: no data, so nobody asks elsewhere for it.
    aaaa = _ask("web-b", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer


def test_responses_and_garbage_get_no_answer() -> None:
    reply = dns.message.make_response(dns.message.make_query("web-b", "A"))
    assert answer(reply.to_wire(), "10.224.0.9", ZONE) is None  # no reflection loop
    assert answer(b"\x00\x01garbage", "10.224.0.9", ZONE) is None
    assert answer(b"", "10.224.0.9", ZONE) is None


@pytest.fixture()
def responder() -> Iterator[DnsResponder]:
    r = DnsResponder(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), port=0)
    yield r
    r.close()


def test_the_responder_serves_each_network_on_its_own_address(responder: DnsResponder) -> None:
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    responder.serve("p", "127.0.0.1", loopback, {"web-b": "10.224.1.7"})
    responder.serve("q", "127.0.0.2", ipaddress.IPv4Network("10.0.0.0/8"), {"web-q": "10.0.0.9"})
    p_addr, q_addr = responder.address_of("p"), responder.address_of("q")
    assert p_addr is not None and q_addr is not None
    got = dns.query.udp(dns.message.make_query("web-b", "A"), p_addr[0], port=p_addr[1], timeout=2)
    assert got.answer[0][0].to_text() == "10.224.1.7"
    # q's socket answers only q's subnet: asked from loopback, it refuses.
    got = dns.query.udp(dns.message.make_query("web-q", "A"), q_addr[0], port=q_addr[1],
                        source="127.0.0.1", timeout=2)
    assert got.rcode() == dns.rcode.REFUSED
    # New names replace the old ones on the same socket; a stopped network is silent.
    responder.serve("p", "127.0.0.1", loopback, {"web-c": "10.224.1.8"})
    assert responder.address_of("p") == p_addr
    got = dns.query.udp(dns.message.make_query("web-b", "A"), p_addr[0], port=p_addr[1], timeout=2)
    assert got.rcode() == dns.rcode.REFUSED
    responder.stop("q")
    assert responder.keys() == {"p"}
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query("web-q", "A"), q_addr[0], port=q_addr[1], timeout=0.5)


def test_service_names_come_on_top_of_the_directory_for_their_project_only(
        responder: DnsResponder) -> None:
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    # Names of a project not served yet wait for it; an empty map serves nothing.
    responder.serve_services({"p": {"Web": "10.96.0.7", "web-b": "10.96.0.8"}, "q": {}})
    responder.serve("p", "127.0.0.1", loopback, {"web-b": "10.224.1.7", "db": "10.224.1.9"})
    responder.serve("q", "127.0.0.2", loopback, {})
    p_addr, q_addr = responder.address_of("p"), responder.address_of("q")
    assert p_addr is not None and q_addr is not None

    def ask(addr: tuple[str, int], name: str) -> str | None:
        got = dns.query.udp(dns.message.make_query(name, "A"), addr[0], port=addr[1], timeout=2)
        return got.answer[0][0].to_text() if got.answer else None

    assert ask(p_addr, "web") == "10.96.0.7"  # the service, a name no capsule has
    assert ask(p_addr, "web-b") == "10.96.0.8"  # a service's name wins over a capsule's
    assert ask(p_addr, "db") == "10.224.1.9"
    assert ask(q_addr, "web") is None  # another project's socket never says it
    # A new directory keeps the services; new services keep the directory; a deleted
    # service's name goes.
    responder.serve("p", "127.0.0.1", loopback, {"db": "10.224.1.10"})
    assert ask(p_addr, "web") == "10.96.0.7" and ask(p_addr, "db") == "10.224.1.10"
    responder.serve_services({"p": {"api": "10.96.0.9"}})
    assert ask(p_addr, "web") is None and ask(p_addr, "api") == "10.96.0.9"
    assert ask(p_addr, "db") == "10.224.1.10"


def test_the_host_resolvers_leave_loopback_out(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n"
                    "nameserver ::1\nnameserver 192.0.2.54\nnameserver 192.0.2.55\n")
    assert host_resolvers(conf) == ("192.0.2.53", "192.0.2.54")
    assert host_resolvers(tmp_path / "missing") == ()
