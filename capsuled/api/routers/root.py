"""Version documents: GET / and GET /v1 (public)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from capsuled.api.deps import BaseUrlDep
from capsuled.api.microversions import MAX, MIN, fmt

router = APIRouter()

RESOURCES = ("services", "containers", "images", "networks", "hosts", "capsules",
             "availability_zones", "quotas", "quota_classes", "registries")


def _version(base: str) -> dict[str, Any]:
    return {"id": "v1", "status": "CURRENT", "min_version": fmt(MIN), "max_version": fmt(MAX),
            "links": [{"href": f"{base}/v1/", "rel": "self"}]}


@router.get("/")
def root(base: BaseUrlDep) -> dict[str, Any]:
    """API versions."""
    return {"name": "OpenStack Zun API",
            "description": "Capsuled: Zun-compatible capsules and containers.",
            "versions": [_version(base)], "default_version": _version(base)}


@router.get("/v1")
def v1(base: BaseUrlDep) -> dict[str, Any]:
    """The v1 API document."""
    doc: dict[str, Any] = {
        "id": "v1",
        "links": [{"href": f"{base}/v1/", "rel": "self"},
                  {"href": "https://docs.openstack.org/zun/latest/", "rel": "describedby",
                   "type": "text/html"}],
        "media_types": [{"base": "application/json",
                         "type": "application/vnd.openstack.zun.v1+json"}],
    }
    for res in RESOURCES:
        doc[res] = [{"href": f"{base}/v1/{res}/", "rel": "self"},
                    {"href": f"{base}/{res}/", "rel": "bookmark"}]
    return doc


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness probe."""
    return {"status": "ok"}
