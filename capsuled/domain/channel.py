"""What crosses the agent channel, in both directions, and the channel's contract.

The agent never sees the store: it is told the full desired set for its host
(`Assignments`) and answers with what it observed (`CapsuleReport`). In all-in-one mode
the control plane object itself is the channel; over HTTP the same models are the wire
format, so both paths carry exactly the same data.

Rolling upgrades: agents and API replicas of neighbouring versions meet, in either
order, so every model here ignores fields it does not know (`_Wire`) instead of refusing
them, in both directions. The agent parses assignments with `extra="ignore"` as well,
which also reaches the spec models inside (they forbid unknown fields for users' input,
where a typo must be an error). Types stay strict: a report with a wrong type is still a
400 from the API, and garbage from the API is still an error to the agent, which its
loops survive.
"""

from __future__ import annotations

import hashlib
import math
from ipaddress import IPv4Address, IPv4Network
from typing import Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from capsuled.domain.addresses import Address
from capsuled.domain.ports import PublishedPort
from capsuled.domain.security_groups import Firewall
from capsuled.domain.spec import BareSpec, CapsuleSpec

class _Wire(BaseModel):
    """A model that crosses the channel: unknown fields come from a newer peer."""

    model_config = ConfigDict(extra="ignore")


ContainerState = Literal["missing", "created", "running", "paused", "restarting", "exited",
                         "dead", "removing"]


class ImagePull(_Wire):
    """How one container's image is pulled when a registry of its project is involved: the
    reference to pull and run, whether to pull every time whatever the spec's policy
    says (the API sends False: the agent's image gate decides, agent/pulls.py), and the
    project's credentials for that registry. It travels only inside the assignment of
    that container and is never stored by the agent."""

    container: str  # the container's name in its spec
    image: str
    always: bool = True
    username: str | None = None
    password: str | None = Field(None, repr=False)


class Assignment(_Wire):
    """One capsule the host should run (or tear down, when `deleting`)."""

    uuid: str
    generation: int
    deleting: bool = False
    spec: CapsuleSpec
    project_id: str | None = None  # its containers join this project's network (None: none)
    pulls: list[ImagePull] = Field(default_factory=list, repr=False)
    # The sandbox's last known addresses: a recreated sandbox asks for them again.
    addresses: list[Address] = Field(default_factory=list)
    # Its security groups' rules, resolved (None: not filtered, e.g. from an older API).
    firewall: Firewall | None = None


DesiredState = Literal["running", "stopped", "paused"]


class ContainerAssignment(_Wire):
    """One bare container the host should run, keep stopped or paused (or remove)."""

    uuid: str
    name: str
    generation: int
    deleting: bool = False
    desired_state: DesiredState = "running"
    runtime_id: str | None = None  # last one reported: it existed, so missing now means removed
    spec: BareSpec
    project_id: str | None = None  # it joins this project's network (None: Docker's default)
    pulls: list[ImagePull] = Field(default_factory=list, repr=False)
    addresses: list[Address] = Field(default_factory=list)  # last known: asked for again
    firewall: Firewall | None = None  # as a capsule's


class RemoteName(_Wire):
    """A name of a capsule (its name or uuid) or bare container on another host, and its
    address on the project network."""

    name: str
    addr: IPv4Address


class OverlayNetwork(_Wire):
    """A project network this host takes part in as one segment across hosts
    (domain/overlay.py): what the control plane allocated for it here, the other hosts'
    underlay addresses (VXLAN peers), and the names its DNS responder answers."""

    project_id: str
    vni: int = Field(ge=1, le=(1 << 24) - 1)
    subnet: IPv4Network  # the project's, the same on every host
    ip_range: IPv4Network  # this host's block of it
    gateway: IPv4Address  # this host's bridge address
    peers: list[IPv4Address] = Field(default_factory=list)
    names: list[RemoteName] = Field(default_factory=list)


