"""Which pooled sandbox belongs to which capsule: the agent's durable record of claims.

Docker cannot relabel a container, so a sandbox taken from the warm pool
(agent/sandbox_pool.py) keeps the labels it was made with and names no capsule. This
record does, and it is what makes a claim crash-safe:

    take     the entry is written (and fsynced) before the sandbox is used at all: an
             agent killed at any later point finds the claim on its restart and finishes
             it (joins the network, renames) or, if the capsule is gone, removes the
             sandbox like any other of the capsule's containers
    release  written after the sandbox is removed: a crash in between leaves an entry
             that names a missing container, which the next sync of the capsule drops

One sandbox appears in at most one entry (checked on every write and on load: a file
edited by hand that names one sandbox twice keeps the first), so no two capsules ever
share one. The file is the whole map, replaced atomically; it is small (one line per
claimed capsule on this host) and bounded.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from capsuled.paths import replace_file

LOG = logging.getLogger(__name__)

VERSION = 1
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_CLAIMS = 65536  # far more capsules than a host holds


@dataclass(frozen=True)
class Claim:
    sandbox: str  # the container id
    epoch: int  # the spec's sandbox_epoch it was claimed for (the label it cannot carry)


class ClaimBook:
    """Thread-safe; every change is written through to `path` (None: memory only)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._claims: dict[str, Claim] = {}
        if path is not None:
            self._claims = _load(path)

    def get(self, capsule: str) -> Claim | None:
        with self._lock:
            return self._claims.get(capsule)

    def all(self) -> dict[str, Claim]:
        with self._lock:
            return dict(self._claims)

    def owner(self, sandbox: str) -> str | None:
        with self._lock:
            return next((u for u, c in self._claims.items() if c.sandbox == sandbox), None)

    def take(self, capsule: str, claim: Claim) -> bool:
        """Record that `capsule` owns `claim.sandbox`, durably, before it is used. False
        (nothing written) when the sandbox is another capsule's, the book is full or the
        file cannot be written."""
        with self._lock:
            if any(c.sandbox == claim.sandbox for u, c in self._claims.items() if u != capsule):
                return False
            if capsule not in self._claims and len(self._claims) >= MAX_CLAIMS:
                return False
            before = self._claims.get(capsule)
            self._claims[capsule] = claim
            try:
                self._save()
            except OSError as exc:
                LOG.warning("cannot record the claim of sandbox %s: %s", claim.sandbox[:12], exc)
                if before is None:
                    del self._claims[capsule]
                else:
                    self._claims[capsule] = before
                return False
            return True

    def release(self, capsule: str) -> None:
        """Forget the claim (its sandbox is gone). A failed write is logged: the entry then
        names a missing container, which the next sync drops again."""
        with self._lock:
            if self._claims.pop(capsule, None) is None:
                return
            try:
                self._save()
            except OSError as exc:
                LOG.warning("cannot write the pool's claims: %s", exc)

    def _save(self) -> None:
        """Atomically replace the file (0600); the caller holds the lock."""
        if self._path is None:
            return
        body = json.dumps({"version": VERSION, "claims": {
            u: {"sandbox": c.sandbox, "epoch": c.epoch} for u, c in sorted(self._claims.items())}})
        replace_file(self._path, body.encode())


def _load(path: Path) -> dict[str, Claim]:
    """The claims in `path`; none when it is missing. A file that cannot be read is
    logged and read as empty: its sandboxes then look idle, and the pool removes idle
    sandboxes it did not make in this run only after checking they hold no members
    (sandbox_pool.SandboxPool._adopt), so no capsule loses its sandbox to another."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError("too big")
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError("unknown version")
        out: dict[str, Claim] = {}
        seen: set[str] = set()
        for uuid, c in dict(data.get("claims") or {}).items():
            sandbox, epoch = str(c["sandbox"]), int(c["epoch"])
            if sandbox in seen:
                continue
            seen.add(sandbox)
            out[str(uuid)] = Claim(sandbox=sandbox, epoch=epoch)
        return out
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        LOG.warning("cannot read the pool's claims in %s (%s): starting without", path, exc)
        return {}
