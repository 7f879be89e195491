"""Images on the hosts (Zun's /v1/images, admin only): listed live from each host's
engine rather than from a table that could drift, pulled and removed through the host.
Image search (any member) looks in the project's registries and Docker Hub.

An image's uuid is derived from (host, repo:tag), so it is stable across calls and
replicas without being stored.
"""

from __future__ import annotations

import builtins
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from capsuled.api.policy import Policy
from capsuled.api.relay.egress import HttpGetter
from capsuled.api.services.image_search import (MAX_CATALOG_BYTES, Reach, Unreachable,
                                                search_catalog)
from capsuled.api.services.registries import PRIVATE_RULE
from capsuled.domain.registry import DOCKER_HUB, canonical_domain, split_host
from capsuled.domain.template import IMAGE_RE, short
from capsuled.errors import CapsuledError, InvalidInput, NotFound, Unavailable
from capsuled.hostops.protocol import ContainerOps, ImageInfo
from capsuled.identity.base import Principal
from capsuled.store import registries as registry_repo
from capsuled.store.crypto import SecretBox
from capsuled.store.engine import Store
from capsuled.store.hosts import capacities
from capsuled.store.tables import utcnow

_NS = uuidlib.UUID("6f1b2a4e-5c1d-4a8e-9b7e-3f0c2d1e4a5b")


@dataclass(frozen=True)
class HostImage:
    uuid: str
    host: str
    info: ImageInfo


def image_uuid(host: str, repo: str, tag: str) -> str:
    return str(uuidlib.uuid5(_NS, f"{host}/{repo}:{tag}"))


