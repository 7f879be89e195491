"""/v1/security_groups (extension) and Zun's add_security_group / remove_security_group.

POST   /v1/security_groups                     {name, description, rules} → 201
GET    /v1/security_groups[?all_projects=true] {"security_groups": [...]}, `default` first
GET    /v1/security_groups/{id}                one (uuid or name; `default` too)
PATCH  /v1/security_groups/{id}                {description, rules}: rules are replaced whole
DELETE /v1/security_groups/{id}                204; 409 while in use or named by a rule
POST   /v1/containers/{id}/add_security_group?name=N      202 (microversions 1.1-1.14)
POST   /v1/containers/{id}/remove_security_group?name=N   202 (microversions 1.1-1.14)

A rule: {direction: ingress, ethertype: IPv4, protocol: tcp|udp|icmp|any, port_range_min,
port_range_max, remote_ip_prefix (a CIDR) or remote_group (a group's name; `default` is the
whole project), description}.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from capsuled.api import openapi as doc
from capsuled.api.deps import (BaseUrlDep, BodyDep, PrincipalDep, VersionDep, allow, flag, given,
                               read_json)
from capsuled.api.microversions import ApiVersion
from capsuled.api.policy import Policy
from capsuled.api.routers.capsules import _limit, filter_value
from capsuled.api.services.security_groups import GroupView, SecurityGroupService
from capsuled.api.state import app_state
from capsuled.api.views import ts
from capsuled.errors import InvalidInput, VersionNotAcceptable
from capsuled.identity.base import Principal

router = APIRouter(prefix="/v1/security_groups")
container_actions = APIRouter(prefix="/v1/containers")
# Zun removed both actions at 1.15 (Neutron's port API took over); zunclient still has them.
LAST_VERSION = (1, 14)


def _service(request: Request) -> SecurityGroupService:
    return app_state(request, "security_groups", SecurityGroupService)


def group_view(v: GroupView, base: str) -> dict[str, Any]:
    return {"uuid": v.uuid, "name": v.name, "description": v.description,
            "rules": [r.model_dump(mode="json") for r in v.rules],
            "project_id": v.project_id, "user_id": v.user_id,
            "created_at": ts(v.created_at), "updated_at": ts(v.updated_at),
            "implicit": v.implicit,
            "links": [{"href": f"{base}/v1/security_groups/{v.uuid}", "rel": "self"}]}


@router.post("", status_code=201, dependencies=[allow("security_group:create")],
             openapi_extra=doc.body(doc.SECURITY_GROUP, doc.SECURITY_GROUP_EXAMPLE))
def create(request: Request, response: Response, body: BodyDep, who: PrincipalDep,
           base: BaseUrlDep) -> dict[str, Any]:
    """Make a group of ingress rules in the caller's project."""
    v = _service(request).create(who, body)
    response.headers["Location"] = f"{base}/v1/security_groups/{v.uuid}"
    return group_view(v, base)


@router.get("", dependencies=[allow("security_group:get_all")])
def list_(request: Request, who: PrincipalDep, base: BaseUrlDep, limit: str | None = None,
          marker: str | None = None, all_projects: str | None = None) -> dict[str, Any]:
    """The project's groups, its implicit `default` first (on the first page, beyond
    `limit`); pages of `limit` after `marker`."""
    page = _limit(given(limit), request.app.state.settings.api.max_limit)
    after = None if given(marker) is None else filter_value("marker", str(marker))
    rows = _service(request).list(who, flag(all_projects, "all_projects"), page, after)
    nxt = None
    if len([v for v in rows if not v.implicit]) == page:
        params = {k: v for k, v in request.query_params.multi_items() if k != "marker"}
        params.update(limit=str(page), marker=rows[-1].uuid)
        nxt = f"{base}/v1/security_groups?{urlencode(params)}"
    return {"security_groups": [group_view(v, base) for v in rows], "next": nxt}


@router.get("/{ident}", dependencies=[allow("security_group:get_one")])
def show(request: Request, ident: str, who: PrincipalDep, base: BaseUrlDep) -> dict[str, Any]:
    return group_view(_service(request).get(who, ident), base)


@router.patch("/{ident}", dependencies=[allow("security_group:update")],
              openapi_extra=doc.body(doc.SECURITY_GROUP_UPDATE))
def update(request: Request, ident: str, body: BodyDep, who: PrincipalDep,
           base: BaseUrlDep) -> dict[str, Any]:
    """New description and/or rules (the whole list); members' firewalls follow."""
    return group_view(_service(request).update(who, ident, body), base)


@router.delete("/{ident}", status_code=204, dependencies=[allow("security_group:delete")])
def delete(request: Request, ident: str, who: PrincipalDep) -> Response:
    _service(request).delete(who, ident)
    return Response(status_code=204)


# -- Zun's container actions -------------------------------------------------------------

async def _name(request: Request, name: str | None) -> Any:
    """zunclient sends ?name=; a JSON body {"name": ...} is read as Zun's pecan would."""
    if given(name) is not None:
        return name
    body = await read_json(request)
    return body.get("name") if isinstance(body, dict) else None


def _scope(request: Request, who: Principal) -> str | None:
    policy = app_state(request, "policy", Policy)
    return None if policy.allows("container:get_one_all_projects", who) else who.project_id


def _needs_zun_version(version: ApiVersion) -> None:
    if version.at_least((LAST_VERSION[0], LAST_VERSION[1] + 1)):
        raise VersionNotAcceptable(
            f"add_security_group and remove_security_group exist up to microversion "
            f"{LAST_VERSION[0]}.{LAST_VERSION[1]} (this request asked for {version}); change "
            "a container's groups with its security_groups on create, or use a capsule "
            "template's spec.securityGroups")


@container_actions.post("/{ident}/add_security_group", status_code=202,
                        dependencies=[allow("container:add_security_group")])
async def add_security_group(request: Request, ident: str, who: PrincipalDep,
                             version: VersionDep, name: str | None = None) -> Response:
    """Put a bare container in one more of its project's security groups."""
    _needs_zun_version(version)
    await _membership(request, ident, who, await _name(request, name), add=True)
    return Response(status_code=202)


@container_actions.post("/{ident}/remove_security_group", status_code=202,
                        dependencies=[allow("container:remove_security_group")])
async def remove_security_group(request: Request, ident: str, who: PrincipalDep,
                                version: VersionDep, name: str | None = None) -> Response:
    """Take a bare container out of one of its security groups."""
    _needs_zun_version(version)
    await _membership(request, ident, who, await _name(request, name), add=False)
    return Response(status_code=202)


async def _membership(request: Request, ident: str, who: Principal, name: Any,
                      add: bool) -> None:
    if name is not None and not isinstance(name, str):
        raise InvalidInput("name: must be a security group's name")
    service = _service(request)
    call = service.add_to_container if add else service.remove_from_container
    request_id = str(getattr(request.state, "request_id", ""))
    await anyio.to_thread.run_sync(call, who, ident, name, request_id, _scope(request, who))
