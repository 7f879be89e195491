"""Parse a capsule template (YAML or JSON text, or an already parsed object) and check it.

`parse_template` turns a template into a `CapsuleSpec` or raises `InvalidInput` listing
every problem with its field path, e.g.
`spec.containers[1].resources.requests.memory: must be a positive integer`.
The rules are Zun's schema and semantic checks, minus Zun's bugs: container names are
kept, `restartPolicy` works at the top level and in `spec`, init containers are checked
like app containers, and every problem is a 400 rather than a 500.
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

from capsuled import documents
from capsuled.domain.probes import check_probe
from capsuled.domain.spec import (CapsuleSpec, ContainerSpec, HealthCheck, Port, Probe,
                                  VolumeMount, VolumeSpec)
from capsuled.errors import InvalidInput

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+\Z")
CONTAINER_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")
IMAGE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.:/@-]*\Z")
# A registry named by a container (its name, or its uuid): Zun's container `registry`.
REGISTRY_REF_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,254}\Z")
LABEL_KEY_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_./-]{0,251}[a-zA-Z0-9])?\Z")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
PULL_POLICIES = {"always": "Always", "ifnotpresent": "IfNotPresent", "never": "Never"}

TOP_KEYS = {"kind", "capsuleVersion", "metadata", "restartPolicy", "availabilityZone", "spec"}
METADATA_KEYS = {"name", "labels", "annotations"}
SPEC_KEYS = {"containers", "initContainers", "restartPolicy", "volumes", "nodeSelector",
             "failurePolicy",  # extension: what a liveness/startup failure restarts
             # extensions: how an update is judged (domain/rollout.py)
             "minReadySeconds", "progressDeadlineSeconds"}
# (template key, least, most, default): seconds, bounded so that no update waits for long.
ROLLOUT_NUMBERS = (("minReadySeconds", 0, 3600, 0), ("progressDeadlineSeconds", 1, 3600, 120))
FAILURE_POLICIES = ("RestartContainer", "RestartCapsule")
CONTAINER_KEYS = {"name", "image", "command", "args", "workDir", "env", "ports", "resources",
                  "volumeMounts", "imagePullPolicy", "tty", "stdin", "securityContext",
                  "livenessProbe", "readinessProbe", "startupProbe",
                  # extension: pull the image through one of the project's registries
                  "registry"}
NOT_SUPPORTED = {"labels", "healthcheck", "grpc",
                 "limits", "imageDriver", "entrypoint", "hostname", "privileged"}


@dataclass(frozen=True)
class Limits:
    """Per-container request bounds (Zun's minimum_/maximum_ cpus and memory)."""

    min_cpu: float = 0.1
    max_cpu: float = 16.0
    min_memory: int = 4
    max_memory: int = 8192
    max_containers: int = 24
    # What a container that asks for none gets (domain.resources.with_default_limits).
    default_cpu: float = 0.1
    default_memory: int = 256
    # Published host ports: below min_host_port only for those trusted with host access
    # (domain.host_access); at most max_host_ports per capsule or bare container.
    min_host_port: int = 1024
    max_host_ports: int = 16


_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 4


def short(value: Any) -> str:
    """A bounded repr of a tenant's value for an error message."""
    return _REPR.repr(value)


# A problem names a path and what is wrong with it; both can quote a tenant's keys and
# values (an unknown key of 100 KB), so each is clipped: an error message stays small.
MAX_PATH_CHARS = 200
MAX_MESSAGE_CHARS = 300
MAX_PROBLEM_CHARS = MAX_PATH_CHARS + 2 + MAX_MESSAGE_CHARS


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 1] + "…"


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{_clip(path, MAX_PATH_CHARS)}: {_clip(message, MAX_MESSAGE_CHARS)}")


def load_template_text(text: str, source: str = "template") -> Any:
    """YAML or JSON text → object, within the size, depth and alias budgets of
    `documents` (a hostile document is a fast 400, never expanded)."""
    try:
        return documents.load_text(text, source)
    except documents.DocumentError as exc:
        raise InvalidInput(exc.message) from None


