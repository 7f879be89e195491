"""GET /metrics (extension): the operators' metrics in Prometheus's text format (or
OpenMetrics, if the scraper asks for it), for admins and `metrics` tokens only (policy
rule `metrics:get`): the counts are per project and per host, which no tenant may see.

Besides X-Auth-Token, it takes the token as `Authorization: Bearer …`, which is what
Prometheus's scrape configs send (`authorization: {credentials_file: …}`).
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Request, Response

from capsuled.api.deps import authenticate, principal
from capsuled.api.metrics import ApiMetrics
from capsuled.api.policy import Policy
from capsuled.api.state import app_state
from capsuled.identity.base import Principal

router = APIRouter()


async def scraper(request: Request) -> Principal:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not request.headers.get("x-auth-token") and scheme.lower() == "bearer" and token.strip():
        return await anyio.to_thread.run_sync(authenticate, request, token.strip())
    return await principal(request)


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text format", "content": {"text/plain": {}}}})
def metrics(request: Request, who: Annotated[Principal, Depends(scraper)]) -> Response:
    """Operators' metrics (admin, or a token with the `metrics` role)."""
    app_state(request, "policy", Policy).enforce("metrics:get", who)
    body, content_type = app_state(request, "metrics", ApiMetrics).render(
        request.headers.get("accept"))
    return Response(body, media_type=content_type)
