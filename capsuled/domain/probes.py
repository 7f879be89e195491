"""Parse one Kubernetes probe (livenessProbe, readinessProbe, startupProbe) of a template
container into a `spec.Probe`, with Kubernetes' defaults and bounds.

Problems are reported through `add(path, message)` (template.py's collector), so every
problem of a template is listed at once. There is no `host` field: HTTP and TCP probes
always target the capsule itself (127.0.0.1 in its network namespace).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from capsuled.domain.spec import Port, Probe

Add = Callable[[str, str], None]

KINDS = ("exec", "httpGet", "tcpSocket")
KEYS = {*KINDS, "initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold",
        "failureThreshold"}
# (field, Probe attribute, default, least, most): Kubernetes' defaults and minimums; the
# maximums keep Docker's nanosecond fields and the prober's timers sane.
NUMBERS = (("initialDelaySeconds", "initial_delay", 0, 0, 3600),
           ("periodSeconds", "period", 10, 1, 3600),
           ("timeoutSeconds", "timeout", 1, 1, 3600),
           ("successThreshold", "success_threshold", 1, 1, 1000),
           ("failureThreshold", "failure_threshold", 3, 1, 1000))
MAX_PATH = 1024
MAX_HEADERS = 16
MAX_HEADER_VALUE = 1024
PATH_RE = re.compile(r"^/[\x21-\x7e]*\Z")  # printable ASCII, no spaces
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z")  # an RFC 9110 token
HEADER_VALUE_RE = re.compile(r"^[\x20-\x7e\t]*\Z")  # no CR/LF: no header injection
PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13})\Z")


def whole(value: Any) -> int | None:
    """An int from a JSON/YAML integer (not a bool, not a float)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_probe(value: Any, path: str, purpose: str, ports: list[Port], add: Add) -> Probe | None:
    """`purpose` is liveness, readiness or startup; `ports` are the container's own, for
    a port given by name."""
    if not isinstance(value, dict):
        add(path, "must be an object with one of exec, httpGet, tcpSocket")
        return None
    for key in sorted(set(value) - KEYS, key=str):
        add(f"{path}.{key}", "is not supported" if key == "grpc" else "unknown field")
    kinds = [k for k in KINDS if k in value]
    if len(kinds) > 1 or (not kinds and "grpc" not in value):  # grpc: said above
        add(path, "must have exactly one of exec, httpGet, tcpSocket")
    numbers: dict[str, int] = {}
    for key, attr, default, least, most in NUMBERS:
        v = whole(value.get(key, default))
        if v is None or not least <= v <= most:
            add(f"{path}.{key}", f"must be a whole number from {least} to {most}")
            v = default
        numbers[attr] = v
    if purpose != "readiness" and numbers["success_threshold"] != 1:
        add(f"{path}.successThreshold", f"must be 1 for a {purpose} probe")
    if len(kinds) != 1:
        return None
    kind = kinds[0]
    where = f"{path}.{kind}"
    body = value[kind]
    if not isinstance(body, dict):
        add(where, "must be an object")
        return None
    if kind == "exec":
        return _exec(body, where, numbers, add)
    if kind == "httpGet":
        return _http(body, where, numbers, ports, add)
    return _tcp(body, where, numbers, ports, add)


def _exec(body: dict[str, Any], where: str, numbers: dict[str, int], add: Add) -> Probe | None:
    for key in sorted(set(body) - {"command"}, key=str):
        add(f"{where}.{key}", "unknown field")
    command = body.get("command")
    if not (isinstance(command, list) and command and len(command) <= 256
            and all(isinstance(x, str) and len(x) <= 4096 for x in command)):
        add(f"{where}.command", "must be a non-empty list of strings")
        return None
    return Probe(kind="exec", command=command, **numbers)


def _target(body: dict[str, Any], where: str, allowed: set[str], add: Add) -> None:
    for key in sorted(set(body) - allowed, key=str):
        if key == "host":
            add(f"{where}.host", "is not supported: a probe always targets its own capsule")
        else:
            add(f"{where}.{key}", "unknown field")


def _port(value: Any, where: str, ports: list[Port], add: Add) -> int | None:
    number = whole(value)
    if number is not None:
        if 1 <= number <= 65535:
            return number
        add(where, "must be a port number from 1 to 65535 or the name of a container port")
        return None
    if isinstance(value, str) and PORT_NAME_RE.match(value):
        for p in ports:
            if p.name == value and p.protocol == "TCP":
                return p.container_port
        add(where, f"names no TCP port of this container: {value!r}")
        return None
    add(where, "must be a port number from 1 to 65535 or the name of a container port")
    return None


def _http(body: dict[str, Any], where: str, numbers: dict[str, int], ports: list[Port],
          add: Add) -> Probe | None:
    _target(body, where, {"path", "port", "scheme", "httpHeaders"}, add)
    port = _port(body.get("port"), f"{where}.port", ports, add)
    path = body.get("path", "/")
    ok = True
    if not (isinstance(path, str) and len(path) <= MAX_PATH and PATH_RE.match(path)):
        add(f"{where}.path", f"must be an absolute URL path of printable ASCII, at most {MAX_PATH} characters")
        ok = False
    scheme = body.get("scheme", "HTTP")
    if scheme not in ("HTTP", "HTTPS"):
        add(f"{where}.scheme", "must be HTTP or HTTPS")
        ok = False
    headers = _headers(body.get("httpHeaders", []), f"{where}.httpHeaders", add)
    if port is None or headers is None or not ok:
        return None
    return Probe(kind="http", port=port, path=path, scheme=scheme, headers=headers, **numbers)


def _headers(value: Any, where: str, add: Add) -> list[tuple[str, str]] | None:
    if not isinstance(value, list) or len(value) > MAX_HEADERS:
        add(where, f"must be a list of at most {MAX_HEADERS} {{name, value}} objects")
        return None
    out = []
    for i, h in enumerate(value):
        if not (isinstance(h, dict) and set(h) == {"name", "value"}):
            add(f"{where}[{i}]", "must be an object with name and value")
            return None
        name, text = h["name"], h["value"]
        if not (isinstance(name, str) and HEADER_NAME_RE.match(name)):
            add(f"{where}[{i}].name", "must be an HTTP header name")
            return None
        if not (isinstance(text, str) and len(text) <= MAX_HEADER_VALUE and HEADER_VALUE_RE.match(text)):
            add(f"{where}[{i}].value", f"must be printable text without line breaks, at most {MAX_HEADER_VALUE} characters")
            return None
        out.append((name, text))
    return out


def _tcp(body: dict[str, Any], where: str, numbers: dict[str, int], ports: list[Port],
         add: Add) -> Probe | None:
    _target(body, where, {"port"}, add)
    port = _port(body.get("port"), f"{where}.port", ports, add)
    return None if port is None else Probe(kind="tcp", port=port, **numbers)
