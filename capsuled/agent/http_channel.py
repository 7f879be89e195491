"""The agent channel over HTTP: what a `capsuled agent` on its own host uses to reach the
API replicas (any of them; they share the database). The same models as the in-process
channel are the wire format.

Every call is idempotent, so a failed one is simply retried by the agent's loops; a
connection problem surfaces as `Unavailable`, which they already treat as transient. So
does an answer that is not what this agent understands (an HTML error page from a proxy,
truncated JSON, wrong types): a load balancer in between can produce any of them. Fields
this agent does not know are ignored, so a newer API can serve an older agent during a
rolling upgrade.

Fail-over: given several replicas the channel talks to one at a time, the current one.
When it cannot be reached (connection refused or dropped, a timeout) or a proxy in front
says it is gone (502, 503, 504), the channel moves on to the next replica and makes the
same call there, once. That is safe for every call: instance_id, the watches and the
heartbeat only read or note liveness; a report is the full state of what it names
(level-triggered); a registration is an upsert of the host row with this boot's nonce,
from which every replica derives the same ops key, and the ops URL it stores in the
shared database is the agent's own, whichever replica wrote it. Any other answer (a 4xx
above all) is the API's answer and is not asked again elsewhere. There is no blacklist:
the next failure moves on again, round robin, so a replica that came back is used again
and no set of failures can strand the agent on none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from capsuled.config import api_urls
from capsuled.domain.channel import (AgentStats, Assignments, BareReport, CapsuleReport,
                                     HostInfo, Registration)
from capsuled.domain.services import ServicesView
from capsuled.errors import Forbidden, NotAuthenticated, Unavailable

LOG = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

# The server holds a watch at most this long beyond what was asked before answering.
_WATCH_SLACK = 10.0
# A replica that does not accept a connection within this is treated as gone: a host that
# is down drops packets rather than refusing them, and the other replica should not wait
# a whole call timeout for that.
_CONNECT_TIMEOUT = 5.0
# What a proxy or load balancer in front of a replica answers when the replica is gone.
_GONE = frozenset({502, 503, 504})


class _ReplicaGone(Exception):
    """The replica could not answer; another one may."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HttpChannel:
    def __init__(self, api_url: str | Sequence[str], token: str, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        # ValueError on a URL that is not http(s) with a host: callers check at start-up.
        self._bases = api_urls(api_url)
        self._current = 0
        self._lock = threading.Lock()  # the agent's loops call from their own threads
        self._timeout = timeout
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(_CONNECT_TIMEOUT,
                                                                             timeout)),
                                  transport=transport,
                                  headers={"X-Auth-Token": token, "Accept": "application/json"})

    @property
    def current(self) -> str:
        """The replica calls go to now."""
        return self._bases[self._current]

    def close(self) -> None:
        self._http.close()

    def instance_id(self, host: str) -> str:
        """The control plane's instance id (labels every Docker object of this install)."""
        body = self._call("GET", f"/v1/agents/{host}")
        instance = body.get("instance_id") if isinstance(body, dict) else None
        if not isinstance(instance, str):
            raise Unavailable(f"GET /v1/agents/{host}: the API's answer has no instance_id")
        return instance

    def register(self, host: HostInfo) -> Registration | None:
        body = self._call("PUT", f"/v1/agents/{host.name}", json=host.model_dump(mode="json"))
        # An API from before derived ops keys answers 204, without a body.
        return None if body is None else _parse(Registration, body, f"PUT /v1/agents/{host.name}")

    def heartbeat(self, host: str, stats: AgentStats | None = None) -> bool:
        # An API from before agent stats ignores the body; one from before resyncs
        # answers 204 (no body: False).
        body = self._call("POST", f"/v1/agents/{host}/heartbeat",
                          json=None if stats is None else {"stats": stats.model_dump(mode="json")})
        return isinstance(body, dict) and body.get("resync") is True

    def watch(self, host: str, after_revision: int, timeout: float,
              full: bool = True) -> Assignments:
        # An API from before `full` ignores it and sends the whole set: always correct.
        params: dict[str, int | float | str] = {"after": after_revision, "timeout": timeout}
        if not full:
            params["full"] = "false"
        body = self._call("GET", f"/v1/agents/{host}/assignments", params=params,
                          timeout=timeout + _WATCH_SLACK)
        return _parse(Assignments, body, f"GET /v1/agents/{host}/assignments")

    def services(self, host: str, after: str | None, timeout: float) -> ServicesView:
        params: dict[str, str | float] = {"timeout": timeout}
        if after is not None:
            params["after"] = after
        body = self._call("GET", f"/v1/agents/{host}/services", params=params,
                          timeout=timeout + _WATCH_SLACK)
        return _parse(ServicesView, body, f"GET /v1/agents/{host}/services")

    def report(self, host: str, reports: list[CapsuleReport],
               containers: list[BareReport] | None = None) -> None:
        self._call("POST", f"/v1/agents/{host}/reports", json={
            "capsules": [r.model_dump(mode="json") for r in reports],
            "containers": [c.model_dump(mode="json") for c in containers or []]})

    def _call(self, method: str, path: str, timeout: float | None = None, **kwargs: Any) -> Any:
        index = self._current
        try:
            return self._call_one(index, method, path, timeout, **kwargs)
        except _ReplicaGone as exc:
            if len(self._bases) == 1:
                raise Unavailable(exc.message) from None
            retry_on = self._fail_over(index, exc.message)
        try:
            return self._call_one(retry_on, method, path, timeout, **kwargs)
        except _ReplicaGone as exc:
            # Once: the loops retry with their own back-off, and this call's next try
            # starts from this replica and moves on again if it is still gone.
            raise Unavailable(exc.message) from None

    def _fail_over(self, failed: int, why: str) -> int:
        """The replica to use after `failed` did not answer. Only the first of the calls
        that failed on it moves on (and says so); the others follow to where it moved."""
        with self._lock:
            if self._current == failed:
                self._current = (failed + 1) % len(self._bases)
                LOG.warning("API replica %s failed (%s): switching to %s", self._bases[failed],
                            why, self._bases[self._current])
            return self._current

    def _call_one(self, index: int, method: str, path: str, timeout: float | None,
                  **kwargs: Any) -> Any:
        base = self._bases[index]
        read = timeout or self._timeout
        try:
            r = self._http.request(method, base + path, timeout=httpx.Timeout(
                read, connect=min(_CONNECT_TIMEOUT, read)), **kwargs)
        except httpx.TransportError as exc:
            raise _ReplicaGone(f"API at {base} unreachable: {_what(exc)}") from exc
        except httpx.HTTPError as exc:
            raise Unavailable(f"API at {base}: {method} {path} failed: {exc}") from exc
        if r.status_code in _GONE:
            raise _ReplicaGone(f"API at {base}: {method} {path}: HTTP {r.status_code}: "
                               f"{_detail(r)}")
        if r.status_code == 401:
            raise NotAuthenticated(f"the API refused the agent token: {_detail(r)}")
        if r.status_code == 403:
            raise Forbidden(f"the API refused the agent: {_detail(r)}")
        if r.status_code >= 400:
            # 500 and surprises are retried like an outage, on the same replica (it
            # answered); the loops back off.
            raise Unavailable(f"{method} {path}: HTTP {r.status_code}: {_detail(r)}")
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise Unavailable(f"{method} {path}: HTTP {r.status_code} but the body is not "
                              f"JSON: {r.text[:200]!r}") from None


def _parse(model: type[M], body: Any, what: str) -> M:
    try:
        # extra="ignore" reaches nested models too (the spec models forbid unknown fields
        # for users' input; from the API they are fields of a newer version).
        return model.model_validate(body, extra="ignore")
    except ValidationError as exc:
        raise Unavailable(f"{what}: unexpected answer from the API: "
                          f"{exc.error_count()} problem(s), first: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    e = exc.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json()["errors"][0]["detail"])
    except (ValueError, KeyError, IndexError, TypeError):
        return r.text[:200]


def _what(exc: httpx.TransportError) -> str:
    # Some of httpx's errors have no message (a read timeout): name their kind then.
    return str(exc) or type(exc).__name__
