"""The two-host rig itself: its overlay pool avoids every network either engine has, so
the networks a killed run left on host-b's engine fail none of a later run's."""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Any

import pytest
from multihost_rig import unused_overlay_pool


class _Engine:
    def __init__(self, *subnets: str) -> None:
        self._nets = [{"IPAM": {"Config": [{"Subnet": s}]}} for s in subnets]
        self._nets.append({"IPAM": {"Config": None}})  # host and none have no subnets

    def networks(self) -> list[dict[str, Any]]:
        return self._nets


def test_the_overlay_pool_is_a_16_that_no_network_on_either_engine_overlaps() -> None:
    every = [str(p) for p in IPv4Network("10.224.0.0/12").subnets(new_prefix=16)]
    left = every.pop(5)  # 10.229.0.0/16
    # A leftover project block (/22) inside a /16 takes that /16 as well as a whole one.
    a = _Engine(*every[:7], "fd00::/64", "172.17.0.0/16")
    b = _Engine(*(p.replace(".0.0/16", ".4.0/22") for p in every[7:]))
    for _ in range(20):
        assert str(unused_overlay_pool([a, b])) == left


def test_a_rig_with_every_block_taken_says_so() -> None:
    with pytest.raises(AssertionError, match=r"every /16 of 10\.224\.0\.0/12"):
        unused_overlay_pool([_Engine("10.224.0.0/12")])
