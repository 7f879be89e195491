"""Capsule updates and rollbacks (extensions): validate → check what may change in place →
re-claim (quota and host, under the project's and the capsule's locks) → one new revision
→ wake the agent. The rollout then runs by itself (store/rollouts.py, and the
supervisor in rollout_supervisor.py).

`PATCH /v1/capsules/{id}` takes a whole template, or the quick changes of
`capsule update --image/--env` (`containers: [{name, image, env}]`), applied to the
current spec. Refusals are up front and name the field: what cannot change in place, a
growth beyond quota (403) or beyond the host's free room (409), an update while another
is under way (409).
"""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy.orm import Session

from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.capsules import CapsuleService, refuse_foreign_images
from capsuled.api.services.dry_run import Rehearsal, Rehearsed
from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import Delta
from capsuled.domain.spec import CapsuleSpec
from capsuled.domain.template import MAX_MESSAGE_CHARS, short, whole_number
from capsuled.domain.update import apply_quick_changes, immutable_problems, key_text, plan_change
from capsuled.domain.ports import capsule_host_ports
from capsuled.errors import Conflict, InvalidInput, OverQuota
from capsuled.identity.base import Principal
from capsuled.store import capsules as repo
from capsuled.store import hosts as host_repo
from capsuled.store import registries as registry_repo
from capsuled.store import security_groups as sg_repo
from capsuled.store import revisions, rollouts
from capsuled.store.engine import Store
from capsuled.store.revisions import MAX_CAUSE_CHARS
from capsuled.store.tables import Capsule, CapsuleRevision

UPDATE_KEYS = {"template", "containers", "change_cause", "revision"}
ROLLBACK_KEYS = {"revision", "change_cause"}


class RolloutService:
    def __init__(self, store: Store, control: ControlPlane, capsules: CapsuleService,
                 placement: Placement) -> None:
        self._store = store
        self._control = control
        self._capsules = capsules
        self._placement = placement

    def rehearse_update(self, who: Principal, ident: str, body: dict[str, Any]) -> Rehearsal:
        """What `update` would do (dry_run.py): every check, nothing kept."""
        try:
            self.update(who, ident, body, rehearse=True)
        except Rehearsed as done:
            return done.rehearsal
        raise AssertionError("a rehearsal always rolls back")  # pragma: no cover

    def update(self, who: Principal, ident: str, body: dict[str, Any],
               rehearse: bool = False) -> Capsule:
        """A new revision from `body` (see the module docstring); the capsule unchanged
        (no revision) when nothing in its spec would change. With `rehearse`, raises
        Rehearsed once every check has passed, before anything is written."""
        _known(body, UPDATE_KEYS, "the body is {\"template\": {...}} or {\"containers\": [...]}")
        if ("template" in body) == ("containers" in body):
            raise InvalidInput("template: give either template (a whole template) or "
                               "containers (image/env changes), not both and not neither")
        cause = _cause(body.get("change_cause"))
        expected = _revision(body.get("revision"), "revision")
        spec = self._capsules.parse(who, body["template"]) if "template" in body else None
        project = self._project(who, ident)
        try:
            with self._store.transaction() as s:
                capsule = self._locked(s, who, ident, project)
                if spec is not None:
                    refuse_foreign_images(s, project, spec)
                if expected is not None and expected != capsule.revision:
                    raise Conflict(f"revision: capsule {_name(capsule)} is at revision "
                                   f"{capsule.revision}, not {expected}; look at it again")
                # A dry run compares with the revision being rolled out: nothing waits.
                if capsule.rollout is not None and not rehearse:
                    raise Conflict(rollouts.busy_message(capsule))
                current = CapsuleSpec.model_validate(capsule.spec)
                if spec is None:
                    new = apply_quick_changes(current, body["containers"])
                    # A new image in a privileged container is a new privileged program.
                    self._capsules.check_host_access(who, new)
                    refuse_foreign_images(s, project, new)
                else:
                    new = spec if spec.name is not None else spec.model_copy(update={"name": current.name})
                new = registry_repo.resolve_capsule(s, project, new)
                # Under the project's lock (_locked): no group goes while this names it.
                sg_repo.check_names(s, project, new.security_groups, "spec.securityGroups")
                problems = immutable_problems(current, new) + _placement_problems(s, capsule, new)
                if problems:
                    raise InvalidInput(problems)
                uuid = capsule.uuid
                change = plan_change(current, new)
                same = change.new == current  # then no revision
                if not same:
                    self._grow(s, capsule, new)
                if rehearse:  # rolls the transaction back
                    raise Rehearsed(Rehearsal(name=capsule.name, new=change.new, current=current,
                                              change=change, uuid=uuid,
                                              revision=capsule.revision))
                if not same:
                    rollouts.begin(s, capsule, new, kind="update", user_id=who.user_id,
                                   cause=cause or _default_cause(body))
        except (OverQuota, Conflict) as exc:
            if not rehearse:  # a dry run records nothing, refusals neither
                self._refused(who, ident, exc)
            raise
        if not same:
            self._control.notify()
        return self._capsules.get(who, uuid)

    def rollback(self, who: Principal, ident: str, body: dict[str, Any]) -> Capsule:
        """Back to revision `body.revision` (default: the one before the current), as a new
        revision; it supersedes an update under way."""
        _known(body, ROLLBACK_KEYS, "the body is {\"revision\": N} (optional)")
        cause = _cause(body.get("change_cause"))
        to = _revision(body.get("revision"), "revision")
        project = self._project(who, ident)
        with self._store.transaction() as s:
            capsule = self._locked(s, who, ident, project)
            prior = rollouts.current(capsule)
            if prior is not None and prior.kind == "rollback":
                raise Conflict(f"Capsule {_name(capsule)} is already rolling back to revision "
                               f"{prior.restores}; wait until that is done.")
            target = rollouts.rollback_target(s, capsule, to)
            if target == capsule.revision:
                raise InvalidInput(f"revision: {target} is the capsule's current revision")
            spec = CapsuleSpec.model_validate(revisions.get(s, capsule, target).spec)
            self._capsules.check_host_access(who, spec)  # an admin's revision is not a member's
            # Its groups may have been deleted since: a 400 naming them, not a closed capsule.
            sg_repo.check_names(s, project, spec.security_groups, "spec.securityGroups")
            self._grow(s, capsule, spec)
            rollouts.begin(s, capsule, spec, kind="rollback", user_id=who.user_id,
                           restores=target, cause=cause or f"rollback to revision {target}")
            uuid = capsule.uuid
        self._control.notify()
        return self._capsules.get(who, uuid)

    def revisions(self, who: Principal, ident: str) -> tuple[Capsule, builtins.list[CapsuleRevision]]:
        with self._store.transaction() as s:
            capsule = repo.get_capsule(s, ident, self._capsules.scope(who))
            return capsule, revisions.list_for(s, capsule)

    # -- helpers --------------------------------------------------------------------------
    def _project(self, who: Principal, ident: str) -> str:
        """The capsule's project: the project lock must be the first write of the change's
        transaction, so it is found in a read of its own."""
        with self._store.transaction() as s:
            return repo.get_capsule(s, ident, self._scope(who)).project_id

    def _locked(self, s: Session, who: Principal, ident: str, project: str) -> Capsule:
        self._placement.lock(s, project)
        capsule = repo.get_capsule(s, ident, self._scope(who))
        rollouts.lock(s, capsule)  # against the supervisor and reports ending a rollout
        if capsule.deleting:
            raise Conflict(f"Capsule {_name(capsule)} is being deleted.")
        if capsule.host is None:
            raise Conflict(f"Capsule {_name(capsule)} has no host ({capsule.status}); delete "
                           "it and create it again.")
        return capsule

    def _grow(self, s: Session, capsule: Capsule, new: CapsuleSpec) -> None:
        more = rollouts.growth(capsule, new)
        self._placement.grow(s, capsule.project_id, Delta(containers=more.containers,
                                                          cpu=more.cpu, memory=more.memory,
                                                          disk=more.disk),
                             capsule.host, "capsule's", more.cpu, more.memory)
        self._placement.ensure_room(s, capsule.host, "capsule's", 0.0, 0, more.disk)
        # New fixed host ports must be free on the capsule's host (its own claims count as
        # free): refused up front, with the holder named only to its own project.
        self._placement.ensure_ports(s, capsule.host, capsule.uuid, capsule_host_ports(new),
                                     capsule.project_id)

    def _refused(self, who: Principal, ident: str, exc: OverQuota | Conflict) -> None:
        """An update refused for room is an event and a change record of the capsule's."""
        if not isinstance(exc, OverQuota) and not exc.message.startswith(("cpu:", "memory:", "disk:", "hostPort:")):
            return
        with self._store.transaction() as s:
            capsule = repo.get_capsule(s, ident, self._scope(who))
            message = f"update refused: {exc.message}"[:MAX_MESSAGE_CHARS]
            repo.add_event(s, capsule, "Warning", "UpdateRefused", message)
            repo.changed(s, capsule, "capsule.update", "UpdateRefused", message)

    def _scope(self, who: Principal) -> str | None:
        return self._capsules.scope(who, "capsule:delete_all_projects")


