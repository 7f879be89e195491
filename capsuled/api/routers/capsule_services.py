"""/v1/capsule_services (extension; Zun's /v1/services are the compute services): a
project's virtual addresses over its ready capsules.

POST   /v1/capsule_services                        {name, selector, ports} → 201
GET    /v1/capsule_services[?all_projects=true]    {"capsule_services": [...]}
GET    /v1/capsule_services/{id}                   one (by uuid or name), with its backends
DELETE /v1/capsule_services/{id}                   204
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from capsuled.api import openapi as doc
from capsuled.api.deps import BaseUrlDep, BodyDep, PrincipalDep, allow, flag, given
from capsuled.api.routers.capsules import _limit
from capsuled.api.services.capsule_services import CapsuleServices, ServiceView
from capsuled.api.state import app_state
from capsuled.api.views import ts

router = APIRouter(prefix="/v1/capsule_services")


def _service(request: Request) -> CapsuleServices:
    return app_state(request, "capsule_services", CapsuleServices)


def service_view(v: ServiceView, base: str) -> dict[str, Any]:
    return {
        "uuid": v.uuid, "name": v.name, "project_id": v.project_id, "user_id": v.user_id,
        "selector": v.selector, "vip": v.vip, "dns_name": v.name,
        "ports": [{"port": p.port, "targetPort": p.target_port, "protocol": p.protocol,
                   "publish": p.publish} for p in v.ports],
        "backends": [{"uuid": b.uuid, "name": b.name, "addr": b.addr, "serving": b.serving}
                     for b in v.backends],
        "created_at": ts(v.created_at),
        "links": [{"href": f"{base}/v1/capsule_services/{v.uuid}", "rel": "self"}]}


@router.post("", status_code=201, dependencies=[allow("capsule_service:create")],
             openapi_extra=doc.body(doc.CAPSULE_SERVICE, doc.CAPSULE_SERVICE_EXAMPLE))
def create(request: Request, response: Response, body: BodyDep, who: PrincipalDep,
           base: BaseUrlDep) -> dict[str, Any]:
    """A VIP and name in the project's network over its ready capsules matching `selector`."""
    v = _service(request).create(who, body)
    response.headers["Location"] = f"{base}/v1/capsule_services/{v.uuid}"
    return service_view(v, base)


@router.get("", dependencies=[allow("capsule_service:get_all")])
def list_(request: Request, who: PrincipalDep, base: BaseUrlDep, limit: str | None = None,
          all_projects: str | None = None) -> dict[str, Any]:
    rows = _service(request).list(who, flag(all_projects, "all_projects"),
                                  _limit(given(limit), request.app.state.settings.api.max_limit))
    return {"capsule_services": [service_view(v, base) for v in rows]}


@router.get("/{ident}", dependencies=[allow("capsule_service:get_one")])
def show(request: Request, ident: str, who: PrincipalDep, base: BaseUrlDep) -> dict[str, Any]:
    return service_view(_service(request).get(who, ident), base)


@router.delete("/{ident}", status_code=204, dependencies=[allow("capsule_service:delete")])
def delete(request: Request, ident: str, who: PrincipalDep) -> Response:
    _service(request).delete(who, ident)
    return Response(status_code=204)
