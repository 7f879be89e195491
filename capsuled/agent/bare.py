"""Bare containers: compute_bare_plan (pure) and BareExecutor, the single-container
counterpart of plan.py and execute.py.

    deleting / unknown        remove → gone
    missing, never created    create (started unless desired stopped)
    missing after it existed  auto_remove: Docker removed it after its exit → gone;
                              otherwise it was removed by hand → create again
    spec changed              remove (then create)
    cpu / memory changed      docker update, in place
    desired state             stopped: stop · paused: pause · running: unpause, or start
                              one that was created but never started. An exited container
                              stays exited: restarting it is its restart policy's job.
    network                   created on its project's network with its name as DNS alias;
                              one made before project networks joins it in place
    exposed ports             published on host ports Docker picks (part of the spec hash),
                              reported as observed
    mounts                    its own volumes are made before it and removed once it is
                              gone; injected files are put in before it first starts

Crash safety (the agent may die between any two steps):
    injected files            a never-started container that nobody vouches for (not
                              reported to the store, not completed by this process) may
                              lack its files: it is removed and made again, never started
                              as it is
    auto_remove (one-shot)    reported to the store before its first start ("announce"),
                              so once it ran and Docker removed it, the store's runtime id
                              says so and no restarted agent runs it a second time
"""

from __future__ import annotations

import base64
import io
import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

from capsuled.agent import pulls
from capsuled.agent.networks import ProjectNetworks, addresses_of, previous_address
from capsuled.agent.own_events import OwnEvents
from capsuled.agent.plan import resources, unhealthy
from capsuled.domain import labels as L
from capsuled.domain import naming
from capsuled.domain.channel import BareReport, ContainerAssignment, ContainerReport
from capsuled.domain.ports import bindings
from capsuled.domain.spec import InjectedFile
from capsuled.drivers.network.base import ProjectNetwork
from capsuled.drivers.runtime.base import ContainerRequest, Observed, Runtime
from capsuled.drivers.volume.base import VolumeDriver, VolumeRequest
from capsuled.errors import DriverError

LOG = logging.getLogger(__name__)
_MAX_STEPS = 6


@dataclass
class BarePlan:
    remove: list[str] = field(default_factory=list)
    gone: bool = False
    create: bool = False
    update: bool = False
    stop: bool = False
    pause: bool = False
    unpause: bool = False
    start: bool = False
    restart: bool = False  # its health check fails and auto_heal is on
    announce: bool = False  # tell the store its id before the first start (auto_remove)

    @property
    def empty(self) -> bool:
        return not (self.remove or self.gone or self.create or self.update or self.stop
                    or self.pause or self.unpause or self.start or self.restart
                    or self.announce)


def wanted_resources(desired: ContainerAssignment) -> tuple[int | None, int | None]:
    return resources(desired.spec.container)


def compute_bare_plan(desired: ContainerAssignment | None, observed: list[Observed],
                      existed: bool = False, completed: frozenset[str] = frozenset(),
                      announced: frozenset[str] = frozenset()) -> BarePlan:
    """`existed`: this agent created the container earlier (the store may not know yet).
    `completed`: container ids this agent process created and put the files in;
    `announced`: ids this process reported to the store (it may not have told us yet)."""
    if desired is None or desired.deleting:
        return BarePlan(remove=[o.id for o in observed]) if observed else BarePlan(gone=True)
    want_hash = desired.spec.runtime_hash()
    current = [o for o in observed if o.labels.get(L.SPEC_HASH) == want_hash
               and o.labels.get(L.ROLE) == L.ROLE_BARE]
    keep = max(current, key=lambda o: o.started_at or "", default=None)
    extra = [o.id for o in observed if o is not keep]
    if extra:
        return BarePlan(remove=extra)
    if keep is None:
        if (existed or announced or desired.runtime_id is not None) and desired.spec.auto_remove:
            return BarePlan(gone=True)
        return BarePlan(create=True)
    state, goal = keep.state, desired.desired_state
    stored = keep.id == desired.runtime_id  # reported by an agent, so complete
    if state == "created" and desired.spec.files and not (stored or keep.id in completed):
        # Created, never started, and nobody vouches that its files went in: an agent
        # died between create and put. Started as it is it would run without them.
        return BarePlan(remove=[keep.id])
    if state == "created" and desired.spec.auto_remove and goal != "stopped" \
            and not (stored or keep.id in announced):
        # A one-shot container may be gone (run and removed) before any later report:
        # the store learns its id first, so a restarted agent knows it ran.
        return BarePlan(announce=True)
    plan = BarePlan(update=(keep.nano_cpus, keep.memory_bytes) != wanted_resources(desired)
                    or not keep.pids_ok)
    if goal == "stopped":
        plan.unpause = state == "paused"
        plan.stop = state in ("running", "paused", "restarting")
    elif goal == "paused":
        plan.start = state == "created"
        plan.pause = state in ("running", "created")
    else:
        plan.unpause = state == "paused"
        plan.start = state == "created"
        plan.restart = unhealthy(desired.spec.container, keep)
    return plan


