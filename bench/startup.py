"""Capsule start-up: POST /v1/capsules → Running (seen through the API) for a sandbox +
2 busybox containers, against the same three containers made with raw docker SDK calls
(namespaces shared the same way), measured alternately in the same run.

    .venv/bin/python bench/startup.py [--runs 15] [--json bench/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import httpx

BIN = Path(sys.executable).parent
INFRA = "capsuled/infra:latest"
BENCH_LABEL = "capsuled.bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_docker(api: docker.APIClient) -> float:
    tag = uuid.uuid4().hex[:8]
    labels = {BENCH_LABEL: tag}
    t0 = time.perf_counter()
    sb = api.create_container(INFRA, name=f"bench-sb-{tag}", labels=labels, hostname="bench",
                              host_config=api.create_host_config(ipc_mode="shareable"))["Id"]
    api.start(sb)
    ns = f"container:{sb}"
    hc = api.create_host_config(network_mode=ns, ipc_mode=ns, pid_mode=ns)
    ids = []
    for i in range(2):
        cid = api.create_container("busybox:latest", command=["sleep", "3600"],
                                   name=f"bench-{i}-{tag}", labels=labels, host_config=hc)["Id"]
        api.start(cid)
        ids.append(cid)
    elapsed = time.perf_counter() - t0
    for cid in [*ids, sb]:
        api.remove_container(cid, force=True)
    return elapsed


def capsuled(client: httpx.Client) -> float:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    tmpl = {"kind": "capsule", "metadata": {"name": name}, "spec": {"containers": [
        {"name": f"c{i}", "image": "busybox", "command": ["sleep", "3600"]} for i in range(2)]}}
    t0 = time.perf_counter()
    r = client.post("/v1/capsules", json={"template": tmpl})
    r.raise_for_status()
    uid = r.json()["uuid"]
    while client.get(f"/v1/capsules/{uid}").json()["status"] != "Running":
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    client.delete(f"/v1/capsules/{uid}")
    while client.get(f"/v1/capsules/{uid}").status_code != 404:
        time.sleep(0.02)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    api = docker.APIClient(base_url="unix:///var/run/docker.sock", version="auto")
    state = Path(tempfile.mkdtemp(prefix="capsuled-bench-"))
    port = free_port()
    proc = subprocess.Popen([str(BIN / "capsuled"), "--state-dir", str(state), "--listen",
                             f"127.0.0.1:{port}", "--log-level", "warning"],
                            env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        token = (state / "admin-token").read_text().strip()
        client = httpx.Client(base_url=url, timeout=60, headers={
            "X-Auth-Token": token, "OpenStack-API-Version": "container latest"})
        raw_docker(api), capsuled(client)  # warm-up: page cache, image cache, connections
        raw, ours = [], []
        for _ in range(args.runs):
            raw.append(raw_docker(api))
            ours.append(capsuled(client))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    result = {
        "case": "startup: sandbox + 2 busybox, POST → Running vs raw docker SDK",
        "runs": args.runs,
        "capsuled_median_s": round(statistics.median(ours), 4),
        "raw_sdk_median_s": round(statistics.median(raw), 4),
        "ratio": round(statistics.median(ours) / statistics.median(raw), 3),
    }
    print(f"{'case':<12}{'capsuled p50':>14}{'raw SDK p50':>14}{'ratio':>8}")
    print(f"{'startup':<12}{result['capsuled_median_s']:>13.3f}s{result['raw_sdk_median_s']:>13.3f}s"
          f"{result['ratio']:>8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
