"""Offline images built from Debian's static binaries with `docker import`.

- `busybox:latest`: /bin/busybox plus a symlink per applet (sh, httpd, wget, nc, ps,
  sleep, …), a minimal /etc, and CMD ["sh"].
- the infra image: /catatonit run as `catatonit -P`, the sandbox's PID 1 that only
  reaps and waits, so a sandbox costs almost nothing.

Idempotent: an image that carries the same content digest label is left alone.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import docker

from capsuled.drivers.docker_client import translate_docker_errors
from capsuled.errors import DriverError, NotFound

BUSYBOX = Path("/bin/busybox")
CATATONIT = Path("/usr/bin/catatonit")
SEED_LABEL = "capsuled.seed-digest"

_ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1 localhost\n",
}


@dataclass(frozen=True)
class SeedResult:
    image: str
    created: bool


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def busybox_rootfs(binary: Path = BUSYBOX) -> bytes:
    applets = subprocess.run([str(binary), "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "var", "var/www"):
            _add_dir(tar, d)
        _add_dir(tar, "tmp", 0o1777)
        _add_file(tar, "bin/busybox", binary.read_bytes(), 0o755)
        for path in sorted(set(applets)):
            if path == "bin/busybox":
                continue
            link = tarfile.TarInfo(path)
            link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
            tar.addfile(link)
        for name, text in _ETC.items():
            _add_file(tar, name, text.encode())
    return buf.getvalue()


def infra_rootfs(binary: Path = CATATONIT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_file(tar, "catatonit", binary.read_bytes(), 0o755)
        _add_dir(tar, "etc")
        for name, text in _ETC.items():
            _add_file(tar, name, text.encode())
    return buf.getvalue()


def _seed(api: docker.APIClient, image: str, rootfs: bytes, changes: list[str],
          force: bool) -> SeedResult:
    digest = hashlib.sha256(rootfs + "\n".join(changes).encode()).hexdigest()[:16]
    if not force:
        try:
            with translate_docker_errors(f"inspect image {image}"):
                current = api.inspect_image(image)
            if ((current.get("Config") or {}).get("Labels") or {}).get(SEED_LABEL) == digest:
                return SeedResult(image, created=False)
        except (NotFound, DriverError):
            pass
    repo, _, tag = image.rpartition(":")
    with translate_docker_errors(f"import {image}"):
        api.import_image_from_data(rootfs, repository=repo, tag=tag,
                                   changes=[*changes, f"LABEL {SEED_LABEL}={digest}"])
    return SeedResult(image, created=True)


def seed_images(api: docker.APIClient, infra_image: str, force: bool = False) -> list[SeedResult]:
    for binary, pkg in ((BUSYBOX, "busybox-static"), (CATATONIT, "catatonit")):
        if not binary.exists():
            raise DriverError(f"{binary} is missing: install Debian's {pkg} package")
    return [
        _seed(api, "busybox:latest", busybox_rootfs(), ['CMD ["sh"]'], force),
        _seed(api, infra_image, infra_rootfs(), ['ENTRYPOINT ["/catatonit", "-P"]'], force),
    ]
