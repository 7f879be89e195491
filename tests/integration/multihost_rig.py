"""The two-host rig that multi-host tests share (one fixture, `cluster`): two stateless API
replicas on one database and two agents, each driving its own Docker Engine (host-b's is
an extra dockerd with its own data root, socket, address pool and network namespace, from
scripts/extra-dockerd.sh), talking to the API over HTTP, with project networks across the
two hosts over the rig's underlay veth.

`cluster` is parametrized over PostgreSQL and MariaDB; a module that needs one engine only
narrows it with `pytest.mark.parametrize("cluster", ["postgresql"], indirect=True)`.
Import it into a test module (`from multihost_rig import cluster`) to use it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from capsuled.drivers.network.vxlan import Chains
from conftest import (LATEST, ROOT, VENV_BIN, free_port, remove_instance_objects, template,
                      sleeper, wait_for)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ADMIN_URLS = {
    "postgresql": os.environ.get("CAPSULED_TEST_POSTGRESQL_URL",
                                 "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
    "mariadb": os.environ.get("CAPSULED_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
MAIN_DOCKER = "unix:///var/run/docker.sock"
DOWN_AFTER = 3.0
HOSTB_NETNS = "/run/netns/cap-hostb"
UNDERLAY = {
    "host-a": {"CAPSULED_AGENT__UNDERLAY_ADDRESS": "172.31.250.1"},
    "host-b": {"CAPSULED_AGENT__UNDERLAY_ADDRESS": "172.31.250.2",
               "CAPSULED_AGENT__HOST_NETNS": HOSTB_NETNS},
}


@dataclass
class Proc:
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Cluster:
    urls: list[str]
    token: str
    agents: dict[str, Proc]
    dockers: dict[str, docker.APIClient]
    instance: str = ""
    agent_tokens: dict[str, str] = field(default_factory=dict)

    def client(self, replica: int = 0, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.urls[replica], timeout=30,
                            headers={"X-Auth-Token": token or self.token, **LATEST})


def _capsuled(*args: str) -> list[str]:
    return [str(VENV_BIN / "capsuled"), *args]


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    kind: str = request.param
    tmp = tmp_path_factory.mktemp(f"multihost-{kind}")
    admin = create_engine(ADMIN_URLS[kind], isolation_level="AUTOCOMMIT")
    name = f"capsuled_mh_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    db_url = make_url(ADMIN_URLS[kind]).set(database=name).render_as_string(hide_password=False)
    hostb_docker = subprocess.run(["bash", str(ROOT / "scripts/extra-dockerd.sh"), "hostb", "1"],
                                  check=True, capture_output=True, text=True).stdout.strip()
    sweep_stale_chains()
    subprocess.run(_capsuled("image", "seed"), check=True, capture_output=True,
                   env={**os.environ, "CAPSULED_DOCKER__HOST": hostb_docker})
    dockers = {"host-a": docker.APIClient(MAIN_DOCKER, version="auto"),
               "host-b": docker.APIClient(hostb_docker, version="auto")}
    # Project networks span the two hosts over the rig's underlay veth (extra-dockerd.sh).
    # A /16 of the overlay pool of this run's own: the main engine is shared.
    env = {"CAPSULED_API__HOST_DOWN_AFTER": str(DOWN_AFTER), "CAPSULED_LOG_LEVEL": "info",
           "CAPSULED_OVERLAY__POOL": str(unused_overlay_pool(dockers.values()))}
    c = Cluster([], "", {}, dockers)
    apis: list[Proc] = []
    try:  # a start that fails half way stops what it started too
        _start(c, apis, tmp, db_url, env, hostb_docker)
        yield c
    finally:
        for p in [*c.agents.values(), *apis]:
            p.stop()
        if c.instance:
            for host, client in c.dockers.items():
                remove_instance_objects(client, c.instance,
                                        HOSTB_NETNS if host == "host-b" else None)
            remove_overlay_objects(c.instance)
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name}" + (" WITH (FORCE)" if kind == "postgresql" else "")))
        admin.dispose()


def unused_overlay_pool(engines: Iterable[docker.APIClient]) -> IPv4Network:
    """A /16 of 10.224.0.0/12 that no network on either engine overlaps: a rig killed
    before its clean-up leaves its networks on host-b's engine (its data root outlives the
    dockerd), and a block of theirs would fail every network this rig makes there."""
    subnets = [c["Subnet"] for e in engines for n in e.networks()
               for c in ((n.get("IPAM") or {}).get("Config") or []) if c.get("Subnet")]
    taken = [t for t in map(ip_network, subnets) if isinstance(t, IPv4Network)]
    free = [p for p in IPv4Network("10.224.0.0/12").subnets(new_prefix=16)
            if not any(p.overlaps(t) for t in taken)]
    assert free, f"every /16 of 10.224.0.0/12 is used by a Docker network: {taken}"
    return free[secrets.randbelow(len(free))]


def _start(c: Cluster, apis: list[Proc], tmp: Path, db_url: str, env: dict[str, str],
           hostb_docker: str) -> None:
    """Two API replicas, then an agent on each host (host-a's talks to replica 0, host-b's
    to replica 1); returns once both agents are up."""
    start_replicas(c, apis, tmp, db_url, env)
    with c.client() as api:
        for i, (host, sock) in enumerate((("host-a", MAIN_DOCKER), ("host-b", hostb_docker))):
            start_agent(c, api, host, sock, [c.urls[i]], tmp, {**env, **UNDERLAY[host]})
        c.instance = api.get("/v1/agents/host-a", headers={
            "X-Auth-Token": c.agent_tokens["host-a"]}).json()["instance_id"]
        wait_for(lambda: {s["host"] for s in api.get("/v1/services").json()["services"]
                          if s["state"] == "up"} == {"host-a", "host-b"}, timeout=180,
                 what="both agents registered and up")


def start_replicas(c: Cluster, apis: list[Proc], tmp: Path, db_url: str, env: dict[str, str],
                   count: int = 2) -> None:
    """`count` API replicas on the database, up, with the admin's quota unlimited."""
    for i in range(count):
        port = free_port()
        p = Proc(_capsuled("--state-dir", str(tmp / f"api{i}"), "--listen", f"127.0.0.1:{port}",
                           "--database-url", db_url, "api"), env, tmp / f"api{i}.log")
        p.start()
        apis.append(p)
        c.urls.append(f"http://127.0.0.1:{port}")
    for u in c.urls:
        wait_for(lambda u=u: _up(u), timeout=180, what=f"API replica {u}")  # a loaded machine
    c.token = wait_for(lambda: next(filter(None, (_read(tmp / f"api{i}" / "admin-token")
                                                  for i in range(count))), None),
                       what="the bootstrap admin token")
    with c.client() as api:
        assert api.put("/v1/quotas/admin", json={"capsules": -1, "containers": -1, "cpu": -1,
                                                 "memory": -1}).status_code == 200


