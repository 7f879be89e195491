"""Requests to a URL a tenant chose, safely: resolve, check, connect to what was checked.
Webhook deliveries (HttpPoster) and image search's registry requests (HttpGetter) go
through here, and nowhere else.

- The host is resolved here and every address it resolves to is judged
  (domain/egress.py); for a subscription or registry not made by an admin one restricted
  address refuses the request, and no connection is opened. An operator may let members
  reach private networks (RFC 1918, ULA): never loopback, link-local, multicast, reserved
  or unspecified addresses.
- The connection goes to the checked address itself (the URL's host replaced by it), with
  the name in the Host header and, for https, as the TLS server name (SNI) the
  certificate is verified against. No second resolution happens, so a name that answers
  a public address to the check and 127.0.0.1 to the connection (DNS rebinding) gains
  nothing.
- No redirects (a 3xx is an answer, never followed), no proxies from the environment, no
  keep-alive (each delivery is a fresh connection to a freshly checked address).
- One request takes at most `timeout` seconds in all: connect and each read are bounded
  by httpx, and a watchdog shuts the socket down at the deadline (a receiver that drips
  its answer a byte at a time gains nothing). At most `max_response` bytes are read.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Protocol

import httpx

from capsuled.domain.egress import (IPAddress, Target, private_network, restricted_problem,
                                    restriction)

Resolver = Callable[[str, int], list[IPAddress]]
USER_AGENT = "capsuled-webhook/1"
SEARCH_USER_AGENT = "capsuled-image-search/1"
_SNIPPET = 200


class Refused(Exception):
    """The URL may not be reached by this subscription; the message says why."""


class Unresolvable(Refused):
    """The URL's host name does not resolve (now)."""


class Restricted(Refused):
    """The URL's host is (or resolves to) an address the requester may not reach."""

    def __init__(self, host: str, address: IPAddress, kind: str) -> None:
        super().__init__(restricted_problem(host, address, kind))
        self.host = host
        self.address = address
        self.kind = kind


class Unanswered(Exception):
    """No answer came; the message says why (no body of anyone's in it)."""


@dataclass(frozen=True)
class Answer:
    """What a checked target answered: at most `max_response` bytes of its body."""

    status: int
    headers: httpx.Headers
    body: bytes
    complete: bool  # False: the body was cut at the limit or broke off


@dataclass(frozen=True)
class Reply:
    """How a delivery went: the receiver's status, or why there was none."""

    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Poster(Protocol):
    def post(self, target: Target, allow_private: bool, headers: dict[str, str],
             body: bytes) -> Reply:
        """POST `body` to `target` (never raises: a failure is a Reply with an error)."""


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (TCP), in the resolver's order, once each."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(f"cannot resolve {host}: {exc}") from None
    out: list[IPAddress] = []
    for _, _, _, _, sockaddr in infos:  # AF_INET and AF_INET6 only (the stub knows it)
        addr = ip_address(str(sockaddr[0]).split("%", 1)[0])
        if addr not in out:
            out.append(addr)
    if not out:
        raise Unresolvable(f"cannot resolve {host}: no address")
    return out


def addresses(target: Target, allow_private: bool, resolve: Resolver, *,
              private_networks: bool = False) -> list[IPAddress]:
    """Where `target` may be reached: its literal address or every address its name
    resolves to; Restricted if any is restricted and `allow_private` is not given
    (`private_networks`: except RFC 1918 and ULA ones)."""
    literal = target.ip
    found = [literal] if literal is not None else resolve(target.host, target.port)
    if not allow_private:
        for addr in found:
            kind = restriction(addr)
            if kind is not None and not (private_networks and private_network(addr)):
                raise Restricted(target.host, addr, kind)
    return found


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The context https receivers are verified with (made once: loading CAs is slow)."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


