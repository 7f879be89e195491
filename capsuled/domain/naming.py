"""Names of the Docker objects of a capsule. Names are for people reading `docker ps`;
Capsuled itself finds its objects by label."""

from __future__ import annotations


def sandbox_name(capsule_uuid: str, capsule_name: str | None) -> str:
    return f"{capsule_name or 'capsule'}_sandbox_{capsule_uuid}"


def container_name(capsule_uuid: str, capsule_name: str | None, container: str) -> str:
    return f"{capsule_name or 'capsule'}_{container}_{capsule_uuid}"


def volume_name(capsule_uuid: str, volume: str) -> str:
    return f"capsuled_{capsule_uuid}_{volume}"


def bare_name(container_uuid: str, name: str) -> str:
    return f"{name}_{container_uuid}"
