"""Kubernetes Pod manifests (`apiVersion: v1`, `kind: Pod`) as capsules. Pure.

A Pod is translated into the capsule template it means, and that template goes through
`template.parse_template`, the one parser: a Pod can ask for nothing a template cannot,
and the API decides on host-level powers from the parsed spec exactly as for a template
(`host_access.template_asks` also reads a Pod, whose host fields have the same paths).

Unlike `podman kube play`, nothing is dropped silently: a field with no capsule meaning
is refused by its path (`spec.containers[0].lifecycle: is not supported`), and every
problem of a manifest, the translator's and the parser's, is reported at once, each
named by the Pod's own path (the parser's `workDir` is the Pod's `workingDir`, its MiB
are the Pod's `limits.memory`). A refused field given an empty value ({}, [], null), or
a few Kubernetes defaults that are what a capsule does anyway (`dnsPolicy: ClusterFirst`,
`shareProcessNamespace: true`, ...), asks for nothing and is accepted: that is what
`kubectl run --dry-run=client -o yaml` writes.

What changes in translation: env is a list of {name, value} (`valueFrom` refused) and
`$(VAR)` references in env values, command and args are expanded as Kubernetes does;
CPU and memory are Kubernetes quantities ("500m", "128Mi"), and since a capsule's
container gets exactly what it claims, its claim is the limit when one is given, else
the request. Capsuled's own extensions (failurePolicy, securityGroups, rollout timing,
cinder volumes, registries) need a capsule template.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from capsuled import documents
from capsuled.domain.spec import CapsuleSpec
from capsuled.domain.template import (Limits, _Problems, load_template_text, parse_template,
                                      refuse_nul, short)
from capsuled.errors import InvalidInput

# Field names of the Kubernetes API (v1) that a capsule has no meaning for: refused as
# "is not supported" (any other key is an "unknown field", most likely a typo).
POD_KEYS = {"apiVersion", "kind", "metadata", "spec", "status"}
METADATA_KEYS = {"name", "generateName", "namespace", "labels", "annotations", "uid",
                 "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
                 "deletionGracePeriodSeconds", "ownerReferences", "finalizers", "managedFields",
                 "selfLink"}
SPEC_KEYS = {"activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers",
             "dnsConfig", "dnsPolicy", "enableServiceLinks", "ephemeralContainers",
             "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname",
             "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead",
             "preemptionPolicy", "priority", "priorityClassName", "readinessGates",
             "resourceClaims", "resources", "restartPolicy", "runtimeClassName",
             "schedulerName", "schedulingGates", "securityContext", "serviceAccount",
             "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain",
             "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints",
             "volumes"}
CONTAINER_KEYS = {"args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle",
                  "livenessProbe", "name", "ports", "readinessProbe", "resizePolicy",
                  "resources", "restartPolicy", "securityContext", "startupProbe", "stdin",
                  "stdinOnce", "terminationMessagePath", "terminationMessagePolicy", "tty",
                  "volumeDevices", "volumeMounts", "workingDir"}
VOLUME_SOURCES = {"awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder",
                  "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "fc",
                  "flexVolume", "flocker", "gcePersistentDisk", "gitRepo", "glusterfs",
                  "hostPath", "image", "iscsi", "nfs", "persistentVolumeClaim",
                  "photonPersistentDisk", "portworxVolume", "projected", "quobyte", "rbd",
                  "scaleIO", "secret", "storageos", "vsphereVolume"}
MOUNT_KEYS = {"name", "mountPath", "readOnly", "mountPropagation", "recursiveReadOnly",
              "subPath", "subPathExpr"}
PORT_KEYS = {"containerPort", "hostPort", "protocol", "name", "hostIP"}
RESOURCE_KEYS = {"requests", "limits", "claims"}
PROBE_REFUSED = {"terminationGracePeriodSeconds"}
# Passed to the template parser unchanged (same name, same meaning).
CONTAINER_AS_IS = ("name", "image", "command", "args", "ports", "volumeMounts",
                   "imagePullPolicy", "tty", "stdin", "securityContext", "livenessProbe",
                   "readinessProbe", "startupProbe")
# Values of unsupported fields that are what a capsule does anyway.
INERT = {("spec", "dnsPolicy"): "ClusterFirst", ("spec", "shareProcessNamespace"): True,
         ("spec", "hostNetwork"): False, ("spec", "hostPID"): False,
         ("spec", "hostIPC"): False, ("spec", "automountServiceAccountToken"): False,
         ("spec", "enableServiceLinks"): False, ("container", "stdinOnce"): False,
         ("port", "hostIP"): "0.0.0.0"}  # hostIP: a published port is on every address
MAX_QUANTITY_CHARS = 32
# Characters that `$(VAR)` references may add to one Pod, all its strings together: each
# reference is a few bytes standing for a whole value (and values refer to values), so
# without a budget a 256 KiB manifest could expand to gigabytes, as YAML aliases could.
MAX_EXPANSION = 256 * 1024
ENV_NAME_MAX = 255

_CPU_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(m?)\Z")
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?\Z")
_MEMORY_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
MIB = 2**20


def is_kube(document: Any) -> bool:
    """A Kubernetes object (Pod, or a List of them) rather than a capsule template."""
    return isinstance(document, dict) and (
        "apiVersion" in document or document.get("kind") in ("Pod", "List"))


def unwrap(document: Any) -> Any:
    """A `kind: List` of one item → that item; other documents as they are. The API
    makes one capsule per request: a List of several is refused (the CLI splits them)."""
    if not (isinstance(document, dict) and document.get("kind") == "List"):
        return document
    items = document.get("items")
    if not isinstance(items, list) or len(items) != 1:
        count = len(items) if isinstance(items, list) else "no"
        raise InvalidInput(f"items: a List sent as one template must hold exactly one Pod, "
                           f"not {count} (`capsule apply -f` and `capsule create -f` send "
                           "each item on its own)")
    return items[0]


def parse_manifest(document: Any, limits: Limits | None = None) -> CapsuleSpec:
    """A capsule template or a Pod manifest (object, already decoded) → its spec."""
    document = unwrap(document)
    if is_kube(document):
        return parse_pod(document, limits)
    return parse_template(document, limits)


@dataclass
class Translation:
    """A Pod as a capsule template, with the problems found on the way and, for each
    template path that is not the Pod's own, the Pod path it came from."""

    template: dict[str, Any]
    problems: _Problems = field(default_factory=_Problems)
    renames: dict[str, str] = field(default_factory=dict)
    expansion: list[int] = field(default_factory=lambda: [MAX_EXPANSION])  # characters left


