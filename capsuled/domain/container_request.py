"""Parse Zun's container create body (POST /v1/containers) into a `BareSpec`.

Every problem is reported with its field name, all at once, as `InvalidInput`. Fields Zun
has for Neutron, Glance, Cinder or placement are accepted when they ask for nothing we
would have to ignore (empty lists, the default driver), and refused with a clear 400
otherwise, rather than silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
import shlex
from typing import Any


from capsuled.domain.ports import ANY_HOST_PORT
from capsuled.domain.spec import (BareSpec, ContainerSpec, DockerRestart, HealthCheck,
                                  InjectedFile, Port, VolumeMount, VolumeSpec)
from capsuled.domain import labels as L
from capsuled.domain.security_groups import DEFAULT, parse_names
from capsuled.domain.template import (CONTAINER_NAME_RE, IMAGE_RE, PULL_POLICIES,
                                      REGISTRY_REF_RE, Limits, _Problems, refuse_nul,
                                      whole_number)
from capsuled.errors import InvalidInput

MAX_VALUE_CHARS = 32 * 1024  # one environment or label value
RESTART_NAMES = ("no", "always", "on-failure", "unless-stopped")
KNOWN = {"name", "image", "command", "entrypoint", "cpu", "memory", "disk", "cpu_policy",
         "workdir", "environment", "labels", "restart_policy", "interactive", "tty",
         "image_driver", "image_pull_policy", "security_groups", "hints", "nets",
         "auto_remove", "runtime", "hostname", "mounts", "availability_zone", "auto_heal",
         "privileged", "healthcheck", "exposed_ports", "registry", "host", "run",
         # extension: add the container to this capsule instead of running it bare
         "capsule"}
# Accepted only with these "nothing asked" values.
INERT: dict[str, tuple[Any, ...]] = {
    "image_driver": ("docker", None), "nets": (None, []),
    "cpu_policy": (None, "shared"), "runtime": (None, "runc"),
    "disk": (None, 0),
}
# Zun's exposed_ports keys: "80" (TCP), "80/tcp" or "53/udp".
EXPOSED_KEY = re.compile(r"([0-9]{1,5})(?:/(tcp|udp))?")


def parse_container_request(body: dict[str, Any], limits: Limits | None = None,
                            command_as_string: bool = False) -> BareSpec:
    """`command_as_string`: before microversion 1.20 Zun took the command as one string."""
    limits = limits or Limits()
    refuse_nul(body, "")
    p = _Problems()
    for key in sorted(set(body) - KNOWN):
        p.add(key or "''", "unknown field")
    for key, allowed in INERT.items():
        if body.get(key) not in allowed:
            p.add(key, "not supported by this server")

    name = body.get("name")
    if name is not None and not (isinstance(name, str) and CONTAINER_NAME_RE.match(name)):
        p.add("name", "must start with a letter or digit and contain only letters, digits, "
                      "'_', '.' and '-' (at most 63 characters)")
    image = body.get("image")
    if image is None:
        p.add("image", "is required")
    elif not (isinstance(image, str) and IMAGE_RE.match(image) and len(image) <= 255):
        p.add("image", "must be an image reference such as busybox or registry/repo:tag")

    command = _command(body.get("command"), "command", p, command_as_string)
    entrypoint = _command(body.get("entrypoint"), "entrypoint", p, False)
    cpu = _cpu(body.get("cpu"), p, limits)
    memory = _memory(body.get("memory"), p, limits)
    env = _string_map(body.get("environment"), "environment", p)
    labels = _string_map(body.get("labels"), "labels", p)
    workdir = _optional_str(body.get("workdir"), "workdir", p)
    hostname = _optional_str(body.get("hostname"), "hostname", p)
    restart = _restart(body.get("restart_policy"), p)
    interactive = _bool(body.get("interactive"), "interactive", p)
    tty = _bool(body.get("tty"), "tty", p)
    privileged = _bool(body.get("privileged"), "privileged", p)
    auto_remove = _bool(body.get("auto_remove"), "auto_remove", p)
    capsule = _optional_str(body.get("capsule"), "capsule", p)
    if capsule is None:
        mounts, volumes, files = _bare_mounts(body.get("mounts"), p)
    else:
        mounts, volumes, files = _mounts(body.get("mounts"), p), [], []
    pull = body.get("image_pull_policy")
    if pull is not None and (not isinstance(pull, str) or pull.lower() not in PULL_POLICIES):
        p.add("image_pull_policy", "must be always, ifnotpresent or never")
    registry = body.get("registry")
    if registry is not None and not (isinstance(registry, str) and REGISTRY_REF_RE.match(registry)):
        p.add("registry", "must be the name or uuid of one of the project's registries")
        registry = None
    zone = _optional_str(body.get("availability_zone"), "availability_zone", p)
    host = _optional_str(body.get("host"), "host", p)
    ports = _exposed_ports(body.get("exposed_ports"), p, limits.max_host_ports)
    # Names of the project's security groups (the service checks that they exist); none
    # given, or Zun's empty list: the project's `default`.
    groups = parse_names(body.get("security_groups"), "security_groups", p.add,
                         limits.max_security_groups) or [DEFAULT]
    if capsule is not None:
        if groups != [DEFAULT]:
            p.add("security_groups", "a container in a capsule is in the capsule's groups "
                                     "(spec.securityGroups of its template); not allowed "
                                     "with capsule")
        if ports:
            p.add("exposed_ports", "a capsule's ports are published by its sandbox, made with "
                                   "the capsule (hostPort in its template); not allowed with capsule")
        for key in ("restart_policy", "auto_remove", "hostname", "availability_zone", "host"):
            if body.get(key) not in (None, False):
                p.add(key, "comes from the capsule; not allowed with capsule")
    if restart and restart.name in ("always", "unless-stopped") and restart.max_retry:
        p.add("restart_policy.MaximumRetryCount", f"must be 0 with {restart.name}")
    if auto_remove and restart and restart.name != "no":
        p.add("auto_remove", "cannot be combined with a restart policy other than no")
    node_selector = _hints(body.get("hints"), p)
    auto_heal = _bool(body.get("auto_heal"), "auto_heal", p)
    health = _healthcheck(body.get("healthcheck"), auto_heal, p)
    if p.items:
        raise InvalidInput(p.items)

    spec = ContainerSpec(
        name=name or "", role="app", image=str(image), command=entrypoint, args=command,
        workdir=workdir, env=env, cpu=cpu, memory=memory, ports=ports,
        volume_mounts=mounts,
        image_pull_policy=PULL_POLICIES[pull.lower()] if isinstance(pull, str) else "IfNotPresent",
        tty=tty, stdin=interactive, privileged=privileged, health=health, registry=registry)
    return BareSpec(container=spec, restart=restart or DockerRestart(), auto_remove=auto_remove,
                    hostname=hostname, labels=labels, capsule=capsule,
                    availability_zone=zone, host=host, node_selector=node_selector,
                    volumes=volumes, files=files, auto_heal=auto_heal, security_groups=groups)


def _exposed_ports(value: Any, p: _Problems, most: int) -> list[Port]:
    """Zun's exposed_ports ({"80/tcp": {}, "53/udp": {}}): each published on a host port
    the runtime picks (as `docker run -P`), which the container's body then shows."""
    if value in (None, {}):
        return []
    if not isinstance(value, dict):
        p.add("exposed_ports", 'must be an object such as {"80/tcp": {}, "53/udp": {}}')
        return []
    if len(value) > most:
        p.add("exposed_ports", f"at most {most} ports may be published, not {len(value)}")
        return []
    out: dict[tuple[int, str], Port] = {}
    for key, options in value.items():
        m = EXPOSED_KEY.fullmatch(key) if isinstance(key, str) else None
        where = f"exposed_ports.{str(key)[:40]}"
        if m is None or not 0 < int(m.group(1)) < 65536:
            p.add(where, "must be PORT or PORT/PROTOCOL: a port from 1 to 65535, protocol "
                         "tcp or udp")
        elif options not in (None, {}):
            p.add(where, "takes no options: {}")
        else:
            port = int(m.group(1))
            proto = "UDP" if m.group(2) == "udp" else "TCP"
            out[(port, proto)] = Port(container_port=port, protocol=proto,
                                      host_port=ANY_HOST_PORT)
    return list(out.values())


