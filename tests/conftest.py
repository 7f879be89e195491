"""Shared fixtures: a real `capsuled` process on a free port with its own state dir, an
HTTP client for it, the Docker SDK, and clean-up by label that doubles as an orphan check."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from capsuled.drivers.firewall.iptables import Commands, IptablesFirewall, Names

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LATEST = {"OpenStack-API-Version": "container latest"}


# Tests that drive real processes, Docker and the kernel share 2 busy cores with the rest of
# the suite; one of them losing a race with the machine must not hide the other 2,000. Each
# gets one more try, and every retry is listed in the summary ("RERUN"), so a test that
# needed one is seen and fixed. Unit tests get none: they must be deterministic.
_ENGINE_DIRS = ("integration", "e2e", "chaos", "contract")


def _engine_test(nodeid: str) -> bool:
    parts = nodeid.split("/", 2)
    return len(parts) > 2 and parts[0] == "tests" and parts[1] in _ENGINE_DIRS


# Why each rerun test failed its first try, printed at the end: "RERUN" alone names the
# test but not the race it lost.
_RERUN_REASONS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.outcome == "rerun":
        tail = "\n".join(str(report.longrepr).splitlines()[-25:])
        _RERUN_REASONS.append(f"{report.nodeid} ({report.when}):\n{tail}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _RERUN_REASONS:
        terminalreporter.section("why tests were rerun")
        for reason in _RERUN_REASONS:
            terminalreporter.write_line(reason + "\n")


# Engine tests that touch neither Docker nor the host's network: the store on real
# databases, and the simulation on the fake runtime. They run beside the Docker tests
# (on the other worker, after the unit tests), not in their queue: ~2.5 minutes of it.
# Each test in them is checked at collection: none may ask for the `docker_api` fixture.
_DOCKER_FREE = frozenset({
    "tests/chaos/test_store_db_crash.py",
    "tests/integration/test_databases.py",
    "tests/integration/test_host_beats.py",
    "tests/integration/test_scale_sim.py",
    "tests/integration/test_update_databases.py",
    "tests/integration/test_usage_totals.py",
})


def _queued_with_docker(nodeid: str) -> bool:
    return _engine_test(nodeid) and nodeid.split("::", 1)[0] not in _DOCKER_FREE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_run_order)  # stable: modules stay whole and in order
    for item in items:
        if _engine_test(item.nodeid) and item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=1))
        if (item.nodeid.split("::", 1)[0] in _DOCKER_FREE
                and "docker_api" in getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} uses Docker: take its module out of "
                                    "_DOCKER_FREE in tests/conftest.py")


# The Docker tests share one Docker Engine, one iptables and the host's ports; each
# capsuled they start labels its objects with its own instance, so two of them can run at
# once. Under pytest-xdist (scripts/test.sh runs two workers) they are two lanes, each one
# unit of work run test after test: lane A from the start on one worker, beside the unit
# tests and the engine tests without Docker on the other, which then takes lane B. The
# Docker tests mostly wait on containers and processes: one lane left half the machine
# idle for two thirds of the run. (A scheduler of our own, not xdist's `xdist_group`
# marks: xdist 3.8 renames items to group them, which pytest 9 ignores.)
#
# Lane B: sized from the run times (~10 of ~25 minutes of Docker tests) so that both
# lanes end together; a module not named here runs in lane A.
_LANE_B = ("tests/e2e/", "tests/integration/test_fuzz_api.py",
           "tests/integration/test_containers.py", "tests/integration/test_tenant_streams.py",
           "tests/integration/test_registries.py")
# Never in lane B, where they would meet their like: modules that start Docker Engines of
# their own (host-b's, the chaos rig's) or network namespaces, and those whose capsule
# services program the host's NAT (two deployments hand out the same VIPs and ports).
_LANE_A_ONLY = ("tests/chaos/", "tests/integration/test_multihost",
                "tests/integration/test_agent_failover.py",
                "tests/integration/test_overlay_deployments.py",
                "tests/integration/test_capsule_services.py", "tests/e2e/test_cli_services.py")


def _lane(nodeid: str) -> str | None:
    """"engine-a" or "engine-b" for a Docker test, None for any other."""
    if not _queued_with_docker(nodeid):
        return None
    module = nodeid.split("::", 1)[0]
    in_b = module.startswith(_LANE_B) and not module.startswith(_LANE_A_ONLY)
    return "engine-b" if in_b else "engine-a"


def _run_order(item: pytest.Item) -> int:
    """Lane A first, the rest, lane B last: xdist hands work out in this order."""
    return {"engine-a": 0, None: 1, "engine-b": 2}[_lane(item.nodeid)]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class TwoDockerLanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _lane(nodeid) or super()._split_scope(nodeid)

    # In collection order (_run_order), not by size: lane B must wait for the unit tests.
    config.option.loadscopereorder = False
    return TwoDockerLanes(config, log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Server:
    url: str
    state_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # more `capsuled` options, e.g. --log-format
    start_timeout: float = 120.0  # seconds to answer (a migration from far back takes longer)

    @property
    def token(self) -> str:
        return (self.state_dir / "admin-token").read_text().strip()

    @property
    def instance(self) -> str:
        with sqlite3.connect(self.state_dir / "capsuled.db") as db:
            return str(db.execute("select value from meta where key='instance_id'").fetchone()[0])

    def start(self) -> None:
        self.log = self.state_dir / "server.log"
        out = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "capsuled"), "--state-dir", str(self.state_dir), "--listen",
             f"127.0.0.1:{self.port}", *self.args], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env})
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"capsuled exited: {self.log.read_text()[-3000:]}")  # type: ignore[union-attr]
            try:
                return httpx.get(self.url + "/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, timeout=self.start_timeout, what="capsuled to answer")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self.proc = None

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"X-Auth-Token": token or self.token, **LATEST})

    def issue_token(self, project: str, user: str, *roles: str) -> str:
        """A new token from the server's token API (admin)."""
        with self.client() as c:
            r = c.post("/v1/tokens", json={"project_id": project, "user_id": user,
                                           "roles": list(roles) or ["member"]})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def cli(self, *args: str, input: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "capsule"), *args], capture_output=True, text=True,
                              input=input, timeout=timeout,
                              env={**os.environ, "CAPSULE_URL": self.url,
                                   "CAPSULE_TOKEN": self.token, "COLUMNS": "200", **(env or {})})