class _Pinned:
    """One request at a time to a checked address of a target: the part webhooks and
    image search share. `transport` replaces the network in tests (httpx.MockTransport)."""

    def __init__(self, timeout: float, max_response: int, user_agent: str, *,
                 resolve: Resolver, verify: ssl.SSLContext | None,
                 transport: httpx.BaseTransport | None) -> None:
        self._timeout = timeout
        self._max_response = max_response
        self._user_agent = user_agent
        self._resolve = resolve
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False,
            verify=verify if verify is not None else tls_context(None), transport=transport,
            limits=httpx.Limits(max_keepalive_connections=0))

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, target: Target, allow_private: bool,
                 headers: dict[str, str], body: bytes | None,
                 private_networks: bool = False) -> Answer:
        """The first answer of up to three of `target`'s addresses (the next one only if
        this one could not be connected to); Refused before any connection, Unanswered."""
        found = addresses(target, allow_private, self._resolve,
                          private_networks=private_networks)
        errors: list[str] = []
        deadline = time.monotonic() + self._timeout
        for addr in found[:3]:
            if time.monotonic() >= deadline:
                break
            try:
                return self._request_to(method, target, addr, headers, body, deadline)
            except _ConnectFailed as exc:
                errors.append(f"{addr}: connect: {exc}")
        raise Unanswered("; ".join(errors) or f"timed out after {self._timeout:g}s")

    def _request_to(self, method: str, target: Target, addr: IPAddress,
                    headers: dict[str, str], body: bytes | None, deadline: float) -> Answer:
        watchdog = _Watchdog(deadline)
        extensions: dict[str, Any] = {"trace": watchdog.trace}
        if target.scheme == "https" and target.ip is None:
            extensions["sni_hostname"] = target.host
        # identity: the answer is read raw (a compressed one could expand past any bound).
        sent = {**headers, "Host": target.host_header(), "User-Agent": self._user_agent,
                "Connection": "close", "Accept-Encoding": "identity"}
        status: int | None = None
        got = httpx.Headers()
        kept = bytearray()
        complete = False
        try:
            timeout = httpx.Timeout(max(0.1, deadline - time.monotonic()))
            with self._client.stream(method, target.url_at(addr), headers=sent, content=body,
                                     timeout=timeout, extensions=extensions) as response:
                status, got = response.status_code, response.headers
                for chunk in response.iter_raw():
                    kept += chunk[:max(0, self._max_response - len(kept))]
                    if response.num_bytes_downloaded >= self._max_response:
                        break  # the rest is not read: closing drops the connection
                else:
                    complete = True
        except httpx.ConnectError as exc:
            raise _ConnectFailed(_reason(exc)) from None
        except httpx.HTTPError as exc:
            if status is None:  # no answer at all (an unread rest of one does not matter)
                raise Unanswered(f"timed out after {self._timeout:g}s" if watchdog.fired
                                 else _reason(exc)) from None
        finally:
            watchdog.cancel()
        return Answer(status, got, bytes(kept), complete)


class _ConnectFailed(Exception):
    """This address could not be connected to (the next one may be tried)."""


class HttpPoster(_Pinned):
    """The real Poster."""

    def __init__(self, timeout: float, max_response: int, *, resolve: Resolver = system_resolver,
                 verify: ssl.SSLContext | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(timeout, max_response, USER_AGENT, resolve=resolve, verify=verify,
                         transport=transport)

    def post(self, target: Target, allow_private: bool, headers: dict[str, str],
             body: bytes) -> Reply:
        try:
            got = self._request("POST", target, allow_private,
                                {**headers, "Content-Type": "application/json"}, body)
        except (Refused, Unanswered) as exc:
            return Reply(None, str(exc))
        if 200 <= got.status < 300:
            return Reply(got.status)
        text = got.body[:_SNIPPET].decode("utf-8", "replace")
        snippet = "".join(ch if ch.isprintable() else " " for ch in text).strip()
        return Reply(got.status, f"HTTP {got.status}" + (f": {snippet}" if snippet else ""))


class HttpGetter(_Pinned):
    """GETs of a checked target (image search's registry catalogs and token realms), each
    bounded by `timeout` seconds and `max_response` bytes, never following a redirect."""

    def __init__(self, timeout: float, max_response: int, *, resolve: Resolver = system_resolver,
                 verify: ssl.SSLContext | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(timeout, max_response, SEARCH_USER_AGENT, resolve=resolve,
                         verify=verify, transport=transport)

    def get(self, target: Target, allow_private: bool, headers: dict[str, str], *,
            private_networks: bool = False) -> Answer:
        """The answer; Refused (no connection was opened), Unanswered."""
        return self._request("GET", target, allow_private, headers, None, private_networks)


class _Watchdog:
    """Shuts the delivery's socket down at the deadline, which ends any read or write
    blocked on it (httpx bounds each of them, not their sum)."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._done = False
        self.fired = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        sock = info["return_value"].get_extra_info("socket")
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            if self._done:
                return
            self._timer = threading.Timer(max(0.0, self._deadline - time.monotonic()),
                                          self._fire, (sock,))
            self._timer.daemon = True
            self._timer.start()

    def _fire(self, sock: socket.socket) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def cancel(self) -> None:
        with self._lock:
            self._done = True
            if self._timer is not None:
                self._timer.cancel()


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"
