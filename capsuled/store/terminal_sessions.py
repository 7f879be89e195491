"""One-time websocket tokens for attach and interactive exec, kept as digests.

`take` is the single use: it deletes the row it returns, and of two replicas taking the
same token at once only the one whose delete removed the row gets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from capsuled.store.tables import TerminalSession
from capsuled.store.tokens import digest


@dataclass(frozen=True)
class Terminal:
    container_uuid: str
    host: str
    runtime_id: str
    exec_id: str | None
    pending_size: tuple[int, int] | None  # (height, width) asked for before the connect


def add(session: Session, token: str, container_uuid: str, host: str, runtime_id: str,
        exec_id: str | None, expires_at: datetime) -> None:
    session.add(TerminalSession(token_hash=digest(token), container_uuid=container_uuid,
                                host=host, runtime_id=runtime_id, exec_id=exec_id,
                                expires_at=expires_at))


def take(session: Session, token: str, now: datetime) -> Terminal | None:
    """The session the token opens, used up; None when unknown, used or expired.
    Expired sessions are swept on the way."""
    session.execute(delete(TerminalSession).where(TerminalSession.expires_at <= now),
                    execution_options={"synchronize_session": False})
    key = digest(token)
    t = TerminalSession
    row = session.execute(select(t.container_uuid, t.host, t.runtime_id, t.exec_id,
                                 t.pending_height, t.pending_width)
                          .where(t.token_hash == key)).first()
    if row is None:
        return None
    taken = session.execute(delete(t).where(t.token_hash == key),
                            execution_options={"synchronize_session": False})
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        return None  # another replica took it in between
    size = (row.pending_height, row.pending_width) if row.pending_height is not None else None
    return Terminal(row.container_uuid, row.host, row.runtime_id, row.exec_id, size)


def hold_resize(session: Session, exec_id: str, height: int, width: int, now: datetime) -> bool:
    """Keep a resize for an exec session nobody has connected to yet; False when there is
    no such session (it is connected, or gone): the resize goes to the runtime then."""
    result = session.execute(
        update(TerminalSession)
        .where(TerminalSession.exec_id == exec_id, TerminalSession.expires_at > now)
        .values(pending_height=height, pending_width=width),
        execution_options={"synchronize_session": False})
    return bool(result.rowcount)  # type: ignore[attr-defined]

