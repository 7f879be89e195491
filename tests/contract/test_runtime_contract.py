"""One suite, two runtimes: what the reconciler relies on holds for FakeRuntime and for
DockerRuntime alike, so the agent's unit tests on the fake say something about Docker."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import docker
import docker.errors
import docker.types
import pytest

from capsuled.domain import labels as L
from capsuled.domain.ports import PublishedPort
from capsuled.drivers.runtime.base import ContainerRequest, Runtime, RuntimeEvent, SandboxRequest
from capsuled.drivers.runtime.docker import DockerRuntime
from capsuled.drivers.runtime.fake import FakeRuntime
from capsuled.errors import DriverError, ImageNotFound, NotFound, RuntimeConflict, RuntimeRejected
from tests.conftest import remove_instance_objects, wait_for

INFRA = "capsuled/infra:latest"
BUSYBOX = "busybox"


@dataclass
class Rig:
    runtime: Runtime
    instance: str
    kill: Callable[[str], None]  # the container's process dies (SIGKILL)
    network: Callable[[], str]  # a network with a subnet of its own (as project networks have)

    def labels(self, capsule: str, role: str = "app", **more: str) -> dict[str, str]:
        return {L.INSTANCE: self.instance, L.CAPSULE: capsule, L.ROLE: role, **more}

    def name(self, what: str) -> str:
        return f"{self.instance}-{what}"


def _fake_rig() -> Iterator[Rig]:
    fake = FakeRuntime(images=(INFRA, BUSYBOX))
    yield Rig(fake, f"contract-{secrets.token_hex(4)}", lambda cid: fake.exit(cid, 137),
              lambda: f"net-{secrets.token_hex(4)}")


def _docker_rig(api: docker.APIClient) -> Iterator[Rig]:
    instance = f"contract-{secrets.token_hex(4)}"
    try:
        yield Rig(DockerRuntime(api), instance, lambda cid: api.kill(cid),
                  lambda: _docker_network(api, instance))
    finally:
        remove_instance_objects(api, instance)


def _docker_network(api: docker.APIClient, instance: str) -> str:
    """A labelled bridge on a free /24 (removed with the instance's objects)."""
    name = f"{instance}-net"
    for _ in range(20):
        subnet = f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(256)}.0/24"
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
        try:
            api.create_network(name, driver="bridge", labels={L.INSTANCE: instance}, ipam=ipam)
            return name
        except docker.errors.APIError as exc:
            if "overlap" not in str(exc).lower():
                raise
    raise AssertionError("no free /24 for the contract network")


@pytest.fixture(params=[pytest.param("fake"), pytest.param("docker", marks=pytest.mark.docker)])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    if request.param == "fake":
        yield from _fake_rig()
    else:
        yield from _docker_rig(request.getfixturevalue("docker_api"))


def sandbox(rig: Rig, capsule: str) -> str:
    return rig.runtime.create_sandbox(SandboxRequest(
        name=rig.name(f"{capsule}-sandbox"), image=INFRA, hostname=capsule,
        labels=rig.labels(capsule, L.ROLE_SANDBOX))).id


def member(rig: Rig, capsule: str, sandbox_id: str | None, name: str = "app",
           start: bool = True, image: str = BUSYBOX) -> str:
    return rig.runtime.create_container(ContainerRequest(
        name=rig.name(f"{capsule}-{name}"), image=image, sandbox_id=sandbox_id,
        labels=rig.labels(capsule, "app" if sandbox_id else L.ROLE_BARE, **{L.NAME: name}),
        cmd=["sleep", "300"], start=start))


def states(rig: Rig, capsule: str) -> dict[str, str]:
    return {o.id: o.state for o in rig.runtime.observe_capsule(rig.instance, capsule)}


