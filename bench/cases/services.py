"""Case 8 — capsule services: what the load balancer costs a connection, and how soon a
backend that lost its readiness leaves it.

One `capsuled` with a service over three busybox httpd capsules (readiness: an exec probe
every second that fails while /tmp/unready exists) and a client capsule of the project.

    latency   TCP connect time from the client capsule's network namespace (the bench's
              own sockets, made in that namespace as the agent's probes are) to the
              service's VIP, alternating with the same to a backend's own address (the
              baseline: the three in turn, as the VIP spreads them). A connect is the
              SYN through the NAT rule and the SYN-ACK back: the whole of what the load
              balancer adds, without the server's request handling. A full request
              (connect, GET, answer to the end) is shown beside it.
    readiness a backend is made unready F times; each time, from the probe's verdict (the
              failing probe stamps the kernel's uptime, the bench reads the same clock)
              until its address is gone from this host's nftables table, read every few
              ms. It is made ready again and listed again between rounds.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
import time
from typing import Any

import docker
import httpx

from bench import stats
from bench.harness import Row, Server, log, wait_for
from bench.workloads import create, delete_and_wait, wait_running

CLONE_NEWNET = 0x40000000
HTTPD = "mkdir -p /w && echo {name} > /w/index.html && exec httpd -f -p 8080 -h /w"
READY = ("if [ -e /tmp/unready ]; then read u r < /proc/uptime; echo $u >> /tmp/fails; "
         "exit 1; fi")


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def sockets_in(pid: int, n: int) -> list[socket.socket]:
    """`n` TCP sockets in the network namespace of process `pid` (a helper thread enters
    it, makes them and ends; the sockets stay in that namespace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    made: list[socket.socket] = []

    def enter() -> None:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        made.extend(socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n))
    try:
        t = threading.Thread(target=enter)
        t.start()
        t.join()
    finally:
        os.close(fd)
    if len(made) != n:
        raise RuntimeError("could not make sockets in the client capsule's namespace")
    return made


def _connect(s: socket.socket, addr: tuple[str, int], request: bool) -> float:
    s.settimeout(5)
    t0 = time.perf_counter()
    s.connect(addr)
    if request:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while s.recv(4096):
            pass
    elapsed = time.perf_counter() - t0
    s.close()
    return elapsed


def _backend(name: str, app: str) -> dict[str, Any]:
    return {"kind": "capsule", "metadata": {"name": name, "labels": {"app": app}}, "spec": {
        "containers": [{"name": "httpd", "image": "busybox",
                        "command": ["sh", "-c", HTTPD.format(name=name)],
                        "readinessProbe": {"exec": {"command": ["sh", "-c", READY]},
                                           "periodSeconds": 1, "failureThreshold": 1}}]}}


def _exec(api: docker.APIClient, cid: str, *cmd: str) -> str:
    ex = api.exec_create(cid, list(cmd))
    return str(api.exec_start(ex["Id"]).decode())


def _table(instance: str) -> str:
    from capsuled.drivers.lb.nft import table_name
    return table_name(instance, socket.gethostname())


def _listed(table: str) -> str:
    return subprocess.run(["nft", "list", "table", "ip", table], capture_output=True,
                          text=True, check=False).stdout


def run(api: docker.APIClient, connects: int, flips: int) -> list[Row]:
    srv = Server("services", env={"CAPSULED_SERVICES__DRAIN_GRACE": "0"})
    made: list[str] = []
    try:
        srv.start()
        client = srv.client()
        tag = f"b{os.getpid()}"
        names = [f"web{i}-{tag}" for i in range(3)]
        made = [create(client, _backend(n, tag)) for n in names]
        made.append(create(client, {"kind": "capsule", "metadata": {"name": f"client-{tag}"},
                                    "spec": {"containers": [{"name": "c", "image": "busybox",
                                                             "command": ["sleep", "3600"]}]}}))
        r = client.post("/v1/capsule_services", json={
            "name": "web", "selector": {"app": tag}, "ports": [{"port": 80, "targetPort": 8080}]})
        r.raise_for_status()
        vip = r.json()["vip"]
        for uid in made:
            wait_running(client, uid, 0.1)

        def serving() -> dict[str, str]:
            got = client.get("/v1/capsule_services/web").json()["backends"]
            return {b["name"]: b["addr"] for b in got if b["serving"]}
        addrs = wait_for(lambda: (lambda s: s if len(s) == 3 else None)(serving()), 60, 0.2,
                         "three serving backends")
        sandbox = api.containers(filters={"label": [f"capsuled.capsule={made[3]}",
                                                    "capsuled.role=sandbox"]})[0]
        pid = int(api.inspect_container(sandbox["Id"])["State"]["Pid"])
        rows = _latency(pid, vip, [addrs[n] for n in names], connects)
        rows += _readiness(api, client, srv.instance, made[1], names[1], addrs[names[1]], flips,
                           serving)
        return rows
    finally:
        for uid in made:
            try:
                delete_and_wait(srv.client(), uid)
            except Exception:  # noqa: BLE001 - destroy removes what is left
                pass
        srv.destroy(api)
        subprocess.run(["nft", "delete", "table", "ip", _table(srv.instance)],
                       capture_output=True, check=False)