def start_agent(c: Cluster, api: httpx.Client, host: str, docker_host: str, urls: list[str],
                tmp: Path, env: dict[str, str]) -> Proc:
    """The agent of `host` on `docker_host`, given `urls` (one --api each), started with a
    token of its own; not waited for."""
    r = api.post("/v1/tokens", json={"project_id": "service", "user_id": f"agent-{host}",
                                     "roles": ["agent"], "host": host})
    assert r.status_code == 201, r.text
    c.agent_tokens[host] = r.json()["token"]
    ops = free_port()
    agent = Proc(_capsuled("agent", *(a for u in urls for a in ("--api", u)), "--host", host,
                           "--docker-host", docker_host, "--ops-listen", f"127.0.0.1:{ops}",
                           "--ops-url", f"http://127.0.0.1:{ops}", "--label", f"name={host}"),
                 {**env, "CAPSULED_AGENT_TOKEN": c.agent_tokens[host],
                  "CAPSULED_AGENT__HEARTBEAT_INTERVAL": "0.5",
                  "CAPSULED_AGENT__RELIST_INTERVAL": "3"},
                 tmp / f"agent-{host}.log")
    agent.start()
    c.agents[host] = agent
    return agent


def in_netns(netns: str | None, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(["nsenter", f"--net={netns}"] if netns else []), *argv],
                          capture_output=True, text=True, check=False)


