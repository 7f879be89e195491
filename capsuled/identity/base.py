"""Who is calling: the principal every request runs as."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Principal:
    project_id: str
    user_id: str
    roles: frozenset[str]
    host: str | None = None  # agent tokens: the one host whose channel they may use

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


class IdentityProvider(Protocol):
    def authenticate(self, token: str) -> Principal | None:
        """The principal a token stands for, or None if it is unknown, revoked or expired."""
        ...

    def remembered(self, token: str) -> Principal | None:
        """The principal of a token checked recently, from memory only (never blocks: the
        API asks it in the event loop); None when `authenticate` must decide."""
        ...
