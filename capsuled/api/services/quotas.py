"""Per-project quotas (Zun's /v1/quotas and /v1/quota_classes), plus the check that every
resource-creating use case runs inside its own transaction.

Unlike Zun, capsules count: a capsule is charged for itself, for each of its containers
and for their CPU and memory, and its volumes' sizes count as disk.

Exactness under concurrency: a create first locks its project's row (`begin`), then reads
the derived usage and writes its rows in the same transaction, so two creates of one
project never both see the last free unit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from capsuled.errors import InvalidInput, OverQuota
from capsuled.store import quotas as repo
from capsuled.store.capsules import storable_ident
from capsuled.store.engine import Store

RESOURCES = repo.RESOURCES
UNLIMITED = -1.0
_INTEGRAL = {"capsules", "containers", "memory", "disk"}


@dataclass(frozen=True)
class Delta:
    """What a change adds to its project's usage."""

    capsules: int = 0
    containers: int = 0
    cpu: float = 0.0
    memory: int = 0
    disk: int = 0

    def items(self) -> list[tuple[str, float]]:
        return [(r, float(getattr(self, r))) for r in RESOURCES]


class QuotaService:
    def __init__(self, store: Store, defaults: Mapping[str, float]) -> None:
        self._store = store
        self._defaults = {r: float(defaults[r]) for r in RESOURCES}
        self._locked_before: set[str] = set()

    # -- used by the other services ----------------------------------------------------
    def begin(self, s: Session, project_id: str) -> None:
        """Serialise quota-checked changes of this project; call first in the transaction."""
        if project_id not in self._locked_before:  # lock rows are never deleted
            with self._store.transaction() as own:
                repo.ensure_lock_row(own, project_id)
            self._locked_before.add(project_id)
        repo.lock_project(s, project_id)

    def check(self, s: Session, project_id: str, delta: Delta) -> None:
        limits = repo.project_limits(s, project_id, self._defaults)
        used = repo.usage(s, project_id)
        over = []
        for resource, more in delta.items():
            limit = limits[resource]
            if more > 0 and limit >= 0 and used[resource] + more > limit + 1e-9:
                over.append(f"{resource} (limit {_fmt(resource, limit)}, in use "
                            f"{_fmt(resource, used[resource])}, requested {_fmt(resource, more)})")
        if over:
            raise OverQuota(f"Quota exceeded for resources: {', '.join(over)}.")

    # -- the quota API -------------------------------------------------------------------
    def get(self, project_id: str, usages: bool) -> dict[str, object]:
        _name(project_id, "project_id")
        with self._store.transaction() as s:
            limits = repo.project_limits(s, project_id, self._defaults)
            if not usages:
                return {r: _num(r, v) for r, v in limits.items()}
            used = repo.usage(s, project_id)
            return {r: {"limit": _num(r, limits[r]), "in_use": _num(r, used[r])} for r in RESOURCES}

    def defaults(self) -> dict[str, object]:
        with self._store.transaction() as s:
            return {r: _num(r, v) for r, v in
                    repo.class_limits(s, repo.DEFAULT_CLASS, self._defaults).items()}

    def update(self, project_id: str, body: Mapping[str, object]) -> dict[str, object]:
        _name(project_id, "project_id")
        values = _limits(body)
        with self._store.transaction() as s:
            repo.set_project_limits(s, project_id, values)
        return self.get(project_id, usages=False)

    def reset(self, project_id: str) -> None:
        _name(project_id, "project_id")
        with self._store.transaction() as s:
            repo.delete_project_limits(s, project_id)

    def get_class(self, name: str) -> dict[str, object]:
        _name(name, "name")
        with self._store.transaction() as s:
            return {r: _num(r, v) for r, v in repo.class_limits(s, name, self._defaults).items()}

    def update_class(self, name: str, body: Mapping[str, object]) -> dict[str, object]:
        _name(name, "name")
        values = _limits(body)
        with self._store.transaction() as s:
            repo.set_class_limits(s, name, values)
        return self.get_class(name)


def _name(value: str, field: str) -> None:
    """A project id or class name as its 255-character column can hold it (PostgreSQL
    refuses NUL): a 400 here rather than a database error."""
    if not storable_ident(value):
        raise InvalidInput(f"{field}: must be at most 255 characters, without NUL")


def _limits(body: Mapping[str, object]) -> dict[str, float]:
    problems = [f"{k}: unknown quota resource (use {', '.join(RESOURCES)})"
                for k in sorted(set(body) - set(RESOURCES))]
    out: dict[str, float] = {}
    for r in RESOURCES:
        if r not in body or body[r] is None:
            continue
        v = body[r]
        try:
            number = float(v) if not isinstance(v, bool) else None  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):  # OverflowError: 10**400
            number = None
        if number is not None and not math.isfinite(number):  # Infinity, NaN: int() fails
            number = None
        if number is None or (number < 0 and number != UNLIMITED) or (
                r in _INTEGRAL and number != int(number)):
            kind = "a whole number" if r in _INTEGRAL else "a number"
            problems.append(f"{r}: must be {kind} >= 0, or -1 for unlimited")
            continue
        out[r] = number
    if problems:
        raise InvalidInput(problems)
    return out


def _num(resource: str, value: float) -> float | int:
    return int(value) if resource in _INTEGRAL or value == int(value) else value


def _fmt(resource: str, value: float) -> str:
    return f"{_num(resource, value):g}" + (" MiB" if resource == "memory" else
                                          " GiB" if resource == "disk" else "")