class ExpansionTooLarge(ValueError):
    """`$(VAR)` references would add more than the Pod's expansion budget."""


def parse_pod(pod: Any, limits: Limits | None = None) -> CapsuleSpec:
    """A Pod manifest → the spec its capsule runs, or InvalidInput naming every problem
    by its path in the Pod."""
    limits = limits or Limits()
    if isinstance(pod, str):
        pod = load_template_text(pod)
    try:
        documents.check_depth(pod, "template")
    except documents.DocumentError as exc:
        raise InvalidInput(exc.message) from None
    if not isinstance(pod, dict):
        raise InvalidInput("template: must be an object")
    refuse_nul(pod, "")
    t = translate(pod, limits)
    problems = list(t.problems.items)
    try:
        spec = parse_template(t.template, limits)
    except InvalidInput as exc:
        for item in exc.problems:  # clipped again: a Pod's path may be a little longer
            path, _, message = _renamed(item, t.renames).partition(": ")
            t.problems.add(path, message)
        problems = list(t.problems.items)
        spec = None
    if problems or spec is None:
        raise InvalidInput(problems, summary=_summary(problems))
    return spec


def _summary(items: list[str]) -> str:
    head = "Invalid Pod manifest: "
    return head + items[0] if len(items) == 1 else head + f"{len(items)} problems: " + "; ".join(items)


def _renamed(problem: str, renames: dict[str, str]) -> str:
    path, sep, message = problem.partition(": ")
    if not sep:
        return problem
    best = max((k for k in renames if path == k or path.startswith((k + ".", k + "["))),
               key=len, default=None)
    return problem if best is None else f"{renames[best]}{path[len(best):]}: {message}"


