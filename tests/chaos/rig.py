"""The processes a chaos run owns, and only those: its own PostgreSQL (initdb + pg_ctl in a
temporary directory), its own Docker Engine (scripts/extra-dockerd.sh in netns cap-chaos),
two `capsuled api` replicas on that PostgreSQL and one `capsuled agent` on that engine.
Every one of them can be killed with SIGKILL and started again; nothing here touches the
machine's shared engine or databases (other engineers' tests use them)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
LATEST = {"OpenStack-API-Version": "container latest"}
HOST = "chaos-host"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Proc:
    """A `capsuled` process of ours: its command line, environment and log."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    ready: Callable[[], bool] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env})

    def wait_ready(self, timeout: float) -> None:
        if self.ready is not None:
            wait_for(self.ready, timeout, f"{self.name} to answer", interval=0.3)

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Postgres:
    """A PostgreSQL cluster of this run's own, on a free loopback port; the server runs as
    the `postgres` user (initdb refuses root)."""

    def __init__(self) -> None:
        # Its own directory under /tmp: the postgres user cannot enter a test's tmp_path.
        self.dir = Path(tempfile.mkdtemp(prefix="capsuled-chaos-pg-"))
        self.port = free_port()
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/capsuled"

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                              text=True, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        return done

    def init(self) -> None:
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust",
                          "-U", "postgres", "--no-sync")
        self.start()
        self._as_postgres(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", "capsuled")

    def start(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
            "-w", "-t", "120", "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200", "start")

    def pid(self) -> int | None:
        pidfile = self.dir / "data" / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill9(self) -> None:
        """The postmaster and every backend, at once (a power cut for the database)."""
        pid = self.pid()
        if pid is None:
            return
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        for p in [pid, *(int(c) for c in children.split())]:
            _sigkill(p)
        wait_for(lambda: not _alive(pid), 30, "the postmaster to die")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m",
                          "immediate", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class Engine:
    """This run's own dockerd (scripts/extra-dockerd.sh NAME INDEX), in its own network
    namespace: chaos uses ("chaos", 3), the soak ("soak", 4), so both can run at once."""

    def __init__(self, name: str, index: int) -> None:
        self.name, self.index = name, index
        self.url = ""
        self.pidfile = Path(f"/run/cap-{name}/docker.pid")
        self.netns = f"/run/netns/cap-{name}"
        # The namespace's side of the index's /30 on the underlay (extra-dockerd.sh).
        self.underlay = f"172.31.250.{(index - 1) * 4 + 2}"

    def start(self) -> str:
        self.url = subprocess.run(["bash", str(ROOT / "scripts/extra-dockerd.sh"), self.name,
                                   str(self.index)], check=True, capture_output=True,
                                  text=True).stdout.strip()
        return self.url

    def client(self) -> docker.APIClient:
        return docker.APIClient(self.url, version="auto", timeout=60)

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def kill9(self) -> None:
        pid = self.pid()
        if pid is not None:
            _sigkill(pid)
            wait_for(lambda: not _alive(pid), 30, f"dockerd {self.name} to die")

    def stop(self) -> None:
        subprocess.run(["bash", str(ROOT / "scripts/extra-dockerd.sh"), "--stop", self.name],
                       check=False, capture_output=True)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Rig:
    tmp: Path
    pg: Postgres
    engine: Engine
    apis: list[Proc] = field(default_factory=list)
    agent: Proc | None = None
    urls: list[str] = field(default_factory=list)
    token: str = ""
    instance: str = ""

    def client(self, replica: int = 0, token: str | None = None, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.urls[replica], timeout=timeout,
                            headers={"X-Auth-Token": token or self.token, **LATEST})

    def live_url(self) -> str:
        for u in self.urls:
            if _up(u):
                return u
        raise RuntimeError("no API replica answers")


def _capsuled(*args: str) -> list[str]:
    return [str(BIN / "capsuled"), *args]


def start_rig(tmp: Path, *, engine: tuple[str, int] = ("chaos", 3),
              agent_env: dict[str, str] | None = None, log: Callable[[str], None] = print) -> Rig:
    """Everything up, the admin's quota unlimited and the agent registered."""
    tmp.mkdir(parents=True, exist_ok=True)
    rig = Rig(tmp, Postgres(), Engine(*engine))
    log(f"starting PostgreSQL and dockerd {rig.engine.name}")
    rig.pg.init()
    engine_url = rig.engine.start()
    remove_everything(rig.engine.client())  # what an earlier, killed run left in it
    subprocess.run(_capsuled("image", "seed"), check=True, capture_output=True,
                   env={**os.environ, "CAPSULED_DOCKER__HOST": engine_url})
    env = {"CAPSULED_API__HOST_DOWN_AFTER": "30", "CAPSULED_LOG_LEVEL": "info"}
    for i in range(2):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        rig.urls.append(url)
        rig.apis.append(Proc(f"api{i}", _capsuled("--state-dir", str(tmp / f"api{i}"), "--listen",
                                                  f"127.0.0.1:{port}", "--database-url", rig.pg.url,
                                                  "api"), env, tmp / f"api{i}.log",
                             ready=functools.partial(_up, url)))
    log("starting two API replicas")
    rig.apis[0].start()  # the first one alone: it runs the migrations and the bootstrap
    rig.apis[0].wait_ready(180)
    rig.apis[1].start()
    rig.apis[1].wait_ready(180)
    rig.token = wait_for(lambda: _read(tmp / "api0" / "admin-token"), 60, "the admin token")
    with rig.client() as api:
        r = api.put("/v1/quotas/admin", json={"capsules": -1, "containers": -1, "cpu": -1,
                                              "memory": -1, "disk": -1})
        assert r.status_code == 200, r.text
        r = api.post("/v1/tokens", json={"project_id": "service", "user_id": "agent-chaos",
                                         "roles": ["agent"], "host": HOST})
        assert r.status_code == 201, r.text
        agent_token = r.json()["token"]
    ops = free_port()
    rig.agent = Proc("agent", _capsuled(
        "agent", "--api", ",".join(rig.urls), "--host", HOST, "--docker-host", engine_url,
        "--ops-listen", f"127.0.0.1:{ops}", "--ops-url", f"http://127.0.0.1:{ops}"),
        {**env, "CAPSULED_AGENT_TOKEN": agent_token, "CAPSULED_AGENT__HEARTBEAT_INTERVAL": "1",
         "CAPSULED_AGENT__RELIST_INTERVAL": "3", "CAPSULED_AGENT__CPU_ALLOCATION_RATIO": "64",
         "CAPSULED_AGENT__UNDERLAY_ADDRESS": rig.engine.underlay,
         "CAPSULED_AGENT__HOST_NETNS": rig.engine.netns,
         "CAPSULED_AGENT__BACKOFF_MAX": "5", **(agent_env or {})},
        tmp / "agent.log")
    log("starting the agent")
    rig.agent.start()
    with rig.client() as api:
        wait_for(lambda: any(s["host"] == HOST and s["state"] == "up"
                             for s in api.get("/v1/services").json()["services"]),
                 180, "the agent registered and up", interval=0.5)
        rig.instance = api.get(f"/v1/agents/{HOST}", headers={"X-Auth-Token": agent_token}
                               ).json()["instance_id"]
    return rig


def stop_rig(rig: Rig) -> None:
    for p in [*([rig.agent] if rig.agent else []), *rig.apis]:
        p.stop()
    try:
        if rig.engine.url:
            remove_everything(rig.engine.client())
    except Exception:  # noqa: BLE001 - best effort: the engine itself goes next
        pass
    rig.engine.stop()
    rig.pg.stop()


def remove_everything(client: docker.APIClient) -> None:
    """The engine is this rig's alone: every capsuled object in it goes."""
    label = "capsuled.instance"
    for c in client.containers(all=True, filters={"label": [label]}):
        client.remove_container(c["Id"], force=True)
    for v in (client.volumes(filters={"label": [label]}) or {}).get("Volumes") or []:
        client.remove_volume(v["Name"], force=True)
    for n in client.networks(filters={"label": [label]}):
        try:
            client.remove_network(n["Id"])
        except docker.errors.APIError:
            pass


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None
