"""/v1/quotas/{project_id} and /v1/quota_classes/{name}, as Zun has them (plus `capsules`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from capsuled.api import openapi as doc
from capsuled.api.deps import BodyDep, PrincipalDep, allow, flag
from capsuled.api.services.quotas import QuotaService
from capsuled.api.state import app_state

router = APIRouter()


def _service(request: Request) -> QuotaService:
    return app_state(request, "quotas", QuotaService)


def _may(request: Request, rule: str, who: PrincipalDep, project_id: str) -> None:
    # The rule's target is the project named in the path: a member reads its own only.
    request.app.state.policy.enforce(rule, who, project_id)


@router.get("/v1/quotas/{project_id}")
def show(request: Request, project_id: str, who: PrincipalDep,
         usages: str | None = None) -> dict[str, Any]:
    _may(request, "quota:get", who, project_id)
    return _service(request).get(project_id, flag(usages, "usages"))


@router.get("/v1/quotas/{project_id}/defaults")
def defaults(request: Request, project_id: str, who: PrincipalDep) -> dict[str, Any]:
    _may(request, "quota:get_default", who, project_id)
    return _service(request).defaults()


@router.put("/v1/quotas/{project_id}", dependencies=[allow("quota:update")],
            openapi_extra=doc.body(doc.QUOTA))
def update(request: Request, project_id: str, body: BodyDep) -> dict[str, Any]:
    return _service(request).update(project_id, body)


@router.delete("/v1/quotas/{project_id}", status_code=204, dependencies=[allow("quota:delete")])
def reset(request: Request, project_id: str) -> Response:
    """Back to the defaults."""
    _service(request).reset(project_id)
    return Response(status_code=204)


@router.get("/v1/quota_classes/{name}", dependencies=[allow("quota_class:get")])
def show_class(request: Request, name: str) -> dict[str, Any]:
    return _service(request).get_class(name)


@router.put("/v1/quota_classes/{name}", dependencies=[allow("quota_class:update")],
            openapi_extra=doc.body(doc.QUOTA))
def update_class(request: Request, name: str, body: BodyDep) -> dict[str, Any]:
    return _service(request).update_class(name, body)