def remove_instance_objects(api: docker.APIClient, instance: str,
                            netns: str | None = None) -> list[str]:
    """Remove every container, volume, network and security-group chain of one capsuled
    instance; what was removed (the chains are not counted: a live server keeps its own)."""
    label = f"capsuled.instance={instance}"
    left = []
    for c in api.containers(all=True, filters={"label": [label]}):
        left.append(c["Names"][0])
        api.remove_container(c["Id"], force=True)
    for v in (api.volumes(filters={"label": [label]}) or {}).get("Volumes") or []:
        left.append(v["Name"])
        api.remove_volume(v["Name"], force=True)
    for n in api.networks(filters={"label": [label]}):
        left.append(n["Name"])
        api.remove_network(n["Id"])
    IptablesFirewall(Commands(netns)).remove_all(instance)
    left += remove_service_rules(instance, netns)
    return left


def remove_service_rules(instance: str, netns: str | None = None) -> list[str]:
    """The nftables tables of the instance's agents (capsule services; an agent leaves
    them in place when it stops, so that services work across its restarts), in `netns`
    (a path; None: this namespace)."""
    if shutil.which("nft") is None:
        return []
    enter = ["nsenter", f"--net={netns}"] if netns else []
    listed = subprocess.run([*enter, "nft", "list", "tables"], capture_output=True, text=True)
    gone = []
    for line in listed.stdout.splitlines():
        name = line.split()[-1] if line.startswith("table ip ") else ""
        if name.startswith(f"capsuled_svc_{instance}_"):
            subprocess.run([*enter, "nft", "delete", "table", "ip", name], capture_output=True)
            gone.append(name)
    return gone


@pytest.fixture(scope="session")
def docker_api(tmp_path_factory: pytest.TempPathFactory) -> docker.APIClient:
    api = docker.APIClient(base_url="unix:///var/run/docker.sock", version="auto")
    api.ping()  # in CI a missing engine must fail the run, not skip it
    # Once per run (the first lane to get here), before any capsuled of this run starts:
    # the other lane's live servers are no leftovers.
    base = tmp_path_factory.getbasetemp()  # an xdist worker's is popen-gwN in the run's
    done = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "docker-swept"
    with open(done.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            _sweep_leftovers(api)
            done.touch()
    return api


def _sweep_leftovers(api: docker.APIClient) -> None:
    # Docker has room for ~30 bridge networks: empty project networks that crashed earlier
    # runs left behind would make capsule creates fail here. (Live servers remake theirs.)
    # Only networks older than a test session: another run sharing this engine (a second
    # checkout, the tempest job) has live servers whose stopped containers hold no endpoint
    # on their network, and pruning it under them fails their next start.
    api.prune_networks(filters={"label": "capsuled.instance", "until": "30m"})
    # Security-group chains of deployments that left no network behind (a run killed before
    # its clean-up): their rules name addresses that another deployment's containers may get.
    live = {Names.of(n["Labels"]["capsuled.instance"]).tag
            for n in api.networks(filters={"label": "capsuled.instance"})}
    firewall = IptablesFirewall()
    for tag in firewall.deployments() - live:
        firewall.remove_deployment(tag)


def start_server(tmp: Path, docker_api: docker.APIClient, args: tuple[str, ...] = (),
                 start_timeout: float = 120.0, **env: str) -> Server:
    port = free_port()
    server = Server(url=f"http://127.0.0.1:{port}", state_dir=tmp, port=port,
                    env={"CAPSULED_AGENT__RELIST_INTERVAL": "2", **env}, args=list(args),
                    start_timeout=start_timeout)
    server.start()
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, docker_api: docker.APIClient) -> Iterator[Server]:
    # Every module shares this server: room for ~60 default-sized (0.1 CPU) containers
    # on 2 cores, so that modules' leftovers never make a later test's create fail. Still
    # less than the 8 cores that test_tenant_leaks asks for to be refused.
    srv = start_server(tmp_path_factory.mktemp("capsuled"), docker_api,
                       CAPSULED_AGENT__CPU_ALLOCATION_RATIO="3")
    instance = srv.instance
    yield srv
    srv.stop()
    remove_instance_objects(docker_api, instance)


