"""Capsule use cases: validate → authorise → schedule → store → wake the agent."""

from __future__ import annotations

import builtins
import time
from collections.abc import Collection
from datetime import timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy.orm import Session

from capsuled.api.policy import Policy
from capsuled.api.metrics import ApiMetrics
from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.dry_run import Rehearsal, Rehearsed
from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import Delta, QuotaService
from capsuled.config import QuotaSettings
from capsuled.domain.host_access import capsule_spec_asks, template_asks
from capsuled.domain.image_ref import normalise
from capsuled.domain.ports import capsule_host_ports
from capsuled.domain.spec import CapsuleSpec
from capsuled.errors import InvalidInput, OverQuota
from capsuled.domain.resources import capsule_with_default_limits
from capsuled.domain.kube import parse_manifest, unwrap
from capsuled.domain.template import Limits, load_template_text
from capsuled.identity.base import Principal
from capsuled.scheduler.select import Request, Weigher
from capsuled.store import capsules as repo
from capsuled.store import committed_images, outbox
from capsuled.store import registries as registry_repo
from capsuled.store import security_groups as sg_repo
from capsuled.store.engine import Store
from capsuled.store.tables import Capsule, Event, utcnow

# A waiter re-reads the store at least this often: reports that land on another API
# replica do not wake it.
_REREAD_SECONDS = 0.25


