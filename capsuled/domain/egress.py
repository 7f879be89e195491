"""Where a tenant may make the server send requests (webhooks, image search): the URL's
shape, and the addresses only administrators may reach.

A webhook makes an API replica open connections that a tenant chose, from inside the
deployment's network. Unchecked, a member could reach the cloud's metadata service
(169.254.169.254), the database, the agents' ops endpoints or the API itself (server-side
request forgery). So a member's webhook may reach only globally routable unicast
addresses. The check is made on an IP literal at once, and on every address a name
resolves to, at create and again at each delivery (a name may change what it resolves
to); the connection then goes to the address that was checked (api/relay/egress.py).
Pure: parsing and classification only, no sockets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Literal
from urllib.parse import urlsplit

from capsuled.domain.template import short
from capsuled.errors import InvalidInput

IPAddress = IPv4Address | IPv6Address
MAX_URL = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
RESTRICTED_KINDS = "loopback, private, link-local, multicast, reserved or unspecified"
# Networks a site numbers its own hosts in (RFC 1918, IPv6 unique local): what an operator
# may let members' registry searches reach (api.registry_search_private_networks).
PRIVATE_NETWORKS = tuple(ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12",
                                                 "192.168.0.0/16", "fc00::/7"))
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NUMERIC = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


@dataclass(frozen=True)
class Target:
    """A webhook URL, parsed: where to connect and what to ask for there."""

    scheme: Literal["http", "https"]
    host: str  # a lower-case DNS name, or an IP literal (IPv6 without brackets)
    port: int
    path: str  # path and query, at least "/"

    @property
    def ip(self) -> IPAddress | None:
        """The host as an address when the URL names one (no resolution then)."""
        try:
            return ip_address(self.host)
        except ValueError:
            return None

    def host_header(self) -> str:
        """The Host header: the name as the URL gave it, the port only when not default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"

    def url_at(self, address: IPAddress) -> str:
        """The URL with the host replaced by `address`: connect there, nowhere else."""
        host = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_url(raw: object, field: str = "url") -> Target:
    """An http(s) URL without userinfo or fragment, whose host is a DNS name or an IP
    literal; InvalidInput naming `field` otherwise (the value is echoed shortened)."""
    if not isinstance(raw, str) or not raw:
        raise InvalidInput(f"{field}: is required: an http:// or https:// URL")
    if len(raw) > MAX_URL:
        raise InvalidInput(f"{field}: must be at most {MAX_URL} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in raw) or not raw.isascii():
        raise InvalidInput(f"{field}: {short(raw)} has spaces, control or non-ASCII characters "
                           "(percent-encode them; punycode an international host name)")
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidInput(f"{field}: {short(raw)} must start with http:// or https://")
    if "@" in parts.netloc:
        raise InvalidInput(f"{field}: must not carry a user name or password (sign with the "
                           "subscription's secret instead)")
    if parts.fragment or raw.endswith("#"):
        raise InvalidInput(f"{field}: must not have a #fragment (it is never sent)")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise InvalidInput(f"{field}: {short(raw)} has an invalid port") from None
    host = _host(parts.hostname or "", field)
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Target("https" if scheme == "https" else "http", host, port, path)


def _host(host: str, field: str) -> str:
    if not host:
        raise InvalidInput(f"{field}: names no host")
    if "%" in host:
        raise InvalidInput(f"{field}: an IPv6 zone ({short(host)}) is not allowed")
    try:
        return str(ip_address(host))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    labels = name.split(".")
    # A name whose last label is a number is no DNS name, but the C resolver reads
    # "2130706433" or "0x7f.1" as an IPv4 address: refused here, not left to it.
    if (len(name) > 253 or not all(_LABEL.match(label) for label in labels)
            or _NUMERIC.match(labels[-1])):
        raise InvalidInput(f"{field}: {short(host)} is neither a host name nor an IP address")
    return name


def restriction(address: IPAddress) -> str | None:
    """What kind of address only admins may reach (e.g. 'loopback'), or None for a
    globally routable unicast one. IPv4 addresses carried inside IPv6 ones (mapped
    ::ffff:a.b.c.d, 6to4 2002::/16) are judged as the IPv4 address they carry."""
    if isinstance(address, IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            inner = restriction(embedded)
            if inner is not None or address.ipv4_mapped is not None:
                return inner
    for kind, hit in (("unspecified", address.is_unspecified),
                      ("loopback", address.is_loopback),
                      ("link-local", address.is_link_local),
                      ("multicast", address.is_multicast),
                      ("reserved", address.is_reserved),
                      ("private", address.is_private)):
        if hit:
            return kind
    # Shared (100.64/10), benchmarking, documentation, Teredo, …: not reachable on the
    # internet, so reachable only inside some network a member must not choose.
    return None if address.is_global else "reserved"


def private_network(address: IPAddress) -> bool:
    """Whether `address` is in a site's own private network (RFC 1918 or IPv6 unique
    local, also carried inside IPv6) rather than loopback, link-local (the cloud's metadata
    service), multicast, reserved or unspecified, which no such setting ever opens."""
    if isinstance(address, IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return private_network(embedded)
    return any(address in net for net in PRIVATE_NETWORKS)


def restricted_problem(host: str, address: IPAddress, kind: str, field: str = "url") -> str:
    """The message for a member's URL that reaches `address` (`host` names it)."""
    article = "an" if kind[0] in "aeiou" else "a"
    what = (f"{address} is" if host == str(address)
            else f"{short(host)} resolves to {address},")
    return (f"{field}: {what} {article} {kind} address; only administrators may point "
            f"webhooks at {RESTRICTED_KINDS} addresses")
