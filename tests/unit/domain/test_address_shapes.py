"""Zun-shaped addresses: stable derived ids, the three shapes, tolerant reads."""

from __future__ import annotations

import uuid

import pytest

from capsuled.domain.addresses import (Address, network_list, network_uuid, parse_stored, port_id,
                                       preferred, subnet_id, zun_addresses)

NET = network_uuid("p1")
A = Address(network_id=NET, addr="10.128.4.7", subnet="10.128.4.0/22")


def test_ids_are_stable_uuids_and_differ_per_project_container_and_subnet() -> None:
    assert network_uuid("p1") == NET and uuid.UUID(NET).version == 5
    assert network_uuid("p2") != NET
    assert port_id(NET, "c1") == port_id(NET, "c1") != port_id(NET, "c2")
    assert port_id(NET, "c1") != port_id(network_uuid("p2"), "c1")
    assert subnet_id(NET, "10.128.4.0/22") != subnet_id(NET, "10.128.8.0/22")
    # Fixed forever: clients hold these ids (a change of the namespace would break them).
    assert NET == str(uuid.uuid5(uuid.UUID("7d1c2a8e-4b51-5c0e-9a7f-3e6b2d9c1f40"), "network:p1"))


def test_zun_addresses_shape() -> None:
    assert zun_addresses([A], "c1") == {NET: [{
        "addr": "10.128.4.7", "version": 4, "port": port_id(NET, "c1"),
        "subnet_id": subnet_id(NET, "10.128.4.0/22"), "preserve_on_delete": False}]}
    assert zun_addresses([], "c1") == {}


def test_network_list_grouped_per_port_and_flat_per_address() -> None:
    port, sub = port_id(NET, "c1"), subnet_id(NET, "10.128.4.0/22")
    assert network_list([A], "c1", grouped=True) == [{
        "net_id": NET, "port_id": port,
        "fixed_ips": [{"ip_address": "10.128.4.7", "version": 4, "subnet_id": sub}]}]
    assert network_list([A], "c1", grouped=False) == [{
        "net_id": NET, "port_id": port, "subnet_id": sub, "version": 4, "ip_address": "10.128.4.7"}]
    assert network_list([], "c1", grouped=True) == []


@pytest.mark.parametrize("raw", [None, "x", 5, {"a": 1}, [None], [{"network_id": NET}],
                                 [{"network_id": NET, "addr": "999.1.1.1", "subnet": "10.0.0.0/8"}]])
def test_unreadable_stored_values_are_left_out(raw: object) -> None:
    assert parse_stored(raw) == []


def test_stored_values_round_trip_and_the_preferred_address_is_per_network() -> None:
    assert parse_stored([A.model_dump(), "junk"]) == [A]
    assert preferred([A], NET) == "10.128.4.7"
    assert preferred([A], network_uuid("p2")) is None
    with pytest.raises(ValueError):
        Address(network_id=NET, addr="10.0.0.1/24", subnet="10.0.0.0/24")