def translate(pod: dict[str, Any], limits: Limits) -> Translation:
    """The template a Pod means (it may still hold bad values: the parser judges those)."""
    t = Translation(template={})
    p = t.problems
    _refuse(pod, POD_KEYS, {"apiVersion", "kind", "metadata", "spec"}, "", "pod", p)
    if pod.get("apiVersion") != "v1":
        p.add("apiVersion", f"must be v1 for a Pod, not {short(pod.get('apiVersion'))}")
    if pod.get("kind") != "Pod":
        p.add("kind", f"{short(pod.get('kind'))} is not supported: only Pod (a List of "
              "them, or a capsule template)")
    t.template.update(kind="capsule", capsuleVersion="beta", metadata=_metadata(pod.get("metadata"), p))
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        p.add("spec", "is required: an object with containers" if spec is None else "must be an object")
        t.template["spec"] = {}
        return t
    _refuse(spec, SPEC_KEYS, {"containers", "initContainers", "volumes", "restartPolicy",
                              "nodeSelector"}, "spec", "spec", p)
    body: dict[str, Any] = {k: spec[k] for k in ("restartPolicy", "nodeSelector") if k in spec}
    if "volumes" in spec:
        body["volumes"] = _volumes(spec["volumes"], p)
    for group in ("initContainers", "containers"):
        if group in spec:
            body[group] = _containers(spec[group], f"spec.{group}", group == "initContainers",
                                      t, limits)
    t.template["spec"] = body
    return t


def _refuse(obj: dict[str, Any], known: set[str], allowed: set[str], path: str, where: str,
            p: _Problems) -> None:
    """Every key of `obj` outside `allowed`: not supported (a Kubernetes field), or unknown."""
    for key in sorted(set(obj) - allowed, key=str):
        name = (key[:60] if isinstance(key, str) else short(key)) or "''"
        at = f"{path}.{name}" if path else name
        value = obj[key]
        if key in known and (value in (None, {}, []) or _inert(where, key, value)):
            continue
        p.add(at, "is not supported" if key in known else "unknown field")


def _inert(where: str, key: str, value: Any) -> bool:
    default = INERT.get((where, key), ...)
    return default is not ... and type(value) is type(default) and value == default


def _metadata(meta: Any, p: _Problems) -> dict[str, Any]:
    if not isinstance(meta, dict):
        p.add("metadata", "is required: an object with a name" if meta is None else "must be an object")
        return {}
    _refuse(meta, METADATA_KEYS, {"name", "labels", "annotations"}, "metadata", "metadata", p)
    if "name" not in meta:
        p.add("metadata.name", "is required (it names the capsule)")
    return {k: meta[k] for k in ("name", "labels", "annotations") if k in meta}


def _volumes(value: Any, p: _Problems) -> Any:
    if not isinstance(value, list):
        return value  # the parser says what is wrong
    out: list[Any] = []
    for i, vol in enumerate(value):
        if not isinstance(vol, dict):
            out.append(vol)
            continue
        path = f"spec.volumes[{i}]"
        _refuse(vol, set(), {"name", *VOLUME_SOURCES}, path, "volume", p)
        others = sorted(k for k in vol if k in VOLUME_SOURCES and k != "emptyDir")
        for source in others:  # even empty: it would not be what the Pod asked for
            p.add(f"{path}.{source}", "is not supported (only emptyDir volumes)")
        empty = vol.get("emptyDir")
        if isinstance(empty, dict):
            _refuse(empty, {"medium", "sizeLimit"}, set(), f"{path}.emptyDir", "emptyDir", p)
        elif "emptyDir" in vol and empty is not None:
            p.add(f"{path}.emptyDir", "must be an object ({} or with no options)")
        elif not others and "emptyDir" not in vol:
            p.add(path, "needs a source: emptyDir (the only one supported)")
        # A refused source still names a volume, so that its mounts raise no second,
        # false problem; the refusal above keeps the Pod from being accepted.
        out.append({**({"name": vol["name"]} if "name" in vol else {}), "emptyDir": {}})
    return out


def _containers(value: Any, path: str, init: bool, t: Translation, limits: Limits) -> Any:
    if not isinstance(value, list):
        return value  # the parser says what is wrong
    return [_container(c, f"{path}[{i}]", init, t, limits) if isinstance(c, dict) else c
            for i, c in enumerate(value)]