def parse_template(template: Any, limits: Limits | None = None) -> CapsuleSpec:
    """Check a template object and return its normalised spec, or raise InvalidInput."""
    limits = limits or Limits()
    if isinstance(template, str):
        template = load_template_text(template)
    else:
        try:
            documents.check_depth(template, "template")
        except documents.DocumentError as exc:
            raise InvalidInput(exc.message) from None
    p = _Problems()
    if not isinstance(template, dict):
        raise InvalidInput("template: must be an object")
    refuse_nul(template, "")
    spec = _check_top(template, p, limits)
    if p.items or spec is None:
        raise InvalidInput(p.items, summary=_summary(p.items))
    return spec


def _summary(items: list[str]) -> str:
    head = "Invalid capsule template: "
    return head + items[0] if len(items) == 1 else head + f"{len(items)} problems: " + "; ".join(items)


def _unknown_keys(obj: dict[str, Any], allowed: set[str], path: str, p: _Problems) -> None:
    for key in sorted(set(obj) - allowed, key=str):
        name = str(key) or "''"  # an empty key still names a path
        where = f"{path}.{name}" if path else name
        if key in NOT_SUPPORTED:
            p.add(where, "is not supported")
        else:
            p.add(where, "unknown field")


def _check_top(t: dict[str, Any], p: _Problems, limits: Limits) -> CapsuleSpec | None:
    _unknown_keys(t, TOP_KEYS, "", p)
    if "kind" not in t:
        p.add("kind", "is required (kind: capsule)")
    elif t["kind"] not in ("capsule", "Capsule"):
        p.add("kind", f"must be 'capsule', not {short(t['kind'])}")
    if "capsuleVersion" in t and t["capsuleVersion"] not in ("beta", "Beta"):
        p.add("capsuleVersion", "must be 'beta'")
    name, labels, annotations = _check_metadata(t.get("metadata"), "metadata" in t, p)
    zone = t.get("availabilityZone")
    if zone is not None and not (isinstance(zone, str) and 1 <= len(zone) <= 255):
        p.add("availabilityZone", "must be a string of 1 to 255 characters")
    spec = t.get("spec")
    if spec is None:
        p.add("spec", "is required")
        return None
    if not isinstance(spec, dict):
        p.add("spec", "must be an object")
        return None
    _unknown_keys(spec, SPEC_KEYS, "spec", p)
    policy = _check_restart_policy(t, spec, p)
    # Extension, as in Kubernetes: only hosts carrying all these labels may run the capsule.
    node_selector = _check_string_map(spec.get("nodeSelector"), "spec.nodeSelector", p,
                                      keys=LABEL_KEY_RE, max_value=MAX_LABEL_CHARS)
    volumes = _check_volumes(spec.get("volumes"), p)
    failure_policy = spec.get("failurePolicy", "RestartContainer")
    if failure_policy not in FAILURE_POLICIES:
        p.add("spec.failurePolicy", "must be RestartContainer or RestartCapsule")
    rollout: dict[str, int] = {}
    for key, least, most, default in ROLLOUT_NUMBERS:
        value = whole_number(spec.get(key, default))
        if value is None or not least <= value <= most:
            p.add(f"spec.{key}", f"must be a whole number of seconds from {least} to {most}")
            value = default
        rollout[key] = value
    # Names and mounts are taken from the raw lists, so a volume or container with its own
    # errors does not also cause a false "names no volume" / "not mounted" problem.
    raw_volumes = _raw_list(spec.get("volumes"))
    raw_containers = [*_raw_list(spec.get("initContainers")), *_raw_list(spec.get("containers"))]
    volume_names = {v["name"] for v in raw_volumes
                    if isinstance(v, dict) and isinstance(v.get("name"), str)}
    inits = _check_containers(spec.get("initContainers"), "spec.initContainers", "init",
                              volume_names, p, limits, required=False)
    apps = _check_containers(spec.get("containers"), "spec.containers", "app",
                             volume_names, p, limits, required=True)
    _check_names_unique(spec.get("initContainers"), spec.get("containers"), p)
    _check_host_ports(spec.get("initContainers"), spec.get("containers"), p, limits)
    _check_volumes_mounted(raw_volumes, raw_containers, p)
    if len(inits) + len(apps) > limits.max_containers:
        p.add("spec.containers", f"a capsule holds at most {limits.max_containers} containers")
    if p.items:
        return None
    return CapsuleSpec(name=name, labels=labels, annotations=annotations, restart_policy=policy,
                       availability_zone=zone, init_containers=inits, containers=apps,
                       volumes=volumes, node_selector=node_selector,
                       failure_policy=failure_policy,
                       min_ready_seconds=rollout["minReadySeconds"],
                       progress_deadline_seconds=rollout["progressDeadlineSeconds"])