def sweep_stale_chains() -> None:
    """Chains that killed runs of other deployments left behind. Host B's namespace is the
    rig's own (its engine runs without iptables), so every capsuled chain there is stale.
    On the machine's own namespace only input filters of an older kind go: ones that drop
    VXLAN for every VNI (not only their own deployment's), which would drop this run's
    VXLAN from host B; the filters of today leave other deployments' VNIs alone."""
    for netns, legacy_only in ((HOSTB_NETNS, False), (None, True)):
        rules = in_netns(netns, "iptables-save", "-t", "filter").stdout.splitlines()
        blind = {line.split()[1] for line in rules
                 if line.startswith("-A CAPSULED-") and line.split()[1].endswith("-IN")
                 and line.endswith("--dport 4789 -j DROP") and " -s " not in line}
        ours = sorted({w for line in rules for w in line.split()
                       if w.startswith(("CAPSULED-", "CSG-"))
                       and (not legacy_only or w in blind)})
        for line in rules:
            words = line.split()
            if line.startswith("-A ") and "-j" in words and words[words.index("-j") + 1] in ours \
                    and words[1] in ("INPUT", "FORWARD", "DOCKER-USER"):
                in_netns(netns, "iptables", "-w", "-D", *words[1:])
        for chain in ours:
            in_netns(netns, "iptables", "-w", "-F", chain)
        for chain in ours:
            in_netns(netns, "iptables", "-w", "-X", chain)


def remove_overlay_objects(instance: str) -> None:
    """What the agents left in both hosts' namespaces for this deployment: its VXLAN
    devices (found by their alias) and its firewall chains."""
    chains = Chains.of(instance)
    for netns in (None, HOSTB_NETNS):
        shown = in_netns(netns, "ip", "-o", "-d", "link", "show", "type", "vxlan").stdout
        for line in shown.splitlines():
            if f"alias capsuled:{instance}:" in line:
                in_netns(netns, "ip", "link", "del", line.split(":")[1].strip().split("@")[0])
        for parent, chain in (("INPUT", chains.input), ("FORWARD", chains.forward)):
            in_netns(netns, "iptables", "-w", "-D", parent, "-j", chain)
        for chain in (chains.input, chains.forward, chains.isolate):
            in_netns(netns, "iptables", "-w", "-F", chain)
        for chain in (chains.input, chains.forward, chains.isolate):
            in_netns(netns, "iptables", "-w", "-X", chain)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def create(api: httpx.Client, name: str, **spec: Any) -> dict[str, Any]:
    r = api.post("/v1/capsules", json={"template": template(name, [sleeper("app")], **spec)})
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_status(api: httpx.Client, uuid_: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def check() -> bool:
        got.update(api.get(f"/v1/capsules/{uuid_}").json())
        return got.get("status") in statuses
    try:
        wait_for(check, timeout=timeout, what=f"{uuid_} {statuses}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: now {got.get('status')} "
                             f"({got.get('status_reason')})") from None
    return got


def delete_all(api: httpx.Client, uuids: list[str]) -> None:
    for u in uuids:
        api.delete(f"/v1/capsules/{u}")
    for u in uuids:
        wait_for(lambda u=u: api.get(f"/v1/capsules/{u}").status_code == 404, timeout=60,
                 what=f"{u} deleted")
