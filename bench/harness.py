"""What every case needs: a real `capsuled` process, the Docker SDK, result rows, the
machine's description and load, and clean-up by label so that no run leaks containers,
volumes or networks (Docker has room for only ~30 bridge networks)."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx

BIN = Path(sys.executable).parent
LATEST = {"OpenStack-API-Version": "container latest"}
BENCH_LABEL = "capsuled.bench"  # on the baselines' own containers and network
INFRA = "capsuled/infra:latest"
BUSYBOX = "busybox:latest"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- results ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table: our figure next to a baseline measured in the same run."""

    case: str
    metric: str
    ours: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    goal: str = ""
    met: bool | None = None
    n: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.ours / self.baseline  # type: ignore[operator]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": None if self.ratio is None else round(self.ratio, 4)}


@dataclass
class CaseResult:
    case: str
    rows: list[Row]
    seconds: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    notes: list[str] = field(default_factory=list)
    error: str | None = None


# -- docker ------------------------------------------------------------------------------------
def docker_api() -> docker.APIClient:
    return docker.APIClient(base_url="unix:///var/run/docker.sock", version="auto",
                            timeout=120, max_pool_size=64)


def remove_labelled(api: docker.APIClient, label: str) -> list[str]:
    """Remove every container, volume and network carrying `label` (k=v); their names.
    Never raises: what cannot be removed is logged and left for `still_labelled`."""
    gone = []
    for kind, items, remove in (
            ("container", lambda: api.containers(all=True, filters={"label": [label]}),
             lambda o: api.remove_container(o["Id"], force=True)),
            ("volume", lambda: (api.volumes(filters={"label": [label]}) or {}).get("Volumes") or [],
             lambda o: api.remove_volume(o["Name"], force=True)),
            ("network", lambda: api.networks(filters={"label": [label]}),
             lambda o: api.remove_network(o["Id"]))):
        for obj in items():
            name = obj["Names"][0] if kind == "container" else obj["Name"]
            try:
                remove(obj)
                gone.append(name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log(f"could not remove {kind} {name}: {exc.explanation or exc}")
    return gone


def still_labelled(api: docker.APIClient, label: str) -> list[str]:
    """Names of the containers, volumes and networks still carrying `label`."""
    return ([c["Names"][0] for c in api.containers(all=True, filters={"label": [label]})]
            + [v["Name"] for v in (api.volumes(filters={"label": [label]}) or {}).get("Volumes") or []]
            + [n["Name"] for n in api.networks(filters={"label": [label]})])


# -- the server ------------------------------------------------------------------------------
class Server:
    """`capsuled` all-in-one on a free port with its own state directory."""

    def __init__(self, name: str, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        # `args`: more of the command line, e.g. ("--database-url", URL, "api") for an API
        # replica on another database (its `db` and `instance` then mean nothing).
        self.args = args
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"capsuled-bench-{name}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The benchmarks measure speed with many small containers (busybox sleeping):
        # Capsuled's default limits (0.1 CPU, 256 MiB per container, claimed on the host
        # like explicit requests) would fill a 2-CPU machine after 20 containers, so the
        # host offers 32x its cores and sleepers get 16 MiB (Docker's floor is 6).
        self.env = {"CAPSULED_AGENT__CPU_ALLOCATION_RATIO": "32",
                    "CAPSULED_LIMITS__DEFAULT_MEMORY": "16", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._instance: str | None = None

    @property
    def db(self) -> Path:
        return self.state_dir / "capsuled.db"

    @property
    def token(self) -> str:
        return (self.state_dir / "admin-token").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def instance(self) -> str:
        if self._instance is None:
            with contextlib.closing(sqlite3.connect(self.db)) as db:
                self._instance = str(db.execute(
                    "select value from meta where key='instance_id'").fetchone()[0])
        return self._instance

    def start(self) -> Server:
        out = open(self.state_dir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(BIN / "capsuled"), "--state-dir", str(self.state_dir), "--listen",
             f"127.0.0.1:{self.port}", "--log-level", "warning", *self.args],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env})

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("capsuled exited: " + self.log_tail())
            try:
                return httpx.get(self.url + "/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        # Generous: on a shared 2-core machine under load, imports and migrations alone can
        # take most of a minute.
        wait_for(up, timeout=180, interval=0.1, what="capsuled to answer")
        return self

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.state_dir / "server.log").read_text(errors="replace")[-chars:]
        return ""

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 120),
                            headers={"X-Auth-Token": self.token, **LATEST}, **kw)

    def unlimited_quota(self, client: httpx.Client, project: str = "admin") -> None:
        r = client.put(f"/v1/quotas/{project}", json={"capsules": -1, "containers": -1,
                                                       "cpu": -1, "memory": -1, "disk": -1})
        r.raise_for_status()

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def destroy_state(self) -> None:
        """Stop the server and remove its state directory (a replica that made nothing in
        Docker: its database is elsewhere)."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def destroy(self, api: docker.APIClient) -> list[str]:
        """Stop the server and remove everything its instance made; what was left."""
        instance = None
        with contextlib.suppress(sqlite3.Error, TypeError):
            instance = self.instance if self.db.exists() else None
        self.stop()
        left = remove_labelled(api, f"capsuled.instance={instance}") if instance else []
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return left


# -- the machine -------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (threads included), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine(api: docker.APIClient) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    info = api.version()
    podman = ""
    if shutil.which("podman"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            podman = subprocess.run(["podman", "--version"], capture_output=True, text=True,
                                    timeout=30).stdout.strip()
    return {"cpu_model": model, "cpus": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "os": _os_name(), "python": platform.python_version(),
            "docker": info.get("Version"), "podman": podman or None,
            "hostname": socket.gethostname()}


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    t0 = time.perf_counter()
    done: list[float] = []
    yield lambda: done[0] if done else time.perf_counter() - t0
    done.append(time.perf_counter() - t0)


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()
