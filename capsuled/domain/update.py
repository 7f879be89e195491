"""What an update of a running capsule changes, and how it may be done. Pure.

An update (or a rollback, which is an update to an older revision's spec) goes from the
capsule's current spec to a new one. Here it is decided, before anything is stored:

- which of the new spec's containers are the old ones (same name: same uuid, so a
  container whose spec did not change keeps running and Zun clients keep its uuid);
- whether the change needs a new sandbox (volumes added or removed, ports, init
  containers: the sandbox and its namespaces are made when the capsule starts), which
  bumps `sandbox_epoch` so that the agent remakes the capsule in place;
- which containers the health gate watches (changed or new ones, and those whose probes
  changed; all of them on a new sandbox);
- what the capsule claims while the update is under way: the larger of the two specs, so
  that a rollback always fits (domain/rollout.py);
- what cannot change in place (the name; a volume's type).

The quick changes `capsule update --image`/`--env` send (`containers: [{name, image,
env}]`) are applied here to the current spec, and checked like a template's fields.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from capsuled.domain.spec import CapsuleSpec, ContainerSpec, VolumeSpec
from capsuled.domain.template import CONTAINER_NAME_RE, IMAGE_RE, refuse_nul, short
from capsuled.errors import InvalidInput

MAX_QUICK_CHANGES = 24  # as many as a capsule has containers
MAX_ENV_CHANGES = 256
MAX_ENV_VALUE = 32_768


@dataclass(frozen=True)
class Change:
    """An update from `current` to `new` (the new spec as it will be stored)."""

    new: CapsuleSpec
    new_sandbox: str | None  # why the capsule is remade in place, or None
    watched: tuple[str, ...]  # app containers the health gate waits for, by name
    replaced: tuple[str, ...]  # containers replaced in the running sandbox, by name
    added: tuple[str, ...] = ()  # new app containers in the running sandbox, by name

    @property
    def empty(self) -> bool:
        return not (self.new_sandbox or self.watched or self.replaced)


def plan_change(current: CapsuleSpec, new: CapsuleSpec) -> Change:
    """`new` with the identities of `current` carried over (uuids by name, the sandbox
    epoch, bumped when the change needs a new sandbox), and what the update will do."""
    uuids = {c.name: c.uuid for c in current.all_containers}
    new = new.model_copy(update={
        "init_containers": [_with_uuid(c, uuids) for c in new.init_containers],
        "containers": [_with_uuid(c, uuids) for c in new.containers]})
    why = needs_new_sandbox(current, new)
    new = new.model_copy(update={"sandbox_epoch": current.sandbox_epoch + (1 if why else 0)})
    old = {c.name: c for c in current.containers}
    added: tuple[str, ...] = ()
    if why:
        watched = tuple(c.name for c in new.containers)
        replaced: tuple[str, ...] = ()
    else:
        added = tuple(c.name for c in new.containers if c.name not in old)
        policy = current.restart_policy != new.restart_policy  # in every container's hash
        changed = [c.name for c in new.containers if c.name not in old or policy
                   or _runtime_view(old[c.name]) != _runtime_view(c)]
        replaced = tuple(n for n in changed if n in old)
        # A container whose probes changed keeps running (the prober reads probes from
        # the spec, and starts its verdicts over), but it is judged again.
        watched = tuple(c.name for c in new.containers if c.name in changed
                        or old[c.name].probes != c.probes)
    return Change(new=new, new_sandbox=why, watched=watched, replaced=replaced, added=added)


def _with_uuid(c: ContainerSpec, uuids: dict[str, str]) -> ContainerSpec:
    return c.model_copy(update={"uuid": uuids.get(c.name) or c.uuid or str(uuidlib.uuid4())})


def _runtime_view(c: ContainerSpec) -> dict[str, Any]:
    """What recreates a container when it changes (spec_hash's fields, restart policy
    aside: it is the capsule's, and a change of it changes every container)."""
    return c.model_dump(exclude={"cpu", "memory", "liveness", "readiness", "startup"})


def needs_new_sandbox(current: CapsuleSpec, new: CapsuleSpec) -> str | None:
    """Why going from `current` to `new` needs a new sandbox, or None: it holds the
    network identity the ports describe, the volumes are made with it, and init
    containers run once when it starts."""
    if {v.name for v in current.volumes} != {v.name for v in new.volumes}:
        return "the set of volumes changed"
    if _ports(current) != _ports(new):
        return "the capsule's ports changed"
    if [_init_view(c) for c in current.init_containers] != [_init_view(c) for c in new.init_containers]:
        return "the init containers changed"
    return None


def _ports(spec: CapsuleSpec) -> set[tuple[int, str, int | None]]:
    return {(p.container_port, p.protocol, p.host_port)
            for c in spec.all_containers for p in c.ports}


def _init_view(c: ContainerSpec) -> dict[str, Any]:
    return c.model_dump(exclude={"uuid"})


def immutable_problems(current: CapsuleSpec, new: CapsuleSpec) -> list[str]:
    """What an update cannot change in place, as 'field: why' problems."""
    problems = []
    if new.name != current.name:
        problems.append(f"metadata.name: a capsule keeps its name ({current.name or 'none'}); "
                        "leave it out or give the same one")
    kept = {v.name: v for v in current.volumes}
    for i, v in enumerate(new.volumes):
        old = kept.get(v.name)
        if old is not None and (old.type, old.auto_remove) != (v.type, v.auto_remove):
            problems.append(f"spec.volumes[{i}]: volume {v.name!r} is {_volume_kind(old)}; it "
                            "keeps its data and type: give a new volume another name")
    return problems


def _volume_kind(v: VolumeSpec) -> str:
    return "emptyDir" if v.type == "emptyDir" else f"cinder (autoRemove {str(v.auto_remove).lower()})"


@dataclass(frozen=True)
class Claim:
    cpu: float
    memory: int


def claim_during(current: CapsuleSpec, new: CapsuleSpec) -> Claim:
    """What a capsule claims while it goes from `current` to `new`: the larger of each,
    so that rolling back never needs room that another capsule took meanwhile."""
    return Claim(cpu=max(current.total_cpu(), new.total_cpu()),
                 memory=max(current.total_memory(), new.total_memory()))


def apply_quick_changes(current: CapsuleSpec, changes: Any) -> CapsuleSpec:
    """`current` with the images and environment variables in `changes` (a list of
    {name, image?, env?}: env values null remove a variable) applied, or InvalidInput
    naming each bad field as `containers[i].field`."""
    if not isinstance(changes, list) or not changes or len(changes) > MAX_QUICK_CHANGES:
        raise InvalidInput(f"containers: must be a list of 1 to {MAX_QUICK_CHANGES} "
                           "{name, image, env} objects")
    refuse_nul(changes, "containers")
    problems: list[str] = []
    by_name = {c.name: c for c in current.all_containers}
    edited: dict[str, ContainerSpec] = {}
    for i, change in enumerate(changes):
        where = f"containers[{i}]"
        if not isinstance(change, dict):
            problems.append(f"{where}: must be an object with name and image and/or env")
            continue
        for key in sorted(set(change) - {"name", "image", "env"}, key=str):
            problems.append(f"{where}.{key_text(key)}: unknown field (name, image and env can change)")
        name = change.get("name")
        if not (isinstance(name, str) and CONTAINER_NAME_RE.match(name)):
            problems.append(f"{where}.name: must name one of the capsule's containers")
            continue
        if name not in by_name:
            problems.append(f"{where}.name: the capsule has no container {name!r} "
                            f"(it has {', '.join(sorted(by_name))})")
            continue
        if name in edited:
            problems.append(f"{where}.name: container {name!r} is given twice")
            continue
        if "image" not in change and "env" not in change:
            problems.append(f"{where}: give image and/or env")
            continue
        c = by_name[name]
        update: dict[str, Any] = {}
        if "image" in change:
            image = change["image"]
            if not (isinstance(image, str) and 2 <= len(image) <= 255 and IMAGE_RE.match(image)):
                problems.append(f"{where}.image: must be an image reference such as busybox:1.36")
            else:
                update["image"] = image
        if "env" in change:
            env = _env_changes(change["env"], f"{where}.env", dict(c.env), problems)
            if env is not None:
                update["env"] = env
        edited[name] = c.model_copy(update=update)
    if problems:
        raise InvalidInput(problems)
    return current.model_copy(update={
        "init_containers": [edited.get(c.name, c) for c in current.init_containers],
        "containers": [edited.get(c.name, c) for c in current.containers]})


def key_text(key: Any) -> str:
    """A tenant's key as a field path names it: clipped text, or the repr of a non-string."""
    return key[:60] if isinstance(key, str) else short(key)


def _env_changes(value: Any, where: str, env: dict[str, str], problems: list[str]) -> dict[str, str] | None:
    if not isinstance(value, dict) or len(value) > MAX_ENV_CHANGES:
        problems.append(f"{where}: must be a map of at most {MAX_ENV_CHANGES} NAME: value "
                        "(null removes NAME)")
        return None
    before = len(problems)
    for key, v in value.items():
        if not (isinstance(key, str) and 0 < len(key) <= 255 and "=" not in key):
            problems.append(f"{where}.{key_text(key)}: must be a variable name without '='")
        elif v is None:
            env.pop(key, None)
        elif not isinstance(v, str) or len(v) > MAX_ENV_VALUE:
            problems.append(f"{where}.{key[:60]}: must be a string of at most {MAX_ENV_VALUE} "
                            "characters (quote numbers: \"80\"), or null to remove it")
        else:
            env[key] = v
    return env if len(problems) == before else None
