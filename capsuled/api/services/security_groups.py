"""Security group use cases (/v1/security_groups, an extension; Zun's add_security_group
and remove_security_group container actions): a project's rule sets, and which groups a
bare container is in. The rules themselves are domain/security_groups.py; the agents
enforce them (agent/firewall.py).

Changes that decide who is in a group (a group's delete, a container joining or leaving
one) take the project's lock, as every create does: a create naming a group and the
group's delete never both succeed."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from capsuled.api.policy import Policy
from capsuled.api.services.quotas import QuotaService
from capsuled.domain import security_groups as rules
from capsuled.domain.addresses import NAMESPACE
from capsuled.domain.spec import BareSpec
from capsuled.domain.template import Limits, _Problems, short
from capsuled.errors import Conflict, InvalidInput, NotFound
from capsuled.identity.base import Principal
from capsuled.store import containers as container_repo
from capsuled.store import security_groups as repo
from capsuled.store.engine import Store
from capsuled.store.tables import SecurityGroup

FIELDS = {"name", "description", "rules"}
# Zun's valid states of add_security_group and remove_security_group (zun-spec §4).
ACTION_STATES = ("Created", "Running", "Stopped", "Paused")


@dataclass(frozen=True)
class GroupView:
    uuid: str
    name: str
    description: str
    rules: list[rules.Rule]
    project_id: str
    user_id: str | None
    created_at: datetime | None
    updated_at: datetime | None
    implicit: bool = False  # `default`: in every project, not made, not changed


def default_view(project_id: str) -> GroupView:
    """The project's `default` group: no row, the same uuid on every replica."""
    return GroupView(uuid=str(uuidlib.uuid5(NAMESPACE, f"security-group:{project_id}:default")),
                     name=rules.DEFAULT, description="the project's own capsules and containers "
                     "reach one another; nothing else reaches them",
                     rules=list(rules.DEFAULT_RULES), project_id=project_id, user_id=None,
                     created_at=None, updated_at=None, implicit=True)


def _view(row: SecurityGroup) -> GroupView:
    return GroupView(uuid=row.uuid, name=row.name, description=row.description or "",
                     rules=repo.rules(row), project_id=row.project_id, user_id=row.user_id,
                     created_at=row.created_at, updated_at=row.updated_at)


