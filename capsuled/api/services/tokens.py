"""Standalone identity administration: issue, list and revoke the server's own tokens.

The plain token is returned once, at creation; only its digest is stored. With Keystone
configured, tokens come from Keystone and these are not consulted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from capsuled.errors import InvalidInput, NotFound
from capsuled.store import tokens as repo
from capsuled.store.engine import Store
from capsuled.store.tables import Token, utcnow

ROLES = ("admin", "member", "reader", "agent", "metrics")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,254}$")
# ASCII digits, a dozen at most: more is no lifetime (and int() refuses 5,000 of them).
_DURATION = re.compile(r"^(\d{1,12})\s*([smhdw]?)\Z", re.ASCII)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_LIFETIME = timedelta(days=3650)


@dataclass(frozen=True)
class TokenInfo:
    uuid: str
    project_id: str
    user_id: str
    roles: list[str]
    description: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    host: str | None = None


@dataclass(frozen=True)
class NewToken:
    token: str
    info: TokenInfo


class TokenService:
    def __init__(self, store: Store, on_revoke: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._on_revoke = on_revoke  # told the digest of each revoked token

    def create(self, body: dict[str, object]) -> NewToken:
        problems: list[str] = []
        known = {"project_id", "user_id", "roles", "expires_in", "description", "host"}
        problems += [f"{k}: unknown field" for k in sorted(set(body) - known)]
        project = _name(body.get("project_id"), "project_id", problems)
        user = _name(body.get("user_id"), "user_id", problems)
        roles = _roles(body.get("roles"), problems)
        expires = _expires(body.get("expires_in"), problems)
        description = body.get("description")
        if description is not None and not (isinstance(description, str) and len(description) <= 255):
            problems.append("description: must be a string of at most 255 characters")
        host = body.get("host")
        if "agent" in roles:
            if not (isinstance(host, str) and _NAME.match(host)):
                problems.append("host: an agent token needs the host it is for")
            elif roles != ["agent"]:
                problems.append("roles: an agent token has the agent role only")
        elif host is not None:
            problems.append("host: only agent tokens are bound to a host")
        if problems:
            raise InvalidInput(problems)
        with self._store.transaction() as s:
            plain, row = repo.issue(s, project, user, roles, description,  # type: ignore[arg-type]
                                    utcnow() + expires if expires else None,
                                    host if isinstance(host, str) else None)
            return NewToken(plain, _info(row))

    def list(self, project_id: str | None = None) -> list[TokenInfo]:
        with self._store.transaction() as s:
            return [_info(t) for t in repo.list_tokens(s, project_id)]

    def revoke(self, uuid: str) -> TokenInfo:
        with self._store.transaction() as s:
            row = repo.get_token(s, uuid)
            if row is None:
                raise NotFound(f"Token {uuid} could not be found.")
            row.revoked = True
            info, token_hash = _info(row), row.token_hash
        if self._on_revoke is not None:
            self._on_revoke(token_hash)
        return info


def parse_duration(value: object) -> timedelta:
    """Seconds as a number, or a number with a unit: 90s, 15m, 12h, 30d, 2w."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int):
        seconds = value
    else:
        m = _DURATION.match(str(value).strip().lower())
        if not m:
            raise ValueError("not a duration")
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if seconds <= 0:
        raise ValueError("must be positive")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # 10**400 seconds: past any timedelta
        raise ValueError("too long") from None


def _expires(value: object, problems: list[str]) -> timedelta | None:
    if value is None:
        return None
    try:
        d = parse_duration(value)
    except ValueError:
        problems.append("expires_in: must be a positive duration such as 3600, 90m, 12h or 30d")
        return None
    if d > MAX_LIFETIME:
        problems.append("expires_in: at most 3650d")
    return d


def _name(value: object, field: str, problems: list[str]) -> str | None:
    if value is None:
        problems.append(f"{field}: is required")
    elif not (isinstance(value, str) and _NAME.match(value)):
        problems.append(f"{field}: must be 1-255 letters, digits, '_', '.', '@' or '-'")
    else:
        return value
    return None


def _roles(value: object, problems: list[str]) -> list[str]:
    if value is None:
        return ["member"]
    if isinstance(value, str):
        value = [value]
    if not (isinstance(value, list) and value and all(isinstance(r, str) for r in value)):
        problems.append("roles: must be a non-empty list of role names")
        return []
    unknown = [r for r in value if r not in ROLES]
    if unknown:
        problems.append(f"roles: unknown role {unknown[0]!r} (use {', '.join(ROLES)})")
    return sorted(set(value))


def _info(t: Token) -> TokenInfo:
    return TokenInfo(uuid=t.uuid, project_id=t.project_id, user_id=t.user_id,
                     roles=list(t.roles or []), description=t.description,
                     created_at=t.created_at, expires_at=t.expires_at, revoked=bool(t.revoked),
                     host=t.host)
