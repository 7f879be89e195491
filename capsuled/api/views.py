"""Rows → the JSON bodies Zun clients expect, per microversion and role."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from capsuled.api.microversions import CAPSULE_NEW_BODY, ApiVersion
from capsuled.api.relay.worker import Change
from capsuled.domain.addresses import parse_stored, zun_addresses
from capsuled.domain import ports
from capsuled.api.services.dry_run import Rehearsal
from capsuled.domain.conditions import capsule_conditions, container_health, container_ready
from capsuled.domain.rollout import Rollout
from capsuled.domain.template_out import render_template
from capsuled.domain.spec import (ZUN_RESTART_NAMES, BareSpec, CapsuleSpec, ContainerSpec,
                                  HealthCheck)
from capsuled.store.capsules import CapsuleRow, ContainerRow
from capsuled.store.tables import Capsule, CapsuleRevision, Container, ContainerAction, Event


def ts(value: datetime | None) -> str | None:
    return str(value) if value is not None else None


def change_view(c: Change) -> dict[str, Any]:
    """An outbox change record: one line of a watch stream, one webhook's body."""
    return {"seq": c.seq, "event_type": c.event_type, "kind": c.kind, "uuid": c.uuid,
            "name": c.name, "project_id": c.project_id, "labels": c.labels,
            "reason": c.reason, "message": c.message, "status": c.status,
            "created_at": str(c.created_at)}