def _known(body: dict[str, Any], keys: set[str], shape: str) -> None:
    extra = sorted(set(body) - keys, key=str)
    if extra:
        raise InvalidInput([f"{key_text(k)}: unknown field ({shape})" for k in extra])


def _cause(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CAUSE_CHARS or "\x00" in value:
        raise InvalidInput(f"change_cause: must be text of at most {MAX_CAUSE_CHARS} characters")
    return value or None


def _revision(value: Any, field: str) -> int | None:
    if value is None:
        return None
    number = whole_number(value, strings=True)
    if number is None or number < 1:
        raise InvalidInput(f"{field}: must be a revision number (1 or more), not {short(value)}")
    return number


def _default_cause(body: dict[str, Any]) -> str:
    if "template" in body:
        return "update from a template"
    parts = []
    for c in body.get("containers") or []:
        if isinstance(c, dict):
            if "image" in c:
                parts.append(f"image {c.get('name')}={c['image']}")
            if isinstance(c.get("env"), dict):
                parts.append(f"env {c.get('name')} " + " ".join(sorted(map(str, c["env"]))))
    return "update: " + ", ".join(parts)


def _placement_problems(s: Session, capsule: Capsule, new: CapsuleSpec) -> list[str]:
    """An update does not move a capsule: its host must still satisfy the new zone and
    node selector (the host's own labels are not named: members do not see hosts)."""
    host = host_repo.find_host(s, capsule.host or "")
    if host is None:
        return []
    problems = []
    if new.availability_zone is not None and new.availability_zone != host.availability_zone:
        problems.append("availabilityZone: the capsule runs in another zone; an update cannot "
                        "move it (delete it and create it again)")
    labels = dict(host.labels or {})
    missing = [f"{k}={v}" for k, v in sorted(new.node_selector.items()) if labels.get(k) != v]
    if missing:
        problems.append(f"spec.nodeSelector: the capsule's host does not carry {', '.join(missing)}; "
                        "an update cannot move it to another host")
    return problems


def _name(capsule: Capsule) -> str:
    return capsule.name or capsule.uuid
