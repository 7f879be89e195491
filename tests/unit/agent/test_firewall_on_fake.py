"""The agent keeps security groups in the kernel (FakeRuntime, the iptables driver over an
in-memory table): a sandbox's address is guarded before any member starts, a kernel that
refuses keeps the members from starting, a rule change reaches a running capsule without
touching its containers, a deleted unit's rules go, and a restarted agent changes nothing
until it has listed what is there, then removes what is gone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from capsuled.agent.loop import Agent
from capsuled.config import AgentSettings
from capsuled.domain import labels as L
from capsuled.domain.channel import Assignment, ContainerAssignment
from capsuled.domain.security_groups import Allow, Firewall, Peers
from capsuled.domain.spec import BareSpec, CapsuleSpec, ContainerSpec
from capsuled.drivers.firewall.iptables import Names
from capsuled.drivers.runtime.base import ContainerRequest
from tests.conftest import wait_for
from tests.unit.agent.rigs import (INFRA, Kernel, MemoryChannel, MemoryNetworks, MemoryVolumes,
                                   fake_runtime)
from tests.unit.drivers.fake_iptables import Packet

WEB = ContainerSpec(uuid="u-web", name="web", image="busybox", command=["sleep", "3600"])
ONLY_8080 = Firewall(peers={"group:default": Peers(own_network=True)},
                     allow=[Allow(protocol="tcp", port_min=8080, port_max=8080,
                                  peers="group:default")])
OPEN = Firewall(peers={"group:default": Peers(own_network=True)},
                allow=[Allow(protocol="any", peers="group:default")])


class Host:
    def __init__(self) -> None:
        self.runtime = fake_runtime()
        self.channel = MemoryChannel()
        self.kernel = Kernel()
        self.networks = MemoryNetworks()
        self.agents: list[Agent] = []

    def start_agent(self, relist: float = 60.0) -> Agent:
        agent = Agent(self.channel, self.runtime, MemoryVolumes(),
                      AgentSettings.model_validate({
                          "host_name": "h1", "relist_interval": relist, "heartbeat_interval": 0.2,
                          "backoff_initial": 0.05, "backoff_max": 0.2, "stop_timeout": 1}),
                      "inst", INFRA, networks=self.networks, firewall=self.kernel)
        agent.start()
        self.agents.append(agent)
        return agent

    def stop_agent(self, agent: Agent) -> None:
        agent.stop()
        self.runtime.drop_event_streams()

    def address(self, uuid: str) -> str | None:
        r = self.channel.last_report(uuid)
        return r.addresses[0].addr if r is not None and r.addresses else None


def capsule(uuid: str, rules: Firewall | None, generation: int = 1,
            deleting: bool = False) -> Assignment:
    return Assignment(uuid=uuid, generation=generation, deleting=deleting, project_id="p1",
                      spec=CapsuleSpec(name=uuid, restart_policy="Never", containers=[WEB]),
                      firewall=rules)


def running(host: Host, uuid: str) -> bool:
    r = host.channel.last_report(uuid)
    return r is not None and r.sandbox_state == "running" and all(
        c.state == "running" for c in r.containers)


@pytest.fixture()
def host() -> Iterator[Host]:
    h = Host()
    yield h
    for agent in h.agents:
        h.stop_agent(agent)


def test_the_sandbox_is_guarded_before_any_member_starts(host: Host) -> None:
    seen: list[dict[str, str]] = []
    create = host.runtime.create_container

    def recording(req: ContainerRequest) -> str:
        seen.append(host.kernel.guarded())
        return create(req)
    host.runtime.create_container = recording  # type: ignore[method-assign]
    host.start_agent()
    host.channel.assign([capsule("cap-a", ONLY_8080)])
    wait_for(lambda: running(host, "cap-a"), timeout=10)
    ip = host.address("cap-a")
    assert ip is not None and seen and all(ip in guarded for guarded in seen)
    peer = ip.rsplit(".", 1)[0] + ".200"
    assert host.kernel.table.verdict(Packet(peer, ip, "tcp", 8080)) == "ACCEPT"
    assert host.kernel.table.verdict(Packet(peer, ip, "tcp", 9090)) == "DROP"


def test_a_kernel_that_refuses_keeps_the_members_from_starting(host: Host) -> None:
    host.kernel.refuse = True
    host.start_agent()
    host.channel.assign([capsule("cap-a", ONLY_8080)])
    wait_for(lambda: (r := host.channel.last_report("cap-a")) is not None and r.error is not None
             and "iptables-restore" in r.error, timeout=10)
    members = [o for o in host.runtime.observe_capsule("inst", "cap-a")
               if o.labels.get(L.ROLE) != L.ROLE_SANDBOX]
    assert members == []
    host.kernel.refuse = False  # the retry after back-off guards it and starts the member
    wait_for(lambda: running(host, "cap-a"), timeout=10)
    assert host.address("cap-a") in host.kernel.guarded()


def test_new_rules_reach_a_running_capsule_and_its_containers_stay(host: Host) -> None:
    host.start_agent()
    host.channel.assign([capsule("cap-a", ONLY_8080)])
    wait_for(lambda: running(host, "cap-a"), timeout=10)
    ip = host.address("cap-a")
    assert ip is not None
    peer = ip.rsplit(".", 1)[0] + ".200"
    ids = {o.id for o in host.runtime.observe_capsule("inst", "cap-a")}
    host.channel.assign([capsule("cap-a", OPEN)])  # same generation: only the rules changed
    wait_for(lambda: host.kernel.table.verdict(Packet(peer, ip, "tcp", 9090)) == "ACCEPT",
             timeout=10)
    assert {o.id for o in host.runtime.observe_capsule("inst", "cap-a")} == ids
    # Without rules (no project network, or an API from before groups): not filtered.
    host.channel.assign([capsule("cap-a", None)])
    wait_for(lambda: ip not in host.kernel.guarded(), timeout=10)


def test_a_deleted_capsule_and_container_lose_their_rules(host: Host) -> None:
    host.start_agent()
    box = ContainerAssignment(uuid="bare-1", name="bare-1", generation=1, project_id="p1",
                              spec=BareSpec(container=ContainerSpec(name="b", image="busybox",
                                                                    command=["sleep", "60"])),
                              firewall=ONLY_8080)
    host.channel.assign([capsule("cap-a", ONLY_8080), capsule("cap-b", OPEN)], [box])
    wait_for(lambda: running(host, "cap-a") and running(host, "cap-b") and len(
        host.kernel.guarded()) == 3, timeout=10)
    names = Names.of("inst")
    host.channel.assign([capsule("cap-a", ONLY_8080),
                         capsule("cap-b", OPEN, generation=2, deleting=True)])
    wait_for(lambda: (r := host.channel.last_report("cap-b")) is not None and r.gone, timeout=10)
    wait_for(lambda: host.runtime.observe_capsule("inst", "bare-1") == [], timeout=10)
    # Gone, though cap-b is still desired (deleting) until the store drops it.
    wait_for(lambda: list(host.kernel.guarded()) == [host.address("cap-a")], timeout=10)
    assert names.unit("cap-b") not in host.kernel.table.chains
    assert names.unit("bare-1") not in host.kernel.table.chains


def test_a_restarted_agent_keeps_the_rules_then_removes_what_is_gone(host: Host) -> None:
    first = host.start_agent()
    host.channel.assign([capsule("cap-a", ONLY_8080), capsule("cap-b", ONLY_8080)])
    wait_for(lambda: running(host, "cap-a") and running(host, "cap-b")
             and len(host.kernel.guarded()) == 2, timeout=10)
    before = dict(host.kernel.table.chains)
    host.stop_agent(first)  # as a kill -9: nothing is cleaned up
    # While it is down cap-b goes: its containers removed by hand, and no longer desired.
    for o in host.runtime.observe_capsule("inst", "cap-b"):
        host.runtime.remove_container(o.id, 0)
    host.channel.assign([capsule("cap-a", ONLY_8080)])
    writes = len(host.kernel.table.restores)
    host.start_agent(relist=0.2)
    wait_for(lambda: Names.of("inst").unit("cap-b") not in host.kernel.table.chains, timeout=10)
    after = host.kernel.table.chains
    assert after[Names.of("inst").unit("cap-a")] == before[Names.of("inst").unit("cap-a")]
    assert list(host.kernel.guarded()) == [host.address("cap-a")]
    assert after["DOCKER-USER"].count(f"-j {Names.of('inst').dispatch}") == 1
    # One write removed cap-b; cap-a's rules were found as wanted and left alone.
    assert len(host.kernel.table.restores) == writes + 1
