"""A private Docker registry for tests: Debian's `docker-registry` on a free loopback port
behind htpasswd (bcrypt) auth, with the offline busybox pushed into it.

Docker treats 127.0.0.0/8 registries as insecure, so plain HTTP works without touching
the engine's configuration."""

from __future__ import annotations

import io
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx

from conftest import free_port

USER, PASSWORD = "puller", "s3cret-Registry-Pw!"
REPO = "private/busybox"


@dataclass
class PrivateRegistry:
    domain: str  # 127.0.0.1:<port>
    proc: subprocess.Popen[bytes]
    log: Path
    image_id: str = ""  # the pushed image's ID (not on the host until someone pulls it)

    @property
    def image(self) -> str:
        """The pushed image as Docker names it (domain included)."""
        return f"{self.domain}/{REPO}"


def _bin() -> str:
    found = shutil.which("docker-registry") or shutil.which("registry")
    if found is None:
        raise AssertionError("docker-registry is not installed: run scripts/setup.sh")
    return found


def _htpasswd(path: Path) -> None:
    out = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True,
                         text=True).stdout
    path.write_text(out)


def start_registry(tmp: Path, docker_api: docker.APIClient) -> Iterator[PrivateRegistry]:
    port = free_port()
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    _htpasswd(tmp / "htpasswd")
    config = tmp / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: capsuled-tests\n    path: {tmp / 'htpasswd'}\n")
    log = tmp / "registry.log"
    proc = subprocess.Popen([_bin(), "serve", str(config)], stdout=open(log, "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    reg = PrivateRegistry(domain=f"127.0.0.1:{port}", proc=proc, log=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"docker-registry exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://{reg.domain}/v2/", timeout=1).status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("docker-registry did not answer")
            time.sleep(0.1)
        # Its own image ID (busybox plus a label unique to this run): the host's image gate
        # judges by ID, and busybox itself is public on the host.
        dockerfile = f"FROM busybox:latest\nLABEL org.capsuled-tests.private={secrets.token_hex(8)}\n"
        for chunk in docker_api.build(fileobj=io.BytesIO(dockerfile.encode()),
                                      tag=f"{reg.image}:latest", pull=False, rm=True,
                                      decode=True):
            assert "error" not in chunk, chunk
        reg.image_id = docker_api.inspect_image(f"{reg.image}:latest")["Id"]
        assert reg.image_id != docker_api.inspect_image("busybox:latest")["Id"]
        auth = {"username": USER, "password": PASSWORD}
        for chunk in docker_api.push(reg.image, tag="latest", auth_config=auth, stream=True,
                                     decode=True):
            assert "error" not in chunk, chunk
        # Only the registry has it now: every run of it below is a real pull.
        docker_api.remove_image(f"{reg.image}:latest")
        assert reg.image_id not in {i["Id"] for i in docker_api.images(all=True)}
        yield reg
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            docker_api.remove_image(f"{reg.image}:latest", force=True)
        except docker.errors.APIError:
            pass
