"""compute_plan(desired, observed) → the next actions for one capsule. Pure.

The executor applies a plan, observes again and asks for the next one until nothing is
left to do, so each plan only needs to be right about the very next step:

    deleting                 remove members, then the sandbox, then owned volumes → gone
    sandbox missing / down   remove everything, then volumes + a new sandbox
    sandbox restarted        (members joined an older start) same as down
    host ports changed       (the sandbox publishes other ones) same as down
    sandbox epoch differs    an update needs a new sandbox: the same, announced as such
    members not in the spec  remove them
    init containers          in order: start the next one, or wait for the running one;
                             one that exited non-zero blocks the capsule (Error)
    failurePolicy            RestartCapsule: a container Docker found unhealthy (its
                             liveness probe) remakes the whole capsule, sandbox and all
    app containers           create the missing ones together; restart stopped ones the
                             restart policy says should run; apply changed cpu/memory
                             in place
    changed app containers   (their spec hash differs: an update) replaced one at a time:
                             the next goes only once every container on the current spec
                             runs and, where it has readiness or startup probes, is ready
                             (`ready`: the prober's verdicts by container id), so at most
                             one container of the capsule is ever down for an update
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from capsuled.domain import labels as L
from capsuled.domain.channel import Assignment
from capsuled.domain.ports import capsule_published, fingerprint
from capsuled.domain.spec import ContainerSpec, spec_hash
from capsuled.drivers.runtime.base import Observed

_UP = ("running", "paused", "restarting")


@dataclass
class Plan:
    remove: list[str] = field(default_factory=list)
    remove_volumes: bool = False
    gone: bool = False
    create_sandbox: bool = False
    sandbox_recreated: str | None = None  # why, when an existing sandbox is replaced
    sandbox_replaced: str | None = None  # why, when an update asked for a new sandbox
    sandbox: Observed | None = None
    run_init: ContainerSpec | None = None
    wait_init: Observed | None = None
    start_init: bool = False
    create_apps: list[ContainerSpec] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    restart: list[tuple[str, str]] = field(default_factory=list)  # (id, name): liveness failed
    resize: list[tuple[str, int | None, int | None]] = field(default_factory=list)  # id, nano cpus, bytes
    blocked: str | None = None
    # An update waits (for this reason) before replacing the next changed container; the
    # prober's verdict, or a Docker event, syncs the capsule again.
    waiting: str | None = None
    replacing: str | None = None  # the changed container `remove` replaces (by name)

    @property
    def converged(self) -> bool:
        """Nothing left to do for this spec: every container is on it."""
        return self.empty and self.waiting is None and self.blocked is None

    @property
    def empty(self) -> bool:
        return not (self.remove or self.remove_volumes or self.gone or self.create_sandbox
                    or self.run_init or self.wait_init or self.create_apps or self.start
                    or self.restart or self.resize)


def compute_plan(desired: Assignment | None, observed: list[Observed],
                 ready: Mapping[str, bool | None] | None = None) -> Plan:
    """`desired` None means the capsule no longer exists: remove what is left of it.
    `ready` (None: no prober, probes gate nothing) says which containers passed their
    readiness and startup probes."""
    sandboxes = [o for o in observed if o.labels.get(L.ROLE) == L.ROLE_SANDBOX]
    members = [o for o in observed if o.labels.get(L.ROLE) != L.ROLE_SANDBOX]
    if desired is None or desired.deleting:
        if observed:
            return Plan(remove=[o.id for o in members] + [o.id for o in sandboxes])
        return Plan(remove_volumes=True, gone=True)

    sandbox = _pick_sandbox(sandboxes)
    extra = [o.id for o in sandboxes if o is not sandbox]
    if sandbox is None or sandbox.state != "running":
        # A sandbox that never started (a crash between its create and start) held no
        # members: replacing it restarts nothing.
        why = None if sandbox is None or sandbox.started_at is None else f"sandbox {sandbox.state}"
        if why is not None and sandbox is not None and sandbox.exit_code is not None:
            why = f"sandbox exited with code {sandbox.exit_code}"
        return Plan(remove=[o.id for o in members] + [o.id for o in sandboxes],
                    create_sandbox=True, sandbox_recreated=why)

    spec = desired.spec
    if sandbox.labels.get(L.PORTS, "") != fingerprint(capsule_published(spec)):
        # Docker cannot change a container's port bindings: a new sandbox publishes them.
        return Plan(remove=[o.id for o in members] + [o.id for o in sandboxes],
                    create_sandbox=True, sandbox_recreated="its published host ports changed")
    if sandbox.labels.get(L.SANDBOX_EPOCH, "0") != str(spec.sandbox_epoch):
        return Plan(remove=[o.id for o in members] + [o.id for o in sandboxes],
                    create_sandbox=True, sandbox_replaced="the update needs a new sandbox")
    wanted = {c.uuid: c for c in spec.all_containers}
    unknown = [o.id for o in members if o.labels.get(L.CONTAINER) not in wanted]
    stale = [o for o in members if o.id not in unknown
             and o.labels.get(L.SANDBOX_START) != sandbox.started_at]
    if stale:
        return Plan(remove=[o.id for o in members] + [o.id for o in sandboxes],
                    create_sandbox=True,
                    sandbox_recreated="sandbox restarted: its containers lost their namespaces")
    if extra or unknown:
        return Plan(remove=extra + unknown)
    changed = {o.id for o in members if o.labels.get(L.SPEC_HASH) !=
               spec_hash(wanted[o.labels[L.CONTAINER]], spec.restart_policy)
               and wanted[o.labels[L.CONTAINER]].role == "app"}

    by_uuid = {o.labels.get(L.CONTAINER): o for o in members}
    for init in spec.init_containers:
        o = by_uuid.get(init.uuid)
        if o is None:
            return Plan(run_init=init, sandbox=sandbox)
        if o.state in ("created", "running", "restarting", "paused"):
            return Plan(wait_init=o, start_init=o.state == "created", sandbox=sandbox)
        if o.exit_code not in (0, None):
            return Plan(blocked=f"init container {init.name} exited with code {o.exit_code}")

    if spec.failure_policy == "RestartCapsule":
        failing = next((app.name for app in spec.containers if app.uuid in by_uuid
                        and unhealthy(app, by_uuid[app.uuid])), None)
        if failing is not None:  # Docker's health check failed: the whole capsule goes
            return Plan(remove=[o.id for o in members] + [o.id for o in sandboxes],
                        create_sandbox=True,
                        sandbox_recreated=f"container {failing} failed its liveness probe")
    plan = Plan(sandbox=sandbox)
    for app in spec.containers:
        o = by_uuid.get(app.uuid)
        if o is None:
            plan.create_apps.append(app)
        elif o.id in changed:
            continue  # it is about to be replaced
        elif o.state == "created" or (o.state == "exited" and _should_run(spec.restart_policy, o)):
            plan.start.append(o.id)
        elif unhealthy(app, o):
            plan.restart.append((o.id, app.name))
        if o is not None and ((o.nano_cpus, o.memory_bytes) != resources(app) or not o.pids_ok):
            plan.resize.append((o.id, *resources(app)))
    if not sandbox.pids_ok:
        plan.resize.append((sandbox.id, None, None))  # only its pids limit to apply
    if changed and not plan.create_apps:
        _replace_next(spec.containers, by_uuid, changed, ready, plan)
    return plan


def _replace_next(apps: list[ContainerSpec], by_uuid: Mapping[str | None, Observed],
                  changed: set[str], ready: Mapping[str, bool | None] | None, plan: Plan) -> None:
    """Replace the first changed container, unless one on the current spec is still
    coming up: then wait for it."""
    for app in apps:
        o = by_uuid.get(app.uuid)
        if o is None or o.id in changed:
            continue
        if o.id in plan.start or o.state in ("created", "restarting"):
            plan.waiting = f"waiting for container {app.name} to run"
            return
        if (ready is not None and o.state == "running" and (app.readiness or app.startup)
                and ready.get(o.id) is not True):
            plan.waiting = f"waiting for container {app.name} to be ready"
            return
    first = next(app for app in apps if app.uuid in by_uuid and by_uuid[app.uuid].id in changed)
    plan.remove.append(by_uuid[first.uuid].id)
    plan.replacing = first.name


def unhealthy(c: ContainerSpec, o: Observed) -> bool:
    """Running, found unhealthy by its health check, and to be restarted for it."""
    return (o.state == "running" and o.health == "unhealthy"
            and c.health is not None and c.health.restart)


def resources(c: ContainerSpec) -> tuple[int | None, int | None]:
    """A container's limits as Docker reports them (NanoCpus, Memory in bytes)."""
    return (int(c.cpu * 1e9) if c.cpu else None, c.memory * 1024 * 1024 if c.memory else None)


def _pick_sandbox(sandboxes: list[Observed]) -> Observed | None:
    running = [o for o in sandboxes if o.state == "running"]
    pool = running or sandboxes
    return max(pool, key=lambda o: o.started_at or "", default=None)


def _should_run(policy: str, o: Observed) -> bool:
    """Docker restarts crashed containers itself; an exited one that the policy says should
    run was stopped from outside (by hand, or by a daemon restart)."""
    if policy == "Always":
        return True
    return policy == "OnFailure" and o.exit_code not in (0, None)