def _container(c: dict[str, Any], path: str, init: bool, t: Translation,
               limits: Limits) -> dict[str, Any]:
    p = t.problems
    allowed = {*CONTAINER_AS_IS, "env", "resources", "workingDir"}
    _refuse(c, CONTAINER_KEYS, allowed, path, "container", p)
    if "name" not in c:
        p.add(f"{path}.name", "is required")
    out = {k: c[k] for k in CONTAINER_AS_IS if k in c}
    if "workingDir" in c:
        out["workDir"] = c["workingDir"]
        t.renames[f"{path}.workDir"] = f"{path}.workingDir"
    env = _env(c.get("env"), f"{path}.env", t)
    if env:
        out["env"] = env
    for key in ("command", "args"):
        if _strings(out.get(key)):
            try:
                out[key] = [expand(x, env, t.expansion) for x in out[key]]
            except ExpansionTooLarge:
                p.add(f"{path}.{key}", _TOO_LARGE)
    if "ports" in c:
        out["ports"] = _ports(c["ports"], f"{path}.ports", p)
    if "volumeMounts" in c:
        out["volumeMounts"] = _mounts(c["volumeMounts"], f"{path}.volumeMounts", p)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(out.get(probe), dict):
            out[probe] = {k: v for k, v in out[probe].items() if k not in PROBE_REFUSED}
            for key in sorted(PROBE_REFUSED & set(c[probe])):
                p.add(f"{path}.{probe}.{key}", "is not supported")
    if "resources" in c:
        requests = _resources(c["resources"], f"{path}.resources", t, limits)
        if requests:
            out["resources"] = {"requests": requests}
    return out


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


_TOO_LARGE = f"its $(VAR) references expand to more than {MAX_EXPANSION} characters in all"


def _env(value: Any, path: str, t: Translation) -> dict[str, str]:
    """Kubernetes' env list → the template's map, each value's `$(VAR)` references to
    earlier variables expanded (as Kubernetes does)."""
    p = t.problems
    if value is None:
        return {}
    if not isinstance(value, list):
        p.add(path, "must be a list of {name, value}")
        return {}
    out: dict[str, str] = {}
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            p.add(where, "must be an object with name and value")
            continue
        _refuse(item, {"valueFrom"}, {"name", "value"}, where, "env", p)
        name, text = item.get("name"), item.get("value", "")
        if not (isinstance(name, str) and 0 < len(name) <= ENV_NAME_MAX and "=" not in name):
            p.add(f"{where}.name", f"must be a variable name of 1 to {ENV_NAME_MAX} characters "
                  "without '='")
        elif name in out:
            p.add(f"{where}.name", f"{name!r} is given twice")
        elif not isinstance(text, str):
            p.add(f"{where}.value", "must be a string (quote numbers: \"80\")")
        elif "valueFrom" not in item or item["valueFrom"] in (None, {}, []):
            try:
                out[name] = expand(text, out, t.expansion)
            except ExpansionTooLarge:
                p.add(f"{where}.value", _TOO_LARGE)
    return out


