"""A filter table in memory that takes iptables-restore input and prints iptables-save
output, and judges packets the way the kernel walks chains (jump, goto, RETURN, the
built-in chain's policy), for the rule syntax the security-group driver writes."""

from __future__ import annotations

import copy
import ipaddress
import shlex
from dataclasses import dataclass

from capsuled.errors import DriverError

BUILT_IN = ("INPUT", "FORWARD", "OUTPUT")


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: str = "tcp"  # tcp | udp | icmp
    dport: int | None = 80
    established: bool = False  # a reply to a connection the destination opened


class FakeIptables:
    def __init__(self, docker_user: bool = True) -> None:
        self.chains: dict[str, list[str]] = {c: [] for c in BUILT_IN}
        if docker_user:
            self.chains["DOCKER-USER"] = ["-j RETURN"]
            self.chains["FORWARD"] = ["-j DOCKER-USER"]
        self.restores: list[str] = []
        self.saves = 0

    # -- the two programs --------------------------------------------------------------
    def save(self) -> str:
        self.saves += 1
        lines = ["*filter"]
        lines += [f":{c} {'ACCEPT' if c in BUILT_IN else '-'} [0:0]" for c in self.chains]
        for chain, rules in self.chains.items():
            for rule in rules:
                # iptables-save quotes comments, whatever the input did
                words = shlex.split(rule)
                if "--comment" in words:
                    i = words.index("--comment") + 1
                    words[i] = f'"{words[i]}"'
                lines.append(f"-A {chain} {' '.join(words)}")
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def restore(self, text: str) -> None:
        self.restores.append(text)
        chains = copy.deepcopy(self.chains)
        for line in text.splitlines():
            if not line or line in ("*filter", "COMMIT") or line.startswith("#"):
                continue
            if line.startswith(":"):
                chains[line[1:].split(" ", 1)[0]] = []  # made, or emptied (--noflush)
                continue
            op, chain, *rest = line.split(" ", 2)
            rule = rest[0] if rest else ""
            if chain not in chains:
                raise DriverError(f"iptables-restore: no chain {chain}: {line}")
            if op == "-A":
                self._check_targets(chains, rule, line)
                chains[chain].append(rule)
            elif op == "-I":
                pos, _, rule = rule.partition(" ")
                self._check_targets(chains, rule, line)
                chains[chain].insert(int(pos) - 1, rule)
            elif op == "-D":
                if rule not in chains[chain]:
                    raise DriverError(f"iptables-restore: no such rule: {line}")
                chains[chain].remove(rule)
            elif op == "-X":
                if chains[chain]:
                    raise DriverError(f"iptables-restore: chain {chain} is not empty")
                if any(f"-j {chain}" in r.split(" -m ")[0] or r.endswith((f"-j {chain}", f"-g {chain}"))
                       for c, rules in chains.items() if c != chain for r in rules):
                    raise DriverError(f"iptables-restore: chain {chain} is in use")
                del chains[chain]
            else:
                raise DriverError(f"iptables-restore: cannot parse {line}")
        self.chains = chains  # all or nothing, as the kernel commits it

    @staticmethod
    def _check_targets(chains: dict[str, list[str]], rule: str, line: str) -> None:
        words = rule.split()
        for flag in ("-j", "-g"):
            if flag in words:
                target = words[words.index(flag) + 1]
                if target not in ("RETURN", "DROP", "ACCEPT") and target not in chains:
                    raise DriverError(f"iptables-restore: no chain {target}: {line}")

    # -- the kernel's walk -------------------------------------------------------------
    def verdict(self, pkt: Packet, chain: str = "FORWARD") -> str:
        """ACCEPT (the built-in chain's policy) or DROP, for a packet entering `chain`."""
        stack: list[tuple[str, int]] = []
        current, i = chain, 0
        for _ in range(100_000):
            rules = self.chains[current]
            if i >= len(rules):  # the end of a chain: back to the caller, or the policy
                if not stack:
                    return "ACCEPT"
                current, i = stack.pop()
                continue
            words = rules[i].split()
            i += 1
            if not _matches(words, pkt):
                continue
            if "-g" in words:
                current, i = words[words.index("-g") + 1], 0
                continue
            target = words[words.index("-j") + 1]
            if target in ("ACCEPT", "DROP"):
                return target
            if target == "RETURN":
                if not stack:
                    return "ACCEPT"
                current, i = stack.pop()
                continue
            stack.append((current, i))
            current, i = target, 0
        raise AssertionError("a loop in the chains")


def _matches(words: list[str], pkt: Packet) -> bool:
    def value(flag: str) -> str | None:
        return words[words.index(flag) + 1] if flag in words else None

    src, dst, proto = value("-s"), value("-d"), value("-p")
    if src is not None and ipaddress.IPv4Address(pkt.src) not in ipaddress.IPv4Network(src):
        return False
    if dst is not None and ipaddress.IPv4Address(pkt.dst) not in ipaddress.IPv4Network(dst):
        return False
    if proto is not None and proto != pkt.proto:
        return False
    ports = value("--dport")
    if ports is not None:
        lo, _, hi = ports.partition(":")
        if pkt.dport is None or not int(lo) <= pkt.dport <= int(hi or lo):
            return False
    state = value("--ctstate")
    if state is not None and not (pkt.established and "ESTABLISHED" in state.split(",")):
        return False
    return True