class ImageService:
    def __init__(self, store: Store, ops_for: Callable[[str], ContainerOps],
                 host_down_after: timedelta, secrets: SecretBox | None = None,
                 search_timeout: float = 5.0, *, policy: Policy | None = None,
                 private_networks: bool = False, getter: HttpGetter | None = None) -> None:
        """`getter` replaces the registry requests in tests; `private_networks`: members'
        searches may reach RFC 1918/ULA addresses (api.registry_search_private_networks)."""
        self._secrets = secrets
        self._policy = policy or Policy()
        self._private_networks = private_networks
        self._getter = getter or HttpGetter(search_timeout, MAX_CATALOG_BYTES)
        self._store = store
        self._ops_for = ops_for
        self._down_after = host_down_after

    def list(self, project: str | None = None) -> list[HostImage]:
        """Every image, or with `project` those a member of it may see: base images (no
        project label) and its own commits, never another project's."""
        out = []
        for host in self._alive_hosts():
            try:
                images = self._ops_for(host).list_images()
            except CapsuledError:
                continue  # a host that cannot answer now shows nothing rather than failing all
            out += [HostImage(image_uuid(host, i.repo, i.tag), host, i) for i in images
                    if project is None or not i.project or i.project == project]
        return sorted(out, key=lambda h: (h.info.repo, h.info.tag, h.host))

    def get(self, ident: str, project: str | None = None) -> HostImage:
        for image in self.list(project):
            if ident in (image.uuid, image.info.id, f"{image.info.repo}:{image.info.tag}"):
                return image
        raise NotFound(f"Image {ident} could not be found.")

    def pull(self, repo: object, host: object) -> HostImage:
        if not isinstance(repo, str) or not repo.strip():
            raise InvalidInput("repo: is required (e.g. busybox or busybox:latest)")
        name, tag = _split(repo.strip())
        hosts = self._alive_hosts()
        if host is not None:
            if host not in hosts:
                raise InvalidInput(f"host: {host} is not a known, running host")
            hosts = [str(host)]
        if not hosts:
            raise InvalidInput("host: no running host to pull the image to")
        info = self._ops_for(hosts[0]).pull_image(name, tag)
        return HostImage(image_uuid(hosts[0], name, tag), hosts[0], info)

    def delete(self, ident: str) -> None:
        image = self.get(ident)
        self._ops_for(image.host).remove_image(f"{image.info.repo}:{image.info.tag}")

    def search(self, who: Principal, term: str, image_driver: str | None,
               exact_match: bool) -> builtins.list[dict[str, Any]]:
        """Zun's image search: the catalogs of the project's own registries (those whose
        domain the term names, or all of them when it names none) and, for a term that
        names no host or Docker Hub, Docker Hub through a host's engine. A 400 naming
        each source when none could be searched. A registry a member may not reach (a
        loopback, link-local, … address) is one that could not be searched."""
        project_id = who.project_id
        admin = self._policy.allows(PRIVATE_RULE, who)
        if image_driver not in (None, "docker"):
            raise InvalidInput(f"image_driver: only docker images can be searched here, not "
                               f"{short(image_driver)}")
        term = term.strip()
        host, name = split_host(term)
        if not name or len(term) > 255 or not IMAGE_RE.match(term):
            raise InvalidInput("image: must be an image name such as busybox or "
                               "registry.example.com/team/app")
        name = name.split("@")[0].split(":")[0]
        with self._store.transaction() as s:
            own = ({} if self._secrets is None else
                   registry_repo.credentials(s, self._secrets, project_id)).values()
        wanted = canonical_domain(host) if host else None
        targets = [r for r in own if wanted is None or canonical_domain(r.domain) == wanted]
        found: builtins.list[dict[str, Any]] = []
        failed: builtins.list[str] = []
        for reg in targets:
            try:
                found += [_found(f.name, f.registry) for f in
                          search_catalog(self._getter, reg, name, exact_match,
                                         Reach(admin or reg.allow_private,
                                               self._private_networks))]
            except Unreachable as exc:
                failed.append(str(exc))
        searched = len(targets)
        if wanted in (None, DOCKER_HUB) and not any(canonical_domain(r.domain) == DOCKER_HUB
                                                    for r in targets):
            searched += 1
            try:
                found += self._search_hub(name, exact_match)
            except CapsuledError as exc:
                failed.append(f"{DOCKER_HUB}: cannot be searched ({_first_line(exc.message)})")
        if searched == 0:
            raise InvalidInput(f"image: cannot search {host}: it is none of this project's "
                               "registries (see /v1/registries)")
        if failed and len(failed) == searched:
            raise InvalidInput("image: no registry could be searched: " + "; ".join(failed))
        return found

    def _search_hub(self, name: str, exact: bool) -> builtins.list[dict[str, Any]]:
        hosts = self._alive_hosts()
        if not hosts:
            raise Unavailable("no running host to ask")
        rows = self._ops_for(hosts[0]).search_images(name, 25).get("results") or []
        out = []
        for r in rows:
            if not isinstance(r, dict) or not isinstance(r.get("name"), str):
                continue
            if exact and r["name"] not in (name, f"library/{name}"):
                continue
            item = _found(r["name"], DOCKER_HUB)
            item.update(description=r.get("description"),
                        is_official=bool(r.get("is_official")),
                        is_automated=bool(r.get("is_automated")),
                        star_count=r.get("star_count") or 0)
            item["metadata"].update(is_official=item["is_official"], star_count=item["star_count"])
            out.append(item)
        return out

    def _alive_hosts(self) -> builtins.list[str]:
        now = utcnow()
        with self._store.transaction() as s:
            return [h.name for h in capacities(s, lock=False)
                    if h.last_seen is not None and now - h.last_seen <= self._down_after]


def _split(repo: str) -> tuple[str, str]:
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = repo.rpartition(":")
        return name, tag
    return repo, "latest"


def _found(name: str, registry: str) -> dict[str, Any]:
    """A search hit in the fields zunclient's image-search prints."""
    return {"id": None, "name": name, "tags": [], "status": None, "size": None,
            "description": None, "is_official": False, "is_automated": False, "star_count": 0,
            "metadata": {"registry": registry}}


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else ""
