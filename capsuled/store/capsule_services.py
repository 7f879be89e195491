"""Capsule services: rows, their VIPs and published host ports, and the view each agent
programs its load balancer from (domain/services.py has the rules).

Claims. A service's VIP is unique in the deployment (unique key), picked at random from
`services.vip_range` among the addresses no service holds. A published port is held on
every host: a service cannot publish a port that a capsule's hostPort holds on any host,
and the scheduler sees the service's ports as taken on every host (hosts.capacities), so
no capsule is placed where it would clash. Both checks run with every host row locked,
as placement's do, so a create racing a placement on any API replica cannot both win;
the unique key (protocol, port) is the backstop between services.
"""

from __future__ import annotations

import ipaddress
import uuid as uuidlib
from collections.abc import Collection, Mapping

from sqlalchemy import exists, false, func, select, true
from sqlalchemy.orm import Session

from capsuled.domain.addresses import network_uuid, parse_stored, preferred
from capsuled.domain.ports import HostPortKey, describe
from capsuled.domain.services import (SERVING_STATUSES, Candidate, NewService, ServicePort,
                                      ServiceRecord, ServicesView, build_view, vip_candidates)
from capsuled.domain.template import short
from capsuled.errors import Conflict, NotFound, OverQuota
from capsuled.store.capsules import UUID_RE, storable_ident
from capsuled.store.host_ports import PortHolder, held, service_ports
from capsuled.store.hosts import lock_hosts
from capsuled.store.quotas import lock_project
from capsuled.store.tables import (Capsule, CapsuleLabel, CapsuleService, Container,
                                   ServicePublish, utcnow)

_VIP_TRIES = 64  # random addresses looked at per create (one query)
_IN_CHUNK = 500


def count(session: Session, project_id: str) -> int:
    return session.scalar(select(func.count(CapsuleService.id)).where(
        CapsuleService.project_id == project_id)) or 0


def any_exist(session: Session) -> bool:
    """Whether any service exists (else every host's view is its projects' list alone)."""
    return session.scalar(select(exists().where(CapsuleService.id.is_not(None)))) or False


def any_for_capsules(session: Session, uuids: Collection[str]) -> bool:
    """Whether any of these capsules is in a project that has a service: only then can
    a change of theirs change who serves (a view's backends)."""
    if not uuids:
        return False
    projects = select(Capsule.project_id).where(Capsule.uuid.in_(sorted(set(uuids))))
    return session.scalar(select(exists().where(
        CapsuleService.project_id.in_(projects)))) or False


def create(session: Session, new: NewService, project_id: str, user_id: str,
           vip_range: ipaddress.IPv4Network, limit: int) -> CapsuleService:
    """Under the project's lock (its lock row committed before: quotas.ensure_lock_row)
    and every host's, so that the limit, the name, the VIP and the published ports are
    each decided once."""
    lock_project(session, project_id)
    have = count(session, project_id)
    if have >= limit:
        raise OverQuota(f"capsule_services: the project has {have} of at most {limit} "
                        "(services.per_project); delete one first")
    if session.scalars(select(CapsuleService.id).where(
            CapsuleService.project_id == project_id, CapsuleService.name == new.name)).first():
        raise Conflict(f"name: a service named {new.name} already exists in this project.")
    lock_hosts(session)
    _ensure_free(session, new, project_id)
    row = CapsuleService(uuid=str(uuidlib.uuid4()), name=new.name, project_id=project_id,
                         user_id=user_id, selector=dict(new.selector),
                         ports=[p.model_dump(mode="json") for p in new.ports],
                         vip=_free_vip(session, vip_range), created_at=utcnow())
    row.published = [ServicePublish(protocol=proto, port=port, project_id=project_id)
                     for proto, port in new.published()]
    session.add(row)
    session.flush()
    return row


def _ensure_free(session: Session, new: NewService, project_id: str) -> None:
    """Refuse published ports a capsule holds on any host or another service publishes;
    names the holder only to its own project."""
    taken: dict[HostPortKey, PortHolder] = dict(service_ports(session))
    for ports in held(session).values():
        taken.update(ports)
    for i, p in enumerate(new.ports):
        if p.publish is None:
            continue
        holder = taken.get((p.protocol, p.publish))
        if holder is None:
            continue
        whose = (f"your {holder.kind} {holder.capsule}" if holder.project_id == project_id
                 else "another project")
        raise Conflict(f"ports[{i}].publish: {describe((p.protocol, p.publish))} is in use "
                       f"(by {whose}).")


def _free_vip(session: Session, vip_range: ipaddress.IPv4Network) -> str:
    tries = vip_candidates(vip_range, _VIP_TRIES)
    used = set(session.scalars(select(CapsuleService.vip).where(CapsuleService.vip.in_(tries))))
    free = next((v for v in tries if v not in used), None)
    if free is None:
        raise Conflict(f"no free virtual address found in services.vip_range {vip_range} "
                       "(it is nearly full); try again or ask an administrator to widen it")
    return free


