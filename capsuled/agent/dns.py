"""The names of a project's capsules on other hosts, and of its capsule services,
answered on this host.

Docker's embedded DNS (127.0.0.11 in every container) answers the names of containers on
the same host and network and forwards any other name to the container's DNS servers. A
container on a project network that spans hosts gets this host's gateway address on that
network as its first DNS server (agent/overlay.py), and here one UDP socket per such
network, bound to that address, answers A queries for the names (capsule name and uuid,
bare container name and uuid) of the project's capsules and containers on other hosts,
from the directory the control plane sends with the assignments, and the names of the
project's capsule services (their VIPs) from the service agent's view (agent/services.py):
so a service made after a capsule resolves in it too, not only in sandboxes made after
the service (whose /etc/hosts carries it). A service's name wins over a capsule's.

A socket belongs to one project, and it answers only queries from that project's subnet:
a container of another project can send to this address (it is the host's own), but it
never learns a name of this project from it. Anything else is REFUSED, upon which Docker
asks the container's next DNS server (the host's resolvers): so a project's names never
leave the host and other names resolve as before. Every query costs one bounded read and
one small answer; one thread serves every socket.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

LOG = logging.getLogger(__name__)
PORT = 53
TTL = 5  # seconds: a remade capsule may come back with another address
MAX_QUERY = 512  # bytes read of a query (plain DNS over UDP); the rest is dropped
MAX_ANSWER = 512


@dataclass
class Zone:
    """What one socket answers: a project's names on other hosts, to its own subnet."""

    clients: ipaddress.IPv4Network
    names: Mapping[str, str] = field(default_factory=dict)  # lower-case name -> IPv4


def answer(query: bytes, source: str, zone: Zone) -> bytes | None:
    """The reply to one query from `source` (None: not a query, nothing is sent)."""
    try:
        q = dns.message.from_wire(query)
    except (dns.exception.DNSException, ValueError):
        return None
    if q.flags & dns.flags.QR:
        return None  # a response sent to us: never answer one (no reflection loops)
    r = dns.message.make_response(q)
    try:
        inside = ipaddress.IPv4Address(source) in zone.clients
    except ValueError:
        inside = False
    if not inside or q.opcode() != dns.opcode.QUERY or len(q.question) != 1:
        r.set_rcode(dns.rcode.REFUSED)
        return r.to_wire(max_size=MAX_ANSWER)
    question = q.question[0]
    addr = zone.names.get(question.name.to_text(omit_final_dot=True).lower())
    if addr is None or question.rdclass != dns.rdataclass.IN:
        r.set_rcode(dns.rcode.REFUSED)  # not ours to say: Docker asks the next server
        return r.to_wire(max_size=MAX_ANSWER)
    r.flags |= dns.flags.AA
    if question.rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(question.name, TTL, dns.rdataclass.IN,
                                            dns.rdatatype.A, addr))
    # Any other type of a known name: no data (NOERROR, empty), so nobody asks elsewhere.
    return r.to_wire(max_size=MAX_ANSWER)


@dataclass
class _Bound:
    sock: socket.socket
    address: str
    zone: Zone


class DnsResponder:
    """One socket per project network (`key`), served by one thread. `make_socket` makes a
    UDP socket in the namespace the bridges are in."""

    def __init__(self, make_socket: Callable[[], socket.socket], port: int = PORT) -> None:
        self._make_socket = make_socket
        self._port = port
        self._lock = threading.Lock()
        self._bound: dict[str, _Bound] = {}
        self._names: dict[str, dict[str, str]] = {}  # key -> the directory's names
        self._services: dict[str, dict[str, str]] = {}  # key -> service names -> VIPs
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def serve(self, key: str, address: str, clients: ipaddress.IPv4Network,
              names: Mapping[str, str]) -> None:
        """Answer `names` on `address` to `clients` (idempotent; the names replace the
        previous ones; the service names of `key` come on top). Raises OSError when the
        address cannot be bound (yet)."""
        with self._lock:
            self._names[key] = _lower(names)
            bound = self._bound.get(key)
            if bound is not None and bound.address == address:
                bound.zone = self._zone(key, clients)
                return
        sock = self._make_socket()
        try:
            sock.setblocking(False)
            sock.bind((address, self._port))
        except OSError:
            sock.close()
            raise
        with self._lock:
            old = self._bound.pop(key, None)
            if old is not None:
                self._drop(old)
            self._bound[key] = _Bound(sock, address, self._zone(key, clients))
            self._selector.register(sock, selectors.EVENT_READ, key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="overlay-dns", daemon=True)
                self._thread.start()

    def serve_services(self, by_key: Mapping[str, Mapping[str, str]]) -> None:
        """The service names (name -> VIP) of every key from now on, replacing the previous
        ones; a key not served yet gets them when it is."""
        with self._lock:
            self._services = {k: _lower(v) for k, v in by_key.items() if v}
            for key, bound in self._bound.items():
                bound.zone = self._zone(key, bound.zone.clients)

    def _zone(self, key: str, clients: ipaddress.IPv4Network) -> Zone:
        return Zone(clients, {**self._names.get(key, {}), **self._services.get(key, {})})

    def stop(self, key: str) -> None:
        with self._lock:
            self._names.pop(key, None)
            bound = self._bound.pop(key, None)
            if bound is not None:
                self._drop(bound)

    def keys(self) -> set[str]:
        with self._lock:
            return set(self._bound)

    def address_of(self, key: str) -> tuple[str, int] | None:
        with self._lock:
            bound = self._bound.get(key)
            return None if bound is None else bound.sock.getsockname()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for bound in self._bound.values():
                self._drop(bound)
            self._bound.clear()

    def _drop(self, bound: _Bound) -> None:
        try:
            self._selector.unregister(bound.sock)
        except (KeyError, ValueError):
            pass
        bound.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready = self._selector.select(timeout=0.5)
            except OSError:
                continue
            for key, _ in ready:
                with self._lock:
                    bound = self._bound.get(str(key.data))
                if bound is None:
                    continue
                self._serve_one(bound)

    def _serve_one(self, bound: _Bound) -> None:
        try:
            query, (source, port) = bound.sock.recvfrom(MAX_QUERY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # closed meanwhile
        try:
            reply = answer(query, source, bound.zone)
        except Exception:  # noqa: BLE001 - one bad packet must not stop the responder
            LOG.exception("DNS query from %s could not be answered", source)
            return
        if reply is not None:
            try:
                bound.sock.sendto(reply, (source, port))
            except OSError:
                pass


def _lower(names: Mapping[str, str]) -> dict[str, str]:
    return {n.lower(): a for n, a in names.items()}


def host_resolvers(path: Path = Path("/etc/resolv.conf"), limit: int = 2) -> tuple[str, ...]:
    """The host's IPv4 name servers that a container can reach (not loopback ones, which
    are the container's own loopback there): its DNS servers after this responder."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ()
    out: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                addr = ipaddress.IPv4Address(fields[1])
            except ValueError:
                continue
            if not addr.is_loopback and str(addr) not in out:
                out.append(str(addr))
    return tuple(out[:limit])
