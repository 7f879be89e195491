"""Which images on this host are private, and to which projects.

Docker's image cache is shared by every project on a host. An image that arrived through
a pull with a project's registry credentials, and whose ID was not on the host before,
is private: only projects that proved access to it (by pulling it themselves) may use
the cached copy. Everything else on the host (the operator's images, anonymous pulls) is
public. The record is kept by image ID, so another name for the same image is the same
image, and it is saved in the agent's state directory so a restart forgets nothing.

The file is small and bounded. A file that cannot be read (corrupt, unknown version,
too big) puts the ledger in *distrust* mode, saved with it: every image that came from a
registry and is not known to be public is then treated as private to nobody, so it must
be pulled again by whoever wants it (images the operator built or loaded stay usable).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from capsuled.paths import replace_file

LOG = logging.getLogger(__name__)

VERSION = 1
MAX_PRIVATE = 4096  # private images recorded on one host
MAX_PROJECTS = 64  # projects recorded per private image (more simply pull each time)
MAX_PUBLIC = 4096  # images proven public (only read in distrust mode)
MAX_FILE_BYTES = 4 * 1024 * 1024


class LedgerFull(Exception):
    """No room for another private image: the credentialed pull must not happen."""


class ImageLedger:
    """Thread-safe; every change is written through to `path` (None: memory only)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._private: dict[str, list[str]] = {}
        self._public: dict[str, None] = {}  # insertion-ordered: the oldest goes first
        self._distrust = False
        if path is not None:
            self._load(path)

    @property
    def distrust(self) -> bool:
        return self._distrust

    # -- decisions ----------------------------------------------------------------------
    def may_use(self, image_id: str, project: str | None, from_registry: bool) -> bool:
        """May `project` run the cached image `image_id` without pulling it?"""
        with self._lock:
            owners = self._private.get(image_id)
            if owners is not None:
                return project is not None and project in owners
            if self._distrust and from_registry:
                return image_id in self._public
            return True

    def private_to(self, image_id: str) -> list[str] | None:
        with self._lock:
            owners = self._private.get(image_id)
            return list(owners) if owners is not None else None

    def make_room(self, present: Callable[[], set[str]]) -> None:
        """Before a credentialed pull: forget private images no longer on the host if the
        record is full, and refuse the pull if it still is (an unrecorded private image
        would be public)."""
        with self._lock:
            if len(self._private) < MAX_PRIVATE:
                return
        on_host = present()
        with self._lock:
            for gone in [i for i in self._private if i not in on_host]:
                del self._private[gone]
            if len(self._private) >= MAX_PRIVATE:
                raise LedgerFull("this host's record of private images is full")
            self._save()

    # -- what pulls teach ---------------------------------------------------------------
    def pulled(self, image_id: str, project: str | None, credentialed: bool,
               existed_before: bool) -> None:
        """A pull of `image_id` succeeded for `project`."""
        with self._lock:
            owners = self._private.get(image_id)
            if not credentialed:
                # The registry served it to anyone: it is public on this host.
                self._private.pop(image_id, None)
                self._public.pop(image_id, None)
                self._public[image_id] = None
                while len(self._public) > MAX_PUBLIC:
                    del self._public[next(iter(self._public))]
            elif owners is not None:
                if project is not None and project not in owners and len(owners) < MAX_PROJECTS:
                    owners.append(project)
            elif not existed_before or (self._distrust and image_id not in self._public):
                self._private[image_id] = [project] if project is not None else []
            else:
                return  # already public here: a credentialed pull changes nothing
            self._save()

    # -- the file -----------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return  # a new host: nothing was pulled with credentials through us yet
        except OSError as exc:
            self._distrust_all(f"cannot read {path}: {exc}")
            return
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError("too big")
            self._private, self._public, self._distrust = _parse(json.loads(raw))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            self._distrust_all(f"{path} is unreadable ({exc})")

    def _distrust_all(self, why: str) -> None:
        LOG.error("private image record: %s; every image pulled from a registry must now be "
                  "pulled again by whoever uses it", why)
        self._private, self._public, self._distrust = {}, {}, True
        with self._lock:
            self._save()

    def _save(self) -> None:
        """Atomically replace the file (0600); the caller holds the lock."""
        if self._path is None:
            return
        body = json.dumps({"version": VERSION, "distrust": self._distrust,
                           "private": self._private, "public": list(self._public)},
                          separators=(",", ":")).encode()
        replace_file(self._path, body)


def _parse(doc: Any) -> tuple[dict[str, list[str]], dict[str, None], bool]:
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError("unknown format or version")
    private, public, distrust = doc.get("private"), doc.get("public"), doc.get("distrust")
    if not isinstance(private, dict) or not isinstance(public, list) \
            or not isinstance(distrust, bool) or len(private) > MAX_PRIVATE:
        raise ValueError("unexpected fields")
    out: dict[str, list[str]] = {}
    for image_id, owners in private.items():
        if not isinstance(owners, list) or not _strings(owners) or len(owners) > MAX_PROJECTS:
            raise ValueError("unexpected owners")
        out[image_id] = list(owners)
    if not _strings(public):
        raise ValueError("unexpected public list")
    return out, dict.fromkeys(public[-MAX_PUBLIC:]), distrust


def _strings(items: Iterable[object]) -> bool:
    return all(isinstance(i, str) and 0 < len(i) <= 255 for i in items)