def get(session: Session, ident: str, project_id: str | None) -> CapsuleService:
    """By uuid or name, within `project_id` (None: any project)."""
    if not storable_ident(ident):
        raise NotFound(f"Capsule service {short(ident)} could not be found.")
    missing = NotFound(f"Capsule service {ident} could not be found.")
    stmt = select(CapsuleService)
    if project_id is not None:
        stmt = stmt.where(CapsuleService.project_id == project_id)
    if UUID_RE.match(ident):
        found = list(session.scalars(stmt.where(CapsuleService.uuid == ident.lower())).all())
    else:
        found = list(session.scalars(stmt.where(CapsuleService.name == ident).limit(2)).all())
    if not found:
        raise missing
    if len(found) > 1:  # the same name in two projects, asked for by an admin
        raise Conflict(f"Multiple services exist with name {ident}. Please use the uuid instead.")
    return found[0]


def list_(session: Session, project_id: str | None, limit: int) -> list[CapsuleService]:
    stmt = select(CapsuleService).order_by(CapsuleService.id).limit(limit)
    if project_id is not None:
        stmt = stmt.where(CapsuleService.project_id == project_id)
    return list(session.scalars(stmt).all())


def delete(session: Session, row: CapsuleService) -> None:
    session.delete(row)  # its published ports go with it (cascade)


def ports_of(row: CapsuleService) -> list[ServicePort]:
    return [ServicePort.model_validate(p) for p in row.ports or []]


def candidates(session: Session, projects: Collection[str], serving_only: bool = False,
               selector: Mapping[str, str] | None = None) -> list[Candidate]:
    """The capsules of `projects` (only those that may serve, or those carrying every
    label of `selector`) with their app containers' conditions and address."""
    if not projects:
        return []
    stmt = select(Capsule.id, Capsule.uuid, Capsule.name, Capsule.project_id, Capsule.labels,
                  Capsule.status, Capsule.deleting, Capsule.draining).where(
        Capsule.project_id.in_(sorted(projects)))
    if serving_only:
        stmt = stmt.where(Capsule.status.in_(SERVING_STATUSES), Capsule.deleting == false(),
                          Capsule.draining == false())
    for key, value in (selector or {}).items():
        stmt = stmt.where(exists().where(CapsuleLabel.capsule_id == Capsule.id,
                                         CapsuleLabel.key == key, CapsuleLabel.value == value))
    rows = session.execute(stmt.order_by(Capsule.id)).all()
    members: dict[int, list[tuple[str, dict[str, object] | None, object]]] = {}
    ids = [r[0] for r in rows]
    for start in range(0, len(ids), _IN_CHUNK):
        for cid, status, probe, addresses in session.execute(
                select(Container.capsule_id, Container.status, Container.probe,
                       Container.addresses)
                .where(Container.capsule_id.in_(ids[start:start + _IN_CHUNK]),
                       Container.role == "app")
                .order_by(Container.capsule_id, Container.position, Container.id)):
            if cid is not None:
                members.setdefault(cid, []).append((status, probe, addresses))
    out = []
    for cid, uuid, name, project, labels, status, deleting, draining in rows:
        apps = members.get(cid, [])
        addr = preferred(parse_stored(apps[0][2]), network_uuid(project)) if apps else None
        out.append(Candidate(uuid=uuid, name=name, project_id=project, labels=dict(labels or {}),
                             status=status, deleting=bool(deleting), draining=bool(draining),
                             addr=addr, members=tuple((s, p) for s, p, _ in apps)))
    return out


def host_projects(session: Session, host: str) -> set[str]:
    """Projects with a capsule or bare container placed on `host`: its agent's clients."""
    found = set(session.scalars(select(Capsule.project_id).where(Capsule.host == host).distinct()))
    found |= set(session.scalars(select(Container.project_id).where(
        Container.role == "bare", Container.host == host).distinct()))
    return found


def agent_view(session: Session, host: str,
               vip_range: ipaddress.IPv4Network | None) -> ServicesView:
    """What `host`'s agent programs: its projects' services and every published one,
    with their serving backends."""
    projects = host_projects(session, host)
    own: list[CapsuleService] = []
    if projects:
        own = list(session.scalars(select(CapsuleService).where(
            CapsuleService.project_id.in_(sorted(projects)))).all())
    published = select(ServicePublish.service_id)
    foreign = list(session.scalars(select(CapsuleService).where(
        CapsuleService.id.in_(published),
        CapsuleService.project_id.not_in(sorted(projects)) if projects else true())).all())
    records = [ServiceRecord(uuid=s.uuid, name=s.name, project_id=s.project_id, vip=s.vip,
                             ports=ports_of(s), selector=dict(s.selector or {}),
                             foreign=s.project_id not in projects) for s in own + foreign]
    served = {r.project_id for r in records}
    return build_view(host, vip_range, projects, records,
                      candidates(session, served, serving_only=True))
