"""Image search in private registries (Zun's GET /v1/images/{image}/search).

Registry API v2 has no search, so the catalog (`/v2/_catalog`) is read with the
project's credentials and filtered here. Every call is bounded: a timeout per request,
a cap on the bytes read, and a cap on the repositories kept, so a slow or hostile
registry costs one request a few seconds at most. Nothing a registry answers is echoed
in an error beyond its status code: a tenant must not turn the API into a proxy.

A registry's domain and its token realm are a tenant's choice, so both are requested
through api/relay/egress.py, as webhooks are: every address is checked, the connection
goes to a checked one, and a member's search reaches no loopback, private, link-local
(cloud metadata), multicast or reserved address unless the registry was made or is
searched by an admin (`registry:search:private_address`); the operator may open private
networks (RFC 1918, ULA) to members (api.registry_search_private_networks).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode

from capsuled.api.relay.egress import (Answer, HttpGetter, Refused, Restricted, Unanswered,
                                       Unresolvable)
from capsuled.domain.egress import RESTRICTED_KINDS, Target, parse_url
from capsuled.domain.registry import Credentials
from capsuled.errors import InvalidInput

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


@dataclass(frozen=True)
class Reach:
    """Which addresses this search may reach: any (`allow_private`: an admin made the
    registry or searches), or global ones and, with `private_networks`, RFC 1918/ULA."""

    allow_private: bool
    private_networks: bool = False


def search_catalog(getter: HttpGetter, reg: Credentials, term: str, exact: bool,
                   reach: Reach) -> list[Found]:
    """Repositories of `reg` whose name contains `term` (or equals it, `exact`)."""
    repos = _catalog(getter, reg, reach)
    wanted = term.lower()
    hits = [r for r in repos if (r.lower() == wanted if exact else wanted in r.lower())]
    return [Found(name=f"{reg.domain}/{r}", registry=reg.domain) for r in sorted(hits)]


def _catalog(getter: HttpGetter, reg: Credentials, reach: Reach) -> list[str]:
    errors: list[str] = []
    for scheme in ("https", "http"):
        try:
            target = parse_url(f"{scheme}://{reg.domain}/v2/_catalog?n={MAX_REPOSITORIES}")
        except InvalidInput:
            raise Unreachable(reg.domain, "is not a host name or address") from None
        try:
            return _read_catalog(getter, target, reg, reach)
        except Restricted:
            raise Unreachable(reg.domain, _not_allowed("its address")) from None
        except Unresolvable:
            raise Unreachable(reg.domain, "cannot be reached (its name does not resolve)") from None
        except (Unanswered, _Broken):
            errors.append(f"{scheme}: no answer")
    raise Unreachable(reg.domain, "cannot be reached (" + ", ".join(errors) + ")")


class _Broken(Exception):
    """An answer cut off or larger than the limit."""


def _not_allowed(what: str) -> str:
    # Neither the address nor its kind: a member learns nothing of the internal network.
    return (f"cannot be searched: {what} is not allowed (only administrators may search "
            f"registries at {RESTRICTED_KINDS} addresses)")


def _read_catalog(getter: HttpGetter, target: Target, reg: Credentials,
                  reach: Reach) -> list[str]:
    basic = _basic(reg)
    got = _get(getter, target, reach, basic)
    challenge = got.headers.get("www-authenticate", "")
    if got.status == 401 and challenge.lower().startswith("bearer"):
        token = _bearer_token(getter, challenge, basic, reach, reg.domain)
        got = _get(getter, target, reach, f"Bearer {token}" if token else None)
    if got.status in (401, 403):
        raise Unreachable(reg.domain, f"refused the catalog ({got.status}): check the "
                                      "registry's username and password")
    if got.status != 200:
        raise Unreachable(reg.domain, f"answered {got.status} to /v2/_catalog")
    try:
        repos = json.loads(got.body).get("repositories") or []
    except (ValueError, AttributeError):
        raise Unreachable(reg.domain, "answered something other than a catalog") from None
    return [r for r in _strings(repos)][:MAX_REPOSITORIES]


def _basic(reg: Credentials) -> str | None:
    if not reg.username:
        return None
    pair = f"{reg.username}:{reg.password or ''}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _get(getter: HttpGetter, target: Target, reach: Reach,
         authorization: str | None) -> Answer:
    headers = {"Authorization": authorization} if authorization else {}
    got = getter.get(target, reach.allow_private, headers,
                     private_networks=reach.private_networks)
    if not got.complete:
        raise _Broken()
    return got


def _bearer_token(getter: HttpGetter, challenge: str, basic: str | None, reach: Reach,
                  domain: str) -> str | None:
    """Token auth (Docker's distribution spec): ask the realm for a registry:catalog token.
    The realm is checked as the registry is: a public registry may not send the search
    to a loopback or metadata address."""
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", None)
    if not realm or not realm.startswith(("https://", "http://")):
        return None
    params.setdefault("scope", "registry:catalog:*")
    sep = "&" if "?" in realm else "?"
    try:
        target = parse_url(realm + sep + urlencode(params), "realm")
    except InvalidInput:
        return None
    try:
        got = _get(getter, target, reach, basic)
    except Restricted:
        raise Unreachable(domain, _not_allowed("its token service's address")) from None
    except (Refused, Unanswered, _Broken):
        return None
    if got.status != 200:
        return None
    try:
        data = json.loads(got.body)
    except ValueError:
        return None
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _strings(values: Iterable[object]) -> Iterable[str]:
    return (v for v in values if isinstance(v, str) and len(v) <= 255)
