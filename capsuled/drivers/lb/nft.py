"""NftLoadBalancer: services as kernel NAT rules in one nftables table of this agent's.

Why nftables: IPVS is the classic kernel load balancer, but not every kernel has it (this
project's CI kernel is built without CONFIG_IP_VS, and has no modules to load), while
every kernel Docker runs on has nftables NAT. The rules are kube-proxy's nftables design:
a connection to a VIP is DNATed, at its first packet, to a backend chosen round-robin
(`numgen inc`); conntrack keeps every later packet of it on that backend, so changing the
rules never breaks a connection, and removing a backend (readiness lost, drain) only
stops new connections to it. No userspace process sits in the data path.

What it leaves on the host: one table `ip <name>` (named by the agent after its
deployment and host), replaced whole by each `apply` in one `nft -f` transaction
(atomic), deleted when the state is empty. Chains:

    prerouting (nat, before Docker's)  VIP traffic → vips; the host's addresses → published
    output (nat)                       the host's own connections to published ports
    vips        bridge + source subnet + VIP + port → frontend (only its project's clients)
    published   port → frontend
    feN         numgen inc mod n → feNbM: dnat to backend:targetPort
    postrouting masquerade what must come back through this host to be un-NATed (below)
    forward / egress (filter)  anything else to the VIP range is refused (TCP reset)

Masquerade. A reply must pass this host's connection tracking to get the VIP back as its
source. Replies to a published port may come from a backend on another host and reach
the client by that host's route, so published traffic is always masqueraded (the backend
sees this host's bridge address). Replies to a VIP's client pass its project bridge here
on their way to it, and with br_netfilter (net.bridge.bridge-nf-call-iptables = 1, which
Docker turns on) bridged packets go through connection tracking: only a capsule that
reached itself through the VIP (hairpin: its reply would never leave it) is masqueraded,
and backends see their clients' own addresses. Without br_netfilter all VIP traffic is
masqueraded. A connection through the NAT costs a routed hop the direct one does not
(docs/benchmarks.md, case 8).

Hairpin. With br_netfilter a DNATed packet whose backend sits on the bridge it came in on
is bridged to the backend's port; when that is the port it came from (a capsule reaching
itself through its own service) the bridge drops it unless the port is in hairpin mode,
as Kubernetes' bridge plugins set it. `apply` turns hairpin mode on for the containers'
(veth) ports of the bridges its frontends serve (`ip link set … type bridge_slave hairpin
on`); never on a VXLAN port, which would reflect frames to the other hosts.

`connections` reads the kernel's connection table (/proc/net/nf_conntrack, else the
`conntrack` command) for TCP connections that are not finished yet.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Collection, Iterable
from ipaddress import IPv4Network
from pathlib import Path

from capsuled.drivers.lb.base import Flows, Frontend, LbState, Segment
from capsuled.errors import DriverError

LOG = logging.getLogger(__name__)
CONNTRACK_FILE = Path("/proc/net/nf_conntrack")
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
# Before Docker's NAT (priority dstnat, -100) and filter (0) chains, after raw/conntrack.
NAT_PRIORITY = -110
SNAT_PRIORITY = 90
FILTER_PRIORITY = -10
# TCP states of a connection that may still carry a request or its answer.
LIVE = frozenset({"SYN_SENT", "SYN_SENT2", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
                  "CLOSE_WAIT", "LAST_ACK"})
_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")  # a Linux interface name, safe to quote
_TABLE = re.compile(r"[^A-Za-z0-9_]")
_VETH = re.compile(r"\sveth\s")  # `ip -d link`'s kind of a container's port

Run = Callable[..., "subprocess.CompletedProcess[str]"]


def table_name(instance: str, host: str) -> str:
    """The table of one deployment's agent on one host (several agents may share a
    network namespace in tests: each has its own)."""
    import hashlib
    return _TABLE.sub("_", f"capsuled_svc_{instance}_{hashlib.sha256(host.encode()).hexdigest()[:8]}")


def remove_tables(instance: str, netns: Path | None = None, nft: str = "nft",
                  run: Run = subprocess.run) -> list[str]:
    """Delete the tables of every agent of deployment `instance` in this namespace (or
    `netns`): what a dead deployment left. The names of the tables deleted."""
    prefix = _TABLE.sub("_", f"capsuled_svc_{instance}_")
    enter = ["nsenter", f"--net={netns}"] if netns is not None else []

    def nft_run(*args: str) -> str:
        try:
            done = run([*enter, nft, *args], capture_output=True, text=True, timeout=30,
                       check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise DriverError(f"nft {' '.join(args)}: {exc}") from exc
        if done.returncode != 0:
            raise DriverError(f"nft {' '.join(args)} failed: {done.stderr.strip()[:300]}")
        return done.stdout

    gone = []
    for line in nft_run("list", "tables", "ip").splitlines():
        name = line.split()[-1] if line.startswith("table ip ") else ""
        if name.startswith(prefix) and re.fullmatch(r"[0-9a-f]{8}", name[len(prefix):]):
            nft_run("delete", "table", "ip", name)
            gone.append(name)
    return gone


class NftLoadBalancer:
    def __init__(self, table: str, comment: str = "", nft: str = "nft",
                 conntrack_file: Path = CONNTRACK_FILE, run: Run = subprocess.run,
                 bridge_nf: Path = BRIDGE_NF, netns: Path | None = None) -> None:
        self._table = _TABLE.sub("_", table)
        self._bridge_nf = bridge_nf
        # The Docker Engine's bridges live in another network namespace (agent.host_netns):
        # every command, and every read of the kernel's tables, is made there.
        self._enter = ["nsenter", f"--net={netns}"] if netns is not None else []
        self._comment = comment.replace('"', "'")[:100]
        self._nft = nft
        self._conntrack_file = conntrack_file
        self._run = run
        self._warned = False

    @property
    def table(self) -> str:
        return self._table

    def available(self) -> str | None:
        """Why this driver cannot work here (None: it can): no nft, or not allowed."""
        if shutil.which(self._nft) is None:
            return f"the {self._nft} command is not installed (Debian package nftables)"
        try:
            self._nft_run(["list", "tables"])
        except DriverError as exc:
            return exc.message
        return None

    def apply(self, state: LbState) -> None:
        # "table; delete table; table {…}" in one transaction: created if missing, then
        # replaced whole. An empty state deletes it (and is a no-op when it is missing).
        head = f"table ip {self._table}\ndelete table ip {self._table}\n"
        script = head if state.empty else head + render(self._table, state, self._comment,
                                                        self._replies_bridged())
        self._nft_run(["-f", "-"], script)
        self._hairpin({seg.bridge for f in state.frontends if f.backends for seg in f.clients
                       if _BRIDGE.match(seg.bridge)})

    def _hairpin(self, bridges: set[str]) -> None:
        """Hairpin mode on every port of `bridges` (see Hairpin above). A failure is
        logged: only a capsule's connections to itself depend on it."""
        for bridge in sorted(bridges):
            try:
                listed = self._ip(["-d", "-o", "link", "show", "master", bridge])
                for line in listed.splitlines():
                    port = line.split(":", 2)[1].strip().split("@")[0] if ":" in line else ""
                    # Containers' veth ports only: a VXLAN port in hairpin mode would
                    # send frames back to the hosts they came from (a project network
                    # across hosts), and their bridges would learn MACs on the wrong port.
                    if (" hairpin off " in line and _VETH.search(line)
                            and _BRIDGE.match(port)):
                        self._ip(["link", "set", "dev", port, "type", "bridge_slave",
                                  "hairpin", "on"])
            except DriverError as exc:
                LOG.warning("hairpin mode on the ports of %s: %s", bridge, exc.message)

    def _ip(self, args: list[str]) -> str:
        try:
            done = self._run([*self._enter, "ip", *args], capture_output=True, text=True,
                             timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise DriverError(f"ip {' '.join(args)}: {exc}") from exc
        if done.returncode != 0:
            raise DriverError(f"ip {' '.join(args)} failed: {done.stderr.strip()[:300]}")
        return done.stdout

    def _replies_bridged(self) -> bool:
        """Whether bridged packets pass connection tracking (see Masquerade above)."""
        text = self._read(self._bridge_nf)
        return text is not None and text.strip() == "1"

    def _read(self, path: Path) -> str | None:
        """A kernel file as seen from the bridges' namespace (None: unreadable)."""
        if not self._enter:
            try:
                return path.read_text()
            except OSError:
                return None
        try:
            done = self._run([*self._enter, "cat", str(path)], capture_output=True, text=True,
                             timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    def connections(self, addr: str, ports: Collection[int]) -> Flows:
        return flows_to(self._conntrack_lines(addr), addr, ports)

    def _conntrack_lines(self, addr: str) -> Iterable[str]:
        if not self._enter:
            try:
                with self._conntrack_file.open() as f:
                    return [line for line in f if addr in line]
            except OSError:
                pass
        else:
            text = self._read(self._conntrack_file)
            if text is not None:
                return [line for line in text.splitlines() if addr in line]
        if shutil.which("conntrack"):
            done = self._run([*self._enter, "conntrack", "-L", "-p", "tcp", "--reply-src", addr],
                             capture_output=True, text=True, timeout=10, check=False)
            if done.returncode == 0:
                return done.stdout.splitlines()
        if not self._warned:
            self._warned = True
            LOG.warning("cannot read the connection table (%s, or the conntrack command): "
                        "drains will not wait for open connections", self._conntrack_file)
        return []

    def _nft_run(self, args: list[str], stdin: str | None = None) -> str:
        try:
            done = self._run([*self._enter, self._nft, *args], input=stdin,
                             capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise DriverError(f"nft {' '.join(args)}: {exc}") from exc
        if done.returncode != 0:
            raise DriverError(f"nft {' '.join(args)} failed: "
                              f"{(done.stderr or done.stdout).strip()[:500]}")
        return done.stdout


def flows_to(lines: Iterable[str], addr: str, ports: Collection[int]) -> Flows:
    """TCP connections whose reply comes from `addr` on one of `ports`: the backend side
    of a connection, whether it went through a VIP or straight to the address. Open: in a
    live state and answered (one the backend never answered, [UNREPLIED], carries no
    request it accepted); keyed: all of them, by the client's side of the tuple. Lines as
    /proc/net/nf_conntrack or `conntrack -L` print them."""
    wanted = {str(p) for p in ports}
    n = 0
    keys = set()
    for line in lines:
        words = line.split()
        try:
            at = words.index("tcp")
            state = words[at + 3]
        except (ValueError, IndexError):
            continue
        srcs = [w[4:] for w in words if w.startswith("src=")]
        dsts = [w[4:] for w in words if w.startswith("dst=")]
        sports = [w[6:] for w in words if w.startswith("sport=")]
        dports = [w[6:] for w in words if w.startswith("dport=")]
        if not (len(srcs) >= 2 and len(sports) >= 2 and dsts and dports and srcs[1] == addr
                and sports[1] in wanted):
            continue
        keys.add(f"{srcs[0]}:{sports[0]}>{dsts[0]}:{dports[0]}")
        if state in LIVE and "[UNREPLIED]" not in line:
            n += 1
    return Flows(open=n, keys=frozenset(keys))


def render(table: str, state: LbState, comment: str = "", replies_bridged: bool = False) -> str:
    """The table's nft text for `state` (pure: tests read it). `replies_bridged`: VIP
    replies are un-NATed on the client's bridge (see Masquerade in the module docstring)."""
    fronts = [f for f in state.frontends if f.backends and (f.clients or f.publish)]
    vip_rules: list[str] = []
    published: list[str] = []
    chains: list[str] = []
    for i, f in enumerate(fronts):
        proto = f.protocol.lower()
        chain = f"fe{i}"
        for seg in sorted(set(f.clients)):
            if not _BRIDGE.match(seg.bridge):
                continue
            vip_rules.append(f'iifname "{seg.bridge}" ip saddr {seg.subnet} ip daddr {f.vip} '
                             f'{proto} dport {f.port} goto {chain} comment "{_safe(f.label)}"')
        if f.publish is not None:
            published.append(f"{proto} dport {f.publish} goto {chain}")
        picks = ", ".join(f"{j} : goto {chain}b{j}" for j in range(len(f.backends)))
        chains.append(_chain(chain, [f"numgen inc mod {len(f.backends)} vmap {{ {picks} }}"]))
        for j, addr in enumerate(f.backends):
            chains.append(_chain(f"{chain}b{j}",
                                 [f"meta l4proto {proto} dnat to {addr}:{f.target_port}"]))
    rng = state.vip_range
    out = [f"table ip {table} {{"]
    if comment:
        out.append(f'  comment "{_safe(comment)}"')
    pre = []
    if rng is not None and vip_rules:
        pre.append(f"ip daddr {rng} jump vips")
    if published:
        pre.append("fib daddr type local jump published")
    out.append(_chain("prerouting", pre, f"type nat hook prerouting priority {NAT_PRIORITY}; "
                                         "policy accept;"))
    if published:
        out.append(_chain("output", ["fib daddr type local ip daddr != 127.0.0.0/8 jump published"],
                          f"type nat hook output priority {NAT_PRIORITY}; policy accept;"))
        out.append(_chain("published", published))
    if rng is not None and vip_rules:
        out.append(_chain("vips", vip_rules))
    out.extend(chains)
    out.append(_chain("postrouting", _masquerade(rng, fronts, replies_bridged),
                      f"type nat hook postrouting priority {SNAT_PRIORITY}; policy accept;"))
    if rng is not None:
        refuse = [f"ip daddr {rng} meta l4proto tcp reject with tcp reset",
                  f"ip daddr {rng} reject"]
        out.append(_chain("forward", refuse, f"type filter hook forward priority "
                                             f"{FILTER_PRIORITY}; policy accept;"))
        out.append(_chain("egress", refuse, f"type filter hook output priority "
                                            f"{FILTER_PRIORITY}; policy accept;"))
    out.append("}")
    return "\n".join(out) + "\n"


def _masquerade(rng: IPv4Network | None, fronts: list[Frontend],
                replies_bridged: bool) -> list[str]:
    """What leaves with this host's address, so that its reply comes back through this
    host's connection tracking (see Masquerade in the module docstring)."""
    rules = []
    vip_backends = sorted({a for f in fronts if f.clients for a in f.backends})
    if rng is not None and not replies_bridged:
        rules.append(f"ct status dnat ct original ip daddr {rng} masquerade")
    elif rng is not None and vip_backends:
        hairpins = ", ".join(f"{a} . {a}" for a in vip_backends)
        rules.append(f"ct status dnat ct original ip daddr {rng} "
                     f"ip saddr . ip daddr {{ {hairpins} }} masquerade")
    for proto in ("tcp", "udp"):
        ports = sorted({f.publish for f in fronts if f.publish and f.protocol.lower() == proto})
        if ports:
            rules.append(f"ct status dnat meta l4proto {proto} ct original proto-dst "
                         f"{{ {', '.join(map(str, ports))} }} masquerade")
    return rules


def _chain(name: str, rules: list[str], head: str | None = None) -> str:
    body = ([f"    {head}"] if head else []) + [f"    {r}" for r in rules]
    return f"  chain {name} {{\n" + "\n".join(body) + ("\n" if body else "") + "  }"


def _safe(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9 _./:-]', "_", text)[:120]


def segment_ok(seg: Segment) -> bool:
    return bool(_BRIDGE.match(seg.bridge))
