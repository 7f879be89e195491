"""The agent's side of capsule services on a recording load balancer: the rules follow the
API's view and this host's networks; a local capsule that stops serving leaves at once;
a drain takes a capsule out everywhere before its containers stop (and waits for its
connections, within a bound); new sandboxes get their project's names; and the executor
on the fake runtime drains before it removes, announces a replacement, and reports it."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from capsuled.agent.execute import CapsuleExecutor
from capsuled.agent.networks import ProjectNetworks
from capsuled.agent.services import ServiceAgent, plan, serving_here
from capsuled.domain import labels as L
from capsuled.domain.channel import Assignment, CapsuleReport, ContainerReport
from capsuled.domain.services import (Candidate, ServicePort, ServiceRecord, ServicesView,
                                      build_view)
from capsuled.domain.spec import CapsuleSpec, ContainerSpec
from capsuled.drivers.lb.base import Flows, LbState, Segment
from tests.conftest import wait_for
from tests.unit.agent.rigs import INFRA, MemoryNetworks, MemoryVolumes, fake_runtime

RANGE = ipaddress.IPv4Network("10.96.0.0/16")
SEG = Segment("br-net-p1", ipaddress.IPv4Network("10.208.0.0/22"))
READY = ("Running", {"ready": True})


def view(*backends: str, projects: tuple[str, ...] = ("p1",), publish: int | None = None) -> ServicesView:
    cands = [Candidate(uuid=b, name=b, project_id="p1", labels={"app": "web"}, status="Running",
                       deleting=False, draining=False, addr=f"10.208.0.{i + 2}", members=(READY,))
             for i, b in enumerate(backends)]
    svc = ServiceRecord(uuid="s1", name="web", project_id="p1", vip="10.96.0.7",
                        ports=[ServicePort(port=80, target_port=8080, publish=publish)],
                        selector={"app": "web"})
    return build_view("h1", RANGE, projects, [svc], cands)


def addrs(state: LbState | None) -> list[str]:
    assert state is not None
    return [str(a) for f in state.frontends for a in f.backends]


class RecordingLb:
    def __init__(self) -> None:
        self.applied: list[LbState] = []
        self.open: dict[str, int] = {}
        self.keys: dict[str, list[str]] = {}  # every connection the kernel remembers
        self.asked: list[str] = []

    @property
    def last(self) -> LbState | None:
        return self.applied[-1] if self.applied else None

    def apply(self, state: LbState) -> None:
        self.applied.append(state)

    def connections(self, addr: str, ports: Collection[int]) -> Flows:
        self.asked.append(addr)
        return Flows(open=self.open.get(addr, 0), keys=frozenset(self.keys.get(addr, ())))


class ViewChannel:
    """The API's service watch: answers when the test has put a view of a new version."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._view: ServicesView | None = None

    def put(self, v: ServicesView) -> None:
        with self._cond:
            self._view = v
            self._cond.notify_all()

    def services(self, host: str, after: str | None, timeout: float) -> ServicesView:
        with self._cond:
            self._cond.wait_for(lambda: self._view is not None and self._view.version != after,
                                timeout=min(timeout, 0.5))
            return self._view or ServicesView(host=host).with_version()


class Rig:
    def __init__(self) -> None:
        self.lb = RecordingLb()
        self.channel = ViewChannel()
        self.segments: dict[str, list[Segment]] = {"p1": [SEG]}
        self.agent = ServiceAgent(self.channel, self.lb, lambda: dict(self.segments), "h1",
                                  drain_timeout=2.0, drain_grace=0.05, resync=60)


@pytest.fixture()
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.agent.stop()


def test_plan_gives_clients_only_to_the_project_s_own_segments() -> None:
    state = plan(view("a", "b"), {"p1": [SEG], "p2": [Segment("br-p2", RANGE)]}, {"b"})
    (front,) = state.frontends
    assert front.clients == (SEG,) and [str(a) for a in front.backends] == ["10.208.0.2"]
    # A project with no network here and nothing published: nothing on this host reaches it.
    assert plan(view("a"), {}, set()).empty
    assert plan(view("a", publish=30080), {}, set()).frontends[0].clients == ()


def test_the_rules_follow_the_view_and_are_not_applied_twice(rig: Rig) -> None:
    rig.agent.reconcile()
    assert rig.lb.applied == []  # no view yet: the rules of before stay as they are
    rig.agent.take(view("a", "b"))
    assert addrs(rig.lb.last) == ["10.208.0.2", "10.208.0.3"]
    rig.agent.take(view("a", "b"))
    assert len(rig.lb.applied) == 1
    rig.agent.reconcile(force=True)  # the periodic resync repairs what was changed by hand
    assert len(rig.lb.applied) == 2
    rig.agent.take(view())
    assert addrs(rig.lb.last) == []


