"""OpenStack identity: user tokens validated by a real Keystone.

Capsuled holds a keystoneauth1 session for its own service user (password auth; the
library re-authenticates when that token nears its end or is refused) and asks Keystone
about each user token with `GET /v3/auth/tokens` (python-keystoneclient), as
keystonemiddleware's auth_token does. The answer becomes a Principal: the token's project,
user and roles. Answers are cached, keyed by the token's digest, for at most `cache_ttl`
seconds and never past the token's own expiry, so a revoked token is refused within
`cache_ttl`. Keystone's own refusals (404: unknown, revoked or expired) are cached too.
When Keystone cannot be asked (down, timing out, refusing the service user), requests
get 503, not 401: the token may well be good.

Only the `admin` role on the configured admin project makes a Capsuled admin (OpenStack's
`is_admin_project`): in Keystone a project's own administrators hold `admin` on it, and
that must not open every tenant's containers to them. Elsewhere `admin` counts as
`member` of the token's project.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cachetools import TTLCache
from keystoneauth1 import access
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client as ks_client

from capsuled.config import KeystoneSettings
from capsuled.errors import Forbidden, Unavailable
from capsuled.identity.base import Principal

LOG = logging.getLogger(__name__)

# Keystone role name → Capsuled role. Keystone expands implied roles in a token (admin
# implies manager implies member implies reader), so an admin token carries all of them.
# Other roles mean nothing to Capsuled's policy and are dropped.
ROLE_MAP = {
    "admin": "admin",
    "member": "member",
    "_member_": "member",
    "reader": "reader",
}

# Keystone's tokens (fernet, JWS, UUID) are short printable ASCII; anything else is refused
# without a round trip (and could not go into a header anyway).
_TOKEN_SHAPE = re.compile(r"[\x21-\x7e]{1,8192}")


def map_roles(names: Iterable[str]) -> frozenset[str]:
    return frozenset(ROLE_MAP[n.lower()] for n in names if n.lower() in ROLE_MAP)


class TokenValidator(Protocol):
    def __call__(self, token: str) -> dict[str, Any]:
        """Keystone's body for a valid token; raises keystoneauth1 exceptions otherwise."""
        ...


@dataclass(frozen=True)
class AdminProject:
    """Which project's `admin` role is Capsuled's admin: by id, or by name in a domain."""

    name: str | None = "admin"
    domain_name: str = "Default"
    id: str | None = None

    def matches(self, info: access.AccessInfoV3) -> bool:
        if self.id is not None:
            return info.project_id == self.id
        return (self.name is not None and info.project_name == self.name
                and info.project_domain_name == self.domain_name)


@dataclass(frozen=True)
class _Entry:
    principal: Principal | None  # None: Keystone refused the token
    forbidden: str | None        # a valid token Capsuled cannot use (not project-scoped)
    deadline: float              # on the cache's clock; never past the token's expiry


def _service_session(settings: KeystoneSettings) -> ks_session.Session:
    auth = v3.Password(auth_url=settings.auth_url, username=settings.username,
                       password=settings.password.get_secret_value(),
                       project_name=settings.project_name,
                       user_domain_name=settings.user_domain_name,
                       project_domain_name=settings.project_domain_name)
    return ks_session.Session(auth=auth, timeout=settings.timeout)


def check_service_user(settings: KeystoneSettings) -> str:
    """Log in as the service user once (`capsuled doctor`): what Keystone answered, in
    words; Unavailable (cannot reach it) or Forbidden (it refuses the user) otherwise."""
    sess = _service_session(settings)
    try:
        sess.get_token()
        project = sess.get_project_id()
    except (ks_exc.Unauthorized, ks_exc.Forbidden) as exc:
        raise Forbidden(f"Keystone at {settings.auth_url} refused the service user "
                        f"{settings.username} (project {settings.project_name}): {exc}") from exc
    except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.DiscoveryFailure,
            ks_exc.ClientException) as exc:
        raise Unavailable(f"Keystone at {settings.auth_url} did not answer: {exc}") from exc
    return (f"Keystone at {settings.auth_url} gave the service user {settings.username} a "
            f"token for project {settings.project_name} ({project})")


def keystone_validator(settings: KeystoneSettings) -> TokenValidator:
    """Validate tokens as the service user, through keystoneauth1 and keystoneclient."""
    sess = _service_session(settings)
    client = ks_client.Client(session=sess, interface=settings.interface,
                              region_name=settings.region_name)

    def validate(token: str) -> dict[str, Any]:
        body: dict[str, Any] = client.tokens.get_token_data(token, include_catalog=False)
        return body

    return validate


