"""Rows → the JSON bodies Zun clients expect, per microversion and role."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from capsuled.api.microversions import CAPSULE_NEW_BODY, ApiVersion
from capsuled.domain.spec import ZUN_RESTART_NAMES, CapsuleSpec, ContainerSpec
from capsuled.store.tables import Capsule, Container, Event


def ts(value: datetime | None) -> str | None:
    return str(value) if value is not None else None


def capsule_view(row: Capsule, version: ApiVersion, is_admin: bool, base_url: str) -> dict[str, Any]:
    spec = CapsuleSpec.model_validate(row.spec)
    by_uuid = {c.uuid: c for c in spec.all_containers}
    restart = {"Name": ZUN_RESTART_NAMES[spec.restart_policy], "MaximumRetryCount": "0"}
    children = [container_view(c, by_uuid.get(c.uuid), spec, is_admin, row) for c in row.containers]
    body: dict[str, Any] = {
        "uuid": row.uuid,
        "links": [{"href": f"{base_url}/v1/capsules/{row.uuid}", "rel": "self"},
                  {"href": f"{base_url}/capsules/{row.uuid}", "rel": "bookmark"}],
        "name": row.name,
        "labels": dict(row.labels or {}),
        "annotations": dict(row.annotations or {}),
        "status": row.status,
        "status_reason": row.status_reason,
        "restart_policy": restart,
        "cpu": float(row.cpu),
        "memory": str(row.memory),
        "addresses": {},
        "project_id": row.project_id,
        "user_id": row.user_id,
        "created_at": ts(row.created_at),
        "updated_at": ts(row.updated_at),
        "containers": [c for c, r in zip(children, row.containers, strict=True) if r.role == "app"],
        "init_containers": [c for c, r in zip(children, row.containers, strict=True) if r.role == "init"],
        # Extensions (additive: Zun clients ignore unknown keys).
        "restart_count": row.restart_count,
        "volumes": [{"name": v.name, "type": v.type, "size": v.size, "auto_remove": v.auto_remove,
                     "docker_volume": v.docker_volume} for v in row.volumes],
    }
    if is_admin:
        body["host"] = row.host
    if not version.at_least(CAPSULE_NEW_BODY):
        body["meta_name"] = body.pop("name")
        body["meta_labels"] = body.pop("labels")
        body["restart_policy"] = restart["Name"]
        body.update({"volumes_info": {}, "containers_uuids": [], "init_containers_uuids": [],
                     "capsule_version": ""})
    return body


def container_view(row: Container, spec: ContainerSpec | None, capsule_spec: CapsuleSpec | None,
                   is_admin: bool, capsule: Capsule | None = None) -> dict[str, Any]:
    policy = ZUN_RESTART_NAMES[capsule_spec.restart_policy if capsule_spec else "Never"]
    if spec is not None and spec.role == "init":
        policy = "no"  # init containers run once, whatever the capsule's policy
    body: dict[str, Any] = {
        "uuid": row.uuid,
        "name": row.name,
        "image": row.image,
        "command": spec.zun_command if spec else [],
        "status": row.status,
        "status_reason": row.status_reason,
        "status_detail": _status_detail(row),
        "task_state": None,
        "cpu": float(spec.cpu) if spec and spec.cpu is not None else None,
        "memory": str(spec.memory) if spec and spec.memory is not None else None,
        "environment": dict(spec.env) if spec else {},
        "workdir": spec.workdir if spec else None,
        "ports": [p.container_port for p in spec.ports] if spec else [],
        "hostname": (capsule.name if capsule else None),
        "labels": {},
        "addresses": {},
        "restart_policy": {"Name": policy, "MaximumRetryCount": "0"},
        "interactive": spec.stdin if spec else False,
        "tty": spec.tty if spec else False,
        "image_driver": "docker",
        "security_groups": [],
        "auto_remove": False,
        "disk": 0,
        "auto_heal": False,
        "healthcheck": {},
        "cpu_policy": "shared",
        "registry_id": None,
        "entrypoint": list(spec.command) if spec else [],
        "user_id": row.user_id,
        "project_id": row.project_id,
        "created_at": ts(row.created_at),
        "updated_at": ts(row.updated_at),
        "restart_count": row.restart_count,
        "exit_code": row.exit_code,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
    }
    if is_admin:
        body.update({"host": capsule.host if capsule else None,
                     "image_pull_policy": spec.image_pull_policy.lower() if spec else None,
                     "privileged": False, "runtime": "runc"})
    return body


def _status_detail(row: Container) -> str | None:
    if row.status == "Stopped" and row.exit_code is not None:
        return f"Exited({row.exit_code})"
    return row.status


def event_view(e: Event) -> dict[str, Any]:
    return {"created_at": ts(e.created_at), "type": e.type, "reason": e.reason,
            "message": e.message, "container": e.container}
