"""Locally issued tokens, stored as SHA-256 digests: the plain token is shown once."""

from __future__ import annotations

import hashlib
import secrets
import uuid as uuidlib
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from capsuled.store.tables import Token, utcnow


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, project_id: str, user_id: str, roles: list[str],
                description: str | None = None, expires_at: datetime | None = None) -> str:
    plain = "cap_" + secrets.token_urlsafe(32)
    session.add(Token(uuid=str(uuidlib.uuid4()), token_hash=digest(plain), project_id=project_id,
                      user_id=user_id, roles=roles, description=description,
                      expires_at=expires_at, created_at=utcnow()))
    return plain


def find_token(session: Session, plain: str) -> Token | None:
    token = session.scalars(select(Token).where(Token.token_hash == digest(plain))).first()
    if token is None or token.revoked:
        return None
    if token.expires_at is not None and token.expires_at <= utcnow():
        return None
    return token

