"""/v1/capsules: thin handlers over CapsuleService."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from capsuled.api import openapi as doc
from capsuled.api.deps import BaseUrlDep, BodyDep, PrincipalDep, VersionDep, allow, flag
from capsuled.api.microversions import CAPSULE_UPDATE, ApiVersion, fmt
from capsuled.api.services.capsules import CapsuleService
from capsuled.api.services.rollouts import RolloutService
from capsuled.api.state import app_state
from capsuled.api.views import (capsule_view, dry_run_view, event_view, revision_view,
                                rollout_view)
from capsuled.domain.status import Status
from capsuled.domain.template import short, whole_number
from capsuled.errors import InvalidInput, VersionNotAcceptable
from capsuled.store.capsules import UUID_RE, Page

router = APIRouter(prefix="/v1/capsules")


def _service(request: Request) -> CapsuleService:
    return app_state(request, "capsules", CapsuleService)


@router.post("", status_code=202, dependencies=[allow("capsule:create")],
             openapi_extra=doc.body(doc.CAPSULE_CREATE, doc.CAPSULE_EXAMPLE))
def create(request: Request, response: Response, body: BodyDep, who: PrincipalDep,
           version: VersionDep, base: BaseUrlDep, dry_run: str | None = None) -> dict[str, Any]:
    """Create a capsule from a template or a Kubernetes Pod manifest.

    Extension (microversion 1.40), `dry_run=true`: every check runs (validation, host
    access, quota, placement) and nothing is kept; the answer (200) is the capsule as it
    would be stored, written as a template."""
    extra = sorted(set(body) - {"template"} - set(request.query_params))
    if extra:
        raise InvalidInput([f"{k}: unknown field (the body is {{\"template\": {{...}}}})" for k in extra])
    if "template" not in body:
        raise InvalidInput("template: is required (the body is {\"template\": {...}})")
    if flag(dry_run, "dry_run"):
        _needs_update_version(version, "A dry run")
        response.status_code = 200
        return dry_run_view(_service(request).rehearse_create(who, body["template"]))
    row = _service(request).create(who, body["template"])
    response.headers["Location"] = f"{base}/v1/capsules/{row.uuid}"
    return capsule_view(row, version, _service(request).shows_host(who), base)


@router.get("", dependencies=[allow("capsule:get_all")])
def list_(request: Request, who: PrincipalDep, version: VersionDep, base: BaseUrlDep,
          limit: str | None = None, marker: str | None = None, sort_key: str = "id",
          sort_dir: str = "asc", all_projects: str | None = None) -> dict[str, Any]:
    """List capsules; `labels=k=v,k2=v2` (repeatable) selects by label."""
    max_limit = request.app.state.settings.api.max_limit
    page = Page(limit=_limit(limit, max_limit), marker=_marker(marker),
                sort_key=filter_value("sort_key", sort_key), sort_dir=_sort_dir(sort_dir))
    labels = _labels(request.query_params.getlist("labels"))
    if page.sort_key == "host" and not _service(request).shows_host(who):
        raise InvalidInput("sort_key: only administrators may sort capsules by host")
    rows = _service(request).list(who, page, flag(all_projects, "all_projects"), labels)
    nxt = None
    if rows and len(rows) == page.limit:
        params = {k: v for k, v in request.query_params.multi_items() if k != "marker"}
        params.update(sort_key=sort_key, sort_dir=page.sort_dir, limit=str(page.limit),
                      marker=rows[-1].uuid)
        nxt = f"{base}/v1/capsules?{urlencode(params)}"
    shows = _service(request).shows_host(who)
    return {"capsules": [capsule_view(r, version, shows, base) for r in rows], "next": nxt}


@router.get("/{ident}", dependencies=[allow("capsule:get")])
async def show(request: Request, ident: str, who: PrincipalDep, version: VersionDep,
               base: BaseUrlDep, wait_while: str | None = None,
               wait_timeout: str | None = None) -> dict[str, Any]:
    """Show a capsule by uuid or name.

    Extension, a long poll: with `wait_while=Creating[,Status…]` the answer is held until
    the capsule's status is none of those (404 once it is gone), or for `wait_timeout`
    seconds (default 30, at most 60), after which it is the capsule as it is then."""
    svc = _service(request)
    if wait_while is None:
        if wait_timeout is not None:
            raise InvalidInput("wait_timeout: only with wait_while")
        row = await run_in_threadpool(svc.get, who, ident)
    else:
        row = await svc.wait(who, ident, _statuses(wait_while), _wait_timeout(wait_timeout))
    return capsule_view(row, version, svc.shows_host(who), base)


def _rollouts(request: Request) -> RolloutService:
    return app_state(request, "rollouts", RolloutService)


def _needs_update_version(version: ApiVersion, what: str) -> None:
    if not version.at_least(CAPSULE_UPDATE):
        raise VersionNotAcceptable(f"{what} needs API version {fmt(CAPSULE_UPDATE)} or later "
                                   f"(OpenStack-API-Version: container {fmt(CAPSULE_UPDATE)}).")


@router.patch("/{ident}", status_code=202, dependencies=[allow("capsule:update")],
              openapi_extra=doc.body(doc.CAPSULE_UPDATE, doc.CAPSULE_UPDATE_EXAMPLE))
def update(request: Request, response: Response, ident: str, body: BodyDep, who: PrincipalDep,
           version: VersionDep, base: BaseUrlDep, dry_run: str | None = None) -> dict[str, Any]:
    """Update a capsule to a new revision (extension, microversion 1.40).

    Unchanged containers keep running; changed ones are replaced one at a time in the same
    sandbox; a change of volumes, ports or init containers remakes the capsule in place
    (same name and uuid). Answered at once (202, status Updating); the update is done
    once the new containers are ready, or rolls back by itself after
    progressDeadlineSeconds. 409 while another update is under way.

    `dry_run=true`: every check runs and nothing is kept; the answer (200) is the current
    and the new spec, written as templates, and what the update would replace."""
    _needs_update_version(version, "Updating a capsule")
    if dry_run is not None:  # a query parameter, which the body dependency merges in
        body = {k: v for k, v in body.items() if k != "dry_run"}
    if flag(dry_run, "dry_run"):
        response.status_code = 200
        return dry_run_view(_rollouts(request).rehearse_update(who, ident, body))
    row = _rollouts(request).update(who, ident, body)
    return capsule_view(row, version, _service(request).shows_host(who), base)


@router.post("/{ident}/rollback", status_code=202, dependencies=[allow("capsule:update")],
             openapi_extra=doc.body(doc.CAPSULE_ROLLBACK, required=False))
def rollback(request: Request, ident: str, body: BodyDep, who: PrincipalDep,
             version: VersionDep, base: BaseUrlDep) -> dict[str, Any]:
    """Roll a capsule back to an earlier revision (extension, microversion 1.40): `revision`,
    by default the one before the current; it becomes a new revision, rolled out like an
    update, and supersedes an update under way."""
    _needs_update_version(version, "Rolling a capsule back")
    row = _rollouts(request).rollback(who, ident, body)
    return capsule_view(row, version, _service(request).shows_host(who), base)


@router.get("/{ident}/revisions", dependencies=[allow("capsule:get")])
def revisions(request: Request, ident: str, who: PrincipalDep) -> dict[str, Any]:
    """A capsule's revisions, oldest first (extension): number, template, who, when, why,
    how its rollout ended; and the update under way."""
    capsule, found = _rollouts(request).revisions(who, ident)
    return {"revision": capsule.revision, "rollout": rollout_view(capsule.rollout),
            "revisions": [revision_view(r, capsule.revision) for r in found]}


@router.get("/{ident}/events", dependencies=[allow("capsule:get")])
def events(request: Request, ident: str, who: PrincipalDep, limit: str | None = None,
           marker: str | None = None) -> dict[str, Any]:
    """What happened to a capsule, oldest first (extension): pages of `limit`, after the
    event whose `id` is `marker`. Only the newest events are kept (limits.events_per_capsule)."""
    found = _service(request).events(
        who, ident, _limit(limit, request.app.state.settings.api.max_limit), _event_marker(marker))
    shows = _service(request).shows_host(who)
    return {"events": [event_view(e, shows) for e in found]}


def _event_marker(raw: str | None) -> int | None:
    return sequence_number(raw, "marker", "the id of a listed event")


def sequence_number(raw: str | None, field: str, what: str) -> int | None:
    """A whole number >= 0 from the query (None when not given); 400 naming `field`."""
    if raw is None:
        return None
    value = whole_number(raw, strings=True)
    if value is None or value < 0:
        raise InvalidInput(f"{field}: must be {what}, not {short(raw)}")
    return value


@router.delete("/{ident}", status_code=204, dependencies=[allow("capsule:delete")])
def delete(request: Request, ident: str, who: PrincipalDep,
           all_projects: str | None = None, force: str | None = None) -> Response:
    """Delete a capsule (asynchronous: it shows Deleting until its agent has cleaned up).
    `force` (extension): gone at once, for a capsule whose host is down or gone."""
    _service(request).delete(who, ident, flag(all_projects, "all_projects"),
                             flag(force, "force"))
    return Response(status_code=204)


def _limit(raw: str | None, max_limit: int) -> int:
    if raw is None:
        return max_limit
    value = whole_number(raw, strings=True)  # ASCII digits only: int() takes '²' and 5,000 digits
    if value is None or value <= 0:
        raise InvalidInput("limit: Limit must be positive integer")
    return min(value, max_limit)


MAX_FILTER_CHARS = 255  # the widest column a list filter compares with


def filter_value(name: str, value: str) -> str:
    """A list filter as the database can compare it: PostgreSQL refuses NUL in text, and
    nothing longer than the column can match. Refused here, before any SQL."""
    if "\x00" in value:
        raise InvalidInput(f"{name}: must not contain NUL characters")
    if len(value) > MAX_FILTER_CHARS:
        raise InvalidInput(f"{name}: must be at most {MAX_FILTER_CHARS} characters")
    return value


def _marker(raw: str | None) -> str | None:
    """Markers are the uuids of listed rows (the `next` links carry them)."""
    if raw is None:
        return None
    if not UUID_RE.match(raw):
        raise InvalidInput(f"marker: must be the uuid of a listed item, not {short(raw)}")
    return raw.lower()


_STATUSES = {s.value for s in Status}
_MAX_WAIT = 60.0


def _statuses(raw: str) -> frozenset[str]:
    wanted = frozenset(filter(None, (p.strip() for p in raw.split(","))))
    unknown = sorted(wanted - _STATUSES)
    if not wanted or unknown:
        raise InvalidInput(f"wait_while: {', '.join(map(repr, unknown)) or 'nothing'} is not a "
                           f"capsule status; use one or more of {', '.join(sorted(_STATUSES))}")
    return wanted


def _wait_timeout(raw: str | None) -> float:
    if raw is None:
        return 30.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= _MAX_WAIT:
        raise InvalidInput(f"wait_timeout: must be a number of seconds from 0 to {_MAX_WAIT:g}, "
                           f"not {raw!r}")
    return value


def _sort_dir(raw: str) -> str:
    if raw not in ("asc", "desc"):
        raise InvalidInput(f"sort_dir: must be asc or desc, not {raw!r}")
    return raw


def _labels(raw: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise InvalidInput(f"labels: {short(pair)} is not key=value")
            out[filter_value("labels", key)] = filter_value("labels", value)
    return out
