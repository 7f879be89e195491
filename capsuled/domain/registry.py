"""Private registries as rules: what a registry record may hold, which host an image
reference names, the reference pulled through a registry, and how an image is pulled.

A pull plan carries only the pulling project's own credentials: those of the registry
its container names, or of its registry whose domain is the image's host. Whether a
cached image may be used without a pull is decided on the host, by image ID, where it is
known which images came through a credentialed pull (agent/pulls.py). Other projects'
registry domains play no part: a tenant registering `docker.io` (or any host) must not
change how anyone else's images are pulled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from capsuled.domain.channel import ImagePull
from capsuled.domain.spec import ContainerSpec

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,254}\Z")
# host[:port]: a DNS name or IPv4 address, or an IPv6 address in brackets. No scheme and
# no path: it becomes the first component of an image reference.
DOMAIN_RE = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}"
                       r"[a-z0-9])?)*|\[[0-9a-f:.]{2,45}\])(?::[0-9]{1,5})?\Z")
MAX_DOMAIN = 253
MAX_USERNAME = 255
MAX_PASSWORD = 4096
DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


@dataclass(frozen=True)
class Credentials:
    """One registry of a project, decrypted: only ever built for that project's pulls."""

    uuid: str
    domain: str
    username: str | None
    password: str | None = None
    # Made (or its domain last set) by someone who may reach loopback/private addresses
    # (an admin): image search may then reach it wherever it is (api/services/image_search).
    allow_private: bool = False

    def __repr__(self) -> str:  # never a password in a log line or a traceback
        return f"Credentials(uuid={self.uuid!r}, domain={self.domain!r})"


def canonical_domain(domain: str) -> str:
    """The one spelling of a registry host: lower case, Docker Hub's aliases folded."""
    d = domain.strip().lower()
    return DOCKER_HUB if d in _HUB_ALIASES else d


def domain_problem(domain: object) -> str | None:
    """What is wrong with a registry domain, or None."""
    if not isinstance(domain, str) or not domain.strip():
        return "is required: the registry's host[:port], e.g. registry.example.com:5000"
    d = domain.strip().lower()
    if len(d) > MAX_DOMAIN or not DOMAIN_RE.match(d):
        return ("must be a host[:port] such as registry.example.com or 127.0.0.1:5000 "
                "(no scheme, no path)")
    port = d.rpartition(":")[2] if not d.endswith("]") and ":" in d else None
    if port is not None and not 1 <= int(port) <= 65535:
        return "port must be between 1 and 65535"
    return None


def split_host(image: str) -> tuple[str | None, str]:
    """(the registry host the reference names, or None; the rest), as Docker reads it:
    the first component is a host when it has a '.' or ':' or is localhost."""
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, image


def image_host(image: str) -> str:
    """The registry an image is pulled from (Docker Hub when the reference names none)."""
    host, _ = split_host(image)
    return canonical_domain(host) if host else DOCKER_HUB


def pull_reference(image: str, registry: Credentials | None) -> str:
    """The reference pulled and run: with a registry, an image that names no host is
    taken from the registry's domain (as Zun joins them); a host in the image wins."""
    host, _ = split_host(image)
    if registry is None or host is not None:
        return image
    return f"{registry.domain}/{image}"


def plan_pull(spec: ContainerSpec, own: Mapping[str, Credentials]) -> ImagePull | None:
    """How this container's image is pulled, or None for the spec's own way (no registry
    of the project involved). `own`: the project's registries by uuid. The spec's pull
    policy applies (`always` False); the host forces a pull where the cache is private."""
    chosen = own.get(spec.registry) if spec.registry else None
    ref = pull_reference(spec.image, chosen)
    host = image_host(ref)
    if chosen is None or canonical_domain(chosen.domain) != host:
        # The image is elsewhere than the named registry: only that host's own credentials.
        chosen = next((r for r in own.values() if canonical_domain(r.domain) == host), None)
    if chosen is None and spec.registry is None:
        return None
    return ImagePull(container=spec.name, image=ref, always=False,
                     username=chosen.username if chosen else None,
                     password=chosen.password if chosen else None)
