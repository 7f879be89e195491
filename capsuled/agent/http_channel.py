"""The agent channel over HTTP: what a `capsuled agent` on its own host uses to reach the
API replicas (any of them; they share the database). The same models as the in-process
channel are the wire format.

Every call is idempotent, so a failed one is simply retried by the agent's loops; a
connection problem surfaces as `Unavailable`, which they already treat as transient. So
does an answer that is not what this agent understands (an HTML error page from a proxy,
truncated JSON, wrong types): a load balancer in between can produce any of them. Fields
this agent does not know are ignored, so a newer API can serve an older agent during a
rolling upgrade.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from capsuled.domain.channel import (AgentStats, Assignments, BareReport, CapsuleReport,
                                     HostInfo, Registration)
from capsuled.domain.services import ServicesView
from capsuled.errors import Forbidden, NotAuthenticated, Unavailable

M = TypeVar("M", bound=BaseModel)

# The server holds a watch at most this long beyond what was asked before answering.
_WATCH_SLACK = 10.0


class HttpChannel:
    def __init__(self, api_url: str, token: str, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._base = api_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.Client(base_url=self._base, timeout=timeout, transport=transport,
                                  headers={"X-Auth-Token": token, "Accept": "application/json"})

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
        try:
            r = self._http.request(method, path, timeout=timeout or self._timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"API at {self._base} unreachable: {exc}") from exc
        if r.status_code == 401:
            raise NotAuthenticated(f"the API refused the agent token: {_detail(r)}")
        if r.status_code == 403:
            raise Forbidden(f"the API refused the agent: {_detail(r)}")
        if r.status_code >= 400:
            # 5xx and surprises are retried like an outage; the loops back off.
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
