"""GET /v1/whoami (extension): who the token in X-Auth-Token stands for, local or
Keystone's. Anyone with a valid token may ask; it tells only what the token already
grants (its project, user and roles), and nothing of agent tokens' hosts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from capsuled.api.deps import PrincipalDep

router = APIRouter()


@router.get("/v1/whoami")
async def whoami(who: PrincipalDep) -> dict[str, Any]:
    """The caller's project, user and roles (the web dashboard shows them)."""
    return {"project_id": who.project_id, "user_id": who.user_id, "roles": sorted(who.roles),
            "is_admin": who.is_admin}
