"""POSTing to a URL a tenant chose, safely: resolve, check, connect to what was checked.

- The host is resolved here and every address it resolves to is judged
  (domain/egress.py); for a subscription not made by an admin one restricted address
  refuses the delivery, and no connection is opened.
- The connection goes to the checked address itself (the URL's host replaced by it), with
  the name in the Host header and, for https, as the TLS server name (SNI) the
  certificate is verified against. No second resolution happens, so a name that answers
  a public address to the check and 127.0.0.1 to the connection (DNS rebinding) gains
  nothing.
- No redirects (a 3xx is a failed delivery), no proxies from the environment, no
  keep-alive (each delivery is a fresh connection to a freshly checked address).
- One delivery takes at most `timeout` seconds in all: connect and each read are bounded
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

from capsuled.domain.egress import IPAddress, Target, restricted_problem, restriction

Resolver = Callable[[str, int], list[IPAddress]]
USER_AGENT = "capsuled-webhook/1"
_SNIPPET = 200


class Refused(Exception):
    """The URL may not be reached by this subscription; the message says why."""


class Unresolvable(Refused):
    """The URL's host name does not resolve (now)."""


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


def addresses(target: Target, allow_private: bool, resolve: Resolver) -> list[IPAddress]:
    """Where `target` may be reached: its literal address or every address its name
    resolves to; Refused if any is restricted and `allow_private` is not given."""
    literal = target.ip
    found = [literal] if literal is not None else resolve(target.host, target.port)
    if not allow_private:
        for addr in found:
            kind = restriction(addr)
            if kind is not None:
                raise Refused(restricted_problem(target.host, addr, kind))
    return found


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The context https receivers are verified with (made once: loading CAs is slow)."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


class HttpPoster:
    """The real Poster. `transport` replaces the network in tests (httpx.MockTransport)."""

    def __init__(self, timeout: float, max_response: int, *, resolve: Resolver = system_resolver,
                 verify: ssl.SSLContext | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._timeout = timeout
        self._max_response = max_response
        self._resolve = resolve
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False,
            verify=verify if verify is not None else tls_context(None), transport=transport,
            limits=httpx.Limits(max_keepalive_connections=0))

    def close(self) -> None:
        self._client.close()

    def post(self, target: Target, allow_private: bool, headers: dict[str, str],
             body: bytes) -> Reply:
        try:
            found = addresses(target, allow_private, self._resolve)
        except Refused as exc:
            return Reply(None, str(exc))
        errors: list[str] = []
        deadline = time.monotonic() + self._timeout
        for addr in found[:3]:  # the next address only if this one could not be reached
            if time.monotonic() >= deadline:
                break
            reply = self._post_to(target, addr, headers, body, deadline)
            if reply.status is not None or not reply.error or not reply.error.startswith("connect"):
                return reply
            errors.append(f"{addr}: {reply.error}")
        return Reply(None, "; ".join(errors) or f"timed out after {self._timeout:g}s")

    def _post_to(self, target: Target, addr: IPAddress, headers: dict[str, str], body: bytes,
                 deadline: float) -> Reply:
        watchdog = _Watchdog(deadline)
        extensions: dict[str, Any] = {"trace": watchdog.trace}
        if target.scheme == "https" and target.ip is None:
            extensions["sni_hostname"] = target.host
        # identity: the answer is read raw (a compressed one could expand past any bound).
        sent = {**headers, "Host": target.host_header(), "User-Agent": USER_AGENT,
                "Connection": "close", "Content-Type": "application/json",
                "Accept-Encoding": "identity"}
        status: int | None = None
        kept = b""
        try:
            timeout = httpx.Timeout(max(0.1, deadline - time.monotonic()))
            with self._client.stream("POST", target.url_at(addr), headers=sent, content=body,
                                     timeout=timeout, extensions=extensions) as response:
                status = response.status_code
                for chunk in response.iter_raw():
                    kept += chunk[:max(0, _SNIPPET - len(kept))]
                    if response.num_bytes_downloaded >= self._max_response:
                        break  # the rest is not read: closing drops the connection
        except httpx.ConnectError as exc:
            return Reply(None, f"connect: {_reason(exc)}")
        except httpx.HTTPError as exc:
            if status is None:  # no answer at all (an unread rest of one does not matter)
                return Reply(None, f"timed out after {self._timeout:g}s" if watchdog.fired
                             else _reason(exc))
        finally:
            watchdog.cancel()
        assert status is not None
        if 200 <= status < 300:
            return Reply(status)
        text = kept.decode("utf-8", "replace")
        snippet = "".join(ch if ch.isprintable() else " " for ch in text).strip()
        return Reply(status, f"HTTP {status}" + (f": {snippet}" if snippet else ""))


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
