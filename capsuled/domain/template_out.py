"""A spec written back as a template: what `GET /v1/capsules/{id}/revisions` shows of each
revision, and what `capsule history NAME --revision N -o yaml` gives to edit. Pure.

Revisions store specs (what ran), not the documents that were sent, so one rendering
serves templates, quick `--image`/`--env` changes and containers added through the
containers API alike. For a spec parsed from a template, parsing the rendering gives the
same spec back (tests/unit/domain/test_update_domain.py holds it to that); what the
parser filled in (default resources, names, policies) is written out explicitly.
"""

from __future__ import annotations

from typing import Any

from capsuled.domain.spec import CapsuleSpec, ContainerSpec, HealthCheck, Probe, VolumeSpec


def render_template(spec: CapsuleSpec) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if spec.name is not None:
        meta["name"] = spec.name
    if spec.labels:
        meta["labels"] = dict(spec.labels)
    if spec.annotations:
        meta["annotations"] = dict(spec.annotations)
    body: dict[str, Any] = {"restartPolicy": spec.restart_policy}
    if spec.init_containers:
        body["initContainers"] = [_container(c) for c in spec.init_containers]
    body["containers"] = [_container(c) for c in spec.containers]
    if spec.volumes:
        body["volumes"] = [_volume(v) for v in spec.volumes]
    if spec.node_selector:
        body["nodeSelector"] = dict(spec.node_selector)
    if spec.failure_policy != "RestartContainer":
        body["failurePolicy"] = spec.failure_policy
    if spec.min_ready_seconds:
        body["minReadySeconds"] = spec.min_ready_seconds
    if spec.progress_deadline_seconds != 120:
        body["progressDeadlineSeconds"] = spec.progress_deadline_seconds
    out: dict[str, Any] = {"kind": "capsule", "capsuleVersion": "beta", "metadata": meta}
    if spec.availability_zone is not None:
        out["availabilityZone"] = spec.availability_zone
    out["spec"] = body
    return out


def _container(c: ContainerSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c.name, "image": c.image}
    if c.command:
        out["command"] = list(c.command)
    if c.args:
        out["args"] = list(c.args)
    if c.workdir is not None:
        out["workDir"] = c.workdir
    if c.env:
        out["env"] = dict(c.env)
    if c.ports:
        out["ports"] = [{"containerPort": p.container_port, "protocol": p.protocol,
                         **({"hostPort": p.host_port} if p.host_port is not None else {}),
                         **({"name": p.name} if p.name is not None else {})} for p in c.ports]
    requests: dict[str, Any] = {}
    if c.cpu is not None:
        requests["cpu"] = c.cpu
    if c.memory is not None:
        requests["memory"] = c.memory
    if requests:
        out["resources"] = {"requests": requests}
    if c.volume_mounts:
        out["volumeMounts"] = [{"name": m.name, "mountPath": m.mount_path, "readOnly": m.read_only}
                               for m in c.volume_mounts]
    out["imagePullPolicy"] = c.image_pull_policy
    if c.tty:
        out["tty"] = True
    if c.stdin:
        out["stdin"] = True
    if c.privileged:
        out["securityContext"] = {"privileged": True}
    if c.registry is not None:
        out["registry"] = c.registry
    if c.health is not None:
        out["livenessProbe"] = _health(c.health)
    for purpose, probe in c.probes.items():
        out[f"{purpose}Probe"] = _probe(probe)
    return out


def _probe(p: Probe) -> dict[str, Any]:
    if p.kind == "exec":
        action: dict[str, Any] = {"exec": {"command": list(p.command)}}
    elif p.kind == "http":
        action = {"httpGet": {"path": p.path, "port": p.port, "scheme": p.scheme,
                              "httpHeaders": [{"name": n, "value": v} for n, v in p.headers]}}
    else:
        action = {"tcpSocket": {"port": p.port}}
    return {**action, "initialDelaySeconds": p.initial_delay, "periodSeconds": p.period,
            "timeoutSeconds": p.timeout, "successThreshold": p.success_threshold,
            "failureThreshold": p.failure_threshold}


def _health(h: HealthCheck) -> dict[str, Any]:
    """Docker's health check is how an exec liveness probe runs (template._docker_health)."""
    return {"exec": {"command": list(h.command)}, "initialDelaySeconds": round(h.start_period),
            "periodSeconds": max(1, round(h.interval)), "timeoutSeconds": max(1, round(h.timeout)),
            "successThreshold": 1, "failureThreshold": h.retries}


def _volume(v: VolumeSpec) -> dict[str, Any]:
    if v.type == "emptyDir":
        return {"name": v.name, "emptyDir": {}}
    return {"name": v.name, "cinder": {"size": v.size, "autoRemove": v.auto_remove}}
