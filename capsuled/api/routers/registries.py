"""/v1/registries (microversion 1.30): a project's private registries, as Zun has them.

Bodies are wrapped as Zun's are ({"registry": {...}}, lists under "registries"); the
password is never shown, only '***'."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from capsuled.api import openapi as doc
from capsuled.api.deps import BaseUrlDep, BodyDep, PrincipalDep, VersionDep, allow, flag
from capsuled.api.microversions import REGISTRIES_API, fmt
from capsuled.api.routers.capsules import _limit, _marker, _sort_dir, filter_value
from capsuled.api.services.registries import RegistryService, RegistryView
from capsuled.api.state import app_state
from capsuled.errors import InvalidInput, VersionNotAcceptable
from capsuled.store import registries as repo
from capsuled.store.capsules import Page


async def _needs_registries_api(version: VersionDep) -> None:
    if not version.at_least(REGISTRIES_API):
        raise VersionNotAcceptable(f"The registries API needs microversion "
                                   f"{fmt(REGISTRIES_API)} or later (this request asked for "
                                   f"{version}).")


router = APIRouter(prefix="/v1/registries", dependencies=[Depends(_needs_registries_api)])


def _service(request: Request) -> RegistryService:
    return app_state(request, "registries", RegistryService)


def registry_view(r: RegistryView, base: str) -> dict[str, Any]:
    return {"uuid": r.uuid, "name": r.name, "domain": r.domain, "username": r.username,
            "password": "***" if r.has_password else None,
            "project_id": r.project_id, "user_id": r.user_id,
            "links": [{"href": f"{base}/v1/registries/{r.uuid}", "rel": "self"},
                      {"href": f"{base}/registries/{r.uuid}", "rel": "bookmark"}]}


@router.post("", status_code=201, dependencies=[allow("registry:create")],
             openapi_extra=doc.body(doc.REGISTRY))
def create(request: Request, response: Response, body: BodyDep, who: PrincipalDep,
           base: BaseUrlDep) -> dict[str, Any]:
    r = _service(request).create(who, body)
    response.headers["Location"] = f"{base}/v1/registries/{r.uuid}"
    return {"registry": registry_view(r, base)}


@router.get("", dependencies=[allow("registry:get_all")])
def list_(request: Request, who: PrincipalDep, base: BaseUrlDep, limit: str | None = None,
          marker: str | None = None, sort_key: str = "id", sort_dir: str = "asc",
          all_projects: str | None = None) -> dict[str, Any]:
    max_limit = request.app.state.settings.api.max_limit
    page = Page(limit=_limit(limit, max_limit), marker=_marker(marker),
                sort_key=filter_value("sort_key", sort_key), sort_dir=_sort_dir(sort_dir))
    known = {"limit", "marker", "sort_key", "sort_dir", "all_projects", "username", *repo.FILTERS}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise InvalidInput(f"Unknown parameters: {', '.join(unknown)}")
    filters = {k: filter_value(k, request.query_params[k]) for k in repo.FILTERS
               if k in request.query_params}
    rows = _service(request).list(who, page, flag(all_projects, "all_projects"), filters)
    if "username" in request.query_params:  # sealed in the table: compared once opened
        rows = [r for r in rows if r.username == request.query_params["username"]]
    views = [registry_view(r, base) for r in rows]
    nxt = None
    if limit is not None and len(rows) == page.limit and rows:
        nxt = f"{base}/v1/registries?limit={page.limit}&marker={rows[-1].uuid}"
    return {"registries": views, "next": nxt}


@router.get("/{ident}", dependencies=[allow("registry:get_one")])
def show(request: Request, ident: str, who: PrincipalDep, base: BaseUrlDep) -> dict[str, Any]:
    return {"registry": registry_view(_service(request).get(who, ident), base)}


@router.patch("/{ident}", dependencies=[allow("registry:update")],
              openapi_extra=doc.body(doc.REGISTRY))
def update(request: Request, ident: str, body: BodyDep, who: PrincipalDep,
           base: BaseUrlDep) -> dict[str, Any]:
    return {"registry": registry_view(_service(request).update(who, ident, body), base)}


@router.delete("/{ident}", status_code=204, dependencies=[allow("registry:delete")])
def delete(request: Request, ident: str, who: PrincipalDep) -> Response:
    _service(request).delete(who, ident)
    return Response(status_code=204)