def _latency(pid: int, vip: str, backends: list[str], n: int) -> list[Row]:
    results: dict[str, list[float]] = {"vip": [], "direct": [], "vip_req": [], "direct_req": []}
    for warm in sockets_in(pid, 20):  # ARP, conntrack and the httpd's first forks
        _connect(warm, (vip, 80), True)
    for round_ in range(2):
        request = round_ == 1
        count = n if not request else max(50, n // 4)
        socks = sockets_in(pid, 2 * count)
        for i in range(count):
            arms = [("vip", (vip, 80)), ("direct", (backends[i % 3], 8080))]
            if i % 2:
                arms.reverse()
            for name, addr in arms:
                key = f"{name}_req" if request else name
                results[key].append(_connect(socks.pop(), addr, request))
                time.sleep(0.001)  # the server's accept and the TIME_WAIT bookkeeping settle
    s = {k: stats.summary(v) for k, v in results.items()}
    ratio = s["vip"]["median"] / s["direct"]["median"]
    log(f"services: connect p50 VIP {s['vip']['median'] * 1e6:.0f} µs, direct "
        f"{s['direct']['median'] * 1e6:.0f} µs (ratio {ratio:.2f}); request p50 VIP "
        f"{s['vip_req']['median'] * 1e3:.2f} ms, direct {s['direct_req']['median'] * 1e3:.2f} ms")
    return [
        Row("8 services", "TCP connect via the VIP, median", s["vip"]["median"] * 1e6, "µs",
            s["direct"]["median"] * 1e6, "connect to a backend's own address", "ratio ≤ 1.1",
            ratio <= 1.1, len(results["vip"]), {"vip": s["vip"], "direct": s["direct"]}),
        Row("8 services", "TCP connect via the VIP, p99", s["vip"]["p99"] * 1e6, "µs",
            s["direct"]["p99"] * 1e6, "connect to a backend's own address", "", None,
            len(results["vip"])),
        Row("8 services", "HTTP request via the VIP (connect to answer), median",
            s["vip_req"]["median"] * 1000, "ms", s["direct_req"]["median"] * 1000,
            "the same to a backend's own address", "ratio ≤ 1.1",
            s["vip_req"]["median"] / s["direct_req"]["median"] <= 1.1, len(results["vip_req"]),
            {"vip_req": s["vip_req"], "direct_req": s["direct_req"]}),
    ]


def _readiness(api: docker.APIClient, client: httpx.Client, instance: str, uid: str, name: str,
               addr: str, flips: int, serving: Any) -> list[Row]:
    cid = api.containers(filters={"label": [f"capsuled.capsule={uid}",
                                            "capsuled.name=httpd"]})[0]["Id"]
    table = _table(instance)
    needle = f"dnat to {addr}:8080"
    gaps: list[float] = []
    for _ in range(flips):
        wait_for(lambda: needle in _listed(table), 30, 0.05, "the backend listed")
        _exec(api, cid, "rm", "-f", "/tmp/fails")
        _exec(api, cid, "touch", "/tmp/unready")
        wait_for(lambda: needle not in _listed(table), 30, 0.002, "the backend removed")
        removed = _uptime()
        verdict = float(_exec(api, cid, "cat", "/tmp/fails").split()[0])
        gaps.append(max(0.0, removed - verdict))
        _exec(api, cid, "rm", "-f", "/tmp/unready")
        wait_for(lambda: name in serving(), 30, 0.1, "ready again")
    s = stats.summary(gaps)
    log(f"services: readiness lost → backend removed p50 {s['median'] * 1000:.0f} ms, "
        f"p99 {s['p99'] * 1000:.0f} ms over {len(gaps)} flips")
    return [Row("8 services", "readiness lost → backend out of the LB, median",
                s["median"] * 1000, "ms", None, "", "", None, len(gaps), {"gaps": s}),
            Row("8 services", "readiness lost → backend out of the LB, p99", s["p99"] * 1000,
                "ms", None, "", "p99 ≤ 1000 ms", s["p99"] <= 1.0, len(gaps))]
