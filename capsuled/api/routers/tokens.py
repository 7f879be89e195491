"""/v1/tokens (extension): the standalone identity's tokens, for admins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from capsuled.api import openapi as doc
from capsuled.api.deps import BodyDep, allow, given
from capsuled.api.services.tokens import TokenInfo, TokenService
from capsuled.api.state import app_state
from capsuled.api.views import ts

router = APIRouter(prefix="/v1/tokens")


def _service(request: Request) -> TokenService:
    return app_state(request, "tokens", TokenService)


def token_view(t: TokenInfo) -> dict[str, Any]:
    return {"uuid": t.uuid, "project_id": t.project_id, "user_id": t.user_id, "roles": t.roles,
            "description": t.description, "created_at": ts(t.created_at),
            "expires_at": ts(t.expires_at), "revoked": t.revoked, "host": t.host}


@router.post("", status_code=201, dependencies=[allow("token:create")],
             openapi_extra=doc.body(doc.TOKEN_CREATE))
def create(request: Request, body: BodyDep) -> dict[str, Any]:
    """Issue a token for `project_id`/`user_id` with `roles` (default member) and an
    optional `expires_in` (seconds, or 90m / 12h / 30d). The plain token is shown once."""
    new = _service(request).create(body)
    return {"token": new.token, **token_view(new.info)}


@router.get("", dependencies=[allow("token:get_all")])
def list_(request: Request, project_id: str | None = None) -> dict[str, Any]:
    return {"tokens": [token_view(t) for t in _service(request).list(given(project_id))]}


@router.delete("/{uuid}", status_code=204, dependencies=[allow("token:revoke")])
def revoke(request: Request, uuid: str) -> Response:
    _service(request).revoke(uuid)
    return Response(status_code=204)
