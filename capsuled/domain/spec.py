"""The normalised capsule spec: what a template means, independent of how it was written.

It is stored with the capsule and sent to the agent, so it is a pydantic model (JSON both
ways); it is frozen because the agent compares it, never edits it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RestartPolicy = Literal["Always", "OnFailure", "Never"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
Role = Literal["app", "init"]

ZUN_RESTART_NAMES: dict[str, str] = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VolumeMount(_Frozen):
    name: str
    mount_path: str
    read_only: bool = False


class Port(_Frozen):
    container_port: int
    protocol: Literal["TCP", "UDP"] = "TCP"
    # None: not published (documentation, as in Kubernetes); 1-65535: published on that
    # host port (a template's hostPort, claimed on the host); 0: published on a host port
    # the runtime picks (a bare container's exposed_ports). See domain/ports.py.
    host_port: int | None = None
    name: str | None = None


class HealthCheck(_Frozen):
    """A command run inside the container to judge it (Docker's HEALTHCHECK): a template's
    livenessProbe or Zun's healthcheck. With `restart` the agent restarts a container
    Docker has found unhealthy (a liveness failure; Zun's auto_heal)."""

    command: list[str]  # exec form; a shell command is ["sh", "-c", cmd]
    interval: float = 10.0  # seconds between checks
    timeout: float = 1.0
    retries: int = 3  # consecutive failures that make it unhealthy
    start_period: float = 0.0  # failures in this first stretch do not count
    restart: bool = True


ProbeKind = Literal["exec", "http", "tcp"]
ProbePurpose = Literal["liveness", "readiness", "startup"]


class Probe(_Frozen):
    """A Kubernetes probe the agent's prober runs (agent/prober.py). HTTP and TCP probes
    always target 127.0.0.1 inside the capsule's own network namespace: there is no host
    field, so a tenant cannot aim one anywhere else."""

    kind: ProbeKind
    command: list[str] = Field(default_factory=list)  # exec
    port: int = 0  # http, tcp: a named port is resolved to its number when parsed
    path: str = "/"  # http
    scheme: Literal["HTTP", "HTTPS"] = "HTTP"
    headers: list[tuple[str, str]] = Field(default_factory=list)
    initial_delay: int = 0
    period: int = 10
    timeout: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


class ContainerSpec(_Frozen):
    uuid: str = ""
    name: str
    role: Role = "app"
    image: str
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    workdir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cpu: float | None = None
    memory: int | None = None  # MiB
    ports: list[Port] = Field(default_factory=list)
    volume_mounts: list[VolumeMount] = Field(default_factory=list)
    image_pull_policy: PullPolicy = "IfNotPresent"
    tty: bool = False
    stdin: bool = False
    privileged: bool = False
    health: HealthCheck | None = None
    # The uuid of one of the project's registries (a name in a request or template is
    # resolved by the API); the agent is told how to pull through it (channel.ImagePull).
    registry: str | None = None
    # Probes the agent's prober runs (an exec liveness probe without a startup probe is
    # `health` instead: Docker runs it). Left out of the hashes: the prober reads them
    # from the spec it is given, so changing one recreates nothing.
    liveness: Probe | None = None
    readiness: Probe | None = None
    startup: Probe | None = None

    @property
    def probes(self) -> dict[str, Probe]:
        """The prober's probes by purpose."""
        out = {"startup": self.startup, "liveness": self.liveness, "readiness": self.readiness}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def zun_command(self) -> list[str]:
        """Zun shows one list: command followed by args."""
        return [*self.command, *self.args]


class VolumeSpec(_Frozen):
    name: str
    type: Literal["cinder", "emptyDir"]
    size: int | None = None  # GiB
    auto_remove: bool = True


class CapsuleSpec(_Frozen):
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    restart_policy: RestartPolicy = "Always"
    availability_zone: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)  # host labels it must land on
    init_containers: list[ContainerSpec] = Field(default_factory=list)
    containers: list[ContainerSpec]
    volumes: list[VolumeSpec] = Field(default_factory=list)
    # Extension: what the prober restarts when a liveness or startup probe fails for good:
    # the container (as Kubernetes) or the whole capsule, sandbox and all.
    failure_policy: Literal["RestartContainer", "RestartCapsule"] = "RestartContainer"
    # Extensions for updates (domain/rollout.py): a new revision is done once its new
    # containers are ready and stayed so for `min_ready_seconds`; if that has not happened
    # `progress_deadline_seconds` after the update began, the capsule rolls back.
    min_ready_seconds: int = 0
    progress_deadline_seconds: int = 120
    # Bumped by an update that needs a new sandbox (domain/update.py): the sandbox carries
    # it as a label, so the agent's ordinary loop remakes the sandbox and every container
    # when it differs, with the same uuid and name (as BareSpec.rebuilds does for a bare
    # container). Level-triggered: it survives agent restarts.
    sandbox_epoch: int = 0

    @property
    def all_containers(self) -> list[ContainerSpec]:
        return [*self.init_containers, *self.containers]

    def total_cpu(self) -> float:
        """Init containers run alone, so the capsule needs the larger of their peak and the apps' sum."""
        apps = sum(c.cpu or 0.0 for c in self.containers)
        return round(max([apps, *(c.cpu or 0.0 for c in self.init_containers)]), 3)

    def total_memory(self) -> int:
        apps = sum(c.memory or 0 for c in self.containers)
        return max([apps, *(c.memory or 0 for c in self.init_containers)])


PROBER_FIELDS = ("liveness", "readiness", "startup")


def spec_hash(spec: ContainerSpec, restart_policy: RestartPolicy) -> str:
    """A short digest of everything that requires recreating a container when it changes.
    CPU and memory are left out: `docker update` changes them in place."""
    payload = spec.model_dump(mode="json", exclude={"cpu", "memory", *PROBER_FIELDS})
    for added in ("privileged", "health", "registry"):  # later fields: old hashes hold at default
        if not payload.get(added):
            payload.pop(added, None)
    payload["restart_policy"] = restart_policy
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


class DockerRestart(_Frozen):
    """A bare container's restart policy, in Docker's (and Zun's container API's) terms."""

    name: Literal["no", "always", "on-failure", "unless-stopped"] = "no"
    max_retry: int = 0


class InjectedFile(_Frozen):
    """A file put into a bare container before it starts (Zun's `mounts` type bind)."""

    path: str
    content_b64: str


class BareSpec(_Frozen):
    """A container created through /v1/containers: one container, no sandbox of its own.

    With `capsule` set it is a request to add the container to that capsule; the stored
    result is then a capsule member, not a BareSpec."""

    container: ContainerSpec
    restart: DockerRestart = DockerRestart()
    auto_remove: bool = False
    hostname: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    capsule: str | None = None
    availability_zone: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)  # from hints label:<key>
    host: str | None = None
    # Zun's `mounts`: new volumes of its own (by size), removed with it, and files.
    volumes: list[VolumeSpec] = Field(default_factory=list)
    files: list[InjectedFile] = Field(default_factory=list)
    # Zun's auto_heal: a missing container is made again (always so here) and, with a
    # healthcheck, an unhealthy one is restarted (container.health.restart).
    auto_heal: bool = False
    # Bumped by each rebuild: part of the runtime hash, so the agent replaces the Docker
    # container even when the image is the same (level-triggered, survives agent restarts).
    rebuilds: int = 0

    @property
    def disk(self) -> int:
        """GiB its volumes claim."""
        return sum(v.size or 0 for v in self.volumes)

    def runtime_hash(self) -> str:
        """Like spec_hash, minus what `docker update` changes in place (cpu, memory)."""
        payload = self.model_dump(mode="json", exclude={"capsule", "availability_zone", "host",
                                                        "node_selector"})
        for probe in PROBER_FIELDS:
            payload["container"].pop(probe, None)
        for live in ("cpu", "memory", "name"):  # docker update / a row rename, not a recreate
            payload["container"].pop(live, None)
        for added in ("privileged", "health", "registry"):
            if not payload["container"].get(added):
                payload["container"].pop(added, None)
        for added in ("volumes", "files", "auto_heal", "rebuilds"):  # absent before: older hashes hold
            if not payload.get(added):
                payload.pop(added, None)
        raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]
