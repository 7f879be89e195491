"""Capsule services (/v1/capsule_services, an extension): a project's VIPs over its ready
capsules (domain/services.py). Creating or deleting one wakes the agents, whose service
watch then carries it (api/services/agents.py `services`); which capsules serve is read
when asked, from the same rule the agents are given."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from capsuled.api.policy import Policy
from capsuled.config import ServiceSettings
from capsuled.domain.services import (Candidate, ServiceLimits, ServicePort, matches,
                                      parse_service, serving)
from capsuled.errors import Conflict
from capsuled.identity.base import Principal
from capsuled.store import capsule_services as repo
from capsuled.store import quotas
from capsuled.store.engine import Store
from capsuled.store.tables import CapsuleService


@dataclass(frozen=True)
class BackendView:
    """A capsule the selector picks, and whether it takes new connections now."""

    uuid: str
    name: str | None
    addr: str | None
    serving: bool


@dataclass(frozen=True)
class ServiceView:
    uuid: str
    name: str
    project_id: str
    user_id: str
    selector: dict[str, str]
    ports: list[ServicePort]
    vip: str
    created_at: datetime
    backends: list[BackendView]


class CapsuleServices:
    def __init__(self, store: Store, policy: Policy, settings: ServiceSettings,
                 changed: Callable[[], None] = lambda: None) -> None:
        self._store, self._policy, self._settings = store, policy, settings
        self._limits = ServiceLimits(publish_min=settings.publish_min,
                                     publish_max=settings.publish_max,
                                     max_ports=settings.max_ports)
        self._changed = changed  # wakes the agents' service watches

    def create(self, who: Principal, body: dict[str, Any]) -> ServiceView:
        new = parse_service(body, self._limits)
        with self._store.transaction() as s:
            quotas.ensure_lock_row(s, who.project_id)
        try:
            with self._store.transaction() as s:
                row = repo.create(s, new, who.project_id, who.user_id, self._settings.vip_range,
                                  self._settings.per_project)
                view = self._view(s, row)
        except IntegrityError:
            # Only a create racing another on a deployment without hosts gets here (host
            # row locks serialise the rest): the unique keys refused a second VIP or port.
            raise Conflict("Another service was created at the same time with the same "
                           "address or port; try again.") from None
        self._changed()
        return view

    def list(self, who: Principal, all_projects: bool, limit: int) -> builtins.list[ServiceView]:
        scope: str | None = who.project_id
        if all_projects:
            self._policy.enforce("capsule_service:get_all_all_projects", who)
            scope = None
        with self._store.transaction() as s:
            rows = repo.list_(s, scope, limit)
            found = repo.candidates(s, {r.project_id for r in rows})
            return [_view(r, found) for r in rows]

    def get(self, who: Principal, ident: str) -> ServiceView:
        with self._store.transaction() as s:
            return self._view(s, repo.get(s, ident, self._wide(who)))

    def delete(self, who: Principal, ident: str) -> None:
        with self._store.transaction() as s:
            repo.delete(s, repo.get(s, ident, self._wide(who)))
        self._changed()

    def _wide(self, who: Principal) -> str | None:
        """Admins reach any one service by uuid or name; members their project's."""
        return (None if self._policy.allows("capsule_service:get_all_all_projects", who)
                else who.project_id)

    @staticmethod
    def _view(s: Session, row: CapsuleService) -> ServiceView:
        return _view(row, repo.candidates(s, {row.project_id}, selector=row.selector))


def _view(row: CapsuleService, found: builtins.list[Candidate]) -> ServiceView:
    selector = dict(row.selector or {})
    picked = [c for c in found if c.project_id == row.project_id and not c.deleting
              and matches(selector, c.labels)]
    return ServiceView(
        uuid=row.uuid, name=row.name, project_id=row.project_id, user_id=row.user_id,
        selector=selector, ports=repo.ports_of(row), vip=row.vip, created_at=row.created_at,
        backends=[BackendView(uuid=c.uuid, name=c.name, addr=c.addr, serving=serving(c))
                  for c in picked])