@dataclass
class BareOutcome:
    report: BareReport | None
    settled: bool


class BareExecutor:
    def __init__(self, runtime: Runtime, networks: ProjectNetworks, volumes: VolumeDriver,
                 instance: str, stop_timeout: int,
                 announce: Callable[[BareReport], None] | None = None,
                 images: pulls.ImageGate | None = None, publish_address: str = "0.0.0.0",
                 own_events: OwnEvents | None = None) -> None:
        self._rt = runtime
        # What a sync created or started, observed by the sync's next step: Docker's create
        # and start events of it need no second sync (agent/own_events.py).
        self._own = own_events if own_events is not None else OwnEvents()
        self._publish_address = publish_address  # where exposed ports bind
        self._images = images if images is not None else pulls.ImageGate(runtime)
        # Reports a container to the store at once (before a one-shot container's first
        # start); an error stops the sync before the start, to be retried.
        self._announce = announce or (lambda report: None)
        # Per uuid, container ids this process made whole (files in) and announced; the
        # store's runtime id vouches for the same after a restart (compute_bare_plan).
        self._completed: dict[str, set[str]] = {}
        self._announced: dict[str, set[str]] = {}
        self._networks = networks
        self._volumes = volumes
        self._instance = instance
        self._stop_timeout = stop_timeout
        # Containers created by this process: an auto_remove one that exits at once may be
        # gone before any report told the store it existed. Kept after its gone report too:
        # syncs already queued (its die and destroy events, a relist) may still carry a copy
        # of the assignment from before that report, without its runtime id, and must not
        # make it again. Forgotten once the assignment is (`forget`).
        self._created: set[str] = set()

    def forget(self, uuid: str) -> None:
        """The control plane no longer assigns `uuid` to this host."""
        self._created.discard(uuid)
        self._completed.pop(uuid, None)
        self._announced.pop(uuid, None)

    def sync(self, uuid: str, desired: ContainerAssignment | None) -> BareOutcome:
        error: str | None = None
        observed: list[Observed] = []
        try:
            for _ in range(_MAX_STEPS):
                observed = self._rt.observe_capsule(self._instance, uuid)
                plan = compute_bare_plan(desired, observed, uuid in self._created,
                                         frozenset(self._completed.get(uuid, ())),
                                         frozenset(self._announced.get(uuid, ())))
                if plan.empty:
                    if desired is not None and len(observed) == 1:
                        self._join_network(desired, observed[0])
                    break
                if plan.gone:
                    self._volumes.remove_owned(self._instance, uuid)
                    if desired is None:
                        self.forget(uuid)
                        return BareOutcome(None, settled=True)
                    return BareOutcome(BareReport(uuid=uuid, generation=desired.generation,
                                                  gone=True), settled=True)
                self._apply(uuid, desired, plan, observed)
        except DriverError as exc:
            error = exc.message
            LOG.warning("container %s: %s", uuid, exc.message)
        if desired is None:
            return BareOutcome(None, settled=error is None)
        return BareOutcome(self._report(desired, observed, error), settled=error is None)

    def _apply(self, uuid: str, desired: ContainerAssignment | None, plan: BarePlan,
               observed: list[Observed]) -> None:
        for cid in plan.remove:
            self._rt.remove_container(cid, self._stop_timeout)
        if desired is None:
            return
        if plan.create:
            self._create(uuid, desired)
            self._created.add(uuid)
            return
        cid = observed[0].id
        if plan.announce:
            self._announce(self._report(desired, observed, None))
            self._announced.setdefault(uuid, set()).add(cid)
        if plan.update:
            self._rt.update_resources(cid, *wanted_resources(desired))
        if plan.unpause:
            self._rt.unpause(cid)
        if plan.start:
            # Joins the project network: keep it from being collected meanwhile.
            self._networks.with_network(desired.project_id, lambda _net: self._rt.start(cid))
            self._own.made(uuid, cid)
        if plan.restart:
            LOG.info("container %s failed its health check; restarting it", uuid)
            self._rt.restart(cid, self._stop_timeout)
        if plan.stop:
            self._rt.stop(cid, self._stop_timeout)
        if plan.pause:
            self._rt.pause(cid)

    def _create(self, uuid: str, desired: ContainerAssignment) -> None:
        spec = desired.spec
        c = spec.container
        image = self._images.ensure(desired.project_id, c, desired.pulls)
        nano_cpus, memory_bytes = wanted_resources(desired)
        labels = {**spec.labels, L.INSTANCE: self._instance, L.CAPSULE: uuid,
                  L.CONTAINER: uuid, L.NAME: desired.name, L.ROLE: L.ROLE_BARE,
                  L.SPEC_HASH: spec.runtime_hash()}
        if desired.project_id is not None:
            labels[L.PROJECT] = desired.project_id
        for v in spec.volumes:
            self._volumes.ensure_volume(VolumeRequest(
                name=naming.volume_name(uuid, v.name), size_gib=v.size,
                labels={L.INSTANCE: self._instance, L.CAPSULE: uuid, L.VOLUME: v.name,
                        L.AUTO_REMOVE: "true"}))
        binds = [f"{naming.volume_name(uuid, m.name)}:{m.mount_path}:{'ro' if m.read_only else 'rw'}"
                 for m in c.volume_mounts]
        # A one-shot container starts only after the store knows it (plan.announce).
        start = desired.desired_state != "stopped" and not spec.auto_remove

        def create(net: ProjectNetwork | None) -> str:
            cid = self._rt.create_container(ContainerRequest(
                name=naming.bare_name(uuid, desired.name), image=image, sandbox_id=None,
                labels=labels, entrypoint=list(c.command), cmd=list(c.args), workdir=c.workdir,
                env=dict(c.env), nano_cpus=nano_cpus, memory_bytes=memory_bytes,
                restart_policy=spec.restart.name, max_retry=spec.restart.max_retry,
                tty=c.tty, stdin=c.stdin, hostname=spec.hostname or desired.name,
                auto_remove=spec.auto_remove, start=start and not spec.files,
                network=net.name if net else None, aliases=(desired.name, uuid),
                ipv4_address=previous_address(desired.project_id, desired.addresses),
                dns=net.dns if net else (),
                privileged=c.privileged, binds=binds, health=c.health,
                ports=bindings(c.ports, self._publish_address)))
            if spec.files:
                # Files go in before the first start; a container left without them would be
                # started by the next sync as it is, so a failure removes it.
                try:
                    self._rt.put_archive(cid, "/", _files_tar(spec.files))
                    if start:
                        self._rt.start(cid)
                except Exception:
                    self._rt.remove_container(cid, 0)
                    raise
            self._completed.setdefault(uuid, set()).add(cid)
            self._own.made(uuid, cid)  # the sync's next step observes it
            return cid

        self._networks.with_network(desired.project_id, create)

    def _join_network(self, desired: ContainerAssignment, o: Observed) -> None:
        """A container made before project networks joins its project's network in place
        and leaves Docker's shared default bridge."""
        project = desired.project_id
        if project is None or desired.deleting or o.state not in ("running", "created", "exited"):
            return
        self._networks.move_in(self._rt, o, project, (desired.name, desired.uuid))

    def _report(self, desired: ContainerAssignment, observed: list[Observed],
                error: str | None) -> BareReport:
        o = observed[0] if len(observed) == 1 else None
        name = desired.name
        container = ContainerReport(uuid=desired.uuid, name=name, role="bare") if o is None else \
            ContainerReport(uuid=desired.uuid, name=name, role="bare", state=o.state,
                            runtime_id=o.id, exit_code=o.exit_code, restart_count=o.restart_count,
                            oom_killed=o.oom_killed, started_at=o.started_at,
                            finished_at=o.finished_at, health=o.health,
                            addresses=addresses_of(self._instance, desired.project_id, o),
                            ports=list(o.ports))
        return BareReport(uuid=desired.uuid, generation=desired.generation, container=container,
                          error=error)


def _files_tar(files: list[InjectedFile]) -> bytes:
    """The injected files as one tar archive rooted at /; Docker makes missing parents."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in files:
            data = base64.b64decode(f.content_b64)
            info = tarfile.TarInfo(f.path.lstrip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
