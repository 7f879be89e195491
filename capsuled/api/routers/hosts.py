"""/v1/hosts (microversion 1.4+), /v1/services and /v1/availability_zones, as Zun has them.

zunclient sends `services/enable|disable|force_down` as a PUT whose parameters are in
the query string, so the query and a JSON body are both read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from capsuled.api import openapi as doc
from capsuled.api.deps import BaseUrlDep, VersionDep, allow, flag, given, read_json
from capsuled.api.microversions import HOSTS_API, fmt
from capsuled.api.services.hosts import AGENT_BINARY, HostService, HostState
from capsuled.api.state import app_state
from capsuled.api.views import ts
from capsuled.errors import InvalidInput, NotFound

router = APIRouter()


def _service(request: Request) -> HostService:
    return app_state(request, "hosts", HostService)


def host_view(h: HostState, base: str) -> dict[str, Any]:
    return {
        "uuid": h.uuid, "hostname": h.name,
        "mem_total": h.memory_mb, "mem_used": h.memory_used,
        "cpus": h.cpus, "cpu_used": h.cpu_used,
        "disk_total": h.disk_gb, "disk_used": 0, "disk_quota_supported": False,
        "total_containers": h.containers,
        "architecture": h.info.get("architecture"), "os_type": "linux",
        "os": h.info.get("os"), "kernel_version": h.info.get("kernel_version"),
        "labels": h.labels, "runtimes": [h.info["runtime"]] if h.info.get("runtime") else [],
        "enable_cpu_pinning": False,
        # Extensions: scheduling state, which Zun only shows through services.
        "availability_zone": h.availability_zone, "enabled": h.enabled, "state": _state(h),
        "links": [{"href": f"{base}/v1/hosts/{h.uuid}", "rel": "self"},
                  {"href": f"{base}/hosts/{h.uuid}", "rel": "bookmark"}],
    }


def service_view(h: HostState) -> dict[str, Any]:
    return {"id": h.id, "host": h.name, "binary": AGENT_BINARY, "state": _state(h),
            "disabled": not h.enabled, "disabled_reason": h.disabled_reason,
            "forced_down": h.forced_down, "report_count": h.report_count,
            "availability_zone": h.availability_zone, "last_seen_up": ts(h.last_seen),
            "created_at": ts(h.created_at), "updated_at": ts(h.updated_at or h.last_seen)}


def _state(h: HostState) -> str:
    return "up" if h.up else "down"


def _needs_hosts_api(version: VersionDep) -> None:
    if not version.at_least(HOSTS_API):
        raise NotFound(f"The hosts API needs microversion {fmt(HOSTS_API)} or later "
                       f"(this request asked for {version}).")


@router.get("/v1/hosts", dependencies=[allow("host:get_all")])
def list_hosts(request: Request, version: VersionDep,
               base: BaseUrlDep) -> dict[str, Any]:
    _needs_hosts_api(version)
    return {"hosts": [host_view(h, base) for h in _service(request).list()], "next": None}


@router.get("/v1/hosts/{ident}", dependencies=[allow("host:get")])
def show_host(request: Request, ident: str, version: VersionDep,
              base: BaseUrlDep) -> dict[str, Any]:
    _needs_hosts_api(version)
    return host_view(_service(request).get(ident), base)


@router.get("/v1/services", dependencies=[allow("zun-service:get_all")])
def list_services(request: Request) -> dict[str, Any]:
    return {"services": [service_view(h) for h in _service(request).list()]}


async def _params(request: Request) -> dict[str, Any]:
    params: dict[str, Any] = {k: v for k, v in request.query_params.items() if given(v) is not None}
    body = await read_json(request)
    if body is not None:
        if not isinstance(body, dict):
            raise InvalidInput("body: must be a JSON object")
        params.update(body)
    return params


@router.put("/v1/services/{action}", dependencies=[allow("zun-service:update")],
            openapi_extra=doc.body(doc.SERVICE_UPDATE, required=False))
async def update_service(request: Request, action: str) -> dict[str, Any]:
    p = await _params(request)
    service = _service(request)
    host, binary = p.get("host"), p.get("binary")
    if action == "enable":
        h = service.set_disabled(host, binary, False)
        return {"service": {"host": h.name, "binary": binary, "disabled": False}}
    if action == "disable":
        h = service.set_disabled(host, binary, True, p.get("disabled_reason"))
        return {"service": {"host": h.name, "binary": binary, "disabled": True,
                            "disabled_reason": h.disabled_reason}}
    if action == "force_down":
        value = p.get("forced_down")
        down = value if isinstance(value, bool) else flag(None if value is None else str(value),
                                                          "forced_down")
        h = service.set_forced_down(host, binary, down)
        return {"service": {"host": h.name, "binary": binary, "forced_down": h.forced_down}}
    raise NotFound(f"Unknown service action {action!r}: use enable, disable or force_down.")


@router.delete("/v1/services", status_code=204, dependencies=[allow("zun-service:delete")])
def delete_service(request: Request, host: str | None = None,
                   binary: str | None = None) -> Response:
    _service(request).delete(given(host), given(binary))
    return Response(status_code=204)


@router.get("/v1/availability_zones", dependencies=[allow("availability_zones:get_all")])
def availability_zones(request: Request) -> dict[str, Any]:
    zones = _service(request).availability_zones()
    return {"availability_zones": [{"availability_zone": z} for z in zones]}