def test_a_sandbox_starts_and_its_members_share_its_namespaces(rig: Rig) -> None:
    sid = sandbox(rig, "cap1")
    (sb,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    assert sb.id == sid and sb.state == "running" and sb.started_at
    assert sb.labels[L.ROLE] == L.ROLE_SANDBOX and sb.networks == ("bridge",)
    assert sb.exit_code is None and sb.restart_count == 0
    mid = member(rig, "cap1", sid)
    observed = {o.id: o for o in rig.runtime.observe_capsule(rig.instance, "cap1")}
    assert set(observed) == {sid, mid}
    app = observed[mid]
    assert app.state == "running" and app.labels[L.NAME] == "app"
    assert app.networks == ()  # it has the sandbox's network namespace, none of its own


def test_observe_and_list_find_containers_by_label(rig: Rig) -> None:
    a = member(rig, "cap-a", None)
    b = member(rig, "cap-b", None, start=False)
    assert set(states(rig, "cap-a")) == {a}
    assert states(rig, "cap-b") == {b: "created"}
    summaries = {s.id: s for s in rig.runtime.list_summaries(rig.instance)}
    assert set(summaries) == {a, b}
    assert summaries[a].state == "running" and summaries[a].labels[L.CAPSULE] == "cap-a"
    assert summaries[b].state == "created"
    assert rig.runtime.list_summaries(f"{rig.instance}-other") == []
    assert rig.runtime.observe_capsule(rig.instance, "nobody") == []


def test_create_start_stop_remove(rig: Rig) -> None:
    cid = member(rig, "cap1", None, start=False)
    assert states(rig, "cap1") == {cid: "created"}
    (created,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    assert created.exit_code is None and created.started_at is None
    rig.runtime.start(cid)
    rig.runtime.start(cid)  # starting a running container changes nothing
    assert states(rig, "cap1") == {cid: "running"}
    rig.runtime.stop(cid, 1)
    (stopped,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    assert stopped.state == "exited" and stopped.exit_code is not None and stopped.finished_at
    rig.runtime.stop(cid, 1)  # stopping a stopped one too
    rig.runtime.start(cid)
    assert states(rig, "cap1") == {cid: "running"}
    rig.runtime.remove_container(cid, 1)
    assert states(rig, "cap1") == {}
    rig.runtime.remove_container(cid, 1)  # gone already: still fine


def test_pause_unpause_and_restart(rig: Rig) -> None:
    cid = member(rig, "cap1", None)
    rig.runtime.pause(cid)
    assert states(rig, "cap1") == {cid: "paused"}
    with pytest.raises(RuntimeConflict):
        rig.runtime.pause(cid)
    with pytest.raises(RuntimeConflict):
        rig.runtime.start(cid)
    rig.runtime.unpause(cid)
    with pytest.raises(DriverError) as not_paused:
        rig.runtime.unpause(cid)
    assert type(not_paused.value) is DriverError  # Docker answers 500 here, not 409
    (before,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    rig.runtime.restart(cid, 1)
    (after,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    assert after.state == "running" and after.started_at != before.started_at
    rig.runtime.stop(cid, 1)
    with pytest.raises(RuntimeConflict):
        rig.runtime.pause(cid)


def test_update_resources_in_place(rig: Rig) -> None:
    cid = member(rig, "cap1", None)
    rig.runtime.update_resources(cid, 500_000_000, 64 * 1024 * 1024)
    (o,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    assert (o.id, o.nano_cpus, o.memory_bytes, o.pids_ok) == (cid, 500_000_000, 64 * 1024 * 1024, True)


def test_a_killed_container_is_exited_with_its_code(rig: Rig) -> None:
    cid = member(rig, "cap1", None)
    rig.kill(cid)
    wait_for(lambda: states(rig, "cap1") == {cid: "exited"}, timeout=10)
    (o,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    assert o.exit_code == 137 and o.restart_count == 0 and not o.oom_killed


def test_killing_the_sandbox_takes_its_members_down(rig: Rig) -> None:
    sid = sandbox(rig, "cap1")
    mid = member(rig, "cap1", sid)
    rig.kill(sid)
    wait_for(lambda: states(rig, "cap1") == {sid: "exited", mid: "exited"}, timeout=10)
    with pytest.raises(RuntimeConflict):
        rig.runtime.start(mid)  # its namespaces are gone with the sandbox


def test_events_on_start_and_die(rig: Rig) -> None:
    seen: list[RuntimeEvent] = []
    ready = threading.Event()

    def follow() -> None:
        stream = rig.runtime.events(rig.instance)
        ready.set()
        for ev in stream:
            seen.append(ev)

    threading.Thread(target=follow, daemon=True).start()  # ends with the process (Docker)
    ready.wait(5)
    # The stream starts when first read: make sure it is, before anything happens.
    warm = member(rig, "warmup", None)
    wait_for(lambda: any(e.container_id == warm for e in seen), timeout=10)
    cid = member(rig, "cap-ev", None)
    rig.kill(cid)
    rig.runtime.remove_container(cid, 0)
    wait_for(lambda: [e.action for e in seen if e.container_id == cid]
             [-1:] == ["destroy"], timeout=10)
    actions = [e.action for e in seen if e.container_id == cid]
    assert actions[:2] == ["create", "start"] and "die" in actions
    assert all(e.capsule == "cap-ev" for e in seen if e.container_id == cid)
    assert all(e.capsule in ("warmup", "cap-ev") for e in seen)


def test_ensure_image_is_idempotent_and_missing_images_raise(rig: Rig) -> None:
    rig.runtime.ensure_image(BUSYBOX, "IfNotPresent")
    rig.runtime.ensure_image(BUSYBOX, "IfNotPresent")
    rig.runtime.ensure_image(INFRA, "Never")
    missing = f"capsuled-contract-missing-{secrets.token_hex(4)}:v1"
    with pytest.raises(ImageNotFound):
        rig.runtime.ensure_image(missing, "Never")
    with pytest.raises(ImageNotFound):
        member(rig, "cap1", None, image=missing)
    assert states(rig, "cap1") == {}


def test_image_identity_is_by_id_and_listed(rig: Rig) -> None:
    """The image gate (agent/pulls.py) compares images by ID: a reference and the ID name
    the same image, a locally made one is not from a registry, a missing one is None."""
    got = rig.runtime.image_identity(BUSYBOX)
    assert got is not None and got.id.startswith("sha256:") and not got.from_registry
    assert rig.runtime.image_identity(f"{BUSYBOX}:latest") == got
    assert rig.runtime.image_identity(got.id) == got
    assert rig.runtime.image_identity(f"capsuled-contract-missing-{secrets.token_hex(4)}") is None
    assert got.id in rig.runtime.image_ids()


def test_missing_containers_raise_not_found_and_removing_them_does_not(rig: Rig) -> None:
    ghost = "0" * 64
    calls: list[Callable[[], None]] = [
        lambda: rig.runtime.start(ghost), lambda: rig.runtime.stop(ghost, 1),
        lambda: rig.runtime.pause(ghost),
        lambda: rig.runtime.update_resources(ghost, 1_000_000_000, None),
        lambda: rig.runtime.put_archive(ghost, "/", b"")]
    for call in calls:
        with pytest.raises(NotFound):
            call()
    with pytest.raises(RuntimeRejected):  # a member of a sandbox that is not there
        member(rig, "cap1", ghost)
    rig.runtime.remove_container(ghost, 0)
    assert states(rig, "cap1") == {}


def test_names_are_unique(rig: Rig) -> None:
    member(rig, "cap1", None)
    with pytest.raises(RuntimeConflict):
        member(rig, "cap1", None)
    assert len(states(rig, "cap1")) == 1


def test_network_join_and_leave_are_idempotent(rig: Rig) -> None:
    cid = member(rig, "cap1", None)
    rig.runtime.disconnect_network(cid, "bridge")
    rig.runtime.disconnect_network(cid, "bridge")
    (o,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    assert o.networks == ()
    rig.runtime.connect_network(cid, "bridge", ())
    rig.runtime.connect_network(cid, "bridge", ())
    (o,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    assert o.networks == ("bridge",)


def _ip(rig: Rig, capsule: str, network: str) -> str | None:
    (o,) = rig.runtime.observe_capsule(rig.instance, capsule)
    found = dict(o.addresses).get(network)
    return None if found is None else found.split("/")[0]


def test_addresses_are_reserved_for_life_and_asked_for_again(rig: Rig) -> None:
    net = rig.network()

    def bare(capsule: str, ip: str | None = None, start: bool = True) -> str:
        return rig.runtime.create_container(ContainerRequest(
            name=rig.name(capsule), image=BUSYBOX, sandbox_id=None, cmd=["sleep", "300"],
            labels=rig.labels(capsule, L.ROLE_BARE), network=net, ipv4_address=ip, start=start))

    first = bare("cap1")
    ip1 = _ip(rig, "cap1", net)
    assert ip1 is not None
    (o,) = rig.runtime.observe_capsule(rig.instance, "cap1")
    assert dict(o.addresses)[net].endswith("/24")
    # Stopped, it shows none; meanwhile a new container does not get its address, and
    # started again it has the same one.
    rig.runtime.stop(first, 1)
    assert _ip(rig, "cap1", net) is None
    bare("cap2")
    assert _ip(rig, "cap2", net) not in (None, ip1)
    rig.runtime.start(first)
    assert _ip(rig, "cap1", net) == ip1
    # Asked for while another holds it: a fresh one. Once it is free: that one.
    bare("cap3", ip=ip1)
    assert _ip(rig, "cap3", net) not in (None, ip1, _ip(rig, "cap2", net))
    rig.runtime.remove_container(first, 1)
    bare("cap4", ip=ip1)
    assert _ip(rig, "cap4", net) == ip1
    # Garbage or an address outside the subnet: a fresh one rather than a failure.
    bare("cap5", ip="192.0.2.10")
    assert (_ip(rig, "cap5", net) or "").rsplit(".", 1)[0] == ip1.rsplit(".", 1)[0]


def test_a_sandbox_gets_the_address_it_asks_for(rig: Rig) -> None:
    net = rig.network()
    sb = rig.runtime.create_sandbox(SandboxRequest(
        name=rig.name("cap1-sandbox"), image=INFRA, hostname="cap1",
        labels=rig.labels("cap1", L.ROLE_SANDBOX), network=net))
    ip = dict(sb.addresses)[net].split("/")[0]
    rig.runtime.remove_container(sb.id, 0)
    again = rig.runtime.create_sandbox(SandboxRequest(
        name=rig.name("cap1-sandbox"), image=INFRA, hostname="cap1",
        labels=rig.labels("cap1", L.ROLE_SANDBOX), network=net, ipv4_address=ip))
    assert dict(again.addresses)[net] == dict(sb.addresses)[net]
    # A member has no address of its own: it uses its sandbox's.
    member(rig, "cap1", again.id)
    assert [o.addresses for o in rig.runtime.observe_capsule(rig.instance, "cap1")
            if o.labels[L.ROLE] == "app"] == [()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_published_ports_get_fixed_or_picked_host_ports_and_a_taken_one_fails(rig: Rig) -> None:
    fixed = _free_port()
    want = PublishedPort(container_port=8080, host_port=fixed, host_ip="127.0.0.1")
    sb = rig.runtime.create_sandbox(SandboxRequest(
        name=rig.name("cap1-sandbox"), image=INFRA, hostname="cap1",
        labels=rig.labels("cap1", L.ROLE_SANDBOX), ports=(want,)))
    assert sb.ports == (want,)
    member(rig, "cap1", sb.id)  # members publish through the sandbox, nothing of their own
    assert [o.ports for o in rig.runtime.observe_capsule(rig.instance, "cap1")
            if o.labels[L.ROLE] == "app"] == [()]
    cid = rig.runtime.create_container(ContainerRequest(
        name=rig.name("cap2"), image=BUSYBOX, sandbox_id=None, cmd=["sleep", "300"],
        labels=rig.labels("cap2", L.ROLE_BARE), ports=(
            PublishedPort(container_port=80, host_port=0, host_ip="127.0.0.1"),
            PublishedPort(container_port=53, protocol="UDP", host_port=0, host_ip="127.0.0.1"))))
    (bare,) = rig.runtime.observe_capsule(rig.instance, "cap2")
    assert {(p.protocol, p.container_port) for p in bare.ports} == {("TCP", 80), ("UDP", 53)}
    assert all(p.host_port > 0 and p.host_ip == "127.0.0.1" for p in bare.ports)
    rig.runtime.stop(cid, 0)  # a stopped container holds no host port
    assert rig.runtime.observe_capsule(rig.instance, "cap2")[0].ports == ()
    # The same host port again: the sandbox cannot start, says which port, and is not left.
    with pytest.raises(DriverError, match=f"TCP port {fixed} on the host: something else"):
        rig.runtime.create_sandbox(SandboxRequest(
            name=rig.name("cap3-sandbox"), image=INFRA, hostname="cap3",
            labels=rig.labels("cap3", L.ROLE_SANDBOX), ports=(want,)))
    assert rig.runtime.observe_capsule(rig.instance, "cap3") == []


@pytest.mark.docker
def test_docker_a_stopped_container_whose_address_was_taken_starts_with_a_fresh_one(
        docker_api: docker.APIClient) -> None:
    """Docker's own allocation ignores a stopped container's reservation: someone else's
    container can take it, and the start must not fail for ever."""
    rigs = _docker_rig(docker_api)
    rig = next(rigs)
    try:
        net = rig.network()
        cid = rig.runtime.create_container(ContainerRequest(
            name=rig.name("cap1"), image=BUSYBOX, sandbox_id=None, cmd=["sleep", "300"],
            labels=rig.labels("cap1", L.ROLE_BARE), network=net))
        ip = _ip(rig, "cap1", net)
        rig.runtime.stop(cid, 0)
        thief = docker_api.create_container(
            BUSYBOX, ["sleep", "300"], name=rig.name("thief"), labels={L.INSTANCE: rig.instance},
            host_config=docker_api.create_host_config(network_mode=net),
            networking_config={"EndpointsConfig": {net: docker_api.create_endpoint_config(
                ipv4_address=ip)}})
        docker_api.start(thief["Id"])
        rig.runtime.start(cid)
        assert _ip(rig, "cap1", net) not in (None, ip)
        (o,) = rig.runtime.observe_capsule(rig.instance, "cap1")
        assert o.state == "running"
    finally:
        rigs.close()


def test_a_pooled_sandbox_leaves_its_network_and_joins_it_again_named_and_renamed(
        rig: Rig) -> None:
    """What the warm pool relies on: a sandbox made on a network, taken off it (no
    address), later joined again with aliases and an address of the network's subnet, and
    renamed; found by id, labels as made; summaries say when it was made and, for a
    member, whose namespaces it joined."""
    net = rig.network()
    made = rig.runtime.create_sandbox(SandboxRequest(
        name=rig.name("pooled"), image=INFRA, hostname="", network=net,
        labels={L.INSTANCE: rig.instance, L.ROLE: L.ROLE_POOL}))
    rig.runtime.disconnect_network(made.id, net)
    idle = rig.runtime.observe_container(made.id)
    assert idle is not None and idle.state == "running" and idle.networks == ()
    assert idle.addresses == () and idle.name == rig.name("pooled")
    rig.runtime.connect_network(made.id, net, ("claimed", "c-uuid"))
    rig.runtime.rename(made.id, rig.name("claimed_sandbox"))
    rig.runtime.rename(made.id, rig.name("claimed_sandbox"))  # idempotent
    joined = rig.runtime.observe_container(made.id)
    assert joined is not None and joined.networks == (net,)
    assert joined.name == rig.name("claimed_sandbox") and joined.labels[L.ROLE] == L.ROLE_POOL
    ((network, iface),) = joined.addresses
    assert network == net and iface.split("/")[1] == "24"
    mid = member(rig, "cap1", made.id)
    summaries = {s.id: s for s in rig.runtime.list_summaries(rig.instance)}
    assert summaries[mid].network_mode == f"container:{made.id}"
    assert summaries[made.id].network_mode != f"container:{made.id}"
    assert summaries[made.id].created > 0
    other = member(rig, "cap2", None)
    with pytest.raises(RuntimeConflict):
        rig.runtime.rename(other, rig.name("claimed_sandbox"))
    rig.runtime.remove_container(mid, 0)
    rig.runtime.remove_container(made.id, 0)
    assert rig.runtime.observe_container(made.id) is None