def report(uuid: str, ready: bool | None, state: str = "running") -> CapsuleReport:
    return CapsuleReport(uuid=uuid, generation=1, sandbox_state="running", containers=[
        ContainerReport(uuid="c", name="web", role="app", state=state, ready=ready)])


def test_a_local_capsule_that_stops_serving_leaves_before_the_api_knows(rig: Rig) -> None:
    rig.agent.take(view("a", "b"))
    rig.agent.observed(report("a", ready=False))
    assert addrs(rig.lb.last) == ["10.208.0.3"]
    rig.agent.observed(report("a", ready=False))  # no change: no new apply
    assert len(rig.lb.applied) == 2
    rig.agent.observed(report("a", ready=True))  # the view still lists it: back at once
    assert addrs(rig.lb.last) == ["10.208.0.2", "10.208.0.3"]
    rig.agent.observed(report("b", ready=None, state="exited"))
    assert addrs(rig.lb.last) == ["10.208.0.2"]
    rig.agent.observed(report("zzz", ready=False))  # not a backend: nothing to do
    assert len(rig.lb.applied) == 4
    assert serving_here(report("a", ready=None)) and not serving_here(report("a", None, "exited"))


def test_a_drain_takes_it_out_waits_for_the_api_the_grace_and_its_connections(rig: Rig) -> None:
    rig.agent.take(view("a", "b"))
    rig.lb.open["10.208.0.2"] = 3
    announced: list[float] = []
    done = threading.Event()
    t = threading.Thread(target=lambda: (rig.agent.drain("a", lambda: announced.append(1)),
                                         done.set()))
    t.start()
    wait_for(lambda: addrs(rig.lb.last) == ["10.208.0.3"], timeout=2, what="local exclusion")
    assert rig.agent.is_draining("a") and announced == [1]
    time.sleep(0.2)
    assert not done.is_set()  # the API still lists it
    rig.agent.take(view("b"))
    time.sleep(0.2)
    assert not done.is_set() and "10.208.0.2" in rig.lb.asked  # its connections are open
    rig.lb.open["10.208.0.2"] = 0
    assert done.wait(2)
    rig.agent.release("a")
    assert not rig.agent.is_draining("a")


def test_a_drain_is_bounded_by_drain_timeout(rig: Rig) -> None:
    rig.agent.take(view("a"))
    rig.agent.take(view())  # deleted: the API dropped it first, as it does for a delete
    rig.lb.open["10.208.0.2"] = 1  # a client that never lets go
    started = time.monotonic()
    rig.agent.drain("a")
    assert 1.9 <= time.monotonic() - started < 3.0


def test_a_drain_waits_while_new_connections_still_reach_it_after_the_grace(rig: Rig) -> None:
    """Another host that has not applied a view without the capsule yet still sends it
    new connections (each short: none open when the drain looks): the containers stay
    until none has come for the grace."""
    rig.agent.take(view("a"))
    rig.agent.take(view())  # the API dropped it (a delete)
    feeding = threading.Event()
    feeding.set()

    def slow_host() -> None:
        i = 0
        while feeding.is_set():
            rig.lb.keys.setdefault("10.208.0.2", []).append(f"10.208.9.9:{i}>10.96.0.1:80")
            i += 1
            time.sleep(0.02)

    threading.Thread(target=slow_host, daemon=True).start()
    done = threading.Event()
    threading.Thread(target=lambda: (rig.agent.drain("a"), done.set()), daemon=True).start()
    assert not done.wait(0.5)  # the grace is 0.05 s: only the new connections hold it
    feeding.clear()
    stopped = time.monotonic()
    assert done.wait(1.0)
    assert time.monotonic() - stopped >= 0.04  # the grace after the last one


def test_a_capsule_no_service_uses_is_not_drained(rig: Rig) -> None:
    rig.agent.take(view("a"))
    started = time.monotonic()
    rig.agent.drain("other", lambda: pytest.fail("nothing to announce"))
    assert time.monotonic() - started < 0.05 and not rig.agent.is_draining("other")


def test_new_sandboxes_get_the_names_once_the_view_covers_their_project(rig: Rig) -> None:
    rig.agent.start()
    rig.channel.put(view(projects=("p0",)))
    wait_for(lambda: rig.agent._watching, timeout=2, what="a watch")
    # The project's first capsule is assigned: its view follows by the other long poll.
    threading.Timer(0.2, rig.channel.put, [view("a")]).start()
    assert rig.agent.hosts_for("p1") == (("web", "10.96.0.7"),)
    assert rig.agent.hosts_for(None) == ()


