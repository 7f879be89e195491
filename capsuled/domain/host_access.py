"""Requests for host-level powers: the fields of a template or a container request that
would let a container reach past its sandbox (privileged mode, the host's network, PID or
IPC namespace, host paths, added capabilities, devices, another OCI runtime, a host port
below limits.min_host_port).

Pure: it only finds them. The API refuses them with 403 to callers the policy does not
trust (`container:create:privileged`), so a tenant learns which field was refused and
nothing is half-made. Two looks, on one decoded document: `template_asks`/`request_asks`
name host-level fields early, including ones the parser would refuse anyway (hostNetwork);
`capsule_spec_asks`/`bare_spec_asks` read the parsed spec, which is exactly what the agent
will apply, and are the decision that counts (DESIGN.md decision 11).
"""

from __future__ import annotations

from typing import Any

from capsuled.domain.spec import BareSpec, CapsuleSpec

# Template (Kubernetes-style) fields, per container and per spec.
_SPEC_FLAGS = ("hostNetwork", "hostPID", "hostIPC")
_SPEC_VALUES = ("runtimeClassName",)
_CONTAINER_VALUES = ("privileged", "devices")
# Zun container-request fields.
_REQUEST_VALUES = ("privileged", "devices", "cap_add", "security_opt", "network_mode",
                   "pid_mode", "ipc_mode", "binds")
_DEFAULT_RUNTIMES = (None, "", "runc")


def template_asks(template: Any, min_host_port: int = 1024) -> list[str]:
    """The paths of host-level asks in a capsule template (empty when there are none)."""
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        return []
    spec: dict[str, Any] = template["spec"]
    asks = [f"spec.{k}" for k in _SPEC_FLAGS if spec.get(k)]
    asks += [f"spec.{k}" for k in _SPEC_VALUES if spec.get(k) not in _DEFAULT_RUNTIMES]
    for group in ("initContainers", "containers"):
        items = spec.get(group)
        for i, c in enumerate(items if isinstance(items, list) else []):
            if isinstance(c, dict):
                asks += _container_asks(c, f"spec.{group}[{i}]", min_host_port)
    volumes = spec.get("volumes")
    for i, v in enumerate(volumes if isinstance(volumes, list) else []):
        if isinstance(v, dict) and "hostPath" in v:
            asks.append(f"spec.volumes[{i}].hostPath")
    return asks


def _container_asks(c: dict[str, Any], path: str, min_host_port: int) -> list[str]:
    asks = [f"{path}.{k}" for k in _CONTAINER_VALUES if c.get(k)]
    ports = c.get("ports")
    for j, p in enumerate(ports if isinstance(ports, list) else []):
        hp = p.get("hostPort") if isinstance(p, dict) else None
        if isinstance(hp, int) and not isinstance(hp, bool) and 0 < hp < min_host_port:
            asks.append(_low_port(f"{path}.ports[{j}]", hp, min_host_port))
    ctx = c.get("securityContext")
    if isinstance(ctx, dict):
        if ctx.get("privileged"):
            asks.append(f"{path}.securityContext.privileged")
        if ctx.get("allowPrivilegeEscalation"):
            asks.append(f"{path}.securityContext.allowPrivilegeEscalation")
        caps = ctx.get("capabilities")
        if isinstance(caps, dict) and caps.get("add"):
            asks.append(f"{path}.securityContext.capabilities.add")
    return asks


def request_asks(body: Any) -> list[str]:
    """The fields of a container create request that ask for host-level powers."""
    if not isinstance(body, dict):
        return []
    asks = [k for k in _REQUEST_VALUES if body.get(k)]
    if body.get("runtime") not in _DEFAULT_RUNTIMES:
        asks.append("runtime")
    mounts = body.get("mounts")
    for i, m in enumerate(mounts if isinstance(mounts, list) else []):
        # Zun's type bind carries a file's base64 content (injected, not a host path).
        if isinstance(m, dict) and m.get("type") != "bind" and str(m.get("source") or "").startswith("/"):
            asks.append(f"mounts[{i}].source")
    return asks


def capsule_spec_asks(spec: CapsuleSpec, min_host_port: int = 1024) -> list[str]:
    """Host-level powers a parsed capsule spec would give its containers. A host port
    below `min_host_port` (limits.min_host_port) is one: the privileged ports (SSH, DNS,
    HTTP on 80) are the operator's to hand out, not any tenant's."""
    asks = []
    for group, items in (("initContainers", spec.init_containers), ("containers", spec.containers)):
        for i, c in enumerate(items):
            if c.privileged:
                asks.append(f"spec.{group}[{i}].securityContext.privileged")
            asks += [_low_port(f"spec.{group}[{i}].ports[{j}]", p.host_port, min_host_port)
                     for j, p in enumerate(c.ports) if p.host_port and p.host_port < min_host_port]
    return asks


def _low_port(path: str, port: int, least: int) -> str:
    return f"{path}.hostPort ({port} is below {least})"


def bare_spec_asks(spec: BareSpec) -> list[str]:
    """Host-level powers a parsed container request would give its container."""
    return ["privileged"] if spec.container.privileged else []