def _healthcheck(value: Any, auto_heal: bool, p: _Problems) -> HealthCheck | None:
    """Zun's healthcheck: {cmd (a shell command), interval, retries, timeout} (seconds)."""
    if value in (None, {}):
        return None
    if not isinstance(value, dict):
        p.add("healthcheck", "must be {cmd, interval, retries, timeout}")
        return None
    for key in sorted(set(value) - {"cmd", "interval", "retries", "timeout"}):
        p.add(f"healthcheck.{key}", "unknown field")
    cmd = value.get("cmd")
    if not (isinstance(cmd, str) and cmd.strip()):
        p.add("healthcheck.cmd", "is required: the shell command that says healthy by exiting 0")
    numbers: dict[str, int] = {}
    for key, default, least, most in (("interval", 10, 1, 3600), ("retries", 3, 1, 1000),
                                      ("timeout", 5, 1, 3600)):
        # zunclient's --healthcheck sends text
        v = whole_number(value.get(key, default), strings=True)
        if v is None or not least <= v <= most:
            p.add(f"healthcheck.{key}", f"must be a whole number from {least} to {most}")
            v = default
        numbers[key] = v
    if not (isinstance(cmd, str) and cmd.strip()):
        return None
    return HealthCheck(command=["sh", "-c", cmd], interval=numbers["interval"],
                       timeout=numbers["timeout"], retries=numbers["retries"], restart=auto_heal)


