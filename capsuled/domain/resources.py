"""Default limits: a container that asks for no CPU or memory gets the configured default.

Applied by the API to the parsed spec before quota and scheduling, so a default is stored
in the spec, charged to the project's quota, claimed on the host and given to Docker
exactly like an explicit request: nothing runs unbounded. Specs stored before defaults
existed keep their None (cpu and memory are left out of the spec hashes, so nothing is
recreated on upgrade)."""

from __future__ import annotations

from capsuled.domain.spec import BareSpec, CapsuleSpec, ContainerSpec
from capsuled.domain.template import Limits


def with_default_limits(c: ContainerSpec, limits: Limits) -> ContainerSpec:
    missing: dict[str, float | int] = {}
    if c.cpu is None:
        missing["cpu"] = limits.default_cpu
    if c.memory is None:
        missing["memory"] = limits.default_memory
    return c.model_copy(update=missing) if missing else c


def capsule_with_default_limits(spec: CapsuleSpec, limits: Limits) -> CapsuleSpec:
    return spec.model_copy(update={
        "init_containers": [with_default_limits(c, limits) for c in spec.init_containers],
        "containers": [with_default_limits(c, limits) for c in spec.containers]})


def bare_with_default_limits(spec: BareSpec, limits: Limits) -> BareSpec:
    return spec.model_copy(update={"container": with_default_limits(spec.container, limits)})
