"""The update, rollback and revisions calls of /v1/capsules (capsuled extensions), on top
of CapsuleClient, and the wait for an update to end (health gated by the server)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from capsuled.cli.capsule.client import ApiError, CapsuleClient, CliError


class RolloutClient(CapsuleClient):
    def update(self, ident: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH: a new revision from a template, or image/env changes (202, Updating)."""
        return self._json("PATCH", self._path(ident), json=dict(body))

    def rollback(self, ident: str, revision: int | None = None,
                 cause: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if revision is not None:
            body["revision"] = revision
        if cause:
            body["change_cause"] = cause
        return self._json("POST", self._path(ident) + "/rollback", json=body)

    def find(self, ident: str) -> dict[str, Any] | None:
        """The capsule, or None when there is none of that name or uuid."""
        try:
            return self.get(ident)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def rehearse_create(self, template: Mapping[str, Any]) -> dict[str, Any]:
        """A dry run of create: every check, nothing kept; the capsule as a template."""
        return self._json("POST", "/v1/capsules", params={"dry_run": "true"},
                          json={"template": template})

    def rehearse_update(self, ident: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A dry run of update: {changed, current, new (templates), replaced, ...}."""
        return self._json("PATCH", self._path(ident), params={"dry_run": "true"}, json=dict(body))

    def revisions(self, ident: str) -> dict[str, Any]:
        """{"revision": current, "rollout": the update under way or None, "revisions": [...]}"""
        return self._json("GET", self._path(ident) + "/revisions")


def is_busy(exc: ApiError) -> bool:
    """The 409 of an update while another is under way."""
    return exc.status == 409 and "is being updated" in exc.title


@dataclass(frozen=True)
class Ended:
    """How one capsule's rollout to `revision` ended."""

    name: str
    revision: int
    ok: bool
    message: str  # what to tell the user
    capsule: dict[str, Any]


# (capsule name, what it is doing now, the capsule's body: its containers' states)
OnProgress = Callable[[str, str, Mapping[str, Any]], None]


def await_rollout(client: RolloutClient, capsule: Mapping[str, Any], revision: int,
                  timeout: float, sleep: Callable[[float], None], interval: float,
                  progress: OnProgress | None = None) -> Ended:
    """Poll the capsule until no rollout is under way, then read how its revision
    `revision` ended (Ready, Failed and rolled back, Superseded). A timeout is a failure
    (the server goes on: the update is not undone by giving up waiting)."""
    uuid = str(capsule["uuid"])
    name = str(capsule.get("name") or uuid)
    deadline = time.monotonic() + timeout
    while True:
        try:
            body = client.get(uuid)
        except ApiError as exc:
            if exc.status == 404:
                return Ended(name, revision, False, "the capsule was deleted", dict(capsule))
            raise
        rollout = body.get("rollout")
        if rollout is None and body.get("status") != "Updating":
            return _outcome(client, name, revision, body)
        if progress is not None:
            progress(name, _doing(body), body)
        if time.monotonic() >= deadline:
            return Ended(name, revision, False, f"timed out after {timeout:g}s; still "
                         f"{_doing(body)} (the update goes on)", body)
        sleep(interval)


def wait_until_idle(client: RolloutClient, ident: str, timeout: float,
                    sleep: Callable[[float], None], interval: float,
                    progress: OnProgress | None = None) -> dict[str, Any]:
    """The capsule once no update or rollback is under way (for --wait on a 409)."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(ident)
        if body.get("rollout") is None and body.get("status") != "Updating":
            return body
        if progress is not None:
            progress(str(body.get("name") or ident), "waiting for the update under way: "
                     + _doing(body), body)
        if time.monotonic() >= deadline:
            raise CliError(f"timed out after {timeout:g}s waiting for the update under way "
                           f"to end ({_doing(body)})")
        sleep(interval)


def _doing(body: Mapping[str, Any]) -> str:
    return str(body.get("status_reason") or body.get("status") or "?")


def _outcome(client: RolloutClient, name: str, revision: int, body: dict[str, Any]) -> Ended:
    found = client.revisions(str(body["uuid"]))
    mine = next((r for r in found.get("revisions") or [] if r.get("revision") == revision), None)
    outcome = (mine or {}).get("outcome")
    if outcome == "Ready" and body.get("revision") == revision:
        return Ended(name, revision, True, f"revision {revision} is ready", body)
    reason = (mine or {}).get("outcome_reason") or "no reason given"
    now = body.get("revision")
    if outcome == "Failed":
        message = f"revision {revision} failed: {reason}"
    elif outcome == "Superseded":
        message = f"revision {revision} was superseded: {reason}"
    else:
        message = f"revision {revision} did not finish ({outcome or 'no outcome'})"
    if now != revision:
        message += f"; the capsule is at revision {now} ({body.get('status')})"
    return Ended(name, revision, False, message, body)
