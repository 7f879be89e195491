"""DockerRuntime: capsules on a Docker Engine through the SDK's low-level APIClient.

What it leaves on the host: containers labelled `capsuled.instance=<deployment>`,
`capsuled.capsule=<uuid>`, `capsuled.role=sandbox|init|app` (and for members
`capsuled.container`, `capsuled.name`, `capsuled.spec-hash`, `capsuled.sandbox-start`).
The sandbox runs the infra image (`catatonit -P`) with a shareable IPC namespace and
its own network, PID and UTS namespaces; members join all of them with
`container:<sandbox id>` modes, which also gives them the sandbox's hostname. A sandbox
or bare container given a network joins it (instead of Docker's default bridge) with its
DNS aliases.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import platform
import re
import socket
import signal
import time
from collections.abc import Iterator
from typing import Any, Protocol, cast

import docker
from docker.types import LogConfig
from docker.utils import decode_json_header

from capsuled.domain import labels as L
from capsuled.domain.channel import ContainerState, HostInfo
from capsuled.drivers.docker_client import translate_docker_errors
from capsuled.domain.spec import HealthCheck
from capsuled.drivers.runtime import docker_addresses
from capsuled.domain.ports import PublishedPort
from capsuled.drivers.runtime.base import (ContainerRequest, ImageIdentity, Observed,
                                           RegistryAuth, RuntimeEvent, SandboxRequest, Summary,
                                           port_taken)
from capsuled.errors import (Conflict, DriverError, ImageNotFound, NotFound, PayloadTooLarge,
                             RuntimeRejected)
from capsuled.hostops.protocol import (ARCHIVE_MAX_BYTES, EXEC_MAX_OUTPUT, EXEC_TIMEOUT,
                                       LOGS_MAX_BYTES, ExecResult, ImageInfo, RawStream)

# The Engine's status words we report as they are; anything else reads as dead.
_STATES: dict[str, ContainerState] = {s: s for s in (
    "created", "running", "paused", "restarting", "exited", "dead", "removing")}
_EVENTS = {"create", "start", "die", "oom", "destroy", "pause", "unpause", "restart", "stop",
           "health_status"}
_ZERO_TIME = "0001-01-01T00:00:00Z"
DEFAULT_PIDS_LIMIT = 1024  # config.LimitSettings.pids_limit's default


class PortTaken(DriverError):
    """A host port could not be published: something else on the host holds it."""


# How the Engine says a host port is taken: by another program ("listen tcp4
# 0.0.0.0:8080: bind: address already in use") or by a binding of its own ("Bind for
# 0.0.0.0:8080 failed: port is already allocated").
_PORT_TAKEN = re.compile(r"listen (tcp|udp)[46]? \[?[0-9a-fA-F.:]*\]?:(\d+): bind: (address already in use)"
                         r"|Bind for \[?[0-9a-fA-F.:]*\]?:(\d+) failed: (port is already allocated)")


class _EngineHttp(Protocol):
    """The SDK's raw-HTTP helpers, which its stubs leave out: `update` and `get_archive`
    call the Engine API directly (the SDK has no method for either that suits us)."""

    def _url(self, pathfmt: str, *args: str) -> str: ...
    def _get(self, url: str, **kwargs: Any) -> Any: ...
    def _post_json(self, url: str, data: dict[str, Any], **kwargs: Any) -> Any: ...
    def _raise_for_status(self, response: Any) -> None: ...


class DockerRuntime:
    name = "docker"

    def __init__(self, client: docker.APIClient, pids_limit: int | None = DEFAULT_PIDS_LIMIT) -> None:
        self._api = client
        self._http = cast(_EngineHttp, client)
        self._images: set[str] = set()
        self._addresses = docker_addresses.AddressBook(client)
        # Every container this runtime creates (sandboxes, members, bare) gets it: a fork
        # bomb in one tenant's container must not exhaust the host's process table.
        self._pids_limit = pids_limit

    def host_info(self, name: str, availability_zone: str) -> HostInfo:
        with translate_docker_errors("docker info"):
            info = self._api.info()
        st = os.statvfs(info.get("DockerRootDir") or "/")
        return HostInfo(name=name, cpus=float(info.get("NCPU") or os.cpu_count() or 1),
                        memory_mb=int(info.get("MemTotal", 0)) // (1024 * 1024),
                        disk_gb=st.f_blocks * st.f_frsize // (1024 ** 3),
                        availability_zone=availability_zone, os=info.get("OperatingSystem", ""),
                        kernel_version=info.get("KernelVersion", ""),
                        architecture=info.get("Architecture", platform.machine()))

    def list_summaries(self, instance: str) -> list[Summary]:
        with translate_docker_errors("list containers"):
            rows = self._api.containers(all=True, filters={"label": [f"{L.INSTANCE}={instance}"]})
        return [Summary(id=r["Id"], labels=r.get("Labels") or {}, state=r.get("State", ""),
                        status=r.get("Status", ""), created=float(r.get("Created") or 0),
                        network_mode=str((r.get("HostConfig") or {}).get("NetworkMode") or ""))
                for r in rows]

    def observe_capsule(self, instance: str, capsule: str) -> list[Observed]:
        with translate_docker_errors(f"list containers of capsule {capsule}"):
            rows = self._api.containers(all=True, filters={
                "label": [f"{L.INSTANCE}={instance}", f"{L.CAPSULE}={capsule}"]})
        out = []
        for r in rows:
            obs = self._inspect(r["Id"])
            if obs is not None:
                out.append(obs)
        return out

    def observe_container(self, container_id: str) -> Observed | None:
        return self._inspect(container_id)

    def _inspect(self, container_id: str) -> Observed | None:
        try:
            with translate_docker_errors(f"inspect {container_id[:12]}"):
                data = self._api.inspect_container(container_id)
        except NotFound:
            return None
        st: dict[str, Any] = data.get("State") or {}
        state: str = st.get("Status", "dead")
        exited = state in ("exited", "dead") or (state == "restarting")
        return Observed(
            id=data["Id"], labels=(data.get("Config") or {}).get("Labels") or {},
            name=str(data.get("Name") or "").lstrip("/"), state=_STATES.get(state, "dead"),
            exit_code=st.get("ExitCode") if exited or state == "exited" else None,
            restart_count=int(data.get("RestartCount") or 0),
            started_at=_time(st.get("StartedAt")), finished_at=_time(st.get("FinishedAt")),
            oom_killed=bool(st.get("OOMKilled")), error=st.get("Error") or None,
            nano_cpus=(data.get("HostConfig") or {}).get("NanoCpus") or None,
            memory_bytes=(data.get("HostConfig") or {}).get("Memory") or None,
            pids_ok=self._pids_limit is None
            or (data.get("HostConfig") or {}).get("PidsLimit") == self._pids_limit,
            networks=tuple(sorted(((data.get("NetworkSettings") or {}).get("Networks") or {}))),
            addresses=docker_addresses.observed(data),
            health=(st.get("Health") or {}).get("Status") or None,
            ports=_published(data))

    def ensure_image(self, image: str, policy: str, auth: RegistryAuth | None = None) -> None:
        ref = image if ":" in image.rsplit("/", 1)[-1] or "@" in image else f"{image}:latest"
        if policy != "Always" and ref in self._images:
            return
        present = self._has_image(ref)
        if policy == "Never" and not present:
            raise ImageNotFound(f"image {image} is not present and imagePullPolicy is Never")
        if policy == "Always" or not present:
            repo, _, tag = ref.rpartition(":")
            try:
                with translate_docker_errors(f"pull {ref}"):
                    self._pull(repo, tag, auth)
            except DriverError as exc:
                # With Always the cached copy must not be used: the registry said no.
                raise ImageNotFound(f"image {image} could not be pulled: {exc.message}") from exc
        self._images.add(ref)

    def image_identity(self, image: str) -> ImageIdentity | None:
        ref = image if image.startswith("sha256:") or ":" in image.rsplit("/", 1)[-1] \
            or "@" in image else f"{image}:latest"
        try:
            with translate_docker_errors(f"inspect image {ref}"):
                data = self._api.inspect_image(ref)
        except (NotFound, ImageNotFound):
            return None
        return ImageIdentity(id=str(data["Id"]), from_registry=bool(data.get("RepoDigests")))

    def image_ids(self) -> set[str]:
        with translate_docker_errors("list images"):
            return {str(i) for i in self._api.images(all=True, quiet=True)}

    def _pull(self, repo: str, tag: str, auth: RegistryAuth | None) -> None:
        """Pull, failing on an error the engine reports inside its progress stream (it
        answers 200 first for some registries' refusals)."""
        config = {"username": auth.username, "password": auth.password} if auth else None
        for chunk in self._api.pull(repo, tag=tag, auth_config=config, stream=True, decode=True):
            if isinstance(chunk, dict) and chunk.get("error"):
                raise DriverError(str(chunk.get("error"))[:500])

    def _has_image(self, ref: str) -> bool:
        try:
            with translate_docker_errors(f"inspect image {ref}"):
                self._api.inspect_image(ref)
            return True
        except (NotFound, ImageNotFound):
            self._images.discard(ref)
            return False

    def create_sandbox(self, req: SandboxRequest) -> Observed:
        host_config = self._api.create_host_config(ipc_mode="shareable", network_mode=req.network,
                                                   restart_policy={"Name": "no"}, init=False,
                                                   pids_limit=self._pids_limit,
                                                   port_bindings=_port_bindings(req.ports),
                                                   dns=list(req.dns) or None,
                                                   extra_hosts=dict(req.extra_hosts) or None)
        with self._addresses.picking(req.network), \
                translate_docker_errors(f"create sandbox {req.name}"):
            ip = self._addresses.pick(req.network, req.ipv4_address)
            cid = self._api.create_container(image=req.image, name=req.name, labels=req.labels,
                                             hostname=_hostname(req.hostname) if req.hostname
                                             else None,
                                             host_config=host_config, detach=True,
                                             ports=_exposed(req.ports),
                                             networking_config=self._endpoint(
                                                 req.network, req.aliases, ip))["Id"]
        try:
            self._start(cid, f"create sandbox {req.name}", req.ports)
        except (NotFound, PortTaken):
            # The network vanished between create and start, or a host port is taken: a
            # container that never started would only be in the way of the retry.
            self.remove_container(cid, 0)
            raise
        obs = self._inspect(cid)
        if obs is None or obs.state != "running":
            raise DriverError(f"sandbox {req.name} did not start"
                              + (f": {obs.error}" if obs and obs.error else ""))
        return obs

    def _endpoint(self, network: str | None, aliases: tuple[str, ...],
                  ipv4_address: str | None) -> dict[str, Any] | None:
        if network is None:
            return None
        # What the SDK's create_networking_config builds (its stubs take one endpoint only).
        return {"EndpointsConfig": {network: self._api.create_endpoint_config(
            aliases=list(aliases) or None, ipv4_address=ipv4_address)}}

    def _start(self, container_id: str, what: str,
               ports: tuple[PublishedPort, ...] = ()) -> None:
        """Start; a container whose reserved address someone else took meanwhile gets a
        fresh one (docker_addresses) rather than never starting again. A host port that
        something else holds is PortTaken (its words say "address already in use" too)."""
        try:
            with translate_docker_errors(what):
                self._api.start(container_id)
        except DriverError as exc:
            taken = _port_taken(exc.message, ports)
            if taken is not None:
                raise PortTaken(port_taken(what, taken[0], taken[1]).message) from exc
            if not docker_addresses.in_use(exc) or not self._addresses.repin(container_id):
                raise
            with translate_docker_errors(what):
                self._api.start(container_id)

    def create_container(self, req: ContainerRequest) -> str:
        ns = f"container:{req.sandbox_id}" if req.sandbox_id else None
        network = None if ns else req.network
        restart: dict[str, str | int] = {"Name": "no"} if req.restart_policy == "no" else {
            "Name": req.restart_policy, "MaximumRetryCount": req.max_retry}
        ports = () if ns else req.ports  # members publish through their sandbox
        host_config = self._api.create_host_config(
            network_mode=ns or network, ipc_mode=ns, pid_mode=ns, binds=req.binds or None,
            nano_cpus=req.nano_cpus, mem_limit=req.memory_bytes, restart_policy=restart,
            auto_remove=req.auto_remove, privileged=req.privileged, pids_limit=self._pids_limit,
            port_bindings=_port_bindings(ports),
            dns=None if ns or not req.dns else list(req.dns),
            # The json-file driver re-encodes output as UTF-8 text; `local` keeps the bytes.
            log_config=LogConfig(type="local", config={}))
        owner = self._image_project(req.image)
        if owner and owner != req.labels.get(L.PROJECT):
            # Another project's committed image, however it was named (tag, id, digest).
            raise ImageNotFound(f"create container {req.name}: image {req.image} is not "
                                "available to this project")
        with self._addresses.picking(network), \
                translate_docker_errors(f"create container {req.name}"):
            ip = self._addresses.pick(network, req.ipv4_address)
            cid = self._api.create_container(
                image=req.image, name=req.name, labels=req.labels,
                entrypoint=req.entrypoint or None, command=req.cmd or None,
                working_dir=req.workdir, environment=req.env or None, tty=req.tty,
                stdin_open=req.stdin, hostname=None if ns else _hostname(req.hostname or req.name),
                host_config=host_config, detach=True, healthcheck=_healthcheck(req.health),
                ports=_exposed(ports),
                networking_config=self._endpoint(network, req.aliases, ip))["Id"]
        if req.start:
            try:
                self._start(cid, f"create container {req.name}", ports)
            except NotFound:
                if network is None:
                    raise
                self.remove_container(cid, 0)  # as for the sandbox: the network vanished
                raise
        return str(cid)

    # -- imperative operations (hostops.protocol.ContainerOps) ----------------------------
    def start(self, container_id: str) -> None:
        self._start(container_id, f"start {container_id[:12]}")

    def stop(self, container_id: str, timeout: int) -> None:
        with translate_docker_errors(f"stop {container_id[:12]}"):
            self._api.stop(container_id, timeout=timeout)

    def restart(self, container_id: str, timeout: int) -> None:
        with translate_docker_errors(f"restart {container_id[:12]}"):
            self._api.restart(container_id, timeout=timeout)

    def kill(self, container_id: str, signal: str | int | None) -> None:
        with translate_docker_errors(f"kill {container_id[:12]}"):
            self._api.kill(container_id, signal=signal)

    def container_pid(self, container_id: str) -> int:
        """The host pid of a running container's first process (the prober enters its
        network namespace through /proc/PID/ns/net)."""
        with translate_docker_errors(f"inspect {container_id[:12]}"):
            state = self._api.inspect_container(container_id).get("State") or {}
        pid = state.get("Pid")
        if not state.get("Running") or not isinstance(pid, int) or pid <= 0:
            raise DriverError(f"container {container_id[:12]} is not running")
        return pid

    def kill_main_process(self, container_id: str) -> None:
        """SIGKILL a running container's main process from the host, as a crash would: Docker's
        restart policy then restarts it and counts the restart (`docker kill` would mark it
        stopped by hand). A pidfd pins the process, and the container must still name that
        pid once it is pinned, so a pid reused meanwhile is never signalled."""
        pid = self.container_pid(container_id)
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return  # already gone
        try:
            if self.container_pid(container_id) == pid:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)

    def exec_probe(self, container_id: str, command: list[str],
                   timeout: int) -> tuple[int | None, bytes]:
        """An exec probe: exit code (None: it timed out) and the first KiB of its output."""
        got = self.exec_run(container_id, command, max_output=1024, timeout=timeout)
        return (None if got.timed_out else got.exit_code), got.output

    def pause(self, container_id: str) -> None:
        with translate_docker_errors(f"pause {container_id[:12]}"):
            self._api.pause(container_id)

    def unpause(self, container_id: str) -> None:
        with translate_docker_errors(f"unpause {container_id[:12]}"):
            self._api.unpause(container_id)

    def update_resources(self, container_id: str, nano_cpus: int | None,
                         memory_bytes: int | None) -> None:
        # The SDK's update_container has no nano_cpus; the Engine API takes NanoCpus here.
        body: dict[str, Any] = {}
        if self._pids_limit is not None:  # containers made before it get it here, in place
            body["PidsLimit"] = self._pids_limit
        if nano_cpus is not None:
            body["NanoCpus"] = nano_cpus
        if memory_bytes is not None:
            body["Memory"] = memory_bytes
            body["MemorySwap"] = -1
        if not body:
            return
        with translate_docker_errors(f"update {container_id[:12]}"):
            url = self._http._url("/containers/{0}/update", container_id)
            self._http._raise_for_status(self._http._post_json(url, data=body))

    def logs(self, container_id: str, stdout: bool, stderr: bool, timestamps: bool,
             tail: int | None, since: int | None) -> bytes:
        # Read as a stream and keep only the newest LOGS_MAX_BYTES: memory stays bounded
        # however much the container wrote.
        kept: collections.deque[bytes] = collections.deque()
        size = 0
        with translate_docker_errors(f"logs {container_id[:12]}"):
            chunks = self._api.logs(container_id, stdout=stdout, stderr=stderr,
                                    timestamps=timestamps, tail="all" if tail is None else tail,
                                    since=since, stream=True, follow=False)
            try:
                for chunk in chunks:
                    kept.append(chunk)
                    size += len(chunk)
                    while size - len(kept[0]) >= LOGS_MAX_BYTES:
                        size -= len(kept.popleft())
            finally:
                with contextlib.suppress(Exception):
                    chunks.close()
        out = b"".join(kept)
        return out[-LOGS_MAX_BYTES:] if len(out) > LOGS_MAX_BYTES else out

    def follow_logs(self, container_id: str, stdout: bool, stderr: bool, timestamps: bool,
                    tail: int | None, since: int | None) -> Iterator[bytes]:
        with translate_docker_errors(f"logs {container_id[:12]}"):
            stream = self._api.logs(container_id, stdout=stdout, stderr=stderr,
                                    timestamps=timestamps, tail="all" if tail is None else tail,
                                    since=since, stream=True, follow=True)
        return iter(stream)

    def exec_run(self, container_id: str, command: list[str], max_output: int = EXEC_MAX_OUTPUT,
                 timeout: int = EXEC_TIMEOUT) -> ExecResult:
        # The output is read from the exec's socket by hand: the SDK's reader joins it all
        # in memory and waits for the command without a bound.
        with translate_docker_errors(f"exec in {container_id[:12]}"):
            ex = self._api.exec_create(container_id, command, stdout=True, stderr=True)
            sock = self._api.exec_start(ex["Id"], socket=True)
        # The SDK wraps the connection's socket; frames are read from the socket itself.
        raw = cast(socket.socket, getattr(sock, "_sock", sock))
        try:
            output, truncated, timed_out = _read_frames(raw, max_output,
                                                        time.monotonic() + timeout)
        finally:
            # Closing stops the command's output at the pipe: a command still writing
            # gets EPIPE rather than filling our memory.
            _SocketStream(raw).close()
        with translate_docker_errors(f"exec in {container_id[:12]}"):
            info = self._api.exec_inspect(ex["Id"])
        code = info.get("ExitCode")
        if info.get("Running") or code is None:
            code = None if truncated or timed_out else -1
        return ExecResult(exit_code=None if code is None else int(code), output=output,
                          exec_id=str(ex["Id"]), truncated=truncated, timed_out=timed_out)

    def top(self, container_id: str, ps_args: str | None) -> dict[str, Any]:
        try:
            with translate_docker_errors(f"top {container_id[:12]}"):
                return dict(self._api.top(container_id, ps_args=ps_args or None))
        except DriverError as exc:
            # Docker answers 500 when ps refuses its arguments ("ps: error: garbage option"):
            # that is the caller's mistake, a 400 naming the field.
            if type(exc) is DriverError and ps_args and "ps: " in exc.message:
                raise RuntimeRejected(f"ps_args: ps refused them "
                                      f"({exc.message.split('ps: ', 1)[1][:200]})") from exc
            raise

    def stats(self, container_id: str) -> dict[str, Any]:
        with translate_docker_errors(f"stats {container_id[:12]}"):
            return dict(self._api.stats(container_id, stream=False))

    def get_archive(self, container_id: str, path: str,
                    max_bytes: int = ARCHIVE_MAX_BYTES) -> tuple[bytes, dict[str, Any]]:
        # The Engine API by hand (as the SDK's get_archive does it): the response must be
        # closed when the tar grows past the cap, which the SDK's generator cannot do.
        what = f"copy {path} out of {container_id[:12]}"
        with translate_docker_errors(what):
            res = self._http._get(self._http._url("/containers/{0}/archive", container_id),
                                  params={"path": path}, stream=True)
            try:
                self._http._raise_for_status(res)
                stat = dict(decode_json_header(
                    res.headers.get("x-docker-container-path-stat") or "e30="))
                size = stat.get("size")
                if isinstance(size, int) and size > max_bytes:  # a file: refused before reading
                    raise _archive_too_large(path, max_bytes)
                data = bytearray()
                for chunk in res.iter_content(65536, False):
                    data += chunk
                    if len(data) > max_bytes:
                        raise _archive_too_large(path, max_bytes)
                return bytes(data), stat
            finally:
                res.close()

    def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        try:
            with translate_docker_errors(f"copy into {path} of {container_id[:12]}"):
                if not self._api.put_archive(container_id, path, data):
                    raise DriverError(f"the Docker Engine refused the archive for {path}")
        except DriverError as exc:
            # The engine answers 500 for a caller's mistake here; it is the caller's to fix.
            if "not a directory" in exc.message:
                raise RuntimeRejected(f"path: {path} is not a directory in the container") from exc
            raise

    def attach(self, container_id: str) -> RawStream:
        with translate_docker_errors(f"attach to {container_id[:12]}"):
            sock = self._api.attach_socket(container_id, params={
                "stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        return _raw(sock)

    def resize(self, container_id: str, height: int, width: int) -> None:
        with translate_docker_errors(f"resize {container_id[:12]}"):
            self._api.resize(container_id, height=height, width=width)

    def exec_interactive(self, container_id: str, command: list[str]) -> str:
        with translate_docker_errors(f"exec in {container_id[:12]}"):
            ex = self._api.exec_create(container_id, command, stdin=True, tty=True)
        return str(ex["Id"])

    def exec_stream(self, exec_id: str) -> RawStream:
        with translate_docker_errors(f"exec session {exec_id[:12]}"):
            sock = self._api.exec_start(exec_id, tty=True, socket=True)
        return _raw(sock)

    def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        with translate_docker_errors(f"resize exec session {exec_id[:12]}"):
            self._api.exec_resize(exec_id, height=height, width=width)

    def list_images(self) -> list[ImageInfo]:
        with translate_docker_errors("list images"):
            rows = self._api.images()
        out = []
        for r in rows:
            for ref in r.get("RepoTags") or []:
                repo, _, tag = ref.rpartition(":")
                if repo and repo != "<none>":
                    out.append(ImageInfo(id=r["Id"], repo=repo, tag=tag, size=int(r.get("Size") or 0),
                                         created=int(r.get("Created") or 0),
                                         project=(r.get("Labels") or {}).get(L.PROJECT)))
        return out

    def pull_image(self, repo: str, tag: str) -> ImageInfo:
        self.ensure_image(f"{repo}:{tag}", "Always")
        with translate_docker_errors(f"inspect image {repo}:{tag}"):
            data = self._api.inspect_image(f"{repo}:{tag}")
        return ImageInfo(id=data["Id"], repo=repo, tag=tag, size=int(data.get("Size") or 0), created=0)

    def search_images(self, term: str, limit: int) -> dict[str, Any]:
        with translate_docker_errors(f"search {term}"):
            rows = self._api.search(term, limit=max(1, min(limit, 100)))
        keys = ("name", "description", "star_count", "is_official", "is_automated")
        return {"results": [{k: r.get(k) for k in keys} for r in rows[:limit]
                            if isinstance(r, dict)]}

    def remove_image(self, ref: str) -> None:
        with translate_docker_errors(f"remove image {ref}"):
            self._api.remove_image(ref)
        self._images.discard(ref)

    def commit(self, container_id: str, repository: str, tag: str, project: str) -> ImageInfo:
        ref = f"{repository}:{tag}"
        existing = self._image_project(ref)
        if existing is not None and existing != project:
            # A base image (no label) or another project's: committing would replace what
            # every container asking for this name runs.
            raise Conflict(f"repository: {ref} already exists on the host and is not an image "
                           "this project committed; choose another repository or tag")
        with translate_docker_errors(f"commit {container_id[:12]} as {ref}"):
            made = self._api.commit(container_id, repository=repository, tag=tag, pause=True,
                                    changes=[f"LABEL {L.PROJECT}={json.dumps(project)}"])
            data = self._api.inspect_image(str(made["Id"]))
        self._images.add(ref)
        return ImageInfo(id=str(data["Id"]), repo=repository, tag=tag,
                         size=int(data.get("Size") or 0), created=int(time.time()), project=project)

    def _image_project(self, ref: str) -> str | None:
        """The capsuled.project label of the image `ref` names: "" for an image without
        one, None when there is no such image on the host."""
        try:
            with translate_docker_errors(f"inspect image {ref}"):
                data = self._api.inspect_image(ref)
        except (NotFound, ImageNotFound):
            return None
        return str(((data.get("Config") or {}).get("Labels") or {}).get(L.PROJECT) or "")

    def remove_container(self, container_id: str, stop_timeout: int) -> None:
        try:
            with translate_docker_errors(f"remove {container_id[:12]}"):
                if stop_timeout > 0:
                    self._api.stop(container_id, timeout=stop_timeout)
                # v: the anonymous volumes Docker made for the image's VOLUMEs go with it
                # (named volumes, the capsule's own, are never removed by this).
                self._api.remove_container(container_id, force=True, v=True)
        except NotFound:
            return
        except DriverError as exc:
            if "already in progress" in exc.message or "No such container" in exc.message:
                return
            raise

    def connect_network(self, container_id: str, network: str, aliases: tuple[str, ...]) -> None:
        try:
            # An address picked and reserved as for a create (docker_addresses): Docker's
            # own choice could take a stopped container's reserved one.
            with self._addresses.picking(network), \
                    translate_docker_errors(f"connect {container_id[:12]} to network {network}"):
                self._api.connect_container_to_network(
                    container_id, network, aliases=list(aliases) or None,
                    ipv4_address=self._addresses.pick(network, None))
        except DriverError as exc:
            if "already exists" in exc.message or "already attached" in exc.message:
                return
            raise

    def rename(self, container_id: str, name: str) -> None:
        try:
            with translate_docker_errors(f"rename {container_id[:12]} to {name}"):
                self._api.rename(container_id, name)
        except DriverError:
            # Docker refuses a name that is taken (409) or the container's own (400): by
            # this very container, it is done.
            with translate_docker_errors(f"inspect {container_id[:12]}"):
                current = str(self._api.inspect_container(container_id).get("Name") or "")
            if current.lstrip("/") != name:
                raise

    def disconnect_network(self, container_id: str, network: str) -> None:
        try:
            with translate_docker_errors(f"disconnect {container_id[:12]} from network {network}"):
                self._api.disconnect_container_from_network(container_id, network)
        except DriverError as exc:
            if "is not connected" in exc.message:
                return
            raise

    def events(self, instance: str) -> Iterator[RuntimeEvent]:
        with translate_docker_errors("event stream"):
            stream = self._api.events(decode=True, filters={
                "type": "container", "label": [f"{L.INSTANCE}={instance}"]})
        with translate_docker_errors("event stream"):
            for ev in stream:
                action = str(ev.get("Action") or ev.get("status") or "").split(":")[0]
                if action not in _EVENTS:
                    continue
                attrs = (ev.get("Actor") or {}).get("Attributes") or {}
                # A pooled sandbox's events name no capsule: the agent knows which claimed it.
                capsule = attrs.get(L.CAPSULE) or ("" if attrs.get(L.ROLE) == L.ROLE_POOL else None)
                if capsule is not None:
                    yield RuntimeEvent(capsule=capsule, container_id=ev.get("id", ""), action=action)


class _SocketStream:
    """A hijacked Docker socket as a RawStream.

    close() shuts the socket down before closing it: a bare close() does not wake a
    thread blocked in recv(), which would then keep the server process from exiting.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _read_frames(sock: socket.socket, max_output: int,
                 deadline: float) -> tuple[bytes, bool, bool]:
    """A non-TTY exec's output from Docker's multiplexed stream (frames of an 8-byte header
    — stream, 0, 0, 0, big-endian size — then the payload), stdout and stderr together:
    (output, truncated, timed_out). Reading stops past `max_output` or at `deadline`."""
    out = bytearray()
    header = bytearray()
    left = 0  # payload bytes of the current frame still to come
    while len(out) <= max_output:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(out), False, True
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return bytes(out), False, True
        except OSError:
            break
        if not data:
            break
        view = memoryview(data)
        while view:
            if left == 0:
                need = 8 - len(header)
                header += view[:need]
                view = view[need:]
                if len(header) == 8:
                    left = int.from_bytes(header[4:8], "big")
                    header.clear()
                continue
            payload = view[:left]
            out += payload
            left -= len(payload)
            view = view[len(payload):]
    if len(out) > max_output:
        return bytes(out[:max_output]), True, False
    return bytes(out), False, False


def _archive_too_large(path: str, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"path: the archive of {path} is larger than the limit of "
                           f"{_size(max_bytes)}; copy a smaller part of it")


def _size(n: int) -> str:
    return f"{n // 1_048_576} MiB" if n % 1_048_576 == 0 else f"{n} bytes"


def _raw(sock: Any) -> RawStream:
    # The SDK hands back a SocketIO wrapper (or a raw socket); the bridge wants the socket.
    return _SocketStream(getattr(sock, "_sock", sock))


def _time(value: str | None) -> str | None:
    return None if not value or value.startswith(_ZERO_TIME[:10]) else value


def _port_bindings(ports: tuple[PublishedPort, ...]) -> dict[int | str, Any] | None:
    """HostConfig.PortBindings: each container port on its host port (empty: any free one,
    as `docker run -P` picks) at its host address."""
    out: dict[int | str, Any] = {}
    for p in ports:
        out.setdefault(f"{p.container_port}/{p.protocol.lower()}", []).append(
            {"HostIp": p.host_ip, "HostPort": str(p.host_port) if p.host_port else ""})
    return out or None


def _exposed(ports: tuple[PublishedPort, ...]) -> list[tuple[int, str]] | None:
    """Config.ExposedPorts: Docker publishes only the ports a container exposes."""
    return sorted({(p.container_port, p.protocol.lower()) for p in ports}) or None


def _published(data: dict[str, Any]) -> tuple[PublishedPort, ...]:
    """NetworkSettings.Ports of an inspected container: its bindings while it runs."""
    out = []
    for key, binds in sorted(((data.get("NetworkSettings") or {}).get("Ports") or {}).items()):
        port, _, proto = str(key).partition("/")
        for b in binds or []:
            try:
                out.append(PublishedPort(container_port=int(port), protocol=proto.upper() or "TCP",
                                         host_port=int(b.get("HostPort") or 0),
                                         host_ip=str(b.get("HostIp") or "0.0.0.0")))
            except (ValueError, TypeError):
                continue  # a protocol we do not publish (sctp) or a malformed entry
    return tuple(out)


def _port_taken(message: str, ports: tuple[PublishedPort, ...]
                ) -> tuple[PublishedPort | None, str] | None:
    """Which of `ports` the Engine could not bind, and its words, when `message` says a
    host port is taken; None for any other failure."""
    m = _PORT_TAKEN.search(message)
    if m is None:
        return None
    proto = (m.group(1) or "").upper()
    number = int(m.group(2) or m.group(4))
    found = next((p for p in ports if p.host_port == number and proto in ("", p.protocol)),
                 None)
    return found, m.group(3) or m.group(5)


def _hostname(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.-]", "-", name)[:63].strip("-.") or "capsule"


def _healthcheck(h: HealthCheck | None) -> dict[str, Any] | None:
    """Docker's HEALTHCHECK, durations in nanoseconds."""
    if h is None:
        return None
    ns = 1_000_000_000
    return {"test": ["CMD", *h.command], "interval": int(h.interval * ns),
            "timeout": int(h.timeout * ns), "retries": h.retries,
            "start_period": int(h.start_period * ns)}
