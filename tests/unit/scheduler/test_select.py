from datetime import timedelta

import pytest

from capsuled.domain.container_request import parse_container_request
from capsuled.domain.template import parse_template
from capsuled.errors import InvalidInput
from capsuled.scheduler.select import NoValidHost, Request, label_hints, select_host
from capsuled.store.hosts import HostCapacity
from capsuled.store.tables import utcnow

NOW = utcnow()


def host(name: str, **kw: object) -> HostCapacity:
    base: dict[str, object] = dict(name=name, enabled=True, last_seen=NOW, forced_down=False,
                                   availability_zone="nova", labels={}, cpus=4.0, memory_mb=4096,
                                   cpu_used=0.0, memory_used=0, containers=0, disk_gb=100, disk_used=0)
    base.update(kw)
    return HostCapacity(**base)  # type: ignore[arg-type]


def test_spread_prefers_room_and_then_fewer_containers() -> None:
    hosts = [host("a", memory_used=1024), host("b"), host("c", containers=3)]
    assert select_host(hosts, Request(cpu=0, memory=0), NOW) == "b"
    assert select_host([host("a", containers=2), host("b", containers=1)],
                       Request(cpu=0, memory=0), NOW) == "b"


def test_pack_fills_the_fullest_host_that_fits() -> None:
    hosts = [host("a", memory_used=1024), host("b"), host("c", memory_used=4000)]
    assert select_host(hosts, Request(cpu=0, memory=64), NOW, weigher="pack") == "c"
    assert select_host(hosts, Request(cpu=0, memory=128), NOW, weigher="pack") == "a"


def test_labels_disk_and_liveness_filters_give_a_reason_per_host() -> None:
    hosts = [host("a", labels={"ssd": "true"}, disk_used=99), host("b"),
             host("c", forced_down=True), host("d", last_seen=NOW - timedelta(hours=1)),
             host("e", enabled=False)]
    with pytest.raises(NoValidHost) as exc:
        select_host(hosts, Request(cpu=0, memory=0, disk=5, labels={"ssd": "true"}), NOW)
    assert exc.value.reasons == {"a": "needs 5 GiB of disk, 1 GiB free", "b": "lacks label ssd=true",
                                 "c": "forced down", "d": "down (no heartbeat)", "e": "disabled"}
    # What the requester reads names its own requirements, not hosts or their free space.
    assert str(exc.value) == ("There are not enough hosts available. (no host has enough free "
                              "disk for 5 GiB; no host that is up has label ssd=true)")
    assert "a: needs 5 GiB of disk, 1 GiB free" in exc.value.detail
    assert select_host(hosts, Request(cpu=0, memory=0, labels={"ssd": "true"}), NOW) == "a"


def test_label_hints() -> None:
    assert label_hints({"label:ssd": "true", "other": 1}) == {"ssd": "true"}


def test_templates_and_container_requests_carry_host_labels() -> None:
    spec = parse_template({"kind": "capsule", "metadata": {"name": "xx"}, "spec": {
        "nodeSelector": {"ssd": "true"}, "containers": [{"image": "busybox"}]}})
    assert spec.node_selector == {"ssd": "true"}
    bare = parse_container_request({"image": "busybox", "hints": {"label:zone": "b"}})
    assert bare.node_selector == {"zone": "b"}
    with pytest.raises(InvalidInput, match="hints.same_host: not supported"):
        parse_container_request({"image": "busybox", "hints": {"same_host": "x"}})
    with pytest.raises(InvalidInput, match="spec.nodeSelector"):
        parse_template({"kind": "capsule", "metadata": {"name": "xx"}, "spec": {
            "nodeSelector": {"ssd": ["yes"]}, "containers": [{"image": "busybox"}]}})


def test_the_requesters_reason_names_no_host_and_no_free_capacity() -> None:
    hosts = [host("node-secret-1", memory_used=4000), host("node-secret-2", cpu_used=3.5)]
    with pytest.raises(NoValidHost) as exc:
        select_host(hosts, Request(cpu=1, memory=512), NOW)
    assert str(exc.value) == ("There are not enough hosts available. (no host has enough free "
                              "memory for 512 MiB; no host has enough free CPU for 1 cores)")
    assert "node-secret" in exc.value.detail and "free" in exc.value.detail
    with pytest.raises(NoValidHost) as exc:
        select_host([], Request(cpu=1, memory=512), NOW)
    assert str(exc.value) == "There are not enough hosts available. (no host is up)"
