"""ProjectNetworks: leases around creates, the idle grace period, and the retry after a
network vanished, against an in-memory network driver."""

from __future__ import annotations

import threading
from collections.abc import Collection

import pytest

from capsuled.agent.networks import ProjectNetworks, network_missing
from capsuled.drivers.network.base import ProjectNetwork, network_name
from capsuled.errors import DriverError, NotFound, Unavailable


class FakeNetworks:
    def __init__(self) -> None:
        self.nets: dict[str, ProjectNetwork] = {}
        self.cache: dict[str, ProjectNetwork] = {}
        self.attached: set[str] = set()  # projects with a container on their network
        self.calls: list[str] = []
        self.serial = 0
        self.fail_list = False

    def ensure_network(self, instance: str, project: str,
                       layout: object = None) -> ProjectNetwork:
        if project in self.cache:
            return self.cache[project]
        self.calls.append(f"ensure {project}")
        if project not in self.nets:
            self.serial += 1
            self.nets[project] = ProjectNetwork(f"id{self.serial}", network_name(instance, project),
                                                project)
        self.cache[project] = self.nets[project]
        return self.nets[project]

    def forget_network(self, instance: str, project: str) -> None:
        self.cache.pop(project, None)

    def list_networks(self, instance: str) -> list[ProjectNetwork]:
        if self.fail_list:
            raise Unavailable("docker down")
        return list(self.nets.values())

    def remove_unused_networks(self, instance: str,
                               projects: Collection[str]) -> list[ProjectNetwork]:
        self.calls.append(f"remove {sorted(projects)}")
        gone = [n for p, n in self.nets.items() if p in projects and p not in self.attached]
        for n in gone:
            del self.nets[n.project]
            self.cache.pop(n.project, None)
        return gone


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def fake() -> FakeNetworks:
    return FakeNetworks()


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def nets(fake: FakeNetworks, clock: Clock) -> ProjectNetworks:
    return ProjectNetworks(fake, "inst", grace=10.0, clock=clock)


def test_no_project_means_no_network(nets: ProjectNetworks, fake: FakeNetworks) -> None:
    assert nets.with_network(None, lambda net: net) is None
    assert fake.calls == []


def test_create_gets_the_project_network_and_steady_state_costs_nothing(
        nets: ProjectNetworks, fake: FakeNetworks) -> None:
    first = nets.with_network("p1", lambda net: net)
    again = nets.with_network("p1", lambda net: net)
    assert first == again and first is not None
    assert first.name == network_name("inst", "p1")
    assert fake.calls == ["ensure p1"]


def test_network_names_are_legal_and_distinct() -> None:
    names = {network_name("inst", p) for p in ("a", "b", "Project With Spaces/ü", "a" * 300)}
    assert len(names) == 4
    for n in names:
        assert n.startswith("capsuled-inst-") and len(n) < 64 and n.replace("-", "").isalnum()


def test_a_vanished_network_is_made_again_and_the_create_retried_once(
        nets: ProjectNetworks, fake: FakeNetworks) -> None:
    nets.with_network("p1", lambda net: net)
    del fake.nets["p1"]  # removed behind the agent's back; still cached
    seen: list[str] = []

    def create(net: ProjectNetwork | None) -> str:
        assert net is not None
        seen.append(net.id)
        if net.project not in fake.nets or fake.nets[net.project].id != net.id:
            raise NotFound(f"create sandbox x: network {net.name} not found")
        return net.id

    assert nets.with_network("p1", create) == "id2"
    assert seen == ["id1", "id2"]


def test_other_not_found_errors_are_not_retried(nets: ProjectNetworks) -> None:
    calls = []

    def create(net: ProjectNetwork | None) -> None:
        calls.append(net)
        raise NotFound("create container x: no such container")

    with pytest.raises(NotFound):
        nets.with_network("p1", create)
    assert len(calls) == 1


def test_a_network_missing_twice_is_a_driver_error(nets: ProjectNetworks) -> None:
    def create(net: ProjectNetwork | None) -> None:
        raise NotFound("network gone not found")

    with pytest.raises(DriverError):
        nets.with_network("p1", create)


def test_network_missing() -> None:
    assert network_missing(NotFound("create sandbox s: network capsuled-x not found"))
    assert not network_missing(NotFound("start 123: No such container: 123"))


def test_idle_network_goes_only_after_a_whole_grace_period(
        nets: ProjectNetworks, fake: FakeNetworks, clock: Clock) -> None:
    nets.with_network("p1", lambda net: net)
    nets.with_network("p2", lambda net: net)
    assert nets.collect(in_use={"p2"}) == []  # p1 idle from now on
    clock.now += 9.9
    assert nets.collect(in_use={"p2"}) == []
    clock.now += 0.1
    removed = nets.collect(in_use={"p2"})
    assert [n.project for n in removed] == ["p1"]
    assert set(fake.nets) == {"p2"}
    # The driver forgot it: the next create makes it again.
    fake.calls.clear()
    nets.with_network("p1", lambda net: net)
    assert fake.calls == ["ensure p1"]


def test_being_in_use_again_restarts_the_idle_clock(nets: ProjectNetworks, fake: FakeNetworks,
                                                    clock: Clock) -> None:
    nets.with_network("p1", lambda net: net)
    nets.collect(in_use=set())
    clock.now += 8
    nets.collect(in_use={"p1"})
    clock.now += 8
    assert nets.collect(in_use=set()) == []
    clock.now += 10
    assert [n.project for n in nets.collect(in_use=set())] == ["p1"]


def test_a_create_restarts_the_idle_clock(nets: ProjectNetworks, clock: Clock) -> None:
    nets.with_network("p1", lambda net: net)
    nets.collect(in_use=set())
    clock.now += 8
    nets.with_network("p1", lambda net: net)  # a create joined it (e.g. then failed)
    clock.now += 8
    assert nets.collect(in_use=set()) == []


def test_a_network_under_a_create_in_flight_is_never_removed(
        nets: ProjectNetworks, fake: FakeNetworks, clock: Clock) -> None:
    nets.with_network("p1", lambda net: net)
    nets.collect(in_use=set())
    clock.now += 60
    inside, release = threading.Event(), threading.Event()

    def slow_create(net: ProjectNetwork | None) -> None:
        inside.set()
        release.wait(5)

    t = threading.Thread(target=nets.with_network, args=("p1", slow_create))
    t.start()
    assert inside.wait(5)
    clock.now += 60
    assert nets.collect(in_use=set()) == []  # the lease keeps it
    assert "p1" in fake.nets
    release.set()
    t.join()
    clock.now += 60  # idle clock restarted by the lease: one more full period
    assert nets.collect(in_use=set()) == []
    clock.now += 10
    assert [n.project for n in nets.collect(in_use=set())] == ["p1"]


def test_a_network_with_containers_stays_and_is_tried_again(
        nets: ProjectNetworks, fake: FakeNetworks, clock: Clock) -> None:
    nets.with_network("p1", lambda net: net)
    fake.attached.add("p1")  # e.g. someone's container joined it
    nets.collect(in_use=set())
    clock.now += 10
    assert nets.collect(in_use=set()) == []
    fake.attached.clear()
    clock.now += 1
    assert [n.project for n in nets.collect(in_use=set())] == ["p1"]


def test_collect_survives_driver_failures(nets: ProjectNetworks, fake: FakeNetworks) -> None:
    fake.fail_list = True
    assert nets.collect(in_use=set()) == []
