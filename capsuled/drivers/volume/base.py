"""Capsule volumes as the agent sees them.

Contract: `ensure_volume` creates or adopts the named volume (idempotent) and returns
the name to bind; `remove_volume` succeeds when it is already gone. Sized volumes with a
real limit and reuse of existing volumes are later drivers behind this same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class VolumeRequest:
    name: str
    labels: dict[str, str]
    size_gib: int | None = None


class VolumeDriver(Protocol):
    def ensure_volume(self, req: VolumeRequest) -> str: ...

    def remove_volume(self, name: str) -> None: ...

    def remove_owned(self, instance: str, capsule: str) -> list[str]:
        """Remove the capsule's volumes marked auto-remove; the names removed."""
        ...
