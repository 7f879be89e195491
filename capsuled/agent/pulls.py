"""Making a container's image present without letting one project run another's private
image from the host's cache.

The rule (the ledger in image_ledger.py keeps what it needs):
- an image whose ID came onto the host through a pull with credentials, and was not on
  the host before, is private to the projects that proved access to it: the one that
  pulled it, and any other whose own pull of it succeeded;
- a project that has not proved access pulls the image, with its own registry
  credentials when its container names a registry (or the image's host is one of its
  registries), else anonymously, whatever its image_pull_policy says. A refusal fails
  the container; the cached copy is never used instead. An anonymous success makes the
  image public on this host;
- everything else (the operator's images, anonymous pulls) is public: used as the
  container's pull policy says, with no pull forced.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from capsuled.agent.image_ledger import ImageLedger, LedgerFull
from capsuled.domain.channel import ImagePull
from capsuled.domain.spec import ContainerSpec
from capsuled.drivers.runtime.base import RegistryAuth, Runtime
from capsuled.errors import ImageNotFound


def _normal(image: str) -> str:
    return image if ":" in image.rsplit("/", 1)[-1] or "@" in image else f"{image}:latest"


class ImageGate:
    """One per agent: shared by the capsule and the bare-container executors."""

    def __init__(self, runtime: Runtime, ledger: ImageLedger | None = None) -> None:
        self._rt = runtime
        self.ledger = ledger if ledger is not None else ImageLedger()
        self._lock = threading.Lock()
        # References being pulled with credentials right now, and by whom: until the pull
        # is recorded, anyone else finding that reference in the cache must pull it too.
        self._in_flight: Counter[tuple[str, str | None]] = Counter()

    def ensure(self, project: str | None, c: ContainerSpec, pulls: Sequence[ImagePull]) -> str:
        """Make the image present for `project`; returns the reference to create from."""
        plan = next((p for p in pulls if p.container == c.name), None)
        ref = plan.image if plan is not None else c.image
        auth = RegistryAuth(plan.username, plan.password or "") \
            if plan is not None and plan.username else None
        policy = "Always" if plan is not None and plan.always else c.image_pull_policy
        cached = self._rt.image_identity(ref)
        if cached is None and policy == "Never":
            self._rt.ensure_image(ref, "Never")  # raises the usual "not present" error
        must_prove = cached is not None and (
            not self.ledger.may_use(cached.id, project, cached.from_registry)
            or self._pulling_for_another(ref, project))
        if cached is not None and policy != "Always" and not must_prove:
            return ref
        self._pull(ref, project, auth)
        return ref

    def _pulling_for_another(self, ref: str, project: str | None) -> bool:
        key = _normal(ref)
        with self._lock:
            return any(r == key and p != project for (r, p), n in self._in_flight.items() if n)

    @contextmanager
    def _flight(self, ref: str, project: str | None) -> Iterator[None]:
        key = (_normal(ref), project)
        with self._lock:
            self._in_flight[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[key] -= 1
                if self._in_flight[key] <= 0:
                    del self._in_flight[key]

    def _pull(self, ref: str, project: str | None, auth: RegistryAuth | None) -> None:
        if auth is None:
            self._rt.ensure_image(ref, "Always")
            self._learn(ref, project, credentialed=False, before=set())
            return
        try:
            self.ledger.make_room(self._rt.image_ids)
        except LedgerFull as exc:
            raise ImageNotFound(f"image {ref} could not be pulled: {exc}") from exc
        with self._flight(ref, project):
            # Listed before the pull: an ID already here is not made private by it.
            before = self._rt.image_ids()
            self._rt.ensure_image(ref, "Always", auth)
            self._learn(ref, project, credentialed=True, before=before)

    def _learn(self, ref: str, project: str | None, credentialed: bool, before: set[str]) -> None:
        got = self._rt.image_identity(ref)
        if got is None:  # removed at once by someone else: nothing to record, nothing to run
            raise ImageNotFound(f"image {ref} vanished right after its pull")
        self.ledger.pulled(got.id, project, credentialed, existed_before=got.id in before)