def capsule_view(row: Capsule | CapsuleRow, version: ApiVersion, is_admin: bool,
                 base_url: str) -> dict[str, Any]:
    spec = (CapsuleSpec.model_validate_json(row.spec_json) if isinstance(row, CapsuleRow)
            else CapsuleSpec.model_validate(row.spec))
    by_uuid = {c.uuid: c for c in spec.all_containers}
    restart = {"Name": ZUN_RESTART_NAMES[spec.restart_policy], "MaximumRetryCount": "0"}
    # ORM rows or listed rows, never a mix: one element type for the zips below.
    members: Sequence[Container | ContainerRow] = row.containers
    children = [container_view(c, by_uuid.get(c.uuid), spec, is_admin, row) for c in members]
    body: dict[str, Any] = {
        "uuid": row.uuid,
        "links": [{"href": f"{base_url}/v1/capsules/{row.uuid}", "rel": "self"},
                  {"href": f"{base_url}/capsules/{row.uuid}", "rel": "bookmark"}],
        "name": row.name,
        "labels": dict(row.labels or {}),
        "annotations": dict(row.annotations or {}),
        "status": row.status,
        "status_reason": _for(row.status_reason, is_admin),
        "restart_policy": restart,
        "cpu": float(row.cpu),
        "memory": str(row.memory),
        # The sandbox's, which every member row keeps.
        "addresses": zun_addresses(parse_stored(members[0].addresses if members else None),
                                   row.uuid),
        "project_id": row.project_id,
        "user_id": row.user_id,
        "created_at": ts(row.created_at),
        "updated_at": ts(row.updated_at),
        "containers": [c for c, r in zip(children, members, strict=True) if r.role == "app"],
        "init_containers": [c for c, r in zip(children, members, strict=True) if r.role == "init"],
        # Extensions (additive: Zun clients ignore unknown keys).
        "restart_count": row.restart_count,
        "security_groups": list(spec.security_groups),
        **_capsule_conditions(row.status, [r for r in members if r.role == "app"]),
        # size_enforced: Docker's local volumes (on this ext4/overlay2 kind of host) cannot
        # cap a volume's size; the size is charged to the disk quota and claimed on the
        # host, but a container can write more. Said here rather than pretended.
        "volumes": [{"name": v.name, "type": v.type, "size": v.size, "auto_remove": v.auto_remove,
                     "docker_volume": v.docker_volume, "size_enforced": False}
                    for v in row.volumes],
        # The revision its spec is, and the update or rollback under way (None: none).
        "revision": row.revision,
        "rollout": rollout_view(row.rollout),
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


def rollout_view(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    r = Rollout.model_validate(raw)
    return {"kind": r.kind, "from_revision": r.from_revision, "to_revision": r.to_revision,
            "restores": r.restores, "automatic": r.automatic, "cause": r.cause,
            "started_at": ts(r.started_at), "deadline": ts(r.deadline),
            "min_ready_seconds": r.min_ready_seconds, "watched": list(r.watched),
            "ready_since": ts(r.ready_since)}


def revision_view(row: CapsuleRevision, current: int) -> dict[str, Any]:
    """One revision: its spec written as a template (domain/template_out.py)."""
    return {"revision": row.revision, "current": row.revision == current,
            "created_at": ts(row.created_at), "user_id": row.user_id,
            "change_cause": row.change_cause, "outcome": row.outcome,
            "outcome_reason": row.outcome_reason,
            "template": render_template(CapsuleSpec.model_validate(row.spec))}


def dry_run_view(r: Rehearsal) -> dict[str, Any]:
    """What a create or update would do (`?dry_run=true`): both specs written as templates
    (domain/template_out.py), so that `capsule diff` compares what the server would run."""
    c = r.change
    return {"dry_run": True, "uuid": r.uuid, "name": r.name, "revision": r.revision,
            "changed": r.changed,
            "current": render_template(r.current) if r.current is not None else None,
            "new": render_template(r.new),
            "new_sandbox": c.new_sandbox if c is not None else None,
            "replaced": list(c.replaced) if c is not None else [],
            "added": list(c.added) if c is not None else [],
            "status": r.status, "status_reason": r.status_reason}


def container_view(row: Container | ContainerRow, spec: ContainerSpec | None,
                   capsule_spec: CapsuleSpec | None, is_admin: bool,
                   capsule: Capsule | CapsuleRow | None = None) -> dict[str, Any]:
    policy = ZUN_RESTART_NAMES[capsule_spec.restart_policy if capsule_spec else "Never"]
    if spec is not None and spec.role == "init":
        policy = "no"  # init containers run once, whatever the capsule's policy
    body: dict[str, Any] = {
        "uuid": row.uuid,
        "name": row.name,
        "image": row.image,
        "command": spec.zun_command if spec else [],
        "status": row.status,
        "status_reason": _for(row.status_reason, is_admin),
        "status_detail": _status_detail(row),
        "task_state": None,
        "cpu": float(spec.cpu) if spec and spec.cpu is not None else None,
        "memory": str(spec.memory) if spec and spec.memory is not None else None,
        "environment": dict(spec.env) if spec else {},
        "workdir": spec.workdir if spec else None,
        "ports": [p.container_port for p in spec.ports] if spec else [],  # Zun's shape
        "hostname": (capsule.name if capsule else None),
        "labels": {},
        # A member's are its sandbox's (one port, the capsule's).
        "addresses": zun_addresses(parse_stored(row.addresses),
                                   capsule.uuid if capsule else row.uuid),
        "restart_policy": {"Name": policy, "MaximumRetryCount": "0"},
        "interactive": spec.stdin if spec else False,
        "tty": spec.tty if spec else False,
        "image_driver": "docker",
        # A member is in its capsule's groups (a container made before groups: default).
        "security_groups": list(capsule_spec.security_groups) if capsule_spec else ["default"],
        "auto_remove": False,
        "disk": 0,
        "auto_heal": bool(spec and spec.health and spec.health.restart),
        "healthcheck": _healthcheck(spec.health) if spec and spec.health else {},
        "cpu_policy": "shared",
        "registry_id": spec.registry if spec else None,
        "entrypoint": list(spec.command) if spec else [],
        "user_id": row.user_id,
        "project_id": row.project_id,
        "created_at": ts(row.created_at),
        "updated_at": ts(row.updated_at),
        "restart_count": row.restart_count,
        "exit_code": row.exit_code,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        # Extensions: its conditions (domain/conditions.py) and probe results, and the
        # ports it publishes on its host (a member's through its sandbox: fixed ones).
        "ready": container_ready(row.status, row.probe),
        "health": container_health(row.status, row.probe),
        "probe": dict((row.probe or {}).get("probes") or {}),
        "published_ports": ports.view(spec),
    }
    if is_admin:
        body.update({"host": capsule.host if capsule else None,
                     "image_pull_policy": spec.image_pull_policy.lower() if spec else None,
                     "privileged": bool(spec and spec.privileged), "runtime": "runc"})
    return body


def any_container_view(row: Container, is_admin: bool, base_url: str) -> dict[str, Any]:
    """/v1/containers body: a bare container, or (extension) one of a capsule's."""
    if row.capsule is not None:
        cspec = CapsuleSpec.model_validate(row.capsule.spec)
        spec = next((c for c in cspec.all_containers if c.uuid == row.uuid), None)
        body = container_view(row, spec, cspec, is_admin, row.capsule)
        body["capsule_id"] = row.capsule.uuid
    else:
        bare = BareSpec.model_validate(row.spec)
        body = container_view(row, bare.container, None, is_admin)
        body.update({
            "restart_policy": {"Name": bare.restart.name,
                               "MaximumRetryCount": str(bare.restart.max_retry)},
            "labels": dict(bare.labels), "auto_remove": bare.auto_remove,
            "auto_heal": bare.auto_heal, "disk": bare.disk,
            "disk_enforced": False,  # as a capsule volume's size_enforced (extension)
            "hostname": bare.hostname or row.name, "capsule_id": None,
            "security_groups": list(bare.security_groups),
            # Host ports Docker picked for its exposed_ports, as the agent last saw them.
            "published_ports": ports.view(bare.container, row.published_ports)})
        if is_admin:
            body["host"] = row.host
    body["links"] = [{"href": f"{base_url}/v1/containers/{row.uuid}", "rel": "self"},
                     {"href": f"{base_url}/containers/{row.uuid}", "rel": "bookmark"}]
    return body


def action_view(a: ContainerAction, is_admin: bool, with_events: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": a.action, "container_uuid": a.container_uuid, "request_id": a.request_id,
        "user_id": a.user_id, "project_id": a.project_id, "start_time": ts(a.start_time),
        "finish_time": ts(a.finish_time), "message": a.message}
    if with_events:
        event: dict[str, Any] = {
            "event": f"compute__do_container_{a.action}", "start_time": ts(a.start_time),
            "finish_time": ts(a.finish_time),
            "result": None if a.finish_time is None else ("Error" if a.message else "Success")}
        if is_admin:
            event["traceback"] = a.detail
        body["events"] = [event]
    return body


def _capsule_conditions(status: str, apps: Sequence[Container | ContainerRow]) -> dict[str, Any]:
    ready, total, health = capsule_conditions(status, [(r.status, r.probe) for r in apps])
    return {"ready": f"{ready}/{total}", "all_ready": status == "Running" and ready == total > 0,
            "health": health}


def _healthcheck(h: HealthCheck) -> dict[str, Any]:
    """Zun's shape: a shell command (ours may be exec form: shown as one line)."""
    cmd = h.command[2] if h.command[:2] == ["sh", "-c"] and len(h.command) == 3 else shlex.join(h.command)
    def seconds(v: float) -> float | int:
        return int(v) if float(v).is_integer() else v
    return {"cmd": cmd, "interval": seconds(h.interval), "retries": h.retries,
            "timeout": seconds(h.timeout)}


def _status_detail(row: Container | ContainerRow) -> str | None:
    if row.status == "Stopped" and row.exit_code is not None:
        return f"Exited({row.exit_code})"
    return row.status


# Host names in messages and reasons recorded before they were kept out (such events age
# out with limits.event_max_age; reasons change with the next report): members read them
# without the name.
_HOST_MENTIONS = ((re.compile(r"^capsule accepted, scheduled to \S+$"), "capsule accepted and scheduled"),
                  (re.compile(r"\bhost \S+ is (forced down|down)"), r"its host is \1"))


def _for(text: str | None, is_admin: bool) -> str | None:
    """An event message or status reason as the reader may see it."""
    if is_admin or not text:
        return text
    for pattern, replacement in _HOST_MENTIONS:
        text = pattern.sub(replacement, text)
    return text


def event_view(e: Event, is_admin: bool = True) -> dict[str, Any]:
    """`count` and `last_seen`: how often it happened in a row, and when last (kubelet's
    event counts); `id` is the marker of the next page."""
    return {"id": e.id, "created_at": ts(e.created_at), "type": e.type, "reason": e.reason,
            "message": _for(e.message, is_admin), "container": e.container, "count": e.count or 1,
            "last_seen": ts(e.last_at or e.created_at)}
