"""FakeRuntime: the reconcile boundary (`Runtime`) held in memory.

A real implementation, not a stub: containers carry labels, states, exit codes, restart
counts and their sandbox's namespaces; state changes emit the events Docker emits; and
it raises what the Docker driver raises in the same situations (a missing image or
container, a taken name, pausing what is not running). tests/contract holds it and
DockerRuntime to the same suite, so code tested on it behaves the same on Docker.

Nothing runs inside a container. What its process does when started is `program`'s
answer (an exit code to exit with at once, or None to keep running; by default it
runs); a test ends a process later with `exit(cid, code)`. The restart policy then acts
as Docker's would, and a sandbox's exit kills its members, whose PID namespace it owns.
`set_health` sets a health status, `inject` makes the runtime fail at a chosen call, and
`history` is every event so far.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from capsuled.domain import labels as L
from capsuled.domain.channel import ContainerState, HostInfo
from capsuled.domain.ports import PublishedPort
from capsuled.drivers.runtime.base import (ContainerRequest, ImageIdentity, Observed,
                                           RegistryAuth, RuntimeEvent, SandboxRequest, Summary,
                                           port_taken)
from capsuled.errors import (DriverError, ImageNotFound, NotFound, RuntimeConflict,
                             RuntimeRejected, Unavailable)

_KILLED = 137  # 128 + SIGKILL: what `docker stop` leaves when the process ignores SIGTERM
_RUNNING: frozenset[str] = frozenset({"running", "paused", "restarting"})


@dataclass
class FakeContainer:
    """One container as the fake holds it; tests may read it, the fake alone writes it."""

    id: str
    name: str
    image: str
    labels: dict[str, str]
    sandbox_id: str | None = None
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    state: ContainerState = "created"
    exit_code: int | None = None
    restart_count: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    oom_killed: bool = False
    restart_policy: str = "no"
    max_retry: int = 0
    auto_remove: bool = False
    nano_cpus: int | None = None
    memory_bytes: int | None = None
    networks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name → aliases
    ips: dict[str, str] = field(default_factory=dict)  # name → its reserved "ip/prefix"
    health: str | None = None
    has_health_check: bool = False
    archives: list[tuple[str, bytes]] = field(default_factory=list)  # (path, tar) put in
    ports: tuple[PublishedPort, ...] = ()  # what it publishes (host_port 0: any)
    bound: tuple[PublishedPort, ...] = ()  # the host ports it holds while it runs
    extra_hosts: tuple[tuple[str, str], ...] = ()  # a sandbox's /etc/hosts additions
    hostname: str = ""  # a sandbox's ("": the runtime's default)
    created: float = 0.0  # Unix seconds


@dataclass
class _Fault:
    error: BaseException
    after: bool  # raise once the call took effect (a crash right after it), not before
    times: int


class FakeRuntime:
    name = "fake"

    def __init__(self, images: tuple[str, ...] = (), registry: tuple[str, ...] = (),
                 cpus: float = 4.0, memory_mb: int = 8192,
                 program: Callable[[FakeContainer], int | None] = lambda c: None) -> None:
        """`images` are present on the host; `registry` can be pulled (and so are those)."""
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.containers: dict[str, FakeContainer] = {}
        self.images: set[str] = {_ref(i) for i in images}
        self.registry: set[str] = {_ref(i) for i in (*images, *registry)}
        self.pulls: list[str] = []
        self.pull_auths: list[tuple[str, str | None]] = []  # (ref, username) of each ensure_image
        # A reference's image ID (default: derived from the reference); tests give two
        # references one ID to stand for a re-tag.
        self.ids: dict[str, str] = {}
        # References the registry serves only to this username (others: access denied).
        self.registry_users: dict[str, str] = {}
        self._pulled: set[str] = set()  # present references that came from a pull
        self.missing_networks: set[str] = set()  # networks a create must not find
        self.subnets: dict[str, ipaddress.IPv4Network] = {}  # network → subnet, on first use
        # Host ports (protocol, port) another program on the host listens on.
        self.occupied: set[tuple[str, int]] = set()
        self._ephemeral = itertools.count(49153)  # where Docker's own picks start
        self._faults: dict[str, list[_Fault]] = {}
        self._log: list[tuple[dict[str, str], RuntimeEvent]] = []
        self._epoch = 0  # bumped by drop_event_streams
        self._followers = 0  # event streams being read
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)
        self._cpus, self._memory_mb = cpus, memory_mb
        self._program = program

    # -- what tests do to it ----------------------------------------------------------
    def inject(self, method: str, error: BaseException, after: bool = False, times: int = 1) -> None:
        """The next `times` calls of `method` raise `error`, before or after taking effect."""
        with self._lock:
            self._faults.setdefault(method, []).append(_Fault(error, after, times))

    def exit(self, container_id: str, code: int, oom_killed: bool = False) -> None:
        """The container's process ends with `code`; its restart policy decides what next."""
        with self._lock:
            c = self._get(container_id)
            if c.state not in _RUNNING:
                raise RuntimeConflict(f"container {container_id[:12]} is not running")
            self._exit(c, code, oom_killed)

    def set_health(self, container_id: str, status: str) -> None:
        with self._lock:
            c = self._get(container_id)
            c.health = status
            self._emit(c, "health_status")

    def history(self, container_id: str | None = None) -> list[RuntimeEvent]:
        """Every event so far (of one container), oldest first."""
        with self._lock:
            return [ev for _, ev in self._log if container_id in (None, ev.container_id)]

    def followers(self) -> int:
        """How many event streams are being read now."""
        with self._lock:
            return self._followers

    def drop_event_streams(self) -> None:
        """Every open event stream ends as a lost connection to Docker does."""
        with self._lock:
            self._epoch += 1
            self._changed.notify_all()

    # -- Runtime --------------------------------------------------------------------------
    def host_info(self, name: str, availability_zone: str) -> HostInfo:
        self._fault("host_info")
        return HostInfo(name=name, cpus=self._cpus, memory_mb=self._memory_mb, disk_gb=100,
                        availability_zone=availability_zone, os="fake", kernel_version="0",
                        architecture="x86_64")

    def list_summaries(self, instance: str) -> list[Summary]:
        self._fault("list_summaries")
        with self._lock:
            return [Summary(id=c.id, labels=dict(c.labels), state=c.state, status=_status(c),
                            created=c.created,
                            network_mode=f"container:{c.sandbox_id}" if c.sandbox_id else "")
                    for c in self.containers.values() if c.labels.get(L.INSTANCE) == instance]

    def observe_capsule(self, instance: str, capsule: str) -> list[Observed]:
        self._fault("observe_capsule")
        with self._lock:
            return [_observed(c) for c in self.containers.values()
                    if c.labels.get(L.INSTANCE) == instance and c.labels.get(L.CAPSULE) == capsule]

    def observe_container(self, container_id: str) -> Observed | None:
        self._fault("observe_container")
        with self._lock:
            c = self.containers.get(container_id)
            return None if c is None else _observed(c)

    def ensure_image(self, image: str, policy: str, auth: RegistryAuth | None = None) -> None:
        self._fault("ensure_image")
        self.pull_auths.append((_ref(image), auth.username if auth else None))
        ref = _ref(image)
        with self._lock:
            present = ref in self.images
            if policy == "Never" and not present:
                raise ImageNotFound(f"image {image} is not present and imagePullPolicy is Never")
            if policy == "Always" or not present:
                user = self.registry_users.get(ref)
                if ref not in self.registry or (
                        user is not None and (auth is None or auth.username != user)):
                    raise ImageNotFound(f"image {image} is not present and could not be pulled: "
                                        f"pull access denied for {ref}")
                self.pulls.append(ref)
                self.images.add(ref)
                self._pulled.add(ref)
        self._fault("ensure_image", after=True)

    def image_id(self, image: str) -> str:
        """The ID the reference has (on the host and in the registry)."""
        ref = _ref(image)
        return self.ids.get(ref) or "sha256:" + hashlib.sha256(ref.encode()).hexdigest()

    def image_identity(self, image: str) -> ImageIdentity | None:
        self._fault("image_identity")
        with self._lock:
            if image.startswith("sha256:"):
                refs = [r for r in self.images if self.image_id(r) == image]
            else:
                refs = [_ref(image)] if _ref(image) in self.images else []
            if not refs:
                return None
            return ImageIdentity(id=self.image_id(refs[0]),
                                 from_registry=any(r in self._pulled for r in refs))

    def image_ids(self) -> set[str]:
        self._fault("image_ids")
        with self._lock:
            return {self.image_id(r) for r in self.images}

    def create_sandbox(self, req: SandboxRequest) -> Observed:
        self._fault("create_sandbox")
        with self._lock:
            c = self._create(req.name, req.image, req.labels, None, req.network, req.aliases,
                             req.ipv4_address)
            c.ports = req.ports
            c.extra_hosts = req.extra_hosts
            c.hostname = req.hostname
            try:
                self._run(c)
            except DriverError:
                self._destroy(c)  # as DockerRuntime removes a sandbox that could not start
                raise
            obs = _observed(c)
        self._fault("create_sandbox", after=True)
        return obs

    def create_container(self, req: ContainerRequest) -> str:
        self._fault("create_container")
        with self._lock:
            if req.sandbox_id is not None and req.sandbox_id not in self.containers:
                # Docker answers 400: the namespace mode names no container.
                raise RuntimeRejected(f"create container {req.name}: No such container: "
                                      f"{req.sandbox_id}")
            c = self._create(req.name, req.image, req.labels, req.sandbox_id,
                             None if req.sandbox_id else req.network, req.aliases,
                             None if req.sandbox_id else req.ipv4_address)
            c.restart_policy, c.max_retry, c.auto_remove = (req.restart_policy, req.max_retry,
                                                            req.auto_remove)
            c.nano_cpus, c.memory_bytes = req.nano_cpus, req.memory_bytes
            c.has_health_check = req.health is not None
            c.entrypoint, c.cmd = list(req.entrypoint), list(req.cmd)
            c.ports = () if req.sandbox_id else req.ports
            c.env = dict(req.env)
            if req.start:
                self._start(c)
        self._fault("create_container", after=True)
        return c.id

    def start(self, container_id: str) -> None:
        self._fault("start")
        with self._lock:
            c = self._get(container_id)
            if c.state == "paused":
                raise RuntimeConflict(f"start {container_id[:12]}: cannot start a paused "
                                      "container, try unpause instead")
            if c.state not in _RUNNING:
                self._start(c)
        self._fault("start", after=True)

    def stop(self, container_id: str, timeout: int) -> None:
        self._fault("stop")
        with self._lock:
            c = self._get(container_id)
            if c.state in _RUNNING:
                self._die(c, _KILLED, False)  # stopped by hand: no restart policy acts
                if c.auto_remove:
                    self._destroy(c)
        self._fault("stop", after=True)

    def restart(self, container_id: str, timeout: int) -> None:
        self._fault("restart")
        with self._lock:
            c = self._get(container_id)
            if c.state in _RUNNING:
                self._die(c, _KILLED, False)
            self._start(c)
            self._emit(c, "restart")
        self._fault("restart", after=True)

    def pause(self, container_id: str) -> None:
        self._fault("pause")
        with self._lock:
            c = self._get(container_id)
            if c.state == "paused":
                raise RuntimeConflict(f"pause {container_id[:12]}: container is already paused")
            if c.state != "running":
                raise RuntimeConflict(f"pause {container_id[:12]}: container is not running")
            c.state = "paused"
            self._emit(c, "pause")

    def unpause(self, container_id: str) -> None:
        self._fault("unpause")
        with self._lock:
            c = self._get(container_id)
            if c.state != "paused":
                # Docker answers 500 here, not 409: a plain DriverError, as its driver raises.
                raise DriverError(f"unpause {container_id[:12]}: Container {container_id} "
                                  "is not paused")
            c.state = "running"
            self._emit(c, "unpause")

    def update_resources(self, container_id: str, nano_cpus: int | None,
                         memory_bytes: int | None) -> None:
        self._fault("update_resources")
        with self._lock:
            c = self._get(container_id)
            if nano_cpus is not None:
                c.nano_cpus = nano_cpus
            if memory_bytes is not None:
                c.memory_bytes = memory_bytes

    def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        self._fault("put_archive")
        with self._lock:
            self._get(container_id).archives.append((path, data))
        self._fault("put_archive", after=True)

    def remove_container(self, container_id: str, stop_timeout: int) -> None:
        self._fault("remove_container")
        with self._lock:
            c = self.containers.get(container_id)
            if c is not None:
                if c.state in _RUNNING:
                    self._die(c, _KILLED, False)
                self._destroy(c)
        self._fault("remove_container", after=True)

    def connect_network(self, container_id: str, network: str, aliases: tuple[str, ...]) -> None:
        self._fault("connect_network")
        with self._lock:
            c = self._get(container_id)
            self._check_network(network)
            if network not in c.networks:
                c.networks[network] = aliases
                c.ips[network] = self._pick(network, None)

    def rename(self, container_id: str, name: str) -> None:
        self._fault("rename")
        with self._lock:
            c = self._get(container_id)
            if any(o.name == name and o.id != c.id for o in self.containers.values()):
                raise RuntimeConflict(f"rename {container_id[:12]} to {name}: Conflict. The "
                                      f'container name "/{name}" is already in use')
            c.name = name

    def disconnect_network(self, container_id: str, network: str) -> None:
        self._fault("disconnect_network")
        with self._lock:
            c = self._get(container_id)
            c.networks.pop(network, None)
            c.ips.pop(network, None)

    def events(self, instance: str) -> Iterator[RuntimeEvent]:
        self._fault("events")
        with self._lock:
            seen, epoch = len(self._log), self._epoch
            self._followers += 1
        try:
            while True:
                with self._lock:
                    while len(self._log) == seen and self._epoch == epoch:
                        self._changed.wait()
                    if self._epoch != epoch:
                        raise Unavailable("event stream: Docker Engine unreachable "
                                          "(connection dropped)")
                    new, seen = self._log[seen:], len(self._log)
                for labels, ev in new:
                    if labels.get(L.INSTANCE) == instance:
                        yield ev
        finally:
            with self._lock:
                self._followers -= 1

    # -- the engine ---------------------------------------------------------------------
    def _fault(self, method: str, after: bool = False) -> None:
        with self._lock:
            queue = self._faults.get(method) or []
            fault = next((f for f in queue if f.after == after), None)
            if fault is None:
                return
            fault.times -= 1
            if fault.times <= 0:
                queue.remove(fault)
        raise fault.error

    def _get(self, container_id: str) -> FakeContainer:
        c = self.containers.get(container_id)
        if c is None:
            raise NotFound(f"{container_id[:12]}: No such container: {container_id}")
        return c

    def _check_network(self, network: str) -> None:
        if network in self.missing_networks:
            raise NotFound(f"network {network} not found")

    def _pick(self, network: str, preferred: str | None) -> str:
        """As DockerRuntime does: the address asked for if free, else the first free one;
        reserved until the container leaves the network or goes. As "ip/prefix"."""
        subnet = self.subnets.setdefault(network, ipaddress.IPv4Network(
            "172.17.0.0/16" if network == "bridge" else f"10.{len(self.subnets) % 250}.0.0/24"))
        taken = {ip.split("/")[0] for c in self.containers.values()
                 for n, ip in c.ips.items() if n == network}
        taken.add(str(next(subnet.hosts())))  # the bridge's own address
        if preferred and preferred not in taken and ipaddress.IPv4Address(preferred) in subnet \
                and ipaddress.IPv4Address(preferred) not in (subnet.network_address,
                                                             subnet.broadcast_address):
            return f"{preferred}/{subnet.prefixlen}"
        free = next((str(h) for h in subnet.hosts() if str(h) not in taken), None)
        if free is None:
            raise DriverError(f"network {network}: no available IPv4 addresses on this network")
        return f"{free}/{subnet.prefixlen}"

    def _create(self, name: str, image: str, labels: dict[str, str], sandbox_id: str | None,
                network: str | None, aliases: tuple[str, ...],
                ipv4_address: str | None = None) -> FakeContainer:
        if _ref(image) not in self.images:
            raise ImageNotFound(f"create container {name}: No such image: {image}")
        if any(c.name == name for c in self.containers.values()):
            raise RuntimeConflict(f"create container {name}: Conflict. The container name "
                                  f'"/{name}" is already in use')
        if network is not None:
            self._check_network(network)
        cid = f"{next(self._ids):064x}"
        c = FakeContainer(id=cid, name=name, image=image, labels=dict(labels), sandbox_id=sandbox_id,
                          created=time.time())
        if sandbox_id is None:  # members have no networks of their own: they share the sandbox's
            c.networks[network or "bridge"] = aliases
            c.ips[network or "bridge"] = self._pick(network or "bridge", ipv4_address)
        self.containers[cid] = c
        self._emit(c, "create")
        return c

    def _start(self, c: FakeContainer) -> None:
        if c.sandbox_id is not None:
            sandbox = self._get(c.sandbox_id)
            if sandbox.state != "running":
                raise RuntimeConflict(f"start {c.id[:12]}: cannot join network of a non "
                                      f"running container: {sandbox.id}")
        self._run(c)
        code = self._program(c)
        if code is not None:
            self._exit(c, code, False)

    def _exit(self, c: FakeContainer, code: int, oom_killed: bool) -> None:
        self._die(c, code, oom_killed)
        if self._restarts(c, code):
            c.restart_count += 1
            try:
                self._run(c)  # the program is not run again: no restart loop without a clock
            except DriverError:
                pass  # a host port it publishes was taken meanwhile: it stays exited
        elif c.auto_remove:
            self._destroy(c)

    def _run(self, c: FakeContainer) -> None:
        c.bound = self._bind(c)
        c.state, c.exit_code, c.started_at = "running", None, self._now()
        c.health = "starting" if c.has_health_check else None
        self._emit(c, "start")

    def _bind(self, c: FakeContainer) -> tuple[PublishedPort, ...]:
        """The host ports `c` gets as it starts, as Docker binds them: a fixed one that
        another program or running container holds fails the start; 0 gets a free one."""
        held = set(self.occupied) | {(b.protocol, b.host_port) for o in self.containers.values()
                                     if o is not c and o.state in _RUNNING for b in o.bound}
        out = []
        for p in c.ports:
            port = p.host_port
            if not port:
                port = next(n for n in self._ephemeral if (p.protocol, n) not in held)
            elif (p.protocol, port) in held:
                raise port_taken(f"start {c.name}", p, "address already in use")
            held.add((p.protocol, port))
            out.append(p.model_copy(update={"host_port": port}))
        return tuple(out)

    def _die(self, c: FakeContainer, code: int, oom_killed: bool) -> None:
        c.state, c.exit_code, c.oom_killed, c.finished_at = "exited", code, oom_killed, self._now()
        c.bound = ()
        c.health = "unhealthy" if c.has_health_check else None
        if oom_killed:
            self._emit(c, "oom")
        self._emit(c, "die")
        # The sandbox is PID 1 of its members' namespace: when it goes, the kernel kills them.
        for m in list(self.containers.values()):
            if m.sandbox_id == c.id and m.state in _RUNNING:
                self._die(m, _KILLED, False)

    def _restarts(self, c: FakeContainer, code: int) -> bool:
        if c.restart_policy in ("always", "unless-stopped"):
            return True
        return c.restart_policy == "on-failure" and code != 0 and (
            c.max_retry == 0 or c.restart_count < c.max_retry)

    def _destroy(self, c: FakeContainer) -> None:
        self.containers.pop(c.id, None)
        self._emit(c, "destroy")

    def _emit(self, c: FakeContainer, action: str) -> None:
        # A pooled sandbox's events name no capsule: the agent knows which claimed it.
        capsule = c.labels.get(L.CAPSULE) or ("" if c.labels.get(L.ROLE) == L.ROLE_POOL else None)
        if capsule is not None:
            self._log.append((dict(c.labels), RuntimeEvent(capsule=capsule, container_id=c.id,
                                                            action=action)))
            self._changed.notify_all()

    def _now(self) -> str:
        # Docker's format; a counter keeps the order exact however fast the calls come.
        tick = next(self._clock)
        return f"2026-01-01T{tick // 3600 % 24:02d}:{tick // 60 % 60:02d}:{tick % 60:02d}.{tick:09d}Z"


def _ref(image: str) -> str:
    return image if ":" in image.rsplit("/", 1)[-1] or "@" in image else f"{image}:latest"


def _status(c: FakeContainer) -> str:
    """Docker's status line, which the relist fingerprints."""
    health = f" ({c.health})" if c.health and c.state == "running" else ""
    if c.state == "running":
        return f"Up 1 second{health}"
    if c.state == "paused":
        return "Up 1 second (Paused)"
    if c.state == "exited":
        return f"Exited ({c.exit_code}) 1 second ago"
    return c.state.capitalize()


def _observed(c: FakeContainer) -> Observed:
    return Observed(id=c.id, labels=dict(c.labels), state=c.state,
                    exit_code=c.exit_code if c.state in ("exited", "dead", "restarting") else None,
                    restart_count=c.restart_count, started_at=c.started_at,
                    finished_at=c.finished_at, oom_killed=c.oom_killed,
                    nano_cpus=c.nano_cpus, memory_bytes=c.memory_bytes,
                    networks=tuple(sorted(c.networks)), health=c.health,
                    addresses=tuple(sorted(c.ips.items())) if c.state in _RUNNING else (),
                    ports=c.bound if c.state in _RUNNING else (), name=c.name)
