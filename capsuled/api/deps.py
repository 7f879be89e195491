"""Request dependencies: the services, the caller, the microversion, the JSON body."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import Depends, Request

from capsuled import documents
from capsuled.api.microversions import MIN, ApiVersion
from capsuled.errors import InvalidInput, NotAuthenticated, UnsupportedMediaType
from capsuled.identity.base import IdentityProvider, Principal

TRUE = {"true", "1", "yes", "on", "y", "t"}
FALSE = {"false", "0", "no", "off", "n", "f"}


async def principal(request: Request) -> Principal:
    """The caller. A token this replica checked recently is answered in the event loop;
    only a check that reads the store or asks Keystone goes to a worker thread. Every
    request depends on this: as a plain function it took a thread of the shared pool
    each time, so heartbeats and long polls queued behind whatever held the pool (a
    burst of reports waiting on row locks), and agents were seen down although alive."""
    token = request.headers.get("x-auth-token")
    if not token:
        raise NotAuthenticated("Authentication required: send a token in the X-Auth-Token header.")
    identity: IdentityProvider = request.app.state.identity
    remembered = getattr(identity, "remembered", None)
    who = remembered(token) if remembered is not None else None
    if who is not None:
        return who  # type: ignore[no-any-return]
    return await anyio.to_thread.run_sync(authenticate, request, token)


def authenticate(request: Request, token: str) -> Principal:
    identity: IdentityProvider = request.app.state.identity
    who = identity.authenticate(token)
    if who is None:
        raise NotAuthenticated("The token is unknown, revoked or expired.")
    return who


# Dependencies that neither block nor touch the store are async: FastAPI runs a sync one
# in the thread pool, a hop that costs more than the work itself.
async def api_version(request: Request) -> ApiVersion:
    return getattr(request.state, "api_version", ApiVersion(*MIN))


async def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object merged over the query string, as Zun's pecan does."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {ctype or 'missing'!r}.")
    # The body's size was bounded by the middleware (413) as it arrived.
    body = _load_json(await request.body() or b"{}")
    if not isinstance(body, dict):
        raise InvalidInput("body: must be a JSON object")
    return {**dict(request.query_params), **body}


def _load_json(raw: bytes) -> Any:
    try:
        return documents.load_json(raw, "body")
    except documents.DocumentError as exc:
        raise InvalidInput(exc.message) from None


async def read_json(request: Request) -> Any:
    """The body as JSON (any type), bounded in size (middleware) and depth; None if empty."""
    return read_body(await request.body())


def read_body(raw: bytes) -> Any:
    """`raw` as JSON (any type) within the depth budget; None if empty."""
    return _load_json(raw) if raw else None


def given(value: str | None) -> str | None:
    """A query parameter, or None when absent. zunclient urlencodes unset options as the
    string 'None' (e.g. kill?signal=None), which means absent too."""
    return None if value is None or value in ("", "None") else value


def flag(value: str | None, name: str) -> bool:
    if given(value) is None:
        return False
    v = str(value).strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise InvalidInput(f"{name}: must be a boolean (true/false), not {value!r}")


def allow(rule: str) -> Any:
    """A route dependency: the caller must pass the named policy rule (see api/policy.py)."""
    async def check(request: Request, who: Annotated[Principal, Depends(principal)]) -> None:
        request.app.state.policy.enforce(rule, who)
    return Depends(check)


PrincipalDep = Annotated[Principal, Depends(principal)]
VersionDep = Annotated[ApiVersion, Depends(api_version)]
BaseUrlDep = Annotated[str, Depends(base_url)]
BodyDep = Annotated[dict[str, Any], Depends(json_object)]
