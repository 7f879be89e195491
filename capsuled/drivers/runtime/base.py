"""The container runtime as the agent sees it.

Contract: every method is safe to call from several threads and idempotent where its
name says so (`ensure_*` creates or adopts, `remove_*` succeeds when the thing is gone).
Objects are found by their `capsuled.*` labels, never by name. Transient failures raise
`errors.Unavailable` (the agent retries with back-off); permanent ones raise
`errors.DriverError`, whose message becomes the capsule's status_reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from capsuled.domain.channel import ContainerState, HostInfo
from capsuled.domain.ports import PublishedPort
from capsuled.domain.spec import HealthCheck, PullPolicy
from capsuled.errors import DriverError
from capsuled.hostops.protocol import ContainerOps


@dataclass(frozen=True)
class Observed:
    """One managed container as the runtime reports it."""

    id: str
    labels: dict[str, str]
    state: ContainerState
    exit_code: int | None = None
    restart_count: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    oom_killed: bool = False
    error: str | None = None
    nano_cpus: int | None = None
    memory_bytes: int | None = None
    networks: tuple[str, ...] = ()  # names of the networks it joined (none for members)
    # (network name, "ip/prefix") of each network it holds an IPv4 address on now (none
    # while it is not running, none for members: they use the sandbox's)
    addresses: tuple[tuple[str, str], ...] = ()
    health: str | None = None  # with a health check: starting | healthy | unhealthy
    # False: its pids limit is not the runtime's (made before there was one, or under
    # another setting); the agent applies it in place (update_resources), not a recreate.
    pids_ok: bool = True
    # Its published ports with the host ports they got (none while it is not running).
    ports: tuple[PublishedPort, ...] = ()
    name: str = ""  # its name in the runtime (for people; Capsuled finds it by label)


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one pull; never logged (repr hides the password)."""

    username: str
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class ImageIdentity:
    """What an image reference resolves to on this host."""

    id: str  # sha256:...: the same for every name of the image
    from_registry: bool  # it came from a registry pull (Docker: RepoDigests), not a build/load


@dataclass(frozen=True)
class Summary:
    """A cheap listing entry (no inspect): enough to notice that something changed."""

    id: str
    labels: dict[str, str]
    state: str
    status: str
    created: float = 0.0  # when it was created (Unix seconds)
    network_mode: str = ""  # "container:<id>" for a capsule member: whose namespaces it joined


@dataclass(frozen=True)
class SandboxRequest:
    name: str
    image: str
    hostname: str  # "": the runtime's default (Docker: the container's short id)
    labels: dict[str, str]
    network: str | None = None  # the project network to join (None: Docker's default bridge)
    aliases: tuple[str, ...] = ()  # DNS names on that network
    # The IPv4 address it had before (it is being remade): asked for again, a fresh one if
    # it is taken. Either way the address is reserved for the container until it is
    # removed, so a stop and start (or a restart by its policy) keeps it.
    ipv4_address: str | None = None
    # Ports published on the host for the whole capsule (host_port 0: any free one).
    ports: tuple[PublishedPort, ...] = ()
    dns: tuple[str, ...] = ()  # DNS servers (empty: Docker's defaults); members share them
    # (name, IPv4 address) lines of its /etc/hosts, which its members share: its
    # project's service names (agent/services.py), as they were when it was made.
    extra_hosts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ContainerRequest:
    """A capsule member (joins `sandbox_id`'s namespaces) or, without one, a bare container."""

    name: str
    image: str
    sandbox_id: str | None
    labels: dict[str, str]
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    nano_cpus: int | None = None
    memory_bytes: int | None = None
    binds: list[str] = field(default_factory=list)  # "volume:/path:ro|rw"
    restart_policy: str = "no"  # Docker names: no | always | on-failure | unless-stopped
    max_retry: int = 0
    tty: bool = False
    stdin: bool = False
    hostname: str | None = None  # bare containers only: members share the sandbox's
    auto_remove: bool = False
    start: bool = True
    network: str | None = None  # bare containers only, as for the sandbox: members share its
    aliases: tuple[str, ...] = ()
    ipv4_address: str | None = None  # bare containers only, as for the sandbox
    dns: tuple[str, ...] = ()  # bare containers only, as for the sandbox
    privileged: bool = False  # admins only; the API's policy gate sees to that
    health: HealthCheck | None = None
    ports: tuple[PublishedPort, ...] = ()  # bare containers only: members use the sandbox's


