"""/v1/images: the images on the hosts. Pulling and removing are an admin's (as in Zun);
members list base images and their own project's commits, without host names."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from capsuled.api import openapi as doc
from capsuled.api.deps import BaseUrlDep, BodyDep, PrincipalDep, allow, flag, given
from capsuled.identity.base import Principal
from capsuled.api.services.images import HostImage, ImageService
from capsuled.api.state import app_state

router = APIRouter(prefix="/v1/images")


def _service(request: Request) -> ImageService:
    return app_state(request, "images", ImageService)


def _project(request: Request, who: Principal) -> str | None:
    """None (every image) for admins; otherwise the caller's project."""
    return None if request.app.state.policy.allows("image:get_all_all_projects", who) \
        else who.project_id


def image_view(image: HostImage, base: str, shows_host: bool = True) -> dict[str, Any]:
    return {"uuid": image.uuid, "image_id": image.info.id, "repo": image.info.repo,
            "tag": image.info.tag, "size": image.info.size,
            "host": image.host if shows_host else None, "project_id": image.info.project,
            "links": [{"href": f"{base}/v1/images/{image.uuid}", "rel": "self"},
                      {"href": f"{base}/images/{image.uuid}", "rel": "bookmark"}]}


@router.get("", dependencies=[allow("image:get_all")])
def list_(request: Request, who: PrincipalDep, base: BaseUrlDep) -> dict[str, Any]:
    project = _project(request, who)
    return {"images": [image_view(i, base, project is None)
                       for i in _service(request).list(project)], "next": None}


@router.post("", status_code=202, dependencies=[allow("image:pull")],
             openapi_extra=doc.body(doc.IMAGE_PULL))
def pull(request: Request, body: BodyDep, base: BaseUrlDep) -> dict[str, Any]:
    """Pull `repo` (name[:tag]) to `host` (default: a running host)."""
    return image_view(_service(request).pull(body.get("repo"), body.get("host")), base)


@router.get("/{image:path}/search", dependencies=[allow("image:search")])
def search(request: Request, image: str, who: PrincipalDep, image_driver: str | None = None,
           exact_match: str | None = None) -> list[dict[str, Any]]:
    """Zun's image search, in the project's private registries (registry catalogs)."""
    return _service(request).search(who, image, given(image_driver),
                                    flag(exact_match, "exact_match"))


@router.get("/{ident}", dependencies=[allow("image:get_one")])
def show(request: Request, ident: str, who: PrincipalDep, base: BaseUrlDep) -> dict[str, Any]:
    project = _project(request, who)
    return image_view(_service(request).get(ident, project), base, project is None)


@router.delete("/{ident}", status_code=204, dependencies=[allow("image:delete")])
def delete(request: Request, ident: str) -> Response:
    _service(request).delete(ident)
    return Response(status_code=204)
