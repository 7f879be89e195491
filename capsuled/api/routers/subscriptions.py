"""/v1/subscriptions (extension): a project's webhooks and their dead letters.

POST   /v1/subscriptions                                  {url, events, secret, name} → 201
GET    /v1/subscriptions[?all_projects=true]              {"subscriptions": [...]}
GET    /v1/subscriptions/{id}                             one (by uuid or name)
DELETE /v1/subscriptions/{id}                             204
GET    /v1/subscriptions/{id}/dead_letters[?marker=SEQ&limit=N]
POST   /v1/subscriptions/{id}/dead_letters/redeliver[?seq=SEQ]    202 {"queued": n}
DELETE /v1/subscriptions/{id}/dead_letters[?seq=SEQ]              200 {"discarded": n}

The secret appears once, in the answer to the POST; never again.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from capsuled.api import openapi as doc
from capsuled.api.deps import BaseUrlDep, BodyDep, PrincipalDep, allow, flag, given
from capsuled.api.routers.capsules import _limit, sequence_number
from capsuled.api.services.subscriptions import (DeadLetterView, SubscriptionService,
                                                 SubscriptionView)
from capsuled.api.state import app_state
from capsuled.api.views import ts

router = APIRouter(prefix="/v1/subscriptions")
_SEQ = "a sequence number (a whole number >= 0)"


def _service(request: Request) -> SubscriptionService:
    return app_state(request, "subscriptions", SubscriptionService)


def subscription_view(v: SubscriptionView, base: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "uuid": v.uuid, "name": v.name, "url": v.url, "events": v.events,
        "project_id": v.project_id, "user_id": v.user_id, "created_at": ts(v.created_at),
        "allow_private": v.allow_private, "state": v.state,
        "retrying": ({"seq": v.retry_seq, "attempts": v.retry_attempts,
                      "since": ts(v.failing_since)} if v.state == "retrying" else None),
        "failing_since": ts(v.failing_since) if v.state != "active" else None,
        "last_error": v.last_error, "last_error_at": ts(v.last_error_at),
        "last_delivered_seq": v.last_delivered_seq, "last_delivered_at": ts(v.last_delivered_at),
        "position": v.position, "delivered": v.delivered, "failed_attempts": v.failed_attempts,
        "dead_letters": v.dead_letters, "dead_lettered": v.dead_lettered,
        "dead_letters_dropped": v.dead_letters_dropped,
        "links": [{"href": f"{base}/v1/subscriptions/{v.uuid}", "rel": "self"}]}
    if v.secret is not None:
        body["secret"] = v.secret
    return body


def dead_letter_view(d: DeadLetterView) -> dict[str, Any]:
    return {"seq": d.seq, "event_type": d.event_type, "attempts": d.attempts,
            "last_error": d.last_error, "state": d.state, "created_at": ts(d.created_at),
            "event": d.event}


@router.post("", status_code=201, dependencies=[allow("subscription:create")],
             openapi_extra=doc.body(doc.SUBSCRIPTION, doc.SUBSCRIPTION_EXAMPLE))
def create(request: Request, response: Response, body: BodyDep, who: PrincipalDep,
           base: BaseUrlDep) -> dict[str, Any]:
    """Subscribe a URL to the project's change records; the secret is shown this once."""
    v = _service(request).create(who, body)
    response.headers["Location"] = f"{base}/v1/subscriptions/{v.uuid}"
    return subscription_view(v, base)


@router.get("", dependencies=[allow("subscription:get_all")])
def list_(request: Request, who: PrincipalDep, base: BaseUrlDep, limit: str | None = None,
          all_projects: str | None = None) -> dict[str, Any]:
    rows = _service(request).list(who, flag(all_projects, "all_projects"),
                                  _limit(given(limit), request.app.state.settings.api.max_limit))
    return {"subscriptions": [subscription_view(v, base) for v in rows]}


@router.get("/{ident}", dependencies=[allow("subscription:get_one")])
def show(request: Request, ident: str, who: PrincipalDep, base: BaseUrlDep) -> dict[str, Any]:
    return subscription_view(_service(request).get(who, ident), base)


@router.delete("/{ident}", status_code=204, dependencies=[allow("subscription:delete")])
def delete(request: Request, ident: str, who: PrincipalDep) -> Response:
    _service(request).delete(who, ident)
    return Response(status_code=204)


@router.get("/{ident}/dead_letters", dependencies=[allow("subscription:dead_letters")])
def dead_letters(request: Request, ident: str, who: PrincipalDep, marker: str | None = None,
                 limit: str | None = None) -> dict[str, Any]:
    """Dead letters in seq order; `marker`: the last seq of the previous page."""
    after = sequence_number(given(marker), "marker", _SEQ)
    rows = _service(request).dead_letters(
        who, ident, after, _limit(given(limit), request.app.state.settings.api.max_limit))
    return {"dead_letters": [dead_letter_view(d) for d in rows]}


@router.post("/{ident}/dead_letters/redeliver", status_code=202,
             dependencies=[allow("subscription:redeliver")])
def redeliver(request: Request, ident: str, who: PrincipalDep,
              seq: str | None = None) -> dict[str, Any]:
    """Queue dead letters (all, or `seq`'s) to be sent again, each once, soon."""
    one = sequence_number(given(seq), "seq", _SEQ)
    return {"queued": _service(request).redeliver(who, ident, one)}


@router.delete("/{ident}/dead_letters", dependencies=[allow("subscription:discard")])
def discard(request: Request, ident: str, who: PrincipalDep,
            seq: str | None = None) -> dict[str, Any]:
    """Forget dead letters (all, or `seq`'s)."""
    one = sequence_number(given(seq), "seq", _SEQ)
    return {"discarded": _service(request).discard(who, ident, one)}