def test_service_names_go_to_the_names_sink_as_they_change(rig: Rig) -> None:
    sent: list[dict[str, dict[str, str]]] = []
    rig.agent.take(view("a", projects=("p1", "p2")))
    rig.agent.names_to(sent.append)  # given at once what the view says
    assert sent == [{"p1": {"web": "10.96.0.7"}, "p2": {}}]
    rig.agent.take(view("a", "b", projects=("p1", "p2")))  # other backends: same names
    assert len(sent) == 1
    rig.agent.take(view(projects=("p2",)))
    assert sent[-1] == {"p2": {}}  # p1 left this host: its names go
    # A sink that fails is logged, never raised into the watch.
    def fail(names: dict[str, dict[str, str]]) -> None:
        raise OSError("no")
    rig.agent.names_to(fail)
    rig.agent.names_to(sent.append)
    assert sent[-1] == {"p2": {}} and len(sent) == 3


def test_a_new_network_gets_its_rules_before_the_container_starts(rig: Rig) -> None:
    rig.agent.take(view("a"))
    applied = len(rig.lb.applied)
    net = MemoryNetworks().ensure_network("inst", "p1")
    rig.agent.network_ready("p1", net)  # its segment is applied already: nothing to do
    rig.segments = {"p1": [SEG, Segment("br-net2", ipaddress.IPv4Network("10.208.8.0/22"))]}
    rig.agent.network_ready("p1", type(net)("net2xxxxxxxxxxx", "n2", "p1"))
    assert len(rig.lb.applied) == applied + 1
    assert {s.bridge for s in rig.lb.applied[-1].frontends[0].clients} == {"br-net-p1", "br-net2"}


# -- the executor ------------------------------------------------------------------------------
WEB = ContainerSpec(uuid="u-web", name="web", image="busybox", command=["httpd", "-f"])
CAP = "cap-svc-1"


def desired(deleting: bool = False, generation: int = 1, command: str = "httpd") -> Assignment:
    app = WEB.model_copy(update={"command": [command, "-f"]})
    return Assignment(uuid=CAP, generation=generation, deleting=deleting, project_id="p1",
                      spec=CapsuleSpec(name="demo", containers=[app]))


class ExecRig:
    def __init__(self, pool: ThreadPoolExecutor, rig: Rig) -> None:
        self.runtime = fake_runtime()
        self.rig = rig
        self.announced: list[CapsuleReport] = []
        self.networks = ProjectNetworks(MemoryNetworks(), "inst", grace=60,
                                        on_ready=rig.agent.network_ready)
        self.executor = CapsuleExecutor(self.runtime, MemoryVolumes(), self.networks, "inst",
                                        INFRA, stop_timeout=1, parallel=pool,
                                        services=rig.agent, announce=self.announced.append)
        # What removed each container: the LB state at that moment.
        self.at_removal: list[LbState | None] = []
        remove = self.runtime.remove_container

        def watched(cid: str, timeout: int) -> None:
            self.at_removal.append(rig.lb.last)
            remove(cid, timeout)
        self.runtime.remove_container = watched  # type: ignore[method-assign]


def test_the_executor_names_services_drains_before_it_removes_and_reports_it(rig: Rig) -> None:
    rig.segments = {"p1": [Segment("br-net-p1", ipaddress.IPv4Network("10.208.0.0/22"))]}
    rig.agent._watching = True
    cap_view = build_view("h1", RANGE, ["p1"], [ServiceRecord(
        uuid="s1", name="web", project_id="p1", vip="10.96.0.7",
        ports=[ServicePort(port=80, target_port=8080)], selector={"app": "web"})],
        [Candidate(uuid=CAP, name="demo", project_id="p1", labels={"app": "web"},
                   status="Running", deleting=False, draining=False, addr="10.208.0.9",
                   members=(READY,))])
    rig.agent.take(cap_view)
    with ThreadPoolExecutor(4) as pool:
        x = ExecRig(pool, rig)
        out = x.executor.sync(CAP, desired())
        assert out.report is not None and out.report.draining is False
        (sandbox,) = [c for c in x.runtime.containers.values()
                      if c.labels.get(L.ROLE) == L.ROLE_SANDBOX]
        assert sandbox.extra_hosts == (("web", "10.96.0.7"),)

        # A new spec replaces the app container: announced as draining, out of the LB first.
        threading.Timer(0.3, rig.agent.take, [build_view("h1", RANGE, ["p1"], [], [])]).start()
        out = x.executor.sync(CAP, desired(generation=2, command="sleep"))
        assert [r.draining for r in x.announced] == [True]
        assert x.at_removal and addrs(x.at_removal[0]) == []
        assert out.report is not None and out.report.draining is False  # on its spec again

        # A delete of a capsule that served until moments ago waits out the grace too.
        rig.agent.take(cap_view)
        rig.agent.take(build_view("h1", RANGE, ["p1"], [], []))
        x.at_removal.clear()
        out = x.executor.sync(CAP, desired(deleting=True, generation=3))
        assert out.report is not None and out.report.gone
        assert len(x.announced) == 1  # the API knows of a delete: nothing to announce
        assert rig.lb.asked.count("10.208.0.9") >= 2