def _hints(value: Any, p: _Problems) -> dict[str, str]:
    """Zun's scheduler hints; `label:<key>` = value (the host must carry that label) is
    the one this scheduler understands."""
    if value in (None, {}):
        return {}
    if not isinstance(value, dict):
        p.add("hints", "must be an object of scheduler hints, e.g. {\"label:ssd\": \"true\"}")
        return {}
    out = {}
    for key, v in value.items():
        if not (isinstance(key, str) and key.startswith("label:") and len(key) > 6):
            p.add(f"hints.{key}", "not supported: use label:<key> (the host must have that label)")
        elif not isinstance(v, (str, int, float, bool)):
            p.add(f"hints.{key}", "must be a string")
        else:
            out[key[6:]] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def _command(value: Any, field: str, p: _Problems, as_string: bool) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            p.add(field, f"cannot be split into words: {exc}")
            return []
    if as_string:
        p.add(field, "must be a string before microversion 1.20")
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        p.add(field, "must be a list of strings")
        return []
    return list(value)


def _cpu(value: Any, p: _Problems, limits: Limits) -> float | None:
    # Unset means no limit and no claim, as with `docker run`; Zun's 1 CPU / 512 MiB
    # defaults would fill a small host after a couple of containers.
    if value is None:
        return None
    try:
        cpu = float(value)
    except (TypeError, ValueError, OverflowError):
        p.add("cpu", "must be a number")
        return None
    if isinstance(value, bool) or not limits.min_cpu <= cpu <= limits.max_cpu:
        p.add("cpu", f"must be between {limits.min_cpu:g} and {limits.max_cpu:g}")
    return cpu


def _memory(value: Any, p: _Problems, limits: Limits) -> int | None:
    if value is None:
        return None
    raw = value.strip() if isinstance(value, str) else value
    if isinstance(raw, str) and raw[-1:].upper() == "M":
        raw = raw[:-1]
    memory = whole_number(raw, strings=True)
    if memory is None:
        p.add("memory", "must be an integer number of MiB")
        return None
    if not limits.min_memory <= memory <= limits.max_memory:
        p.add("memory", f"must be between {limits.min_memory} and {limits.max_memory} MiB")
    return memory


def _string_map(value: Any, field: str, p: _Problems) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        p.add(field, "must be an object of string values")
        return {}
    out = {}
    for k, v in value.items():
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            p.add(f"{field}.{k}", "must be a string")
        elif len(str(k)) > 255 or (isinstance(v, str) and len(v) > MAX_VALUE_CHARS):
            p.add(f"{field}.{str(k)[:60]}", f"keys may have 255 characters and values "
                                            f"{MAX_VALUE_CHARS}")
        elif "\x00" in str(k) or (isinstance(v, str) and "\x00" in v):
            p.add(f"{field}.{str(k)[:60]}", "must not contain NUL characters")
        elif field == "labels" and str(k).startswith(L.PREFIX):
            p.add(f"{field}.{k}", f"the {L.PREFIX} prefix is reserved for capsuled's own labels")
        else:
            out[str(k)] = str(v)
    return out


