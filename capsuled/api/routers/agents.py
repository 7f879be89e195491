"""/v1/agents/{host}/… (extension): the agent channel over HTTP, for `capsuled agent`.

Only agent tokens reach it, and each only for the host its token names: a compromised
host can read its own assignments, never another host's or any tenant's API.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from capsuled.api import openapi as doc
from capsuled.api.deps import PrincipalDep, allow, read_body, read_json
from capsuled.api.services.agents import ControlPlane
from capsuled.api.state import app_state
from capsuled.domain.channel import AgentStats, BareReport, CapsuleReport, HostInfo
from capsuled.errors import Forbidden, InvalidInput
from capsuled.identity.base import Principal

LOG = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/agents/{host}", dependencies=[allow("agent:channel")])

MAX_WATCH_SECONDS = 60.0


def _control(request: Request) -> ControlPlane:
    return app_state(request, "control", ControlPlane)


def _own(who: Principal, host: str) -> None:
    if who.host != host:
        raise Forbidden(f"This agent token is for host {who.host or '(none)'}, not {host}.")


def _model(cls: Any, data: Any, what: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}") from exc


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key) or []
    if not isinstance(value, list):  # a number here was a TypeError (500)
        raise InvalidInput(f"{key}: must be a list")
    return value


@router.get("")
def hello(request: Request, host: str, who: PrincipalDep) -> dict[str, Any]:
    """What a starting agent needs before anything else: the instance id its Docker
    objects are labelled with."""
    _own(who, host)
    return {"host": host, "instance_id": _control(request).instance_id()}


@router.put("", openapi_extra=doc.body(doc.AGENT_REGISTER))
async def register(request: Request, host: str, who: PrincipalDep) -> dict[str, Any]:
    """Register the host; the answer carries the key its ops endpoint is to accept."""
    _own(who, host)
    info: HostInfo = _model(HostInfo, await read_json(request), "body")
    if info.name != host:
        raise InvalidInput(f"name: must be {host}, the host in the path")
    got = await anyio.to_thread.run_sync(_control(request).register, info)
    return got.model_dump(mode="json")


@router.post("/heartbeat", status_code=204,
             openapi_extra=doc.body(doc.AGENT_HEARTBEAT, required=False),
             responses={200: {"description": "Something of the host is Unknown (it was silent "
                                             "for a while): report everything again",
                              "content": {"application/json": {"schema": doc.obj(
                                  resync={"type": "boolean"})}}}})
async def heartbeat(request: Request, host: str, who: PrincipalDep) -> Response:
    """The host is alive; the body (optional) carries its agent's loop counters."""
    _own(who, host)
    stats = _stats(host, await request.body())
    if _control(request).heartbeat(host, stats):  # never waits for the store
        return JSONResponse({"resync": True})
    return Response(status_code=204)


def _stats(host: str, raw: bytes) -> AgentStats | None:
    """The agent's stats, or None. Unlike every other input, a bad body is not refused: a
    heartbeat is the host's sign of life, and an agent whose heartbeats fail registers
    again and relists everything, so a fault in its metrics must not become one in its
    liveness. The stats are dropped and the reason logged instead."""
    if not raw:
        return None
    try:
        body = read_body(raw)
        stats = body.get("stats") if isinstance(body, dict) else None
        return None if stats is None else AgentStats.model_validate(stats)
    except (InvalidInput, ValueError) as exc:
        LOG.warning("host %s: ignoring the stats of its heartbeat: %s", host,
                    exc.message if isinstance(exc, InvalidInput) else exc)
        return None


@router.get("/assignments")
async def assignments(request: Request, host: str, who: PrincipalDep, after: int = -1,
                      timeout: float = 30.0, full: bool = True) -> dict[str, Any]:
    """The host's full desired set, once its revision passes `after` (long poll). With
    `full=false`, a poll that times out with the revision still at `after` answers
    `"unchanged": true` and empty lists (agents from before it never send it)."""
    _own(who, host)
    wait = max(0.0, min(timeout, MAX_WATCH_SECONDS))
    got = await _control(request).watch_async(host, after, wait, full)
    return got.model_dump(mode="json")


@router.get("/services")
async def services(request: Request, host: str, who: PrincipalDep, after: str | None = None,
                   timeout: float = 30.0) -> dict[str, Any]:
    """The host's service view (its projects' services and their serving backends), once
    its version differs from `after` (long poll)."""
    _own(who, host)
    wait = max(0.0, min(timeout, MAX_WATCH_SECONDS))
    got = await _control(request).services_async(host, after, wait)
    return got.model_dump(mode="json")


@router.post("/reports", status_code=204, openapi_extra=doc.body(doc.AGENT_REPORTS))
async def reports(request: Request, host: str, who: PrincipalDep) -> Response:
    _own(who, host)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("body: must be a JSON object")
    capsules = [_model(CapsuleReport, r, "capsules[]") for r in _list(body, "capsules")]
    bare = [_model(BareReport, r, "containers[]") for r in _list(body, "containers")]
    await anyio.to_thread.run_sync(_control(request).report, host, capsules, bare)
    return Response(status_code=204)
