"""The workload every case runs: a sandbox + 2 busybox containers, made three ways.

- through capsuled's API (POST /v1/capsules, then poll until the API says Running);
- with raw docker SDK calls that make the same three containers the agent makes (same
  images, a user-defined bridge network with DNS aliases for the sandbox, shareable IPC,
  members joining the sandbox's network, IPC and PID namespaces, the same restart policy
  and log driver), the two members created in parallel as the agent does;
- with `podman pod create` + 2 x `podman run --pod` (podman's own catatonit pause image).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx

from bench.harness import BENCH_LABEL, BUSYBOX, INFRA, wait_for

SLEEP = ["sleep", "3600"]
# What Capsuled's agent sets on the containers of `template` under the bench server's
# settings (harness.Server: limits.default_memory 16; limits.default_cpu and pids_limit
# at their defaults), so that the raw arm makes the same containers.
MEMBER_NANO_CPUS = 100_000_000
MEMBER_MEMORY_BYTES = 16 * 1024 * 1024
PIDS_LIMIT = 1024


def template(name: str, containers: int = 2, labels: dict[str, str] | None = None,
             restart: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": f"c{i}", "image": "busybox", "command": SLEEP}
                                           for i in range(containers)]}
    if restart:
        spec["restartPolicy"] = restart
    return {"kind": "capsule", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


# -- through the API ------------------------------------------------------------------------
def create(client: httpx.Client, tmpl: dict[str, Any]) -> str:
    r = client.post("/v1/capsules", json={"template": tmpl})
    if r.status_code != 202:
        raise RuntimeError(f"create answered {r.status_code}: {r.text[:500]}")
    return str(r.json()["uuid"])


def wait_running(client: httpx.Client, uid: str, interval: float, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/v1/capsules/{uid}").json()
        if body.get("status") == "Running":
            return body
        if body.get("status") == "Error" or time.monotonic() > deadline:
            raise RuntimeError(f"capsule {uid} is {body.get('status')}: {body.get('status_reason')}")
        time.sleep(interval)


def wait_running_held(client: httpx.Client, uid: str, timeout: float = 120) -> dict[str, Any]:
    """Like wait_running, but the server holds each answer until the status changes (the
    `wait_while` long poll, as `capsule create --wait` uses it)."""
    deadline = time.monotonic() + timeout
    status = "Creating"
    while True:
        body: dict[str, Any] = client.get(f"/v1/capsules/{uid}", params={
            "wait_while": status, "wait_timeout": "30"}).json()
        status = str(body.get("status"))
        if status == "Running":
            return body
        if status == "Error" or time.monotonic() > deadline:
            raise RuntimeError(f"capsule {uid} is {status}: {body.get('status_reason')}")


def delete_and_wait(client: httpx.Client, uid: str, timeout: float = 120) -> None:
    client.delete(f"/v1/capsules/{uid}")
    wait_for(lambda: client.get(f"/v1/capsules/{uid}").status_code == 404, timeout=timeout,
             interval=0.05, what=f"capsule {uid} to go")


def list_by_label(client: httpx.Client, key: str, value: str) -> list[dict[str, Any]]:
    r = client.get("/v1/capsules", params={"labels": f"{key}={value}", "limit": 1000})
    r.raise_for_status()
    return list(r.json()["capsules"])


# -- raw docker SDK ---------------------------------------------------------------------------
class RawDocker:
    """The same containers as the agent makes, by the SDK calls a careful user would write."""

    def __init__(self, api: docker.APIClient, run_id: str, parallel: int = 32) -> None:
        self.api = api
        self.labels = {BENCH_LABEL: run_id}
        self.network = f"capsuled-bench-{run_id}"
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="raw-member")
        api.create_network(self.network, driver="bridge", labels=self.labels,
                           options={"com.docker.network.bridge.enable_icc": "true"})

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def create_trio(self, members_in_parallel: bool = True) -> list[str]:
        """Sandbox, then its two members; returns [sandbox, member, member] ids."""
        api, tag = self.api, uuid.uuid4().hex[:12]
        sb = api.create_container(
            INFRA, name=f"bench-{tag}", labels=self.labels, hostname=f"bench-{tag}", detach=True,
            host_config=api.create_host_config(ipc_mode="shareable", network_mode=self.network,
                                               restart_policy={"Name": "no"}, init=False,
                                               pids_limit=PIDS_LIMIT),
            networking_config=api.create_networking_config({
                self.network: api.create_endpoint_config(aliases=[f"bench-{tag}", tag])}))["Id"]
        api.start(sb)
        ns = f"container:{sb}"

        def member(i: int) -> str:
            cid = api.create_container(
                BUSYBOX, name=f"bench-{tag}-c{i}", labels=self.labels, entrypoint=SLEEP, detach=True,
                host_config=api.create_host_config(
                    network_mode=ns, ipc_mode=ns, pid_mode=ns,
                    restart_policy={"Name": "always", "MaximumRetryCount": 0},
                    log_config={"Type": "local", "Config": {}},
                    # The limits the agent gives a container that asks for none (the bench
                    # server's defaults): cgroup settings runc applies at every start.
                    nano_cpus=MEMBER_NANO_CPUS, mem_limit=MEMBER_MEMORY_BYTES,
                    pids_limit=PIDS_LIMIT))["Id"]
            api.start(cid)
            return str(cid)
        if members_in_parallel:
            members = list(self._pool.map(member, range(2)))
        else:
            members = [member(i) for i in range(2)]
        return [sb, *members]

    def remove_trio(self, ids: list[str], stop_timeout: int = 0) -> None:
        """Members (in parallel), then the sandbox; with a stop timeout, stop before removing
        (what the agent does on delete)."""
        def rm(cid: str) -> None:
            if stop_timeout:
                self.api.stop(cid, timeout=stop_timeout)
            self.api.remove_container(cid, force=True)
        sb, *members = ids
        list(self._pool.map(rm, members))
        rm(sb)


# -- podman -------------------------------------------------------------------------------------
class Podman:
    """`podman pod create` + 2 x `podman run -d --pod`, as a user would type them.

    Podman sets RLIMIT_NOFILE/NPROC inside containers to values this machine may refuse
    (an unprivileged hard limit); a private containers.conf sets them within the limits."""

    def __init__(self, run_id: str) -> None:
        self.label = f"{BENCH_LABEL}={run_id}"
        self._dir = Path(tempfile.mkdtemp(prefix="capsuled-bench-podman-"))
        import resource
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nofile = min(nofile if nofile > 0 else 1_048_576, 1_048_576)
        nproc = min(nproc if nproc > 0 else 32768, 32768)
        conf = self._dir / "containers.conf"
        conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", '
                        f'"nproc={nproc}:{nproc}"]\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        if self._run("image", "exists", "localhost/busybox:latest", check=False).returncode != 0:
            # Offline: copy the seeded image over from Docker.
            save = subprocess.Popen(["docker", "save", BUSYBOX], stdout=subprocess.PIPE)
            subprocess.run(["podman", "load"], stdin=save.stdout, env=self.env, check=True,
                           capture_output=True)
            save.wait()

    @staticmethod
    def available() -> bool:
        return shutil.which("podman") is not None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                              check=check, timeout=120)

    def create_pod(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        self._run("pod", "create", "--name", name, "--label", self.label,
                  "--share", "net,ipc,uts,pid")
        for i in range(2):
            self._run("run", "-d", "--pod", name, "--name", f"{name}-c{i}", "--label", self.label,
                      "--restart", "always", "localhost/busybox:latest", *SLEEP)
        return name

    def remove_pod(self, name: str) -> None:
        self._run("pod", "rm", "-f", "-t", "0", name, check=False)

    def cleanup(self) -> None:
        out = self._run("pod", "ps", "-q", "--filter", f"label={self.label}", check=False).stdout
        for pod in out.split():
            self._run("pod", "rm", "-f", "-t", "0", pod, check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