@pytest.fixture()
def own_server(tmp_path: Path, docker_api: docker.APIClient) -> Iterator[Callable[..., Server]]:
    """Dedicated capsuled processes for tests that kill or restart them; their Docker
    objects are removed at the end whatever happened."""
    started: list[tuple[Server, str]] = []

    def make(start_timeout: float = 120.0, **env: str) -> Server:
        state = tmp_path / f"srv{len(started)}"
        state.mkdir()
        srv = start_server(state, docker_api, start_timeout=start_timeout, **env)
        started.append((srv, srv.instance))
        return srv

    yield make
    for srv, instance in started:
        if srv.proc is not None:
            srv.stop(signal.SIGKILL)
        remove_instance_objects(docker_api, instance)


@pytest.fixture()
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture()
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


def template(name: str | None, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": spec.pop("labels", {})}
    if name is not None:
        meta["name"] = name
    return {"kind": "capsule", "metadata": meta, "spec": {"containers": containers, **spec}}


def sleeper(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "command": ["sleep", "3600"], **extra}


class Capsules:
    """Creates capsules through the API and deletes what is left at the end of the test."""

    def __init__(self, api: httpx.Client) -> None:
        self.api = api
        self.created: list[str] = []

    def create(self, tmpl: dict[str, Any], expect: int = 202) -> dict[str, Any]:
        r = self.api.post("/v1/capsules", json={"template": tmpl})
        assert r.status_code == expect, r.text
        body: dict[str, Any] = r.json()
        if r.status_code == 202:
            self.created.append(body["uuid"])
        return body

    def get(self, ident: str) -> dict[str, Any]:
        r = self.api.get(f"/v1/capsules/{ident}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def wait_status(self, ident: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            body = self.get(ident)
            return body if body["status"] in statuses else None
        try:
            return wait_for(check, timeout=timeout, what=f"{ident} to be {'/'.join(statuses)}")  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; now: {self.get(ident)}") from None

    def wait_gone(self, ident: str, timeout: float = 60) -> None:
        wait_for(lambda: self.api.get(f"/v1/capsules/{ident}").status_code == 404,
                 timeout=timeout, what=f"{ident} to be deleted")

    def cleanup(self) -> None:
        for u in self.created:
            self.api.delete(f"/v1/capsules/{u}")
        for u in self.created:
            try:
                self.wait_gone(u, timeout=60)
            except AssertionError:
                pass


@pytest.fixture()
def capsules(api: httpx.Client) -> Iterator[Capsules]:
    c = Capsules(api)
    yield c
    c.cleanup()


def containers_of(docker_api: docker.APIClient, capsule_uuid: str, all_: bool = True) -> list[dict[str, Any]]:
    return docker_api.containers(all=all_, filters={"label": [f"capsuled.capsule={capsule_uuid}"]})  # type: ignore[no-any-return]


def member(docker_api: docker.APIClient, capsule_uuid: str, name: str) -> dict[str, Any]:
    found = docker_api.containers(all=True, filters={"label": [
        f"capsuled.capsule={capsule_uuid}", f"capsuled.name={name}"]})
    assert len(found) == 1, found
    return docker_api.inspect_container(found[0]["Id"])  # type: ignore[no-any-return]


def sandbox(docker_api: docker.APIClient, capsule_uuid: str) -> dict[str, Any]:
    found = docker_api.containers(all=True, filters={"label": [
        f"capsuled.capsule={capsule_uuid}", "capsuled.role=sandbox"]})
    assert len(found) == 1, found
    return docker_api.inspect_container(found[0]["Id"])  # type: ignore[no-any-return]


def exec_in(docker_api: docker.APIClient, container_id: str, *cmd: str) -> tuple[int, str]:
    ex = docker_api.exec_create(container_id, list(cmd))
    out = docker_api.exec_start(ex["Id"]).decode()
    return int(docker_api.exec_inspect(ex["Id"])["ExitCode"]), out
