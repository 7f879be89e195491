"""The whole agent (watch, events, relist, workers) on FakeRuntime and an in-memory control
plane: capsules come up, a death is noticed through the event stream, a restarted agent
adopts what is there without duplicates and removes orphans, and a dropped event stream
is followed again."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from capsuled.agent.loop import Agent
from capsuled.config import AgentSettings
from capsuled.domain import labels as L
from capsuled.domain.channel import Assignment, BareReport, CapsuleReport, ContainerAssignment
from capsuled.domain.spec import BareSpec, CapsuleSpec, ContainerSpec, RestartPolicy
from tests.conftest import wait_for
from tests.unit.agent.rigs import INFRA, MemoryChannel, MemoryNetworks, MemoryVolumes, fake_runtime

WEB = ContainerSpec(uuid="u-web", name="web", image="busybox", command=["sleep", "3600"])


def capsule(uuid: str, policy: RestartPolicy = "Never", deleting: bool = False,
            generation: int = 1) -> Assignment:
    return Assignment(uuid=uuid, generation=generation, deleting=deleting,
                      spec=CapsuleSpec(name=uuid, restart_policy=policy, containers=[WEB]))


def bare(uuid: str) -> ContainerAssignment:
    return ContainerAssignment(uuid=uuid, name=uuid, generation=1,
                               spec=BareSpec(container=ContainerSpec(name="b", image="busybox")))


class Host:
    """One host: the runtime outlives the agent processes started on it."""

    def __init__(self, relist: float = 60.0) -> None:
        self.runtime = fake_runtime()
        self.channel = MemoryChannel()
        self.volumes = MemoryVolumes()
        self.networks = MemoryNetworks()
        self._relist = relist
        self.agents: list[Agent] = []

    def start_agent(self) -> Agent:
        agent = Agent(self.channel, self.runtime, self.volumes,
                      AgentSettings.model_validate({
                          "host_name": "h1", "relist_interval": self._relist,
                          "heartbeat_interval": 0.2, "backoff_initial": 0.05,
                          "backoff_max": 0.2, "stop_timeout": 1}),
                      "inst", INFRA, networks=self.networks)
        agent.start()
        self.agents.append(agent)
        return agent

    def stop_agent(self, agent: Agent) -> None:
        agent.stop()
        self.runtime.drop_event_streams()  # its event loop is waiting on the stream
        # Not waiting for workers.busy(): stop() cancels queued syncs, which then stay
        # counted as running; a sync already under way returns at once once stopped.

    def roles(self, uuid: str) -> Counter[str]:
        return Counter(o.labels.get(L.NAME) or o.labels[L.ROLE]
                       for o in self.runtime.observe_capsule("inst", uuid))

    def report(self, uuid: str) -> CapsuleReport | None:
        return self.channel.last_report(uuid)

    def bare_report(self, uuid: str) -> BareReport | None:
        return next((r for r in reversed(self.channel.bare_reports) if r.uuid == uuid), None)


def up(report: CapsuleReport | None) -> bool:
    return report is not None and report.sandbox_state == "running" and \
        all(c.state == "running" for c in report.containers)


@pytest.fixture()
def host() -> Iterator[Host]:
    h = Host()
    yield h
    for agent in h.agents:
        h.stop_agent(agent)


def test_capsules_and_containers_come_up_and_go(host: Host) -> None:
    host.start_agent()
    assert host.channel.registered and host.channel.registered[0].name == "h1"
    host.channel.assign([capsule("cap-a"), capsule("cap-b")], [bare("bare-1")])
    wait_for(lambda: up(host.report("cap-a")) and up(host.report("cap-b")), timeout=10)
    wait_for(lambda: (r := host.bare_report("bare-1")) is not None and r.container is not None
             and r.container.state == "running", timeout=10)
    assert host.roles("cap-a") == Counter({"sandbox": 1, "web": 1})
    host.channel.assign([capsule("cap-a"), capsule("cap-b", deleting=True, generation=2)])
    wait_for(lambda: (r := host.report("cap-b")) is not None and r.gone, timeout=10)
    # bare-1 is no longer desired at all: an orphan, removed without a report.
    wait_for(lambda: host.runtime.observe_capsule("inst", "bare-1") == [], timeout=10)
    assert host.roles("cap-b") == Counter() and host.roles("cap-a") == Counter(
        {"sandbox": 1, "web": 1})


def test_a_death_is_noticed_through_the_event_stream(host: Host) -> None:
    host.start_agent()  # relists once a minute: only an event can be this quick
    host.channel.assign([capsule("cap-a")])
    wait_for(lambda: up(host.report("cap-a")), timeout=10)
    (web,) = [o for o in host.runtime.observe_capsule("inst", "cap-a") if o.labels.get(L.NAME)]
    host.runtime.exit(web.id, 7)

    def exited() -> bool:
        r = host.report("cap-a")
        return r is not None and any(c.state == "exited" and c.exit_code == 7
                                     for c in r.containers)
    wait_for(exited, timeout=10)


def test_a_dropped_event_stream_is_followed_again(host: Host) -> None:
    host.start_agent()
    host.channel.assign([capsule("cap-a"), capsule("cap-b")])
    wait_for(lambda: up(host.report("cap-a")) and up(host.report("cap-b")), timeout=10)
    wait_for(lambda: host.runtime.followers() == 1, timeout=10)
    host.runtime.drop_event_streams()
    wait_for(lambda: host.runtime.followers() == 0, timeout=10)
    # Reconnected after a pause (and relisted); a later death is still noticed.
    wait_for(lambda: host.runtime.followers() == 1, timeout=10)
    (web,) = [o for o in host.runtime.observe_capsule("inst", "cap-b") if o.labels.get(L.NAME)]
    host.runtime.exit(web.id, 9)
    wait_for(lambda: (r := host.report("cap-b")) is not None
             and any(c.exit_code == 9 for c in r.containers), timeout=10)


def test_a_restarted_agent_adopts_its_containers_and_removes_orphans(host: Host) -> None:
    first = host.start_agent()
    host.channel.assign([capsule("cap-a"), capsule("cap-b")], [bare("bare-1")])
    wait_for(lambda: up(host.report("cap-a")) and up(host.report("cap-b"))
             and host.bare_report("bare-1") is not None, timeout=10)
    host.stop_agent(first)
    host.agents.remove(first)
    before = {o.id for o in host.runtime.observe_capsule("inst", "cap-a")}
    creates = sum(1 for e in host.runtime.history() if e.action == "create")
    # While no agent ran, cap-b was deleted from the control plane altogether.
    host.channel.assign([capsule("cap-a")], [bare("bare-1")])
    host.start_agent()
    wait_for(lambda: host.runtime.observe_capsule("inst", "cap-b") == [], timeout=10)
    wait_for(lambda: len(host.channel.reports) > 0 and up(host.report("cap-a")), timeout=10)
    assert {o.id for o in host.runtime.observe_capsule("inst", "cap-a")} == before
    assert len(host.runtime.observe_capsule("inst", "bare-1")) == 1
    assert sum(1 for e in host.runtime.history() if e.action == "create") == creates


@pytest.mark.parametrize("ratio", [1.0, 4.0])
def test_the_host_offers_its_cores_times_the_cpu_allocation_ratio(ratio: float) -> None:
    runtime, channel = fake_runtime(), MemoryChannel()
    agent = Agent(channel, runtime, MemoryVolumes(),
                  AgentSettings.model_validate({"host_name": "h1", "cpu_allocation_ratio": ratio}),
                  "inst", INFRA, networks=MemoryNetworks())
    agent.register()
    physical = runtime.host_info("h1", "nova").cpus
    assert channel.registered[-1].cpus == physical * ratio


def test_a_remade_sandbox_asks_for_the_address_the_agent_reported(host: Host) -> None:
    # The API does not wake a host's agent when one of its capsules first reports an
    # address (nothing on that host depends on it): the agent keeps what it reported, so
    # the store's copy in its desired set (empty here: the channel never fills it) is not
    # what a remade sandbox asks for.
    def in_p1(uuid: str) -> Assignment:
        return capsule(uuid, policy="Always").model_copy(update={"project_id": "p1"})

    def addr(uuid: str) -> str | None:
        r = host.report(uuid)
        return r.addresses[0].addr if r is not None and r.addresses else None

    host.start_agent()
    host.channel.assign([in_p1("cap-b")])
    wait_for(lambda: up(host.report("cap-b")) and addr("cap-b"), timeout=10)
    host.channel.assign([in_p1("cap-b"), in_p1("cap-a")])
    wait_for(lambda: up(host.report("cap-a")) and addr("cap-a"), timeout=10)
    kept = addr("cap-a")
    host.channel.assign([in_p1("cap-a")])  # cap-b goes: its (lower) address is free
    wait_for(lambda: host.runtime.observe_capsule("inst", "cap-b") == [], timeout=10)
    (sandbox,) = [o for o in host.runtime.observe_capsule("inst", "cap-a")
                  if o.labels[L.ROLE] == L.ROLE_SANDBOX]
    host.runtime.remove_container(sandbox.id, 0)
    wait_for(lambda: any(o.labels[L.ROLE] == L.ROLE_SANDBOX and o.id != sandbox.id
                         for o in host.runtime.observe_capsule("inst", "cap-a")), timeout=10)
    wait_for(lambda: up(host.report("cap-a")) and addr("cap-a"), timeout=10)
    assert addr("cap-a") == kept