def _optional_str(value: Any, field: str, p: _Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        p.add(field, "must be a non-empty string of at most 255 characters")
        return None
    return value


def _bool(value: Any, field: str, p: _Problems) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    p.add(field, "must be true or false")
    return False


def _restart(value: Any, p: _Problems) -> DockerRestart | None:
    if value is None:
        return None
    if isinstance(value, str):  # zunclient's CLI sends "on-failure:3" as an object; be lenient
        given_name, _, given_count = value.partition(":")
        value = {"Name": given_name, "MaximumRetryCount": given_count or "0"}
    if not isinstance(value, dict):
        p.add("restart_policy", "must be {\"Name\": ..., \"MaximumRetryCount\": ...}")
        return None
    for key in sorted(set(value) - {"Name", "MaximumRetryCount"}):
        p.add(f"restart_policy.{key}", "unknown field")
    name = value.get("Name")
    if name not in RESTART_NAMES:
        p.add("restart_policy.Name", f"must be one of {', '.join(RESTART_NAMES)}")
        return None
    count = whole_number(value.get("MaximumRetryCount") or 0, strings=True)
    if count is None:
        p.add("restart_policy.MaximumRetryCount", "must be a non-negative integer")
        return None
    if count > 1000:
        p.add("restart_policy.MaximumRetryCount", "must be at most 1000")
    if count < 0:
        p.add("restart_policy.MaximumRetryCount", "must be a non-negative integer")
    return DockerRestart(name=name, max_retry=max(count, 0))


def _mounts(value: Any, p: _Problems) -> list[VolumeMount]:
    """A container joining a capsule mounts the capsule's volumes by name."""
    if value in (None, []):
        return []
    if not isinstance(value, list):
        p.add("mounts", "must be a list of {source, destination}")
        return []
    out = []
    for i, m in enumerate(value):
        path = f"mounts[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("source"), str) or not isinstance(
                m.get("destination"), str) or not str(m.get("destination")).startswith("/"):
            p.add(path, "must be {source: <capsule volume name>, destination: /absolute/path}")
            continue
        out.append(VolumeMount(name=m["source"], mount_path=m["destination"],
                               read_only=bool(m.get("read_only", False))))
    return out


MAX_INJECTED_BYTES = 1024 * 1024  # all files of one container together
MAX_VOLUME_GIB = 16384


def _bare_mounts(value: Any, p: _Problems
                 ) -> tuple[list[VolumeMount], list[VolumeSpec], list[InjectedFile]]:
    """Zun's mounts of a bare container: `{size, destination}` makes a volume of its own
    (removed with it), `{type: bind, source: <base64 content>, destination}` puts a file
    there before it starts. A named volume (`{source, destination}`) would be Cinder's."""
    if value in (None, []):
        return [], [], []
    if not isinstance(value, list):
        p.add("mounts", "must be a list of {size, destination} or {type: bind, source, destination}")
        return [], [], []
    mounts: list[VolumeMount] = []
    volumes: list[VolumeSpec] = []
    files: list[InjectedFile] = []
    total = 0
    seen: set[str] = set()
    for i, m in enumerate(value):
        path = f"mounts[{i}]"
        if not isinstance(m, dict):
            p.add(path, "must be {size, destination} or {type: bind, source, destination}")
            continue
        for key in sorted(set(m) - {"source", "destination", "size", "type", "read_only"}):
            p.add(f"{path}.{key}", "unknown field")
        dest = m.get("destination")
        if not (isinstance(dest, str) and dest.startswith("/")
                and posixpath.normpath(dest) == dest.rstrip("/") and dest != "/"):
            p.add(f"{path}.destination", "must be an absolute path such as /data (not /)")
            continue
        if dest in seen:
            p.add(f"{path}.destination", f"{dest} is mounted twice")
            continue
        seen.add(dest)
        kind = m.get("type", "volume")
        if kind == "bind":
            raw = _base64(m.get("source"), f"{path}.source", p)
            if raw is not None:
                total += len(raw)
                files.append(InjectedFile(path=dest, content_b64=m["source"]))
        elif kind != "volume":
            p.add(f"{path}.type", "must be volume or bind")
        elif m.get("source") not in (None, ""):
            p.add(f"{path}.source", "named (Cinder) volumes are not available here; give "
                                    "size (GiB) for a new volume of the container's own")
        else:
            # zunclient sends the CLI's size=N as a string
            size = whole_number(m.get("size"), strings=True)
            if size is None or not 1 <= size <= MAX_VOLUME_GIB:
                p.add(f"{path}.size", "must be a positive whole number of GiB (as in capsule "
                                      "templates; the disk quota bounds it)")
                continue
            name = f"mount{i}"
            volumes.append(VolumeSpec(name=name, type="cinder", size=size, auto_remove=True))
            mounts.append(VolumeMount(name=name, mount_path=dest,
                                      read_only=bool(m.get("read_only", False))))
    if total > MAX_INJECTED_BYTES:
        p.add("mounts", f"injected files may hold {MAX_INJECTED_BYTES} bytes together, not {total}")
    return mounts, volumes, files


def _base64(value: Any, path: str, p: _Problems) -> bytes | None:
    if not isinstance(value, str) or not value:
        p.add(path, "must be the file's content, base64-encoded")
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        p.add(path, "is not valid base64")
        return None