class Assignments(_Wire):
    host: str
    revision: int
    capsules: list[Assignment]
    # True only for an agent that allowed it (`full=False`): the revision has not moved
    # since `after_revision`, and the lists are left empty; keep the set you have.
    unchanged: bool = False
    containers: list[ContainerAssignment] = Field(default_factory=list)
    # Only for a host that registered an underlay address: its projects' overlay networks.
    overlays: list[OverlayNetwork] = Field(default_factory=list)


class HostInfo(_Wire):
    name: str
    cpus: float
    memory_mb: int
    disk_gb: int
    availability_zone: str = "nova"
    labels: dict[str, str] = Field(default_factory=dict)
    os: str = ""
    kernel_version: str = ""
    architecture: str = ""
    runtime: str = "docker"
    # Multi-host: where the API reaches this host's agent for logs, exec, attach, … (None
    # in all-in-one, where the API calls the runtime), and a random id of this agent's
    # boot: the API derives the ops key from it and a secret of its own (Registration).
    ops_url: str | None = None
    ops_nonce: str | None = None
    ops_key: str | None = None  # agents before ops_nonce sent their key itself (legacy)
    # Where the other hosts send this host's VXLAN traffic (agent.underlay_address); None:
    # this host's project networks are its own (no overlay).
    underlay_address: IPv4Address | None = None


class Registration(_Wire):
    """The API's answer to a registration."""

    # The key the agent's ops endpoint must accept from now on (None: no ops endpoint).
    # The agent keeps only its digest; the API derives it again when it needs it, so it
    # is stored nowhere in clear.
    ops_key: str | None = None


def ops_key_digest(key: str | bytes) -> str:
    """What is kept of an ops key: the agent compares presented keys with it and the
    API's database records it (a key derived under another secret shows as a mismatch)."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()


class ProbeResult(_Wire):
    """One probe of a container as the agent's prober last saw it."""

    result: Literal["success", "failure", "unknown"] = "unknown"
    consecutive_failures: int = 0
    last_failure: str | None = None


class ContainerReport(_Wire):
    uuid: str
    name: str
    role: Literal["init", "app", "bare"]
    state: ContainerState = "missing"
    runtime_id: str | None = None
    exit_code: int | None = None
    restart_count: int = 0
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    health: str | None = None  # with a health check: starting | healthy | unhealthy
    # From the prober (None: it has no probes, or is not running): ready, and each probe
    # (startup, liveness, readiness) by purpose.
    ready: bool | None = None
    probes: dict[str, ProbeResult] = Field(default_factory=dict)
    # Its addresses on its project network as observed (empty: none seen now, e.g. while
    # stopped; the store then keeps the last ones, as a Neutron port keeps its IP).
    addresses: list[Address] = Field(default_factory=list)
    # A bare container's published ports with the host ports Docker gave them (empty while
    # it is not running). Members publish through their sandbox: their spec says which.
    ports: list[PublishedPort] = Field(default_factory=list)


class CapsuleReport(_Wire):
    uuid: str
    generation: int
    gone: bool = False  # everything removed after a delete
    sandbox_id: str | None = None
    sandbox_state: ContainerState = "missing"
    sandbox_recreated: bool = False
    progress: str | None = None
    # The agent's plan for this generation is done: every container is on its spec (None:
    # an agent from before updates, which does not say). An update waits for it.
    converged: bool | None = None
    error: str | None = None
    containers: list[ContainerReport] = Field(default_factory=list)
    addresses: list[Address] = Field(default_factory=list)  # the sandbox's, shared by members
    events: list[tuple[str, str, str, str | None]] = Field(default_factory=list)
    """(type, reason, message, container name) the agent wants recorded."""
    # The agent is draining it before replacing its containers: services send it no new
    # connections until a report says False again (None: an agent that does not say).
    draining: bool | None = None


class BareReport(_Wire):
    """What the agent observed of one bare container."""

    uuid: str
    generation: int
    gone: bool = False  # removed (after a delete, or by Docker for auto_remove)
    container: ContainerReport | None = None
    error: str | None = None