def port_taken(what: str, port: PublishedPort | None, detail: str = "") -> DriverError:
    """The error both runtimes raise when a host port cannot be published because
    something else on the host holds it (another program, or a port Docker handed out on
    its own): the capsule's status_reason, so it names the port and says what to do."""
    which = f"{port.protocol} port {port.host_port}" if port else "one of its ports"
    return DriverError(f"{what}: cannot publish {which} on the host: something else there "
                       f"already uses it; free it or pick another hostPort"
                       + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class RuntimeEvent:
    capsule: str  # "": a pooled sandbox's (whichever capsule claimed it, the agent knows)
    container_id: str
    action: str


class Runtime(Protocol):
    """What the reconciler (agent/) drives: the narrow boundary the fake and the Docker
    driver both implement and tests/contract/test_runtime_contract.py holds them to.
    User-facing operations (logs, exec, attach, archives out, images) are ContainerOps."""

    def host_info(self, name: str, availability_zone: str) -> HostInfo: ...

    def list_summaries(self, instance: str) -> list[Summary]:
        """Every container of this deployment, one API call, no inspect."""
        ...

    def observe_capsule(self, instance: str, capsule: str) -> list[Observed]: ...

    def observe_container(self, container_id: str) -> Observed | None:
        """One container by id (None: there is no such container)."""
        ...

    def ensure_image(self, image: str, policy: PullPolicy, auth: RegistryAuth | None = None) -> None:
        """Make `image` present by `policy`; a pull presents `auth` to the registry."""
        ...

    def image_identity(self, image: str) -> ImageIdentity | None:
        """The image `image` (a reference or an ID) names on this host, or None if absent."""
        ...

    def image_ids(self) -> set[str]:
        """The IDs of every image on this host (one call)."""
        ...

    def create_sandbox(self, req: SandboxRequest) -> Observed:
        """Create and start the infra container; returns it as started."""
        ...

    def create_container(self, req: ContainerRequest) -> str:
        """Create (and unless told otherwise start) a container; returns its id."""
        ...

    def start(self, container_id: str) -> None: ...

    def stop(self, container_id: str, timeout: int) -> None: ...

    def restart(self, container_id: str, timeout: int) -> None: ...

    def pause(self, container_id: str) -> None: ...

    def unpause(self, container_id: str) -> None: ...

    def update_resources(self, container_id: str, nano_cpus: int | None,
                         memory_bytes: int | None) -> None:
        """Apply cpu/memory limits (and the runtime's pids limit) in place."""
        ...

    def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        """Unpack a tar into the container (a bare container's injected files)."""
        ...

    def remove_container(self, container_id: str, stop_timeout: int) -> None: ...

    def connect_network(self, container_id: str, network: str, aliases: tuple[str, ...]) -> None:
        """Join a network (idempotent) with a reserved address, as a create would: a
        container made before project networks, or a pooled sandbox claimed by a capsule."""
        ...

    def rename(self, container_id: str, name: str) -> None:
        """Give a container another name (idempotent: already so named is fine)."""
        ...

    def disconnect_network(self, container_id: str, network: str) -> None:
        """Leave a network (idempotent)."""
        ...

    def events(self, instance: str) -> Iterator[RuntimeEvent]:
        """Container events of this deployment until the connection drops."""
        ...


class RuntimeDriver(Runtime, ContainerOps, Protocol):
    """A host's whole runtime: the reconcile boundary plus the user-facing operations the
    ops endpoint serves (DockerRuntime is both)."""