class CapsuleService:
    def __init__(self, store: Store, control: ControlPlane, limits: Limits,
                 host_down_after: timedelta = timedelta(seconds=180),
                 policy: Policy | None = None, quotas: QuotaService | None = None,
                 weigher: Weigher = "spread", metrics: ApiMetrics | None = None) -> None:
        self._store = store
        self._policy = policy or Policy()
        quotas = quotas or QuotaService(store, QuotaSettings().model_dump())
        self._placement = Placement(quotas, host_down_after, weigher, metrics)
        self._control = control
        self._limits = limits
        self._down_after = host_down_after

    def create(self, who: Principal, template: Any) -> Capsule:
        spec = self.parse(who, template)
        try:
            row = self._create(who, spec)
        except OverQuota as exc:
            with self._store.transaction() as s:  # the refusal is a change record too
                outbox.refused(s, project_id=who.project_id, kind="capsule", name=spec.name,
                               message=exc.message, labels=spec.labels)
            raise
        self._control.notify()
        # As written: its containers and volumes are loaded, and nothing but the agent (whose
        # report is newer than this answer anyway) has changed it since (a read less).
        return row

    def rehearse_create(self, who: Principal, template: Any) -> Rehearsal:
        """What `create` would do (dry_run.py): every check, nothing kept."""
        spec = self.parse(who, template)
        try:
            self._create(who, spec, rehearse=True)
        except Rehearsed as done:
            return done.rehearsal
        raise AssertionError("a rehearsal always rolls back")  # pragma: no cover

    def parse(self, who: Principal, template: Any) -> CapsuleSpec:
        """A template or a Kubernetes Pod manifest (object, or YAML/JSON text) → the spec
        a capsule would run, with default resources filled in; host-level powers only for
        those allowed them."""
        # Parse once (text is decoded here, within budgets), then decide on what was parsed.
        document = unwrap(load_template_text(template) if isinstance(template, str) else template)
        # A Pod's host-level fields have the template's paths (hostNetwork, privileged, ...).
        self._policy.check_host_access(who, template_asks(document))
        spec = parse_manifest(document, self._limits)
        self.check_host_access(who, spec)
        return capsule_with_default_limits(spec, self._limits)

    def check_host_access(self, who: Principal, spec: CapsuleSpec) -> None:
        """403 unless `who` may run what `spec` asks of the host (privileged containers):
        also for a spec that was not parsed just now (a rollback, an image change of a
        privileged container), whoever first made it."""
        self._policy.check_host_access(who, capsule_spec_asks(spec))

    def _create(self, who: Principal, asked: CapsuleSpec, rehearse: bool = False) -> Capsule:
        def work(s: Session) -> Capsule:
            # The project's lock first: every read below is then of what was committed
            # before it (SQLite: a read first would make the later write fail on a busy
            # database), and no security group goes while this create names it.
            self._placement.lock(s, who.project_id)
            spec = registry_repo.resolve_capsule(s, who.project_id, asked)
            refuse_foreign_images(s, who.project_id, spec)
            sg_repo.check_names(s, who.project_id, spec.security_groups, "spec.securityGroups")
            disk = sum(v.size or 0 for v in spec.volumes)
            self._placement.check_quota(
                s, who.project_id,
                Delta(capsules=1, containers=len(spec.all_containers), cpu=spec.total_cpu(),
                      memory=spec.total_memory(), disk=disk))
            placed = self._placement.choose(
                s, Request(cpu=spec.total_cpu(), memory=spec.total_memory(),
                        availability_zone=spec.availability_zone, disk=disk,
                        labels=spec.node_selector, ports=tuple(capsule_host_ports(spec)),
                        project_id=who.project_id),
                f"capsule {spec.name}", who.project_id)
            # No host: Zun answers 202 and records the failure on the capsule; zunclient
            # expects it.
            row = repo.create_capsule(s, spec, who.project_id, who.user_id, placed.host,
                                      placed.status, placed.reason)
            if rehearse:  # rolls the transaction back: nothing above is kept
                raise Rehearsed(Rehearsal(name=spec.name, new=CapsuleSpec.model_validate(row.spec),
                                          status=row.status, status_reason=row.status_reason))
            return row
        return self._placement.run(self._store, work)

    def get(self, who: Principal, ident: str) -> Capsule:
        """One capsule; those allowed `capsule:get_one_all_projects` reach any project's."""
        with self._store.transaction() as s:
            return repo.get_capsule(s, ident, self._scope(who, "capsule:get_one_all_projects"))

    async def wait(self, who: Principal, ident: str, wait_while: Collection[str],
                   timeout: float) -> Capsule:
        """The capsule as soon as its status is none of `wait_while`, or as it is when
        `timeout` seconds have passed. NotFound when it is (or becomes) gone."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self._control.reported.seq
            capsule = await anyio.to_thread.run_sync(self.get, who, ident)
            left = deadline - time.monotonic()
            if capsule.status not in wait_while or left <= 0:
                return capsule
            await self._control.reported.wait(seen, min(_REREAD_SECONDS, left))

    def list(self, who: Principal, page: repo.Page, all_projects: bool,
             labels: dict[str, str]) -> list[repo.CapsuleRow]:
        with self._store.transaction() as s:
            return repo.list_capsules(
                s, self._scope(who, "capsule:get_all_all_projects", all_projects), page, labels)

    def delete(self, who: Principal, ident: str, all_projects: bool = False,
               force: bool = False) -> None:
        """Mark it for its agent to remove; with `force` the rows go at once (quota
        released), allowed to anyone who may delete it when its host is down or gone, and
        otherwise to `capsule:delete_force` (admins). A returning agent removes leftovers."""
        if all_projects:
            self._policy.enforce("capsule:delete_all_projects", who)
        with self._store.transaction() as s:
            capsule = repo.get_capsule(s, ident, self._scope(who, "capsule:delete_all_projects"))
            if not force:
                repo.mark_deleting(s, capsule)
            else:
                if not repo.host_gone(s, capsule.host, utcnow(), self._down_after):
                    self._policy.enforce("capsule:delete_force", who, why=(
                        "force: the capsule's host is up; delete it without force"))
                repo.force_delete(s, capsule)
        self._control.notify()

    def events(self, who: Principal, ident: str, limit: int | None = None,
               marker: int | None = None) -> builtins.list[Event]:
        with self._store.transaction() as s:
            capsule = repo.get_capsule(s, ident, self._scope(who, "capsule:get_one_all_projects"))
            return repo.list_events(s, capsule, limit, marker)

    def shows_host(self, who: Principal) -> bool:
        return self._policy.allows("capsule:get:host", who)

    def scope(self, who: Principal, wide_rule: str = "capsule:get_one_all_projects") -> str | None:
        """The project a lookup of one capsule is limited to (None: any, for admins)."""
        return self._scope(who, wide_rule)

    def _scope(self, who: Principal, wide_rule: str, asked: bool = True) -> str | None:
        """The project a query is limited to; None (every project) only when asked for and
        `wide_rule` allows it. Others silently keep their own project, as in Zun."""
        return None if asked and self._policy.allows(wide_rule, who) else who.project_id




def refuse_foreign_images(s: Session, project_id: str, spec: CapsuleSpec) -> None:
    """Another project's committed image is not this project's to run (issue 11). Read
    in the caller's transaction, after its locks."""
    refs = {c.name: normalise(c.image) for c in spec.all_containers}
    owner = committed_images.owners(s, refs.values())
    foreign = [f"image: {c.image} (container {c.name}) is not available to this project"
               for c in spec.all_containers
               if owner.get(refs[c.name], project_id) != project_id]
    if foreign:
        raise InvalidInput(foreign)
