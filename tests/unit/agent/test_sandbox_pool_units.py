"""The warm sandbox pool on FakeRuntime: which projects get idle sandboxes and how many,
what goes (expired, unserved project, stale /etc/hosts, surplus), what a restarted agent
adopts, and the claim as the executor makes it: recorded first, finished by the next
agent after a crash, released once the sandbox is gone, never given to two capsules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capsuled.agent.execute import CapsuleExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.agent.pool_claims import Claim, ClaimBook
from capsuled.agent.sandbox_pool import SandboxPool, hosts_fingerprint
from capsuled.domain import labels as L
from capsuled.domain.addresses import Address, network_uuid
from capsuled.domain.channel import Assignment
from capsuled.domain.spec import CapsuleSpec, ContainerSpec, Port
from capsuled.drivers.network.base import network_name
from capsuled.drivers.runtime.base import SandboxRequest
from capsuled.drivers.runtime.fake import FakeRuntime
from tests.unit.agent.rigs import INFRA, MemoryNetworks, MemoryVolumes, fake_runtime

WEB = ContainerSpec(uuid="u-web", name="web", image="busybox", command=["sleep", "3600"])


class Crash(BaseException):
    """The agent process dies here (not an Exception: nothing may catch it)."""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def want(uuid: str, project: str = "p1", deleting: bool = False, ports: bool = False,
         addresses: list[Address] | None = None) -> Assignment:
    web = WEB.model_copy(update={"ports": [Port(container_port=80, host_port=18080)]}) \
        if ports else WEB
    return Assignment(uuid=uuid, generation=1, deleting=deleting, project_id=project,
                      addresses=addresses or [],
                      spec=CapsuleSpec(name=f"n-{uuid}", containers=[web]))


class Host:
    """One host; `agent()` is a fresh agent process on it (the runtime, the networks and
    the claim file outlive it)."""

    def __init__(self, tmp: Path, parallel: ThreadPoolExecutor, size: int = 2,
                 ttl: float = 60.0) -> None:
        self.runtime: FakeRuntime = fake_runtime()
        self.networks = MemoryNetworks()
        self.volumes = MemoryVolumes()
        self.file = tmp / "claims.json"
        self.clock = Clock()
        self.hosts: tuple[tuple[str, str], ...] = ()
        self._parallel = parallel
        self._size, self._ttl = size, ttl

    def agent(self, size: int | None = None) -> tuple[SandboxPool, CapsuleExecutor]:
        networks = ProjectNetworks(self.networks, "inst", grace=60)
        pool = SandboxPool(self.runtime, networks, ClaimBook(self.file), "inst", INFRA,
                           self._size if size is None else size, self._ttl,
                           hosts_for=lambda p: self.hosts, clock=self.clock)
        return pool, CapsuleExecutor(self.runtime, self.volumes, networks, "inst", INFRA,
                                     stop_timeout=1, parallel=self._parallel, pool=pool)

    def pooled(self) -> dict[str, str]:
        """id → project of every pooled sandbox in the runtime, claimed or not."""
        return {c.id: c.labels[L.PROJECT] for c in self.runtime.containers.values()
                if c.labels.get(L.ROLE) == L.ROLE_POOL}

    def fill(self, pool: SandboxPool, rounds: int = 10) -> None:
        for _ in range(rounds):
            self.clock.now += 0.01
            pool.run_once()


@pytest.fixture()
def host(tmp_path: Path) -> Iterator[Host]:
    with ThreadPoolExecutor(4) as parallel:
        yield Host(tmp_path, parallel)


def test_only_projects_with_a_capsule_here_get_idle_sandboxes_off_their_network(host: Host) -> None:
    pool, _ = host.agent()
    host.fill(pool)
    assert host.pooled() == {}  # no capsule on this host yet: nothing made ahead
    pool.active({"p1"})
    host.fill(pool)
    assert sorted(host.pooled().values()) == ["p1", "p1"]
    for cid in host.pooled():
        c = host.runtime.containers[cid]
        assert c.state == "running" and c.networks == {}  # made on the network, then off it
        assert c.hostname == "" and L.CAPSULE not in c.labels
        assert c.labels[L.POOL_HOSTS] == hosts_fingerprint(())
    pool.active({"p1", "p2"})
    host.fill(pool)
    assert sorted(host.pooled().values()) == ["p1", "p2"]  # the size is shared out


def test_idle_sandboxes_expire_and_leave_with_their_project(host: Host) -> None:
    pool, _ = host.agent()
    pool.active({"p1"})
    host.fill(pool)
    first = set(host.pooled())
    host.clock.now += 61  # past idle_seconds: replaced by fresh ones
    host.fill(pool)
    assert len(host.pooled()) == 2 and not first & set(host.pooled())
    pool.active(set())  # the project's last capsule went: served a while longer
    host.clock.now += 30
    host.fill(pool)
    assert len(host.pooled()) == 2
    host.clock.now += 31
    host.fill(pool)
    assert host.pooled() == {}


def test_sandboxes_made_with_old_hosts_lines_are_replaced_and_not_offered(host: Host) -> None:
    pool, ex = host.agent()
    pool.active({"p1"})
    host.fill(pool)
    old = set(host.pooled())
    host.hosts = (("db", "10.0.0.9"),)  # a service appeared: new sandboxes list it
    assert pool.take("c1", "p1", 0, host.hosts) is None
    host.fill(pool)
    assert len(host.pooled()) == 2 and not old & set(host.pooled())
    assert pool.take("c1", "p1", 0, host.hosts) in host.pooled()


def test_a_capsule_gets_an_idle_sandbox_joined_under_its_names(host: Host) -> None:
    pool, ex = host.agent()
    pool.active({"p1"})
    host.fill(pool)
    idle = set(host.pooled())
    out = ex.sync("c1", want("c1"))
    assert out.settled and out.report is not None and out.report.sandbox_id in idle
    sandbox = host.runtime.containers[out.report.sandbox_id]
    assert sandbox.name == "n-c1_sandbox_c1" and sandbox.labels[L.ROLE] == L.ROLE_POOL
    assert sandbox.networks == {network_name("inst", "p1"): ("n-c1", "c1")}
    assert out.report.addresses and out.report.sandbox_state == "running"
    (web,) = [c for c in host.runtime.containers.values() if c.labels.get(L.CAPSULE) == "c1"]
    assert web.sandbox_id == sandbox.id and web.state == "running"
    assert any(e[1] == "SandboxClaimed" for e in out.report.events)
    assert ClaimBook(host.file).get("c1") == Claim(sandbox=sandbox.id, epoch=0)
    host.fill(pool)  # the claimed one is the capsule's: never offered, never removed
    assert sandbox.id in host.runtime.containers and pool.take("c2", "p1", 0, ()) != sandbox.id
    out = ex.sync("c1", want("c1", deleting=True))
    assert out.report is not None and out.report.gone
    assert sandbox.id not in host.runtime.containers and ClaimBook(host.file).get("c1") is None


@pytest.mark.parametrize("case", ["ports", "remade", "empty", "off"])
def test_capsules_the_pool_cannot_serve_make_their_own_sandbox(host: Host, case: str) -> None:
    pool, ex = host.agent(size=0 if case == "off" else None)
    pool.active({"p1"})
    host.fill(pool)
    if case == "empty":
        taken = {pool.take(f"x-{i}", "p1", 0, ()) for i in range(2)}
        assert taken == set(host.pooled())
    before = set(host.pooled())
    known = [Address(network_id=network_uuid("p1"), addr="10.0.0.5", subnet="10.0.0.0/24")]
    out = ex.sync("c1", want("c1", ports=case == "ports",
                             addresses=known if case == "remade" else None))
    assert out.report is not None and out.report.sandbox_id not in before
    assert host.runtime.containers[out.report.sandbox_id].labels[L.ROLE] == L.ROLE_SANDBOX
    assert ClaimBook(host.file).get("c1") is None


@pytest.mark.parametrize("dies_in", ["observe_container", "connect_network", "rename",
                                     "create_container"])
def test_an_agent_killed_mid_claim_leaves_the_next_one_a_whole_capsule(
        host: Host, dies_in: str) -> None:
    pool, ex = host.agent()
    pool.active({"p1"})
    host.fill(pool)
    host.runtime.inject(dies_in, Crash(dies_in))
    with pytest.raises(Crash):
        ex.sync("c1", want("c1"))
    claimed = ClaimBook(host.file).get("c1")
    assert claimed is not None  # recorded before anything used the sandbox

    pool, ex = host.agent()  # restarted
    pool.active({"p1"})
    host.fill(pool)
    assert pool.take("c2", "p1", 0, ()) != claimed.sandbox  # never a second owner
    out = ex.sync("c1", want("c1"))
    assert out.settled and out.report is not None and out.report.sandbox_id == claimed.sandbox
    sandbox = host.runtime.containers[claimed.sandbox]
    assert sandbox.name == "n-c1_sandbox_c1" and network_name("inst", "p1") in sandbox.networks
    apps = [c for c in host.runtime.containers.values() if c.labels.get(L.CAPSULE) == "c1"]
    assert [c.sandbox_id for c in apps] == [claimed.sandbox]


def test_a_capsule_deleted_while_its_agent_was_down_mid_claim_leaves_nothing(host: Host) -> None:
    pool, ex = host.agent()
    pool.active({"p1"})
    host.fill(pool)
    host.runtime.inject("connect_network", Crash("connect"))
    with pytest.raises(Crash):
        ex.sync("c1", want("c1"))
    claimed = ClaimBook(host.file).get("c1")
    assert claimed is not None
    pool, ex = host.agent()
    out = ex.sync("c1", None)  # an orphan to the restarted agent: removed with its sandbox
    assert out.settled and claimed.sandbox not in host.runtime.containers
    assert ClaimBook(host.file).get("c1") is None


def test_a_restarted_agent_adopts_idle_sandboxes_and_removes_half_made_ones(host: Host) -> None:
    pool, _ = host.agent()
    pool.active({"p1"})
    host.fill(pool)
    idle = set(host.pooled())
    # A sandbox made and never taken off its network (killed in between): no use.
    half = host.runtime.create_sandbox(_half_made(host))
    pool, _ = host.agent()
    pool.active({"p1"})
    host.fill(pool, rounds=1)
    assert set(host.pooled()) == idle and half.id not in host.runtime.containers
    assert pool.take("c1", "p1", 0, ()) in idle


def test_with_the_pool_off_leftover_idle_sandboxes_go_and_claims_still_hold(host: Host) -> None:
    pool, ex = host.agent()
    pool.active({"p1"})
    host.fill(pool)
    assert ex.sync("c1", want("c1")).settled
    claimed = ClaimBook(host.file).get("c1")
    assert claimed is not None
    pool, ex = host.agent(size=0)
    host.fill(pool, rounds=1)
    assert set(host.pooled()) == {claimed.sandbox}
    out = ex.sync("c1", want("c1"))
    assert out.report is not None and out.report.sandbox_id == claimed.sandbox


def test_the_claim_record_survives_and_never_names_one_sandbox_twice(tmp_path: Path) -> None:
    path = tmp_path / "claims.json"
    book = ClaimBook(path)
    assert book.take("c1", Claim(sandbox="s1", epoch=0))
    assert not book.take("c2", Claim(sandbox="s1", epoch=0))
    assert ClaimBook(path).all() == {"c1": Claim(sandbox="s1", epoch=0)}
    path.write_text(json.dumps({"version": 1, "claims": {
        "a": {"sandbox": "s9", "epoch": 1}, "b": {"sandbox": "s9", "epoch": 2}}}))
    assert list(ClaimBook(path).all().values()) == [Claim(sandbox="s9", epoch=1)]
    path.write_text("{not json")
    assert ClaimBook(path).all() == {}
    book = ClaimBook(path)
    book.release("nothing")
    assert book.take("c1", Claim(sandbox="s1", epoch=0)) and ClaimBook(path).owner("s1") == "c1"


def _half_made(host: Host) -> SandboxRequest:
    net = host.networks.ensure_network("inst", "p1")
    return SandboxRequest(name="capsuled-pool_half", image=INFRA, hostname="",
                          labels={L.INSTANCE: "inst", L.ROLE: L.ROLE_POOL, L.PROJECT: "p1",
                                  L.POOL_HOSTS: hosts_fingerprint(())}, network=net.name)
