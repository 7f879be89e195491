"""When the agent's firewall goes to the kernel: a watch that only brings a new unit (a
capsule just created, its address not known yet) changes nothing there, so it reads
nothing (an `iptables-save` before every create's first Docker call); any change that
can need a write still reaches the kernel."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from capsuled.agent.firewall import Firewall, Wanted
from capsuled.domain.addresses import Address
from capsuled.domain.security_groups import Allow, Firewall as Rules, Peers
from capsuled.drivers.firewall.base import Guard
from capsuled.drivers.firewall.iptables import IptablesFirewall
from tests.unit.drivers.fake_iptables import FakeIptables

RULES = Rules(peers={"group:default": Peers(own_network=True)},
              allow=[Allow(protocol="tcp", port_min=80, port_max=80, peers="group:default")])
WIDER = Rules(peers={"group:default": Peers(own_network=True)},
              allow=[Allow(protocol="any", peers="group:default")])


class Counting:
    def __init__(self) -> None:
        self.table = FakeIptables()
        self.real = IptablesFirewall(self.table)
        self.calls = 0

    def ensure(self, instance: str, guards: Sequence[Guard], keep: Collection[str] | None) -> None:
        self.calls += 1
        self.real.ensure(instance, guards, keep)

    def remove_all(self, instance: str) -> None:
        self.real.remove_all(instance)


def addr(ip: str) -> list[Address]:
    return [Address(network_id="n", addr=ip, subnet="10.9.0.0/24")]


def settled() -> tuple[Counting, Firewall]:
    kernel = Counting()
    fw = Firewall(kernel, "inst")
    fw.desire({"a": Wanted(RULES), "old": Wanted(RULES)})
    fw.observe("a", addr("10.9.0.2"))
    fw.observe("old", addr("10.9.0.3"))
    fw.relist({"a", "old"})
    return kernel, fw


def test_a_new_unit_without_an_address_changes_and_reads_nothing() -> None:
    kernel, fw = settled()
    calls, saves, table = kernel.calls, kernel.table.saves, kernel.table.save()
    fw.desire({"a": Wanted(RULES), "old": Wanted(RULES), "new": Wanted(RULES)})
    assert (kernel.calls, kernel.table.saves - 1) == (calls, saves)  # -1: the save above
    # It was right to skip: the driver itself would have changed nothing.
    kernel.real.ensure("inst", [g for g in fw._plan()[0]], fw._plan()[1])
    assert kernel.table.save() == table


def test_changes_that_can_need_a_write_still_reach_the_kernel() -> None:
    kernel, fw = settled()
    fw.desire({"a": Wanted(RULES), "old": Wanted(RULES), "new": Wanted(RULES)})
    calls = kernel.calls
    fw.observe("new", addr("10.9.0.4"))  # its address: a new guard
    assert kernel.calls == calls + 1 and "10.9.0.4" in kernel.table.save()
    fw.desire({"a": Wanted(WIDER), "old": Wanted(RULES), "new": Wanted(RULES)})  # new rules
    assert kernel.calls == calls + 2
    fw.desire({"a": Wanted(WIDER), "new": Wanted(RULES)})  # one no longer wanted
    fw.relist({"a", "new"})
    assert kernel.calls >= calls + 3 and "10.9.0.3" not in kernel.table.save()
    # A write made while a unit was kept (known, no address yet), then that unit dropped:
    # fewer kept than at the write, so the kernel is asked.
    fw.desire({"a": Wanted(WIDER), "new": Wanted(RULES), "later": Wanted(RULES)})
    fw.desire({"a": Wanted(RULES), "new": Wanted(RULES), "later": Wanted(RULES)})
    before = kernel.calls
    fw.desire({"a": Wanted(RULES), "new": Wanted(RULES)})
    assert kernel.calls == before + 1
