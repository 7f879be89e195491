"""Registry rows: a project's private registries, their credentials sealed by a
SecretBox, and the pull plans the agent channel carries (domain/registry.py decides them).

Every lookup is scoped to one project unless the caller is allowed all of them: another
project's registry is as unknown as a missing one (the same 404, the same message)."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from capsuled.domain.channel import Assignment, ContainerAssignment, ImagePull
from capsuled.domain.registry import Credentials, plan_pull
from capsuled.domain.spec import CapsuleSpec, ContainerSpec
from capsuled.domain.template import short
from capsuled.errors import Conflict, InvalidInput, NotFound
from capsuled.store.capsules import UUID_RE, Page, storable_ident
from capsuled.store.crypto import SecretBox
from capsuled.store.tables import Container, Registry, utcnow

SORT_KEYS = {"id", "uuid", "name", "domain", "created_at", "updated_at"}
FILTERS = ("name", "domain", "project_id", "user_id")


def create(session: Session, box: SecretBox, project_id: str, user_id: str, name: str | None,
           domain: str, username: str | None, password: str | None,
           allow_private: bool = False) -> Registry:
    _name_is_free(session, project_id, name, None)
    row = Registry(uuid=str(uuidlib.uuid4()), name=name, domain=domain,
                   username_enc=box.seal(username), password_enc=box.seal(password),
                   project_id=project_id, user_id=user_id, allow_private=allow_private,
                   created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def get(session: Session, ident: str, project_id: str | None) -> Registry:
    """By uuid or name, within `project_id` (None: any project)."""
    if not storable_ident(ident):
        raise NotFound(f"Registry {short(ident)} could not be found.")
    stmt = select(Registry)
    if project_id is not None:
        stmt = stmt.where(Registry.project_id == project_id)
    if UUID_RE.match(ident):
        found = list(session.scalars(stmt.where(Registry.uuid == ident.lower())).all())
    else:
        found = list(session.scalars(stmt.where(Registry.name == ident).limit(2)).all())
    if not found:
        raise NotFound(f"Registry {short(ident)} could not be found.")
    if len(found) > 1:  # one name per project: only an all-projects lookup meets two
        raise Conflict(f"Multiple registries exist with name {ident}. Please use the "
                       "registry uuid instead.")
    return found[0]


def list_(session: Session, project_id: str | None, page: Page,
          filters: dict[str, str]) -> list[Registry]:
    if page.sort_key not in SORT_KEYS:
        raise InvalidInput(f"sort_key: unknown field {page.sort_key!r}; use one of "
                           + ", ".join(sorted(SORT_KEYS)))
    column = getattr(Registry, page.sort_key)
    stmt = select(Registry)
    if project_id is not None:
        stmt = stmt.where(Registry.project_id == project_id)
    scope = stmt
    for key, value in filters.items():
        stmt = stmt.where(getattr(Registry, key) == value)
    if page.marker is not None:
        marker = session.scalars(scope.where(Registry.uuid == page.marker)).first()
        if marker is None:
            raise NotFound(f"Marker {page.marker} could not be found.")
        mval = getattr(marker, page.sort_key)
        if page.sort_dir == "asc":
            stmt = stmt.where((column > mval) | ((column == mval) & (Registry.id > marker.id)))
        else:
            stmt = stmt.where((column < mval) | ((column == mval) & (Registry.id < marker.id)))
    order = (column.asc(), Registry.id.asc()) if page.sort_dir == "asc" else (
        column.desc(), Registry.id.desc())
    return list(session.scalars(stmt.order_by(*order).limit(page.limit)).all())


def update(session: Session, box: SecretBox, row: Registry, changes: dict[str, str],
           allow_private: bool = False) -> None:
    """`allow_private`: whether who changes the domain may reach any address (the flag
    follows the domain: a member who repoints an admin's registry does not inherit it)."""
    if "name" in changes:
        _name_is_free(session, row.project_id, changes["name"], row.id)
        row.name = changes["name"]
    if "domain" in changes:
        row.domain = changes["domain"]
        row.allow_private = allow_private
    if "username" in changes:
        row.username_enc = box.seal(changes["username"])
    if "password" in changes:
        row.password_enc = box.seal(changes["password"])
    row.updated_at = utcnow()
    session.flush()


def delete(session: Session, row: Registry) -> None:
    """Refused while a container pulls through it (Zun's foreign key refuses it too)."""
    users = session.scalar(select(func.count()).select_from(Container).where(
        Container.registry_id == row.uuid))
    if users:
        raise Conflict(f"Registry {row.name or row.uuid} is in use by {users} container(s); "
                       "delete them first.")
    session.delete(row)


def username(box: SecretBox, row: Registry) -> str | None:
    return box.open(row.username_enc)


def credentials(session: Session, box: SecretBox, project_id: str) -> dict[str, Credentials]:
    """The project's registries, decrypted, by uuid: for that project's pulls only."""
    rows = session.scalars(select(Registry).where(Registry.project_id == project_id)).all()
    return {r.uuid: Credentials(uuid=r.uuid, domain=r.domain, username=box.open(r.username_enc),
                                password=box.open(r.password_enc),
                                allow_private=bool(r.allow_private)) for r in rows}


def with_pulls(session: Session, box: SecretBox, capsules: Sequence[Assignment],
               containers: Sequence[ContainerAssignment]
               ) -> tuple[list[Assignment], list[ContainerAssignment]]:
    """The assignments with each container's pull plan, credentials of its own project
    only (no other project's registry changes how this one's images are pulled)."""
    cache: dict[str, dict[str, Credentials]] = {}

    def plans(project: str | None, specs: Sequence[ContainerSpec]) -> list[ImagePull]:
        own: dict[str, Credentials] = {}
        if project is not None:
            if project not in cache:  # once per project and answer, not once per unit
                cache[project] = credentials(session, box, project)
            own = cache[project]
        if not own and not any(c.registry for c in specs):
            return []
        return [p for p in (plan_pull(c, own) for c in specs) if p is not None]

    out_c = [a.model_copy(update={"pulls": plans(a.project_id, a.spec.all_containers)})
             for a in capsules]
    out_b = [a.model_copy(update={"pulls": plans(a.project_id, [a.spec.container])})
             for a in containers]
    return out_c, out_b


def _name_is_free(session: Session, project_id: str, name: str | None,
                  other_than: int | None) -> None:
    if name is None:
        return
    stmt = select(Registry.id).where(Registry.project_id == project_id, Registry.name == name)
    if other_than is not None:
        stmt = stmt.where(Registry.id != other_than)
    if session.scalars(stmt).first() is not None:
        raise Conflict(f"A registry named {name} already exists in this project.")


def resolve(session: Session, project_id: str, spec: ContainerSpec) -> ContainerSpec:
    """The spec with its `registry` (a name or uuid) as the uuid of the project's registry
    of that name; NotFound, the same for another project's and a missing one."""
    if spec.registry is None:
        return spec
    return spec.model_copy(update={"registry": get(session, spec.registry, project_id).uuid})


def resolve_capsule(session: Session, project_id: str, spec: CapsuleSpec) -> CapsuleSpec:
    if not any(c.registry for c in spec.all_containers):
        return spec
    return spec.model_copy(update={
        "init_containers": [resolve(session, project_id, c) for c in spec.init_containers],
        "containers": [resolve(session, project_id, c) for c in spec.containers]})