class SecurityGroupService:
    def __init__(self, store: Store, quotas: QuotaService, limits: Limits,
                 per_project: int = 50, policy: Policy | None = None,
                 notify: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._quotas = quotas
        self._limits = limits
        self._per_project = per_project
        self._policy = policy or Policy()
        self._notify = notify  # wakes this replica's watching agents

    # -- the groups ---------------------------------------------------------------------
    def create(self, who: Principal, body: dict[str, Any]) -> GroupView:
        fields = self._parse(body, creating=True)
        name = str(fields["name"])
        with self._store.transaction() as s:
            self._quotas.begin(s, who.project_id)
            if repo.count(s, who.project_id) >= self._per_project:
                raise Conflict(f"This project has {self._per_project} security groups, the "
                               "most it may have (limits.security_groups_per_project); delete "
                               "one first.")
            row = repo.create(s, who.project_id, who.user_id, name,
                              str(fields.get("description") or ""), fields.get("rules") or [])
            return _view(row)

    def get(self, who: Principal, ident: str) -> GroupView:
        if ident == rules.DEFAULT:
            return default_view(who.project_id)
        with self._store.transaction() as s:
            row = repo.find(s, ident, self._wide(who))
            if row is None and ident == default_view(who.project_id).uuid:
                return default_view(who.project_id)
            if row is None:
                raise NotFound(f"Security group {short(ident)} could not be found.")
            return _view(row)

    def list(self, who: Principal, all_projects: bool, limit: int,
             marker: str | None) -> list[GroupView]:
        if all_projects:
            self._policy.enforce("security_group:get_all_all_projects", who)
        with self._store.transaction() as s:
            rows = [_view(r) for r in repo.list_(s, None if all_projects else who.project_id,
                                                 limit, marker)]
        if all_projects or marker is not None:
            return rows
        return [default_view(who.project_id), *rows]  # default is on the first page, uncounted

    def update(self, who: Principal, ident: str, body: dict[str, Any]) -> GroupView:
        fields = self._parse(body, creating=False)
        with self._store.transaction() as s:
            row = self._row(s, who, ident)
            if "name" in fields and fields["name"] != row.name:
                raise InvalidInput("name: cannot be changed (capsules and containers name "
                                   "their groups); make a new group instead")
            self._quotas.begin(s, row.project_id)
            repo.update_row(s, row, fields.get("description"), fields.get("rules"))
            view = _view(row)
        self._notify()
        return view

    def delete(self, who: Principal, ident: str) -> None:
        with self._store.transaction() as s:
            row = self._row(s, who, ident)
            self._quotas.begin(s, row.project_id)
            repo.delete(s, row)

    def _row(self, s: Any, who: Principal, ident: str) -> SecurityGroup:
        if ident == rules.DEFAULT or ident == default_view(who.project_id).uuid:
            raise Conflict("The default security group is part of every project and cannot "
                           "be changed or deleted; make a group of your own and use it "
                           "instead of default.")
        return repo.get(s, ident, self._wide(who))

    def _wide(self, who: Principal) -> str | None:
        """Admins reach any one group by uuid or name, as registries; members their own."""
        allowed = self._policy.allows("security_group:get_all_all_projects", who)
        return None if allowed else who.project_id

    def _parse(self, body: dict[str, Any], creating: bool) -> dict[str, Any]:
        p = _Problems()
        for key in sorted(set(body) - FIELDS, key=str):
            p.add(str(key)[:60] or "''", "unknown field")
        out: dict[str, Any] = {}
        if creating or "name" in body:
            problem = rules.name_problem(body.get("name"))
            if body.get("name") is None:
                p.add("name", "is required")
            elif problem is not None:
                p.add("name", problem)
            else:
                out["name"] = body["name"]
        if "description" in body:
            d = body.get("description")
            if d is not None and not (isinstance(d, str) and len(d) <= rules.MAX_DESCRIPTION
                                      and "\x00" not in d):
                p.add("description", f"must be a string of at most {rules.MAX_DESCRIPTION} "
                                     "characters")
            else:
                out["description"] = d or ""
        if "rules" in body:
            out["rules"] = rules.parse_rules(body.get("rules"), "rules", p.add,
                                             self._limits.max_security_group_rules)
        if not creating and not out:
            p.add("body", "give description or rules")
        if p.items:
            raise InvalidInput(p.items)
        return out

    # -- a bare container's groups (Zun's actions) ----------------------------------------
    def add_to_container(self, who: Principal, ident: str, name: Any, request_id: str,
                         scope: str | None) -> None:
        self._membership(who, ident, name, request_id, scope, add=True)

    def remove_from_container(self, who: Principal, ident: str, name: Any, request_id: str,
                              scope: str | None) -> None:
        self._membership(who, ident, name, request_id, scope, add=False)

    def _membership(self, who: Principal, ident: str, name: Any, request_id: str,
                    scope: str | None, add: bool) -> None:
        action = "add_security_group" if add else "remove_security_group"
        problem = rules.name_problem(name) if name is not None else "is required"
        if problem is not None:
            raise InvalidInput(f"name: {problem}")
        assert isinstance(name, str)
        with self._store.transaction() as s:
            project = container_repo.get_container(s, ident, scope).project_id
        with self._store.transaction() as s:
            self._quotas.begin(s, project)
            row = container_repo.get_container(s, ident, scope)
            if row.capsule is not None:
                owner = row.capsule.name or row.capsule.uuid
                raise Conflict(f"Cannot {action} container {row.name}: it belongs to capsule "
                               f"{owner}, which is in its template's groups "
                               "(spec.securityGroups).")
            if row.status not in ACTION_STATES:
                raise Conflict(f"Cannot {action} container {row.uuid} in {row.status} state.")
            repo.check_names(s, row.project_id, [name], "name")
            spec = BareSpec.model_validate(row.spec)
            groups = list(spec.security_groups)
            if add and name in groups:
                raise InvalidInput(f"name: container {row.name} is already in security group "
                                   f"{name}")
            if not add and name not in groups:
                raise InvalidInput(f"name: container {row.name} is not in security group {name}")
            groups = [*groups, name] if add else [g for g in groups if g != name]
            if len(groups) > self._limits.max_security_groups:
                raise InvalidInput(f"name: a container is in at most "
                                   f"{self._limits.max_security_groups} security groups")
            container_repo.set_desired(s, row, spec=spec.model_copy(
                update={"security_groups": groups}))
            container_repo.record_action(s, row.uuid, action, request_id, who.project_id,
                                         who.user_id, finished=True)
        self._notify()
