"""Image search in private registries (Zun's GET /v1/images/{image}/search).

Registry API v2 has no search, so the catalog (`/v2/_catalog`) is read with the
project's credentials and filtered here. Every call is bounded: a timeout per registry,
a cap on the bytes read, and a cap on the repositories kept, so a slow or hostile
registry costs one request a few seconds at most. Nothing a registry answers is echoed
in an error beyond its status code: a tenant must not turn the API into a proxy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from capsuled.domain.registry import Credentials

MAX_CATALOG_BYTES = 1024 * 1024
MAX_REPOSITORIES = 1000  # one catalog page; the reference registry refuses more
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class Unreachable(Exception):
    """A registry that could not answer; `why` is safe to show."""

    def __init__(self, domain: str, why: str) -> None:
        super().__init__(f"{domain}: {why}")
        self.domain = domain
        self.why = why


@dataclass(frozen=True)
class Found:
    name: str  # domain/repository, as it would be pulled
    registry: str


def search_catalog(reg: Credentials, term: str, exact: bool, timeout: float) -> list[Found]:
    """Repositories of `reg` whose name contains `term` (or equals it, `exact`)."""
    repos = _catalog(reg, timeout)
    wanted = term.lower()
    hits = [r for r in repos if (r.lower() == wanted if exact else wanted in r.lower())]
    return [Found(name=f"{reg.domain}/{r}", registry=reg.domain) for r in sorted(hits)]


def _catalog(reg: Credentials, timeout: float) -> list[str]:
    errors: list[str] = []
    for scheme in ("https", "http"):
        url = f"{scheme}://{reg.domain}/v2/_catalog?n={MAX_REPOSITORIES}"
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
                return _read_catalog(client, url, reg)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            errors.append(f"{scheme}: {type(exc).__name__}")
    raise Unreachable(reg.domain, "cannot be reached (" + ", ".join(errors) + ")")


def _read_catalog(client: httpx.Client, url: str, reg: Credentials) -> list[str]:
    auth = httpx.BasicAuth(reg.username, reg.password or "") if reg.username else None
    status, body, challenge = _get(client, url, auth, None)
    if status == 401 and challenge.lower().startswith("bearer"):
        token = _bearer_token(client, challenge, auth)
        status, body, _ = _get(client, url, None, token)
    if status in (401, 403):
        raise Unreachable(reg.domain, f"refused the catalog ({status}): check the registry's "
                                      "username and password")
    if status != 200:
        raise Unreachable(reg.domain, f"answered {status} to /v2/_catalog")
    try:
        repos = json.loads(body).get("repositories") or []
    except (ValueError, AttributeError):
        raise Unreachable(reg.domain, "answered something other than a catalog") from None
    return [r for r in _strings(repos)][:MAX_REPOSITORIES]


def _get(client: httpx.Client, url: str, auth: httpx.Auth | None,
         token: str | None) -> tuple[int, bytes, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with client.stream("GET", url, auth=auth, headers=headers) as resp:
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > MAX_CATALOG_BYTES:
                raise httpx.TransportError("catalog larger than the limit")
        return resp.status_code, bytes(body), resp.headers.get("www-authenticate", "")


def _bearer_token(client: httpx.Client, challenge: str, auth: httpx.Auth | None) -> str | None:
    """Token auth (Docker's distribution spec): ask the realm for a registry:catalog token."""
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", None)
    if not realm or not realm.startswith(("https://", "http://")):
        return None
    params.setdefault("scope", "registry:catalog:*")
    status, body, _ = _get(client, str(httpx.URL(realm, params=params)), auth, None)
    if status != 200:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _strings(values: Iterable[object]) -> Iterable[str]:
    return (v for v in values if isinstance(v, str) and len(v) <= 255)