def _check_metadata(meta: Any, present: bool, p: _Problems
                    ) -> tuple[str | None, dict[str, str], dict[str, str]]:
    if not present:
        p.add("metadata", "is required (it may be empty: metadata: {})")
        return None, {}, {}
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        p.add("metadata", "must be an object")
        return None, {}, {}
    _unknown_keys(meta, METADATA_KEYS, "metadata", p)
    name = meta.get("name")
    if name is not None and not (isinstance(name, str) and NAME_RE.match(name) and len(name) <= 255):
        p.add("metadata.name", "must be 2 to 255 characters of letters, digits, '_', '.' or '-', "
              "starting with a letter or digit")
        name = None
    labels = _check_string_map(meta.get("labels"), "metadata.labels", p, keys=LABEL_KEY_RE,
                               max_value=MAX_LABEL_CHARS)
    annotations = _check_string_map(meta.get("annotations"), "metadata.annotations", p)
    return name, labels, annotations


MAX_KEY_CHARS = 255  # every key, as the widest column a key may land in
MAX_LABEL_CHARS = 255  # a label's value: the capsule_labels column


def _check_string_map(value: Any, path: str, p: _Problems, keys: re.Pattern[str] | None = None,
                      strict: bool = False, max_value: int | None = None) -> dict[str, str]:
    """Labels tolerate YAML numbers (stringified); env values must be strings, as in Zun.
    No NUL anywhere (PostgreSQL refuses it in text); `max_value` bounds values that are
    stored in a column of that width, so that they are a 400 here, not a database error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        p.add(path, "must be a map of strings")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        where = f"{path}.{k[:60] if isinstance(k, str) else short(k)}"
        if not isinstance(k, str) or (keys is not None and not keys.match(k)):
            p.add(where, "is not a valid key")
        elif len(k) > MAX_KEY_CHARS or "\x00" in k:
            p.add(where, f"a key has at most {MAX_KEY_CHARS} characters and no NUL")
        elif isinstance(v, bool) or not isinstance(v, (str, int, float)) or (
                strict and not isinstance(v, str)):
            p.add(where, "must be a string (quote numbers: \"80\")")
        elif "\x00" in str(v):
            p.add(where, "must not contain NUL characters")
        elif max_value is not None and len(str(v)) > max_value:
            p.add(where, f"must be at most {max_value} characters")
        else:
            out[k] = str(v)
    return out


def _check_restart_policy(t: dict[str, Any], spec: dict[str, Any], p: _Problems) -> Any:
    found = {}
    for path, value in (("restartPolicy", t.get("restartPolicy")),
                        ("spec.restartPolicy", spec.get("restartPolicy"))):
        if value is None:
            continue
        if value not in RESTART_POLICIES:
            p.add(path, f"must be one of Always, OnFailure, Never, not {short(value)}")
        else:
            found[path] = value
    if len(set(found.values())) > 1:
        p.add("spec.restartPolicy", "conflicts with the top-level restartPolicy")
    return next(iter(found.values()), "Always")


def _check_volumes(value: Any, p: _Problems) -> list[VolumeSpec]:
    if value is None:
        return []
    if not isinstance(value, list):
        p.add("spec.volumes", "must be a list")
        return []
    out: list[VolumeSpec] = []
    seen: set[str] = set()
    for i, vol in enumerate(value):
        path = f"spec.volumes[{i}]"
        if not isinstance(vol, dict):
            p.add(path, "must be an object with a name and a cinder or emptyDir source")
            continue
        _unknown_keys(vol, {"name", "cinder", "emptyDir"}, path, p)
        name = vol.get("name")
        if name is None:
            p.add(f"{path}.name", "is required")
            continue
        if not (isinstance(name, str) and CONTAINER_NAME_RE.match(name)):
            p.add(f"{path}.name", "must be 1 to 63 letters, digits, '_', '.' or '-', "
                  "starting with a letter or digit")
            continue
        if name in seen:
            p.add(f"{path}.name", f"duplicate volume name {name!r}")
        seen.add(name)
        sources = [k for k in ("cinder", "emptyDir") if k in vol]
        if len(sources) != 1:
            p.add(path, "needs exactly one source: cinder or emptyDir")
            continue
        if sources[0] == "emptyDir":
            if vol["emptyDir"] not in (None, {}):
                p.add(f"{path}.emptyDir", "takes no options (emptyDir: {})")
            out.append(VolumeSpec(name=name, type="emptyDir"))
            continue
        vs = _check_cinder(vol["cinder"], f"{path}.cinder", name, p)
        if vs is not None:
            out.append(vs)
    return out


def _check_cinder(c: Any, path: str, name: str, p: _Problems) -> VolumeSpec | None:
    if not isinstance(c, dict):
        p.add(path, "must be an object with size (GiB)")
        return None
    _unknown_keys(c, {"size", "volumeID", "autoRemove"}, path, p)
    if "volumeID" in c:
        p.add(f"{path}.volumeID", "reusing an existing volume is not supported yet; use size")
        return None
    size = c.get("size")
    if size is None:
        p.add(f"{path}.size", "is required (GiB)")
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        p.add(f"{path}.size", "must be a positive integer (GiB)")
        return None
    auto_remove = c.get("autoRemove", False)
    if not isinstance(auto_remove, bool):
        p.add(f"{path}.autoRemove", "must be true or false")
        return None
    return VolumeSpec(name=name, type="cinder", size=size, auto_remove=auto_remove)


def _check_containers(value: Any, path: str, role: str, volumes: set[str], p: _Problems,
                      limits: Limits, required: bool) -> list[ContainerSpec]:
    if value is None:
        if required:
            p.add(path, "is required: a capsule needs at least one container")
        return []
    if not isinstance(value, list):
        p.add(path, "must be a list")
        return []
    if required and not value:
        p.add(path, "must not be empty: a capsule needs at least one container")
    out = []
    for i, c in enumerate(value):
        spec = _check_container(c, f"{path}[{i}]", role, i, volumes, p, limits)
        if spec is not None:
            out.append(spec)
    return out


def _check_container(c: Any, path: str, role: str, index: int, volumes: set[str],
                     p: _Problems, limits: Limits) -> ContainerSpec | None:
    if not isinstance(c, dict):
        p.add(path, "must be an object")
        return None
    before = len(p.items)
    _unknown_keys(c, CONTAINER_KEYS, path, p)
    name = c.get("name", f"{role}-{index}" if role == "init" else f"container-{index}")
    if not (isinstance(name, str) and CONTAINER_NAME_RE.match(name)):
        p.add(f"{path}.name", "must be 1 to 63 letters, digits, '_', '.' or '-', "
              "starting with a letter or digit")
    image = c.get("image")
    if image is None:
        p.add(f"{path}.image", "is required")
    elif not (isinstance(image, str) and 2 <= len(image) <= 255 and IMAGE_RE.match(image)):
        p.add(f"{path}.image", "must be an image reference such as busybox or busybox:latest")
    command = _string_list(c.get("command"), f"{path}.command", p)
    args = _string_list(c.get("args"), f"{path}.args", p)
    workdir = c.get("workDir")
    if workdir is not None and not (isinstance(workdir, str) and workdir.startswith("/")):
        p.add(f"{path}.workDir", "must be an absolute path")
    env = _check_string_map(c.get("env"), f"{path}.env", p, strict=True)
    cpu, memory = _check_resources(c.get("resources"), f"{path}.resources", p, limits)
    ports = _check_ports(c.get("ports"), f"{path}.ports", p)
    mounts = _check_mounts(c.get("volumeMounts"), f"{path}.volumeMounts", volumes, p)
    pull = c.get("imagePullPolicy", "IfNotPresent")
    if not isinstance(pull, str) or pull.lower() not in PULL_POLICIES:
        p.add(f"{path}.imagePullPolicy", "must be one of Always, IfNotPresent, Never")
    tty = _bool(c.get("tty", False), f"{path}.tty", p, allow_strings=True)
    stdin = _bool(c.get("stdin", False), f"{path}.stdin", p)
    privileged = _check_security_context(c.get("securityContext"), f"{path}.securityContext", p)
    probes = {purpose: _check_probe(c.get(f"{purpose}Probe"), f"{path}.{purpose}Probe", purpose,
                                    role, ports, p)
              for purpose in ("liveness", "readiness", "startup")}
    health, liveness = _docker_health(probes["liveness"], probes["startup"])
    registry = c.get("registry")
    if registry is not None and not (isinstance(registry, str) and REGISTRY_REF_RE.match(registry)):
        p.add(f"{path}.registry", "must be the name or uuid of one of the project's registries")
    if len(p.items) > before:
        return None
    return ContainerSpec(name=name, role=role, image=image, command=command, args=args,
                         workdir=workdir, env=env, cpu=cpu, memory=memory, ports=ports,
                         volume_mounts=mounts, image_pull_policy=PULL_POLICIES[pull.lower()],
                         tty=tty, stdin=stdin, privileged=privileged, health=health,
                         registry=registry, liveness=liveness, readiness=probes["readiness"],
                         startup=probes["startup"])


def _check_probe(value: Any, path: str, purpose: str, role: str, ports: list[Port],
                 p: _Problems) -> Probe | None:
    if value is None:
        return None
    if role == "init":
        p.add(path, "is not allowed on init containers (they run to completion)")
        return None
    return check_probe(value, path, purpose, ports, p.add)


def _docker_health(liveness: Probe | None, startup: Probe | None) -> tuple[HealthCheck | None, Probe | None]:
    """An exec liveness probe with no startup probe to wait for is Docker's HEALTHCHECK
    (as before the prober; Docker runs it); any other stays with the agent's prober."""
    if liveness is None or liveness.kind != "exec" or startup is not None:
        return None, liveness
    return HealthCheck(command=liveness.command, interval=liveness.period, timeout=liveness.timeout,
                       retries=liveness.failure_threshold, start_period=liveness.initial_delay,
                       restart=True), None