def expand(text: str, env: dict[str, str], budget: list[int] | None = None) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined VAR is replaced by its value, an
    undefined one is left as written, and `$$` is one `$` (so `$$(VAR)` stays literal).
    `budget` ([characters left]) is charged for every value put in; ExpansionTooLarge
    when it runs out. One pass: each `$(` is scanned up to its `)` once."""
    budget = budget if budget is not None else [MAX_EXPANSION]
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 >= len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            name = text[i + 2:end] if end != -1 else None
            if name and name in env:
                budget[0] -= len(env[name])
                if budget[0] < 0:
                    raise ExpansionTooLarge(name)
                out.append(env[name])
                i = end + 1
            elif end != -1:
                out.append(text[i:end + 1])
                i = end + 1
            else:
                out.append(text[i:])
                i = len(text)
        else:
            out.append(ch + nxt)
            i += 2
    return "".join(out)


def _ports(value: Any, path: str, p: _Problems) -> Any:
    if not isinstance(value, list):
        return value
    out = []
    for j, port in enumerate(value):
        if isinstance(port, dict):
            _refuse(port, PORT_KEYS, PORT_KEYS - {"hostIP"}, f"{path}[{j}]", "port", p)
            port = {k: v for k, v in port.items() if k != "hostIP"}
        out.append(port)
    return out


def _mounts(value: Any, path: str, p: _Problems) -> Any:
    if not isinstance(value, list):
        return value
    out = []
    for j, m in enumerate(value):
        if isinstance(m, dict):
            _refuse(m, MOUNT_KEYS, {"name", "mountPath", "readOnly"}, f"{path}[{j}]", "mount", p)
            m = {k: v for k, v in m.items() if k in ("name", "mountPath", "readOnly")}
        out.append(m)
    return out


def _resources(value: Any, path: str, t: Translation, limits: Limits) -> dict[str, Any]:
    """A capsule's container gets what it claims (Docker's limit is the claim): the claim
    is the limit when one is given, else the request."""
    p = t.problems
    if not isinstance(value, dict):
        p.add(path, "must be an object with requests and/or limits")
        return {}
    _refuse(value, RESOURCE_KEYS, {"requests", "limits"}, path, "resources", p)
    given: dict[str, dict[str, Any]] = {}
    for kind in ("requests", "limits"):
        part = value.get(kind)
        if part is None:
            continue
        if not isinstance(part, dict):
            p.add(f"{path}.{kind}", "must be a map of cpu and/or memory")
            continue
        for key in sorted(set(part) - {"cpu", "memory"}, key=str):
            p.add(f"{path}.{kind}.{key[:60] if isinstance(key, str) else short(key)}",
                  "is not supported (only cpu and memory)")
        given[kind] = part
    out: dict[str, Any] = {}
    for resource, parse in (("cpu", _cpu), ("memory", _memory)):
        found: dict[str, float | int] = {}
        for kind in ("requests", "limits"):
            if resource in given.get(kind, {}):
                number = parse(given[kind][resource], f"{path}.{kind}.{resource}", limits, p)
                if number is not None:
                    found[kind] = number
        if "requests" in found and "limits" in found and found["limits"] < found["requests"]:
            p.add(f"{path}.limits.{resource}", f"must be at least requests.{resource}")
        elif found:
            kind = "limits" if "limits" in found else "requests"
            out[resource] = found[kind]
            t.renames[f"{path}.requests.{resource}"] = f"{path}.{kind}.{resource}"
    return out


def _cpu(value: Any, path: str, limits: Limits, p: _Problems) -> float | None:
    """Cores from a Kubernetes CPU quantity: 2, 0.5, "500m"."""
    text = _quantity_text(value)
    m = _CPU_RE.match(text) if text is not None else None
    if m is None:
        p.add(path, "must be a CPU quantity such as 0.5, 2 or \"500m\"")
        return None
    cores = round(float(Fraction(m.group(1)) / (1000 if m.group(2) else 1)), 3)
    if not limits.min_cpu <= cores <= limits.max_cpu:
        p.add(path, f"must be between {limits.min_cpu:g} and {limits.max_cpu:g} cores "
              f"({int(limits.min_cpu * 1000)}m to {int(limits.max_cpu * 1000)}m)")
        return None
    return cores


def _memory(value: Any, path: str, limits: Limits, p: _Problems) -> int | None:
    """MiB (rounded up) from a Kubernetes memory quantity: bytes, "128Mi", "1G"."""
    text = _quantity_text(value)
    m = _MEMORY_RE.match(text) if text is not None else None
    if m is None:
        p.add(path, "must be a memory quantity such as \"128Mi\", \"1Gi\" or \"500M\"")
        return None
    mib = math.ceil(Fraction(m.group(1)) * _MEMORY_UNITS[m.group(2)] / MIB)
    if not limits.min_memory <= mib <= limits.max_memory:
        p.add(path, f"must be between {limits.min_memory}Mi and {limits.max_memory}Mi")
        return None
    return mib


def _quantity_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float) and math.isfinite(value):
        value = repr(value)
    if not isinstance(value, str) or len(value) > MAX_QUANTITY_CHARS:
        return None
    return value