class LoopStats(_Wire):
    """What one of the agent's loops did since the agent started. Counters only grow; an
    agent restart starts them at zero again (Prometheus reads that as a counter reset).
    The API exposes them per host on /metrics; they are the agent's own view, which the
    API cannot measure (a sync talks to Docker, not to the API)."""

    count: int = Field(0, ge=0)  # rounds finished, with or without an error
    errors: int = Field(0, ge=0)  # rounds that raised
    unsettled: int = Field(0, ge=0)  # syncs that ended with work left (retried after back-off)
    seconds: float = Field(0.0, ge=0)  # the rounds' total duration
    # Their durations as a histogram: per bound (seconds, increasing), how many rounds took
    # at most that long (cumulative, Prometheus's `le`). Empty: no histogram (long polls).
    # The bounds travel with the counts, so agent and API need not share a version.
    bounds: list[float] = Field(default_factory=list, max_length=32)
    buckets: list[int] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _histogram_is_whole(self) -> Self:
        if len(self.bounds) != len(self.buckets):
            raise ValueError("bounds and buckets must have the same length")
        if any(not math.isfinite(b) or b <= 0 for b in self.bounds) or any(
                b >= c for b, c in zip(self.bounds, self.bounds[1:])):
            raise ValueError("bounds must be finite, positive and increasing")
        if any(n < 0 or n > self.count for n in self.buckets) or any(
                a > b for a, b in zip(self.buckets, self.buckets[1:])):
            raise ValueError("buckets must be cumulative counts between 0 and count")
        if not math.isfinite(self.seconds):
            raise ValueError("seconds must be finite")
        return self


class PoolStats(_Wire):
    """The warm sandbox pool (agent/sandbox_pool.py): counters since the agent started,
    and the idle sandboxes now."""

    size: int = Field(0, ge=0)  # the bound on idle sandboxes (0: no pool)
    idle: int = Field(0, ge=0)  # idle sandboxes now
    claims: int = Field(0, ge=0)  # capsules that got a pooled sandbox
    misses: int = Field(0, ge=0)  # capsules that could have used one and found none
    made: int = Field(0, ge=0)
    removed: int = Field(0, ge=0)  # idle ones removed: expired, unserved project, surplus
    errors: int = Field(0, ge=0)  # failed makes, removes and claim records


class AgentStats(_Wire):
    """The agent's loops, sent with each heartbeat."""

    sync: LoopStats = Field(default_factory=LoopStats)  # one capsule's or bare container's sync
    relist: LoopStats = Field(default_factory=LoopStats)  # a relist of everything in Docker
    watch: LoopStats = Field(default_factory=LoopStats)  # long polls for the desired set
    heartbeat: LoopStats = Field(default_factory=LoopStats)  # heartbeats (errors: failed ones)
    pool: PoolStats = Field(default_factory=PoolStats)


class AgentChannel(Protocol):
    """The agent's only way to the control plane. Every call is idempotent."""

    def register(self, host: HostInfo) -> Registration | None: ...

    def heartbeat(self, host: str, stats: AgentStats | None = None) -> bool:
        """The host is alive; `stats` are its loops' counters (None: not measured). True:
        the control plane marked some of the host's work Unknown while it heard nothing
        (a late heartbeat), and wants every capsule and container reported again."""
        ...

    def watch(self, host: str, after_revision: int, timeout: float,
              full: bool = True) -> Assignments:
        """The host's full desired set, returned once its revision passes `after_revision`
        or after `timeout` seconds, whichever comes first. With `full=False` a timed-out
        watch whose revision is still `after_revision` answers `unchanged` instead of
        the whole set (an idle agent's poll then reads one number)."""
        ...

    def report(self, host: str, reports: list[CapsuleReport],
               containers: list[BareReport] | None = None) -> None: ...