def _check_security_context(value: Any, path: str, p: _Problems) -> bool:
    """Only `privileged` is supported (admins only: the API's policy gate runs first)."""
    if value is None:
        return False
    if not isinstance(value, dict):
        p.add(path, "must be an object")
        return False
    for key in sorted(set(value) - {"privileged"}, key=str):  # YAML keys may be numbers
        p.add(f"{path}.{key}", "is not supported")
    return _bool(value.get("privileged", False), f"{path}.privileged", p)


def _string_list(value: Any, path: str, p: _Problems) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        p.add(path, "must be a list of strings")
        return []
    return list(value)


def _bool(value: Any, path: str, p: _Problems, allow_strings: bool = False) -> bool:
    if isinstance(value, bool):
        return value
    if allow_strings and isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    p.add(path, "must be true or false")
    return False


def _check_resources(r: Any, path: str, p: _Problems, limits: Limits
                     ) -> tuple[float | None, int | None]:
    if r is None:
        return None, None
    if not isinstance(r, dict):
        p.add(path, "must be an object with requests: {cpu, memory}")
        return None, None
    _unknown_keys(r, {"requests"}, path, p)
    req = r.get("requests")
    if req is None:
        return None, None
    if not isinstance(req, dict):
        p.add(f"{path}.requests", "must be an object with cpu and/or memory")
        return None, None
    _unknown_keys(req, {"cpu", "memory"}, f"{path}.requests", p)
    cpu = memory = None
    if "cpu" in req:
        cpu = _number(req["cpu"])
        if cpu is None or cpu <= 0:
            p.add(f"{path}.requests.cpu", "must be a positive number of cores (e.g. 0.5)")
            cpu = None
        elif not limits.min_cpu <= cpu <= limits.max_cpu:
            p.add(f"{path}.requests.cpu", f"must be between {limits.min_cpu} and {limits.max_cpu} cores")
    if "memory" in req:
        m = whole_number(req["memory"], strings=True)
        if m is None or m <= 0:
            p.add(f"{path}.requests.memory", "must be a positive integer (MiB)")
        elif not limits.min_memory <= m <= limits.max_memory:
            p.add(f"{path}.requests.memory",
                  f"must be between {limits.min_memory} and {limits.max_memory} (MiB)")
        else:
            memory = m
    return cpu, memory


