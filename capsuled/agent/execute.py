"""Drive one capsule toward its desired state: observe → plan → apply, until the plan is
empty (or only waits for a running init container), then describe what is there as a
CapsuleReport."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from capsuled.agent import pulls
from capsuled.agent.networks import ProjectNetworks, addresses_of, previous_address
from capsuled.agent.own_events import OwnEvents
from capsuled.agent.plan import Plan, compute_plan, resources
from capsuled.agent.pool_claims import Claim
from capsuled.agent.prober import Prober, Target
from capsuled.agent.sandbox_pool import SandboxPool
from capsuled.agent.services import ServiceAgent
from capsuled.domain import labels as L
from capsuled.domain import naming
from capsuled.domain.addresses import Address
from capsuled.domain.channel import Assignment, CapsuleReport, ContainerReport
from capsuled.domain.ports import bindings, capsule_published, fingerprint
from capsuled.domain.spec import ZUN_RESTART_NAMES, ContainerSpec, spec_hash
from capsuled.drivers.network.base import ProjectNetwork, network_name
from capsuled.drivers.runtime.base import ContainerRequest, Observed, Runtime, SandboxRequest
from capsuled.drivers.volume.base import VolumeDriver, VolumeRequest
from capsuled.errors import CapsuledError, DriverError

LOG = logging.getLogger(__name__)
_MAX_STEPS = 12


@dataclass
class Outcome:
    report: CapsuleReport | None  # None for a capsule the control plane no longer knows
    settled: bool  # False: something is still pending; sync again after a back-off


@dataclass
class _Progress:
    recreated: bool = False
    events: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    blocked: str | None = None
    converged: bool = False  # the last plan had nothing left to do for this spec
    waiting: str | None = None  # what an update waits for before its next step
    # Container name → its image, checked (or pulled) while the sandbox was being made.
    images: dict[str, Future[str]] = field(default_factory=dict)

    def event(self, type_: str, reason: str, message: str, container: str | None = None) -> None:
        self.events.append((type_, reason, message, container))


class CapsuleExecutor:
    def __init__(self, runtime: Runtime, volumes: VolumeDriver, networks: ProjectNetworks,
                 instance: str, infra_image: str, stop_timeout: int,
                 parallel: ThreadPoolExecutor, images: pulls.ImageGate | None = None,
                 prober: Prober | None = None, publish_address: str = "0.0.0.0",
                 guard: Callable[[str, list[Address]], None] | None = None,
                 services: ServiceAgent | None = None,
                 announce: Callable[[CapsuleReport], None] | None = None,
                 pool: SandboxPool | None = None, own_events: OwnEvents | None = None) -> None:
        self._rt = runtime
        self._pool = pool  # the warm sandbox pool (None: every sandbox is made on demand)
        # Puts a capsule's security groups on its sandbox's address (agent/firewall.py);
        # raises DriverError when it cannot, and then no member starts.
        self._guard = guard
        # Capsule services: drains before serving containers stop, /etc/hosts names.
        self._services = services
        self._announce = announce  # sends a report now (a drain tells the API)
        self._publish_address = publish_address  # where the sandboxes' host ports bind
        self._images = images if images is not None else pulls.ImageGate(runtime)
        self._prober = prober
        self._volumes = volumes
        self._networks = networks
        self._instance = instance
        self._infra = infra_image
        self._stop_timeout = stop_timeout
        self._parallel = parallel
        # The create and start events of what a sync made and observed: no second sync
        # (agent/own_events.py; the agent's loop begins and ends each sync there).
        self._own = own_events if own_events is not None else OwnEvents()

    def sync(self, uuid: str, desired: Assignment | None) -> Outcome:
        progress = _Progress()
        error: str | None = None
        observed: list[Observed] = []
        try:
            known: list[Observed] | None = None
            for _ in range(_MAX_STEPS):
                observed = known if known is not None else self._observe(uuid, desired)
                plan = compute_plan(desired, observed, self._readiness(observed))
                progress.blocked, progress.waiting = plan.blocked, plan.waiting
                progress.converged = plan.converged
                if plan.empty or _waiting_on_init(plan):
                    if desired is not None and plan.sandbox is not None:
                        self._join_network(desired, plan.sandbox, progress)
                    if plan.converged and desired is not None and self._services is not None:
                        self._services.release(uuid)  # all on its spec: it may serve again
                    break
                if plan.remove:
                    self._drain(uuid, desired, observed, set(plan.remove))
                known = self._apply(uuid, desired, plan, progress, observed)
                if plan.gone:
                    return Outcome(self._gone(desired), settled=True)
        except DriverError as exc:
            error = exc.message
            progress.event("Warning", "Failed", exc.message)
            observed = self._safe_observe(uuid)
        if desired is None:
            if self._prober is not None:
                self._prober.track(uuid, [])
            return Outcome(None, settled=error is None)
        return Outcome(self._report(desired, observed, progress, error), settled=error is None)

    def _readiness(self, observed: list[Observed]) -> dict[str, bool | None] | None:
        """The prober's ready verdicts by container id (None without a prober: then
        probes gate nothing)."""
        if self._prober is None:
            return None
        return {o.id: self._prober.state(o.id)[0] for o in observed}

    def _safe_observe(self, uuid: str) -> list[Observed]:
        try:
            return self._observe(uuid, None)
        except DriverError:
            return []

    def _observe(self, uuid: str, desired: Assignment | None) -> list[Observed]:
        """Everything of the capsule in Docker: what carries its label, and the pooled
        sandbox it claimed (which cannot), shown as its sandbox. A claim an agent did not
        finish (killed between the record and the join) is finished here, before any
        member can be made in it."""
        observed = self._rt.observe_capsule(self._instance, uuid)
        claim = self._pool.claim_of(uuid) if self._pool is not None else None
        if claim is None or self._pool is None:
            return observed
        sandbox = self._rt.observe_container(claim.sandbox)
        if sandbox is None:
            self._pool.release(uuid)  # removed before a crash (or by hand): nothing to own
            return observed
        if (desired is not None and not desired.deleting and desired.project_id is not None
                and sandbox.state == "running"):
            sandbox = self._finish_claim(desired, sandbox)
        return [*observed, _as_sandbox(sandbox, uuid, claim)]

    def _drain(self, uuid: str, desired: Assignment | None, observed: list[Observed],
               removing: set[str]) -> None:
        """Before a capsule that may be serving loses its sandbox or a running app
        container of its spec (it is deleted, or they are replaced for a new spec: an
        update), drain it (agent/services.py). The API knows of a delete already; a
        replacement is announced with a report. Removing containers the spec no longer
        has (or anything of an orphan) drains nothing."""
        if self._services is None or desired is None or not any(
                o.state == "running" for o in observed if o.labels.get(L.ROLE) == L.ROLE_SANDBOX):
            return  # an orphan, or nothing can be serving without a running sandbox
        apps = {c.uuid for c in desired.spec.containers}
        if not any(o.id in removing and o.state == "running" and (
                o.labels.get(L.ROLE) == L.ROLE_SANDBOX or o.labels.get(L.CONTAINER) in apps)
                for o in observed):
            return
        announce = None
        if not desired.deleting and self._announce is not None:
            send = self._announce

            def announce() -> None:
                send(self._report(desired, observed, _Progress(), None))
        self._services.drain(uuid, announce)

    def _gone(self, desired: Assignment | None) -> CapsuleReport | None:
        if desired is not None and self._services is not None:
            self._services.release(desired.uuid)
        if desired is not None and self._prober is not None:
            self._prober.track(desired.uuid, [])
        if desired is None:
            return None
        return CapsuleReport(uuid=desired.uuid, generation=desired.generation, gone=True)

    def _apply(self, uuid: str, desired: Assignment | None, plan: Plan,
               progress: _Progress, observed: list[Observed]) -> list[Observed] | None:
        """Carry out one plan. Returns what Docker now holds of the capsule when the step
        alone determines it, so the next step needs no new observation (a list and an
        inspect of every container: 10-20 ms of a capsule's start); otherwise None. Two
        steps do: a new sandbox replaced everything (the sandbox, as inspected once
        started), and a step that only made app containers (what `observed` held, and
        each new one as inspected once started). A container that dies a moment later
        is a Docker event, which syncs the capsule again."""
        if plan.remove:
            # Members first (in parallel), the sandbox last: it holds their namespaces.
            self._remove_all(plan.remove)
            claim = self._pool.claim_of(uuid) if self._pool is not None else None
            if claim is not None and self._pool is not None and claim.sandbox in plan.remove:
                self._pool.release(uuid)  # only once it is gone: see pool_claims.py
        if plan.remove_volumes:
            self._volumes.remove_owned(self._instance, uuid)
        if desired is None:
            return None
        if plan.create_sandbox:
            # The containers' images are checked (and pulled, where they must be) while the
            # sandbox is made and guarded, not after: the next step takes them from here.
            progress.images = {c.name: self._parallel.submit(
                self._images.ensure, desired.project_id, c, desired.pulls)
                for c in desired.spec.all_containers}
            # compute_plan removes everything of the capsule before a new sandbox, and asks
            # for nothing else in that step.
            sandbox = self._create_sandbox(desired, progress, plan.sandbox_recreated,
                                           plan.sandbox_replaced)
            self._guard_sandbox(desired, sandbox)
            return [sandbox]
        if plan.sandbox is not None and (plan.run_init or plan.start_init or plan.create_apps
                                         or plan.start or plan.restart):
            self._guard_sandbox(desired, plan.sandbox)  # before anything may listen
        if plan.replacing is not None:
            progress.event("Normal", "Replaced", f"replaced container {plan.replacing}: its "
                           "spec changed", plan.replacing)
        if plan.run_init is not None and plan.sandbox is not None:
            self._create_member(desired, plan.run_init, plan.sandbox, progress)
            progress.event("Normal", "Started", f"started init container {plan.run_init.name}",
                           plan.run_init.name)
        if plan.wait_init is not None and plan.start_init:
            self._rt.start(plan.wait_init.id)
        made: list[Observed | None] = []
        if plan.create_apps and plan.sandbox is not None:
            sandbox = plan.sandbox
            futures = [(c, self._parallel.submit(self._create_and_observe, desired, c, sandbox,
                                                 progress))
                       for c in plan.create_apps]
            failures = []
            for c, fut in futures:
                try:
                    made.append(fut.result())
                    progress.event("Normal", "Started", f"started container {c.name}", c.name)
                except DriverError as exc:
                    failures.append(f"container {c.name}: {exc.message}")
            if failures:
                raise DriverError("; ".join(failures))
        for cid in plan.start:
            self._rt.start(cid)
            progress.event("Normal", "Restarted", f"started stopped container {cid[:12]}")
        for cid, name in plan.restart:
            self._rt.restart(cid, self._stop_timeout)
            progress.event("Warning", "Unhealthy",
                           f"container {name} failed its liveness probe; restarted it", name)
        for cid, nano_cpus, memory_bytes in plan.resize:
            self._rt.update_resources(cid, nano_cpus, memory_bytes)
            progress.event("Normal", "Resized", f"applied new cpu/memory limits to {cid[:12]}")
        only_made = not (plan.remove or plan.remove_volumes or plan.run_init or plan.start_init
                         or plan.start or plan.restart or plan.resize)
        if made and only_made and all(o is not None for o in made):
            return [*observed, *(o for o in made if o is not None)]
        return None

    def _create_and_observe(self, desired: Assignment, c: ContainerSpec, sandbox: Observed,
                            progress: _Progress) -> Observed | None:
        """A new app container, as inspected once started (None: gone already)."""
        observed = self._rt.observe_container(self._create_member(desired, c, sandbox, progress))
        if observed is not None:
            self._own.made(desired.uuid, observed.id)
        return observed

    def _remove_all(self, ids: list[str]) -> None:
        *members, last = ids
        list(self._parallel.map(lambda i: self._rt.remove_container(i, self._stop_timeout), members))
        self._rt.remove_container(last, self._stop_timeout)

    def _create_sandbox(self, desired: Assignment, progress: _Progress,
                        recreated: str | None, replaced: str | None = None) -> Observed:
        spec = desired.spec
        for vol in spec.volumes:
            self._volumes.ensure_volume(VolumeRequest(
                name=naming.volume_name(desired.uuid, vol.name), size_gib=vol.size,
                labels={L.INSTANCE: self._instance, L.CAPSULE: desired.uuid, L.VOLUME: vol.name,
                        L.AUTO_REMOVE: "true" if vol.auto_remove or vol.type == "emptyDir" else "false"}))
        claimed = self._claim(desired)
        if claimed is not None:
            progress.event("Normal", "SandboxClaimed", "took a ready sandbox from the warm pool")
            return claimed
        self._rt.ensure_image(self._infra, "IfNotPresent")
        published = capsule_published(spec)
        labels = {L.INSTANCE: self._instance, L.CAPSULE: desired.uuid, L.ROLE: L.ROLE_SANDBOX,
                  L.SANDBOX_EPOCH: str(spec.sandbox_epoch)}
        if published:
            labels[L.PORTS] = fingerprint(published)
        if desired.project_id is not None:
            labels[L.PROJECT] = desired.project_id

        def create(net: ProjectNetwork | None) -> Observed:
            # Its project's services by name; those made later are reached by VIP.
            hosts = self._services.hosts_for(desired.project_id) if self._services else ()
            return self._rt.create_sandbox(SandboxRequest(
                name=naming.sandbox_name(desired.uuid, spec.name), image=self._infra,
                hostname=spec.name or desired.uuid[:12], labels=labels,
                network=net.name if net else None, aliases=_aliases(desired),
                ipv4_address=previous_address(desired.project_id, desired.addresses),
                ports=bindings(published, self._publish_address),
                dns=net.dns if net else (), extra_hosts=hosts))

        sandbox = self._networks.with_network(desired.project_id, create)
        self._own.made(desired.uuid, sandbox.id)  # inspected once started
        if recreated:
            progress.recreated = True
            progress.event("Warning", "SandboxRecreated",
                           f"{recreated}; recreated the sandbox and its containers")
        elif replaced:
            progress.event("Normal", "SandboxReplaced",
                           f"{replaced}: made the capsule again in place")
        else:
            progress.event("Normal", "SandboxCreated", "created the sandbox")
        return sandbox

    def _claim(self, desired: Assignment) -> Observed | None:
        """A pooled sandbox for the capsule, joined to its network under its names; None
        when the pool has none for it, or the capsule cannot use one (it publishes host
        ports, which only a create can bind; or it had a sandbox before, whose address it
        asks for again)."""
        project = desired.project_id
        if (self._pool is None or not self._pool.enabled or project is None
                or capsule_published(desired.spec)
                or previous_address(project, desired.addresses) is not None):
            return None
        hosts = self._services.hosts_for(project) if self._services is not None else ()
        epoch = desired.spec.sandbox_epoch
        sid = self._pool.take(desired.uuid, project, epoch, hosts)
        if sid is None:
            return None
        try:
            sandbox = self._rt.observe_container(sid)
            if sandbox is None or sandbox.state != "running":
                raise DriverError(f"pooled sandbox {sid[:12]} is no longer running")
            sandbox = self._finish_claim(desired, sandbox)
        except CapsuledError as exc:
            # Unusable (stopped, its network gone for good): it goes, and the capsule
            # gets a sandbox made the usual way.
            LOG.warning("capsule %s: pooled sandbox %s unusable: %s", desired.uuid, sid[:12],
                        exc.message)
            self._rt.remove_container(sid, 0)
            self._pool.release(desired.uuid)
            return None
        return _as_sandbox(sandbox, desired.uuid, Claim(sandbox=sid, epoch=epoch))

    def _finish_claim(self, desired: Assignment, sandbox: Observed) -> Observed:
        """Join a claimed sandbox to its project's network with the capsule's names, and
        give it the capsule's sandbox name; each only if not done yet (idempotent, so a
        restarted agent finishes a claim the same way). The rename runs alongside."""
        assert desired.project_id is not None
        name = naming.sandbox_name(desired.uuid, desired.spec.name)
        net = network_name(self._instance, desired.project_id)
        rename = (self._parallel.submit(self._rt.rename, sandbox.id, name)
                  if sandbox.name != name else None)
        if net not in sandbox.networks:
            self._networks.with_network(desired.project_id, lambda n: self._rt.connect_network(
                sandbox.id, n.name if n is not None else net, _aliases(desired)))
        if rename is not None:
            rename.result()
        elif net in sandbox.networks:
            return sandbox
        got = self._rt.observe_container(sandbox.id)
        if got is None:
            raise DriverError(f"pooled sandbox {sandbox.id[:12]} vanished while it was claimed")
        return got

    def _guard_sandbox(self, desired: Assignment, sandbox: Observed) -> None:
        if self._guard is not None and desired.project_id is not None:
            self._guard(desired.uuid, addresses_of(self._instance, desired.project_id, sandbox))

    def _join_network(self, desired: Assignment, sandbox: Observed, progress: _Progress) -> None:
        """A sandbox made before project networks (on Docker's default bridge) joins its
        project's network in place, without a restart, and leaves the shared bridge."""
        project = desired.project_id
        if project is None or desired.deleting or sandbox.state != "running":
            return
        if self._networks.move_in(self._rt, sandbox, project, _aliases(desired)):
            progress.event("Normal", "NetworkJoined",
                           f"joined the project network {network_name(self._instance, project)}")

    def _create_member(self, desired: Assignment, c: ContainerSpec, sandbox: Observed,
                       progress: _Progress) -> str:
        spec = desired.spec
        ahead = progress.images.pop(c.name, None)
        if ahead is not None and ahead.cancel():
            # Still queued behind other work on the pool: waiting for it from a thread of
            # that same pool could wait for ever.
            ahead = None
        image = ahead.result() if ahead is not None else \
            self._images.ensure(desired.project_id, c, desired.pulls)
        return self._rt.create_container(ContainerRequest(
            name=naming.container_name(desired.uuid, spec.name, c.name), image=image,
            sandbox_id=sandbox.id, labels=self._member_labels(desired, c, sandbox),
            entrypoint=list(c.command), cmd=list(c.args), workdir=c.workdir, env=dict(c.env),
            nano_cpus=resources(c)[0], memory_bytes=resources(c)[1],
            binds=[f"{naming.volume_name(desired.uuid, m.name)}:{m.mount_path}:"
                   f"{'ro' if m.read_only else 'rw'}" for m in c.volume_mounts],
            restart_policy="no" if c.role == "init" else ZUN_RESTART_NAMES[spec.restart_policy],
            tty=c.tty, stdin=c.stdin, privileged=c.privileged, health=c.health))

    def _member_labels(self, desired: Assignment, c: ContainerSpec,
                       sandbox: Observed) -> dict[str, str]:
        labels = {L.INSTANCE: self._instance, L.CAPSULE: desired.uuid, L.CONTAINER: c.uuid,
                  L.NAME: c.name, L.ROLE: c.role,
                  L.SPEC_HASH: spec_hash(c, desired.spec.restart_policy),
                  L.SANDBOX_START: sandbox.started_at or ""}
        if desired.project_id is not None:
            labels[L.PROJECT] = desired.project_id
        return labels

    def _report(self, desired: Assignment, observed: list[Observed], progress: _Progress,
                error: str | None) -> CapsuleReport:
        by_uuid = {o.labels.get(L.CONTAINER): o for o in observed}
        sandboxes = [o for o in observed if o.labels.get(L.ROLE) == L.ROLE_SANDBOX]
        sandbox = next((o for o in sandboxes if o.state == "running"), sandboxes[0] if sandboxes else None)
        self._track_probes(desired, by_uuid, sandbox)
        containers = []
        for c in desired.spec.all_containers:
            o = by_uuid.get(c.uuid)
            ready, probes = self._prober.state(o.id if o else None) if self._prober else (None, {})
            containers.append(ContainerReport(uuid=c.uuid, name=c.name, role=c.role) if o is None
                              else ContainerReport(
                                  uuid=c.uuid, name=c.name, role=c.role, state=o.state,
                                  runtime_id=o.id, exit_code=o.exit_code,
                                  restart_count=o.restart_count, oom_killed=o.oom_killed,
                                  started_at=o.started_at, finished_at=o.finished_at,
                                  health=o.health, ready=ready, probes=probes))
        if self._prober is not None:
            progress.events.extend(self._prober.drain_events(desired.uuid))
        return CapsuleReport(uuid=desired.uuid, generation=desired.generation,
                             sandbox_id=sandbox.id if sandbox else None,
                             sandbox_state=sandbox.state if sandbox else "missing",
                             sandbox_recreated=progress.recreated, error=error,
                             converged=progress.converged and error is None,
                             progress=progress.waiting,
                             containers=containers, events=progress.events,
                             addresses=addresses_of(self._instance, desired.project_id, sandbox),
                             draining=(self._services.is_draining(desired.uuid)
                                       if self._services is not None else None))


    def _track_probes(self, desired: Assignment, by_uuid: dict[str | None, Observed],
                      sandbox: Observed | None) -> None:
        """Hand the prober the running app containers that have probes."""
        if self._prober is None:
            return
        targets = []
        for c in desired.spec.containers:
            o = by_uuid.get(c.uuid)
            if (c.probes and o is not None and o.state == "running" and sandbox is not None
                    and sandbox.state == "running" and not desired.deleting):
                targets.append(Target(capsule=desired.uuid, container_id=o.id,
                                      sandbox_id=sandbox.id, started_at=o.started_at or "", spec=c,
                                      restart_capsule=desired.spec.failure_policy == "RestartCapsule"))
        self._prober.track(desired.uuid, targets)


def _as_sandbox(o: Observed, capsule: str, claim: Claim) -> Observed:
    """A claimed pooled sandbox as the plan expects a capsule's sandbox to look: the labels
    Docker cannot add to it, from the claim."""
    labels = {**o.labels, L.CAPSULE: capsule, L.ROLE: L.ROLE_SANDBOX,
              L.SANDBOX_EPOCH: str(claim.epoch)}
    labels.pop(L.PORTS, None)
    return dataclasses.replace(o, labels=labels)


def _aliases(desired: Assignment) -> tuple[str, ...]:
    """The sandbox's names on its project network: the capsule's name and uuid."""
    return (desired.spec.name, desired.uuid) if desired.spec.name else (desired.uuid,)


def _waiting_on_init(plan: Plan) -> bool:
    """An init container is running: its exit (a Docker event, or failing that the relist)
    syncs the capsule again. Blocking here instead would hide the init's progress from the
    API until it exits, hold a worker for as long as it runs and keep a delete from acting."""
    return plan.wait_init is not None and not plan.start_init
