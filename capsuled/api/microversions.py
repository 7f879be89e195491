"""OpenStack-API-Version negotiation for the `container` service type.

A missing header means the minimum (1.1), not the newest: that is what Zun does and
what old clients rely on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from capsuled.errors import VersionNotAcceptable

SERVICE = "container"
HEADER = "OpenStack-API-Version"
MIN = (1, 1)
MAX = (1, 40)
# Versions where behaviour changes for capsules.
CAPSULE_NEW_BODY = (1, 32)
HOSTS_API = (1, 4)
REGISTRIES_API = (1, 30)
CONTAINER_REGISTRY = (1, 31)
# Capsule update and rollback (extensions; Zun has neither): only at the newest version,
# which zunclient and the capsule CLI send, so that older clients never meet them.
CAPSULE_UPDATE = (1, 40)

# ASCII digits, a few of them: `\d` alone takes '²' and int() refuses 5,000 digits.
_VALUE = re.compile(r"^\s*(\S+)\s+(latest|\d{1,6}\.\d{1,6})\s*\Z", re.I | re.ASCII)
MAX_HEADER_CHARS = 256  # room for every service of a cloud; anything longer is not a version


@dataclass(frozen=True, order=True)
class ApiVersion:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def at_least(self, v: tuple[int, int]) -> bool:
        return (self.major, self.minor) >= v


def fmt(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def parse(header: str | None) -> ApiVersion:
    """The version a request asks for; VersionNotAcceptable when it is malformed or out of range."""
    if header is None or not header.strip():
        return ApiVersion(*MIN)
    if len(header) > MAX_HEADER_CHARS:
        raise VersionNotAcceptable(f"Invalid {HEADER} header: longer than {MAX_HEADER_CHARS} "
                                   f"characters; expected '{SERVICE} X.Y' or '{SERVICE} latest'")
    # The header may list several services ("compute 2.1, container 1.30").
    for part in header.split(","):
        m = _VALUE.match(part)
        if m is None:
            raise VersionNotAcceptable(f"Invalid {HEADER} header: {header!r}; "
                                       f"expected '{SERVICE} X.Y' or '{SERVICE} latest'")
        if m.group(1).lower() != SERVICE:
            continue
        raw = m.group(2).lower()
        if raw == "latest":
            return ApiVersion(*MAX)
        major, minor = (int(x) for x in raw.split("."))
        if not MIN <= (major, minor) <= MAX:
            raise VersionNotAcceptable(
                f"Version {raw} was requested but the minor version is not supported by this "
                f"server. The supported range is {fmt(MIN)} to {fmt(MAX)}.")
        return ApiVersion(major, minor)
    raise VersionNotAcceptable(f"Invalid {HEADER} header: {header!r}; no '{SERVICE}' version in it")


def response_headers(version: ApiVersion) -> dict[str, str]:
    return {
        "OpenStack-API-Minimum-Version": f"{SERVICE} {fmt(MIN)}",
        "OpenStack-API-Maximum-Version": f"{SERVICE} {fmt(MAX)}",
        HEADER: f"{SERVICE} {version}",
        "Vary": HEADER,
    }
