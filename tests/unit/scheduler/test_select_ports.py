"""Fixed host ports as a scheduling filter: a host where a wanted port is claimed is passed
over; when none is left the requester reads which port and whose capsule holds it (its
own by name, anyone else's as "another project"), never a host or another project."""

from __future__ import annotations

import pytest

from capsuled.scheduler.select import NoValidHost, Request, select_host
from capsuled.store.host_ports import PortHolder
from capsuled.store.tables import utcnow
from tests.unit.scheduler.test_select import host

NOW = utcnow()
MINE = PortHolder("p1", "web", "u-web")
THEIRS = PortHolder("p2", "secret-name", "u-secret")


def test_a_host_where_the_port_is_taken_is_passed_over() -> None:
    hosts = [host("a", ports={("TCP", 8080): MINE}), host("b", memory_used=1024)]
    want = Request(cpu=0, memory=0, ports=(("TCP", 8080),), project_id="p1")
    assert select_host(hosts, want, NOW) == "b"  # though a has more room
    # Another protocol, or another port, is another resource.
    assert select_host(hosts, Request(cpu=0, memory=0, ports=(("UDP", 8080),)), NOW) == "a"
    assert select_host(hosts, Request(cpu=0, memory=0, ports=(("TCP", 8081),)), NOW) == "a"


def test_no_host_with_the_port_free_says_whose_it_is_without_naming_others() -> None:
    hosts = [host("host-a", ports={("TCP", 8080): MINE}),
             host("host-b", ports={("TCP", 8080): THEIRS}),
             host("host-c", ports={("TCP", 8080): PortHolder("p1", "web-2", "u-web-2")}),
             host("host-d", forced_down=True)]
    with pytest.raises(NoValidHost) as exc:
        select_host(hosts, Request(cpu=0, memory=0, ports=(("TCP", 8080),), project_id="p1"), NOW)
    assert str(exc.value) == ("There are not enough hosts available. (no host has TCP port 8080 "
                              "free: used by your capsule web, another project, your capsule web-2)")
    for secret in ("host-a", "host-b", "secret-name", "p2"):
        assert secret not in str(exc.value)
    # Administrators (the log, the action's detail) read it host by host.
    assert exc.value.reasons["host-b"] == "TCP port 8080 used by capsule secret-name of project p2"
    assert exc.value.reasons["host-d"] == "forced down"


def test_a_port_is_one_reason_among_the_others() -> None:
    hosts = [host("a", ports={("UDP", 53): THEIRS}), host("b", memory_used=4000)]
    with pytest.raises(NoValidHost) as exc:
        select_host(hosts, Request(cpu=0, memory=512, ports=(("UDP", 53),), project_id="p1"), NOW)
    assert str(exc.value) == ("There are not enough hosts available. (no host has UDP port 53 "
                              "free: used by another project; no host has enough free memory for "
                              "512 MiB)")
