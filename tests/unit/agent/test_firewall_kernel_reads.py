"""When the agent's firewall goes to the kernel: a watch that only brings a new unit (a
capsule just created, its address not known yet) changes nothing there, so it reads
nothing (an `iptables-save` before every create's first Docker call); any change that
can need a write still reaches the kernel."""

from __future__ import annotations

from capsuled.agent.firewall import Firewall, Wanted
from capsuled.domain.addresses import Address
from capsuled.domain.security_groups import Allow, Firewall as Rules, Peers
from tests.unit.agent.rigs import Kernel

RULES = Rules(peers={"group:default": Peers(own_network=True)},
              allow=[Allow(protocol="tcp", port_min=80, port_max=80, peers="group:default")])
WIDER = Rules(peers={"group:default": Peers(own_network=True)},
              allow=[Allow(protocol="any", peers="group:default")])


def addr(ip: str) -> list[Address]:
    return [Address(network_id="n", addr=ip, subnet="10.9.0.0/24")]


def settled() -> tuple[Kernel, Firewall]:
    kernel = Kernel()
    fw = Firewall(kernel, "inst")
    fw.desire({"a": Wanted(RULES), "old": Wanted(RULES)})
    fw.observe("a", addr("10.9.0.2"))
    fw.observe("old", addr("10.9.0.3"))
    fw.relist({"a", "old"})
    return kernel, fw


def test_a_new_unit_without_an_address_changes_and_reads_nothing() -> None:
    kernel, fw = settled()
    table = kernel.table.save()
    ensures, saves = kernel.ensures, kernel.table.saves
    fw.desire({"a": Wanted(RULES), "old": Wanted(RULES), "new": Wanted(RULES)})
    assert (kernel.ensures, kernel.table.saves) == (ensures, saves)
    # It was right to skip: the driver itself would have changed nothing.
    guards, keep = fw._plan()
    kernel.driver.ensure("inst", guards, keep)
    assert kernel.table.save() == table


def test_changes_that_can_need_a_write_still_reach_the_kernel() -> None:
    kernel, fw = settled()
    fw.desire({"a": Wanted(RULES), "old": Wanted(RULES), "new": Wanted(RULES)})
    calls = kernel.ensures
    fw.observe("new", addr("10.9.0.4"))  # its address: a new guard
    assert kernel.ensures == calls + 1 and "10.9.0.4" in kernel.table.save()
    fw.desire({"a": Wanted(WIDER), "old": Wanted(RULES), "new": Wanted(RULES)})  # new rules
    assert kernel.ensures == calls + 2
    fw.desire({"a": Wanted(WIDER), "new": Wanted(RULES)})  # one no longer wanted
    fw.relist({"a", "new"})
    assert kernel.ensures >= calls + 3 and "10.9.0.3" not in kernel.table.save()
    # A write made while a unit was kept (known, no address yet), then that unit dropped:
    # fewer kept than at the write, so the kernel is asked.
    fw.desire({"a": Wanted(WIDER), "new": Wanted(RULES), "later": Wanted(RULES)})
    fw.desire({"a": Wanted(RULES), "new": Wanted(RULES), "later": Wanted(RULES)})
    before = kernel.ensures
    fw.desire({"a": Wanted(RULES), "new": Wanted(RULES)})
    assert kernel.ensures == before + 1