class KeystoneIdentity:
    def __init__(self, validator: TokenValidator, cache_ttl: float = 30.0,
                 cache_size: int = 10_000, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 admin_project: AdminProject = AdminProject()) -> None:
        self._validate = validator
        self._admin_project = admin_project
        self._ttl = cache_ttl
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        size = max(1, cache_size)
        ttl = max(cache_ttl, 1e-9)
        # Good and refused tokens apart, so a flood of garbage cannot evict good ones.
        self._good: TTLCache[str, _Entry] = TTLCache(size, ttl, timer=clock)
        self._bad: TTLCache[str, _Entry] = TTLCache(size, ttl, timer=clock)

    @classmethod
    def from_settings(cls, settings: KeystoneSettings) -> KeystoneIdentity:
        return cls(keystone_validator(settings), settings.cache_ttl, settings.cache_size,
                   admin_project=AdminProject(settings.admin_project_name,
                                              settings.admin_project_domain_name,
                                              settings.admin_project_id))

    def authenticate(self, token: str) -> Principal | None:
        if not _TOKEN_SHAPE.fullmatch(token):
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        entry = self._cached(key)
        if entry is None:
            entry = self._ask(token)
            self._remember(key, entry)
        if entry.forbidden is not None:
            raise Forbidden(entry.forbidden)
        return entry.principal

    def remembered(self, token: str) -> Principal | None:
        if not _TOKEN_SHAPE.fullmatch(token):
            return None
        entry = self._cached(hashlib.sha256(token.encode()).hexdigest())
        return None if entry is None or entry.forbidden is not None else entry.principal

    def _cached(self, key: str) -> _Entry | None:
        if self._ttl <= 0:
            return None
        with self._lock:
            entry = self._good.get(key) or self._bad.get(key)
            if entry is not None and entry.deadline <= self._clock():
                self._good.pop(key, None)
                self._bad.pop(key, None)
                return None
            return entry

    def _remember(self, key: str, entry: _Entry) -> None:
        if self._ttl <= 0 or entry.deadline <= self._clock():
            return
        with self._lock:
            (self._good if entry.principal is not None else self._bad)[key] = entry

    def _ask(self, token: str) -> _Entry:
        start = self._clock()
        refused = _Entry(None, None, start + self._ttl)
        try:
            body = self._validate(token)
        except (ks_exc.NotFound, ks_exc.BadRequest):
            return refused  # unknown, revoked, expired or malformed
        except (ks_exc.Unauthorized, ks_exc.Forbidden) as exc:
            # The service user itself was refused (after keystoneauth re-authenticated):
            # wrong credentials, or no `service`/`admin` role to validate tokens with.
            LOG.error("Keystone refused Capsuled's service user while validating a token: %s", exc)
            raise Unavailable("The identity service refused Capsuled's service credentials; "
                              "ask the operator to check the [keystone] settings.") from exc
        except ks_exc.ClientException as exc:
            LOG.warning("Keystone could not validate a token: %s", exc)
            raise Unavailable(f"The identity service is unavailable: {exc}") from exc
        try:
            info = access.create(body=body)
        except (ValueError, KeyError, TypeError) as exc:
            raise Unavailable("The identity service sent an unreadable token document.") from exc
        if not isinstance(info, access.AccessInfoV3):
            raise Unavailable("The identity service sent a token document that is not v3.")
        deadline = start + self._ttl
        expires = info.expires
        if expires is not None:
            left = (expires - self._now()).total_seconds()
            if left <= 0:
                return refused
            deadline = min(deadline, start + left)
        if not info.project_scoped or not info.project_id or not info.user_id:
            return _Entry(None, "Capsuled needs a project-scoped token (this one is "
                          f"{_scope(info)}); log in with a project.", deadline)
        roles = map_roles(info.role_names or ())
        if "admin" in roles and not self._admin_project.matches(info):
            # Still its own project's member, even where `admin` implies nothing.
            roles = (roles - {"admin"}) | {"member"}
        principal = Principal(project_id=info.project_id, user_id=info.user_id, roles=roles)
        return _Entry(principal, None, deadline)


def _scope(info: access.AccessInfoV3) -> str:
    if info.system_scoped:
        return "system-scoped"
    if info.domain_scoped:
        return "domain-scoped"
    return "unscoped"
