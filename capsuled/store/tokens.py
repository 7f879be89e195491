"""Locally issued tokens, stored as SHA-256 digests: the plain token is shown once."""

from __future__ import annotations

import hashlib
import secrets
import uuid as uuidlib
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from capsuled.store.tables import Token, utcnow


TOKEN_PREFIX = "cap_"  # tells ours apart from Keystone's (see identity/chain.py)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, project_id: str, user_id: str, roles: list[str],
                description: str | None = None, expires_at: datetime | None = None) -> str:
    return issue(session, project_id, user_id, roles, description, expires_at)[0]


def issue(session: Session, project_id: str, user_id: str, roles: list[str],
          description: str | None = None, expires_at: datetime | None = None,
          host: str | None = None) -> tuple[str, Token]:
    """A new token: the plain value (shown once) and its stored row."""
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = Token(uuid=str(uuidlib.uuid4()), token_hash=digest(plain), project_id=project_id,
                user_id=user_id, roles=roles, description=description,
                expires_at=expires_at, created_at=utcnow(), revoked=False, host=host)
    session.add(row)
    session.flush()
    return plain, row


def list_tokens(session: Session, project_id: str | None = None) -> list[Token]:
    q = select(Token).order_by(Token.id)
    if project_id is not None:
        q = q.where(Token.project_id == project_id)
    return list(session.scalars(q).all())


def get_token(session: Session, uuid: str) -> Token | None:
    return session.scalars(select(Token).where(Token.uuid == uuid)).first()


def find_token(session: Session, plain: str) -> Token | None:
    token = session.scalars(select(Token).where(Token.token_hash == digest(plain))).first()
    if token is None or token.revoked:
        return None
    if token.expires_at is not None and token.expires_at <= utcnow():
        return None
    return token


def still_valid(session: Session, digests: list[str], chunk: int = 500) -> set[str]:
    """Those of `digests` whose tokens are neither revoked nor expired, in a few queries."""
    now, valid = utcnow(), set[str]()
    for i in range(0, len(digests), chunk):
        valid.update(session.scalars(select(Token.token_hash).where(
            Token.token_hash.in_(digests[i:i + chunk]), Token.revoked.is_(False),
            (Token.expires_at.is_(None)) | (Token.expires_at > now))).all())
    return valid
