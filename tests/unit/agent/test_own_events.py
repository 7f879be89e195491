"""A capsule's sync is not followed by a second one for Docker's `create` and `start`
events of the containers it made itself (agent/own_events.py), while every other event,
and any event of a container it did not make, still syncs the capsule."""

from __future__ import annotations

from unittest import mock

from capsuled.agent.bare import BareExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.agent.own_events import OwnEvents
from capsuled.domain.channel import ContainerAssignment
from capsuled.domain.spec import BareSpec, ContainerSpec
from capsuled.drivers.runtime.base import RuntimeEvent
from capsuled.errors import Unavailable
from tests.conftest import wait_for
from tests.unit.agent.rigs import MemoryNetworks, MemoryVolumes, fake_runtime
from tests.unit.agent.test_loops import make_agent, run_loop


def test_the_events_of_what_a_sync_made_need_no_second_sync() -> None:
    own = OwnEvents()
    own.begin("cap")
    assert own.hold("cap", "sb", "create") and own.hold("cap", "sb", "start")
    assert own.hold("cap", "web", "start")
    own.made("cap", "sb")
    own.made("cap", "web")
    assert own.end("cap") is False


def test_an_event_of_a_container_the_sync_did_not_make_syncs_again() -> None:
    own = OwnEvents()
    own.begin("cap")
    assert own.hold("cap", "stranger", "start")
    own.made("cap", "web")
    assert own.end("cap") is True


def test_deaths_and_events_outside_a_sync_are_never_held() -> None:
    own = OwnEvents()
    assert not own.hold("cap", "web", "start")  # no sync runs: the caller wakes it
    own.begin("cap")
    for action in ("die", "oom", "destroy", "stop", "restart", "health_status"):
        assert not own.hold("cap", "web", action)
    assert not own.hold("other", "x", "start")  # another capsule's sync is not running
    assert own.end("cap") is False
    assert own.end("cap") is False  # ended once: nothing left
    own.made("cap", "late")  # after its end: nothing to note it on
    assert not own.hold("cap", "late", "start")


def test_the_event_loop_holds_a_running_syncs_creates_and_starts_but_not_a_death() -> None:
    runtime = mock.Mock()
    runtime.events.side_effect = [iter([
        RuntimeEvent(capsule="cap1", container_id="web", action="create"),
        RuntimeEvent(capsule="cap1", container_id="web", action="start"),
        RuntimeEvent(capsule="cap2", container_id="db", action="start"),  # no sync of cap2
        RuntimeEvent(capsule="cap1", container_id="web", action="die"),
    ])] + [Unavailable("event stream: gone")] * 1000
    agent = make_agent(mock.Mock(), runtime)
    own = agent._own_events
    own.begin("cap1")
    with run_loop(agent, agent._event_loop):
        wait_for(lambda: len(agent.workers.enqueued) >= 2, timeout=5)  # type: ignore[attr-defined]
    assert agent.workers.enqueued == ["cap2", "cap1"]  # type: ignore[attr-defined]
    own.made("cap1", "web")
    assert own.end("cap1") is False


def test_a_bare_containers_sync_notes_what_it_made() -> None:
    runtime = fake_runtime()
    own = OwnEvents()
    bare = BareExecutor(runtime, ProjectNetworks(MemoryNetworks(), "inst", grace=60),
                        MemoryVolumes(), "inst", 1, own_events=own)
    own.begin("b1")
    done = bare.sync("b1", ContainerAssignment(uuid="b1", name="b1", generation=1, spec=BareSpec(
        container=ContainerSpec(name="b", image="busybox", command=["sleep", "60"]))))
    assert done.report is not None and done.report.container is not None
    assert done.report.container.state == "running"
    (made,) = runtime.observe_capsule("inst", "b1")
    assert own.hold("b1", made.id, "create") and own.hold("b1", made.id, "start")
    assert own.end("b1") is False