def _nul_paths(value: Any, path: str, out: list[str], most: int = 10) -> None:
    if len(out) >= most:
        return
    if isinstance(value, str):
        if "\x00" in value:
            out.append(path or "''")
    elif isinstance(value, dict):
        for k, v in value.items():
            name = (k[:60] if isinstance(k, str) else short(k)) or "''"  # an empty key too
            where = f"{path}.{name}" if path else name
            if isinstance(k, str) and "\x00" in k:
                out.append(where.replace("\x00", "\\0"))
            _nul_paths(v, where, out, most)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _nul_paths(v, f"{path}[{i}]", out, most)


def refuse_nul(document: Any, path: str) -> None:
    """NUL in any key or string of a tenant's document is a 400: Docker and PostgreSQL
    refuse it (an event or reason quoting it would fail the agent's report for its host)."""
    found: list[str] = []
    _nul_paths(document, path, found)
    if found:
        raise InvalidInput([f"{_clip(where, MAX_PATH_CHARS)}: must not contain NUL characters"
                            for where in found])


MAX_DIGITS = 18  # beyond any sane count; also below Python's int-from-text digit limit


def whole_number(value: Any, strings: bool = False) -> int | None:
    """An int from a JSON/YAML integer (or, with `strings`, ASCII digits such as "80");
    None for anything else: bools, floats, '²', text of thousands of digits."""
    if isinstance(value, str) and strings and value.isascii() and value.isdigit() \
            and len(value) <= MAX_DIGITS:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _number(v: Any) -> float | None:
    """A finite number from a YAML/JSON number or numeric string; None otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        out = float(v)
    except (ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _check_ports(value: Any, path: str, p: _Problems) -> list[Port]:
    if value is None:
        return []
    if not isinstance(value, list):
        p.add(path, "must be a list")
        return []
    out = []
    for i, port in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(port, dict):
            p.add(where, "must be an object with containerPort")
            continue
        _unknown_keys(port, {"containerPort", "hostPort", "name", "protocol"}, where, p)
        cp = whole_number(port.get("containerPort"), strings=True)
        if cp is None or not 0 < cp < 65536:
            p.add(f"{where}.containerPort", "is required: a port number from 1 to 65535")
            continue
        hp = port.get("hostPort")
        if hp is not None and (isinstance(hp, bool) or not isinstance(hp, int) or not 0 < hp < 65536):
            p.add(f"{where}.hostPort", "must be a port number from 1 to 65535")
            continue
        pname = port.get("name")
        if pname is not None and not isinstance(pname, str):
            p.add(f"{where}.name", "must be a string")
            continue
        proto = port.get("protocol", "TCP")
        if proto not in ("TCP", "UDP"):
            p.add(f"{where}.protocol", "must be TCP or UDP")
            continue
        out.append(Port(container_port=cp, protocol=proto, host_port=hp, name=pname))
    return out


def _check_mounts(value: Any, path: str, volumes: set[str], p: _Problems) -> list[VolumeMount]:
    if value is None:
        return []
    if not isinstance(value, list):
        p.add(path, "must be a list")
        return []
    out: list[VolumeMount] = []
    for i, m in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(m, dict):
            p.add(where, "must be an object with name and mountPath")
            continue
        _unknown_keys(m, {"name", "mountPath", "readOnly"}, where, p)
        name, mount_path = m.get("name"), m.get("mountPath")
        if not isinstance(name, str):
            p.add(f"{where}.name", "is required")
        elif name not in volumes:
            p.add(f"{where}.name", f"names no volume in spec.volumes: {name!r}")
        if not (isinstance(mount_path, str) and mount_path.startswith("/")):
            p.add(f"{where}.mountPath", "is required: an absolute path")
        elif any(o.mount_path == mount_path for o in out):
            p.add(f"{where}.mountPath", f"{mount_path} is mounted twice")
        read_only = _bool(m.get("readOnly", False), f"{where}.readOnly", p)
        if isinstance(name, str) and isinstance(mount_path, str):
            out.append(VolumeMount(name=name, mount_path=mount_path, read_only=read_only))
    return out


def _check_names_unique(inits: Any, apps: Any, p: _Problems) -> None:
    """On the raw lists, so a duplicate is reported even when the container has other errors."""
    seen: dict[str, str] = {}
    for group, items, default in (("spec.initContainers", inits, "init-{}"),
                                  ("spec.containers", apps, "container-{}")):
        if not isinstance(items, list):
            continue
        for i, c in enumerate(items):
            name = c.get("name", default.format(i)) if isinstance(c, dict) else None
            if not isinstance(name, str):
                continue
            if name in seen:
                p.add(f"{group}[{i}].name", f"duplicate container name {name!r} (also {seen[name]})")
            else:
                seen[name] = f"{group}[{i}]"


def _check_host_ports(inits: Any, apps: Any, p: _Problems, limits: Limits) -> None:
    """Members share the sandbox's network namespace, which publishes all their ports: a
    host port (per protocol) is published once per capsule, and a capsule publishes at
    most limits.max_host_ports. On the raw lists, as names are, so every clash is found."""
    seen: dict[tuple[str, int], str] = {}
    count = 0
    for group, items in (("spec.initContainers", inits), ("spec.containers", apps)):
        for i, c in enumerate(_raw_list(items)):
            ports = c.get("ports") if isinstance(c, dict) else None
            for j, port in enumerate(_raw_list(ports)):
                hp = port.get("hostPort") if isinstance(port, dict) else None
                if isinstance(hp, bool) or not isinstance(hp, int) or not 0 < hp < 65536:
                    continue  # absent, or reported by _check_ports
                proto = port.get("protocol", "TCP")
                if proto not in ("TCP", "UDP"):
                    continue  # reported by _check_ports
                where = f"{group}[{i}].ports[{j}]"
                count += 1
                if (proto, hp) in seen:
                    p.add(f"{where}.hostPort", f"{proto} host port {hp} is already "
                                               f"published by {seen[(proto, hp)]}")
                else:
                    seen[(proto, hp)] = where
    if count > limits.max_host_ports:
        p.add("spec.containers", f"a capsule publishes at most {limits.max_host_ports} "
                                 f"host ports, not {count}")


def _raw_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _check_volumes_mounted(volumes: list[Any], containers: list[Any], p: _Problems) -> None:
    mounted: set[str] = set()
    for c in containers:
        mounts = c.get("volumeMounts") if isinstance(c, dict) else None
        mounted.update(m["name"] for m in _raw_list(mounts)
                       if isinstance(m, dict) and isinstance(m.get("name"), str))
    for i, v in enumerate(volumes):
        name = v.get("name") if isinstance(v, dict) else None
        if isinstance(name, str) and name not in mounted:
            p.add(f"spec.volumes[{i}]", f"volume {name!r} is not mounted by any container")
