"""Image references for `commit`: Docker's name grammar for the repository and tag a user
gives, and the one normalised form under which a committed image is owned by a project.

Docker reads `busybox`, `library/busybox` and `docker.io/library/busybox:latest` as the same
image; ownership is decided on the normalised form so that no spelling slips past it.
"""

from __future__ import annotations

import re

from capsuled.errors import InvalidInput

# Docker's reference grammar (distribution/reference): path components of lowercase
# alphanumerics joined by '.', '_', '__' or dashes; an optional registry host[:port] first.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
REPOSITORY_RE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*\Z", re.ASCII)
TAG_RE = re.compile(r"[\w][\w.-]{0,127}\Z", re.ASCII)
_HEX64 = re.compile(r"[a-f0-9]{64}\Z", re.ASCII)
MAX_REPOSITORY = 255
DEFAULT_TAG = "latest"
_HUB = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")


def parse_commit_target(repository: object, tag: object) -> tuple[str, str]:
    """The (repository, tag) of a commit, checked against Docker's grammar; a tag may also
    come as `repository:tag` (what `zun commit` and `capsule commit` accept)."""
    if not isinstance(repository, str) or not repository:
        raise InvalidInput("repository: is required (e.g. myapp or myapp:v1)")
    if tag is not None and not isinstance(tag, str):
        raise InvalidInput("tag: must be a string")
    repo, given_tag = repository, tag or None
    last = repo.rsplit("/", 1)[-1]
    if ":" in last and given_tag is None:
        repo, _, given_tag = repo.rpartition(":")
    if len(repo) > MAX_REPOSITORY or not REPOSITORY_RE.match(repo):
        raise InvalidInput("repository: must be a Docker repository name: lowercase letters, "
                           "digits and separators (. _ __ -), components joined by '/', "
                           "e.g. myapp or team/myapp")
    if _HEX64.match(repo.rsplit("/", 1)[-1]):
        raise InvalidInput("repository: must not be a 64-character hexadecimal string "
                           "(it would read as an image id)")
    out_tag = DEFAULT_TAG if given_tag is None else given_tag
    if not TAG_RE.match(out_tag):
        raise InvalidInput("tag: must be 1 to 128 letters, digits, '_', '.' or '-', "
                           "not starting with '.' or '-'")
    return repo, out_tag


def normalise(image: str) -> str:
    """`repository:tag` as Docker resolves it on a host: Docker Hub's host and `library/`
    dropped, the tag `latest` when none is given (a digest reference stays as it is)."""
    ref = image.strip()
    if "@" in ref:
        return ref.lower()
    last = ref.rsplit("/", 1)[-1]
    repo, tag = (ref.rsplit(":", 1) if ":" in last else (ref, DEFAULT_TAG))
    lowered = repo.lower()
    for hub in _HUB:
        if lowered.startswith(hub):
            repo = repo[len(hub):]
            break
    if repo.startswith("library/") and repo.count("/") == 1:
        repo = repo[len("library/"):]
    return f"{repo}:{tag}"
