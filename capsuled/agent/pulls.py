"""Pulling a container's image as its assignment says: through a private registry (the
reference, the credentials, always) when the assignment carries a pull plan for it, else
by the spec's own image and policy."""

from __future__ import annotations

from collections.abc import Sequence

from capsuled.domain.channel import ImagePull
from capsuled.domain.spec import ContainerSpec
from capsuled.drivers.runtime.base import RegistryAuth, Runtime


def ensure_image(rt: Runtime, c: ContainerSpec, pulls: Sequence[ImagePull]) -> str:
    """Make the image present; returns the reference to create the container from."""
    plan = next((p for p in pulls if p.container == c.name), None)
    if plan is None:
        rt.ensure_image(c.image, c.image_pull_policy)
        return c.image
    auth = RegistryAuth(plan.username, plan.password or "") if plan.username else None
    rt.ensure_image(plan.image, "Always" if plan.always else c.image_pull_policy, auth)
    return plan.image
