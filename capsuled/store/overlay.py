"""Project networks across hosts: the central allocation (domain/overlay.py) and what each
host's agent is told about them.

Only hosts that registered an underlay address take part; on the others a project network
stays host-local and the agent picks its own subnet (agent.network_pool), as before.

    ensure_block(s, project, host, underlay)
                                     the project's subnet and VNI (made on first use), and
                                     the host's block of it; called where work is placed on
                                     a host and when a host registers. Allocation runs under
                                     the host row locks (every allocator takes them, as the
                                     scheduler's claims do), so replicas never hand out one
                                     block twice; the unique keys would refuse it anyway.
    overlays_for(s, host)            the host's overlay networks with their peers and the
                                     names of the project's capsules on other hosts
    names_changed(s, project)        a report changed what a project's names resolve to:
                                     noted in the session; `bump_peers` (in a transaction
                                     of its own, after the report's) wakes the project's
                                     other hosts so that their agents re-read the directory

Blocks are never taken back while their project has anything on their host. When a pool
runs out, blocks of (project, host) pairs with nothing left, and projects with no block
left, are reclaimed, and the allocation tries again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from capsuled.domain.addresses import network_uuid, parse_stored
from capsuled.domain.channel import OverlayNetwork, RemoteName
from capsuled.domain.overlay import OverlayPool, gateway_of, vni_candidates
from capsuled.errors import Conflict
from capsuled.store.hosts import bump_revisions, lock_hosts, underlay_address
from capsuled.store.meta import get_meta
from capsuled.store.tables import Capsule, Container, Host, OverlayBlock, OverlayProject, utcnow

DEFAULT_POOL = OverlayPool(ipaddress.IPv4Network("10.224.0.0/12"), 20, 24)
_pool = DEFAULT_POOL
_CHANGED = "overlay_names_changed"
_VNI_PROBES = 64  # candidates read per query; taken ones are skipped


def configure(pool: OverlayPool) -> None:
    """The deployment's pool (settings [overlay]); set once by the composition root."""
    global _pool
    _pool = pool


def pool() -> OverlayPool:
    return _pool


def underlay_of(session: Session, host: str) -> str | None:
    return underlay_address(session.scalar(select(Host.info).where(Host.name == host)))


def ensure_block(session: Session, project_id: str, host: str,
                 underlay: str | None) -> OverlayBlock | None:
    """The host's block of the project's network (None: `underlay`, the host's underlay
    address as the caller read it, is None, so its project networks are its own). Raises
    Conflict when the pool has no room left."""
    if underlay is None:
        return None
    found = _block(session, project_id, host)
    if found is not None:
        return found
    lock_hosts(session)  # every allocator takes them, in one order: no double allocation
    found = _block(session, project_id, host)
    if found is not None:
        return found
    project = _ensure_project(session, project_id)
    block = _free_block(session, project)
    if block is None and _reclaim(session):
        project = _ensure_project(session, project_id)  # it may have been idle everywhere
        block = _free_block(session, project)
    if block is None:
        raise Conflict(f"network: project {project_id} already has a block of its subnet "
                       f"{project.subnet} on {_pool.hosts_per_project} hosts, the most "
                       "overlay.project_prefix and overlay.host_prefix allow")
    row = OverlayBlock(project_id=project_id, host=host, block=str(block),
                       gateway=str(gateway_of(block)), created_at=utcnow())
    session.add(row)
    session.flush()
    # The project's other hosts get a new VXLAN peer; this host gets the network.
    bump_revisions(session, _hosts_of(session, [project_id]))
    return row


def has_block(session: Session, project_id: str, host: str) -> bool:
    """Whether the project has its block on `host` (`ensure_block` then allocates
    nothing and takes no lock)."""
    return _block(session, project_id, host) is not None


def _block(session: Session, project_id: str, host: str) -> OverlayBlock | None:
    return session.scalars(select(OverlayBlock).where(
        OverlayBlock.project_id == project_id, OverlayBlock.host == host)).first()


def _ensure_project(session: Session, project_id: str) -> OverlayProject:
    row = session.get(OverlayProject, project_id)
    if row is not None:
        return row
    subnet = _free_subnet(session)
    if subnet is None and _reclaim(session):
        subnet = _free_subnet(session)
    if subnet is None:
        raise Conflict(f"network: no subnet left in the overlay pool {_pool.pool} for "
                       f"project {project_id} (overlay.pool, overlay.project_prefix)")
    row = OverlayProject(project_id=project_id, vni=_free_vni(session, project_id),
                         subnet=str(subnet), created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def _free_subnet(session: Session) -> ipaddress.IPv4Network | None:
    taken = {ipaddress.IPv4Network(s) for s in session.scalars(select(OverlayProject.subnet))}
    return next((n for n in _pool.project_subnets()
                 if not any(n.overlaps(t) for t in taken)), None)


def _free_block(session: Session, project: OverlayProject) -> ipaddress.IPv4Network | None:
    taken = set(session.scalars(select(OverlayBlock.block).where(
        OverlayBlock.project_id == project.project_id)))
    subnet = ipaddress.IPv4Network(project.subnet)
    return next((b for b in _pool.host_blocks(subnet) if str(b) not in taken), None)


def _free_vni(session: Session, project_id: str) -> int:
    candidates = vni_candidates(get_meta(session, "instance_id") or "", network_uuid(project_id))
    while True:
        batch = [next(candidates) for _ in range(_VNI_PROBES)]
        taken = set(session.scalars(select(OverlayProject.vni).where(
            OverlayProject.vni.in_(batch))))
        free = next((v for v in batch if v not in taken), None)
        if free is not None:
            return free


def _reclaim(session: Session) -> bool:
    """Free the blocks of (project, host) pairs with no capsule or container left, and the
    subnets of projects with no block left; whether anything was freed."""
    idle = select(OverlayBlock.id, OverlayBlock.project_id).where(
        ~exists().where(Capsule.project_id == OverlayBlock.project_id,
                        Capsule.host == OverlayBlock.host),
        ~exists().where(Container.project_id == OverlayBlock.project_id,
                        Container.host == OverlayBlock.host))
    rows = session.execute(idle).all()
    if rows:
        projects = {p for _, p in rows}
        hosts = _hosts_of(session, projects)
        session.execute(delete(OverlayBlock).where(OverlayBlock.id.in_([i for i, _ in rows])))
        bump_revisions(session, hosts)  # they lose a peer (and the freed hosts the network)
    gone = session.execute(delete(OverlayProject).where(
        ~exists().where(OverlayBlock.project_id == OverlayProject.project_id)))
    session.flush()
    return bool(rows) or bool(getattr(gone, "rowcount", 0))


def _hosts_of(session: Session, projects: Iterable[str]) -> set[str]:
    return set(session.scalars(select(OverlayBlock.host).where(
        OverlayBlock.project_id.in_(list(projects)))))


def allocate_present(session: Session, host: str) -> None:
    """A host registered: blocks for every project it has work of (an underlay address
    set on a host that already runs capsules), and its peers told about a changed address."""
    underlay = underlay_of(session, host)
    if underlay is None:
        return
    projects = set(session.scalars(select(Capsule.project_id).where(Capsule.host == host)))
    projects |= set(session.scalars(select(Container.project_id).where(Container.host == host)))
    for project in sorted(projects):
        try:
            ensure_block(session, project, host, underlay)
        except Conflict:
            continue  # that project stays host-local here; its next placement says why
    bump_revisions(session, _hosts_of(session, _projects_of(session, host)) - {host})


def _projects_of(session: Session, host: str) -> set[str]:
    return set(session.scalars(select(OverlayBlock.project_id).where(OverlayBlock.host == host)))


def names_changed(session: Session, project_id: str) -> None:
    """A capsule or container of the project got new addresses, or went: its other hosts
    must re-read the project's names (see bump_peers)."""
    session.info.setdefault(_CHANGED, set()).add(project_id)


def take_changed(session: Session) -> set[str]:
    return set(session.info.pop(_CHANGED, set()))


def bump_peers(session: Session, projects: Collection[str], except_host: str) -> None:
    """Wake the hosts that share any of `projects` (but `except_host`, whose own report it
    was). In a transaction of its own: the host rows are locked in id order, as placement
    locks them, after the report's rows were committed, so the two never deadlock."""
    hosts = _hosts_of(session, projects) - {except_host}
    if not hosts:
        return
    session.scalars(select(Host.id).where(Host.name.in_(sorted(hosts))).order_by(Host.id)
                    .with_for_update()).all()
    bump_revisions(session, hosts)


def overlays_for(session: Session, host: str) -> list[OverlayNetwork]:
    """The overlay networks of the host's projects (none without an underlay address)."""
    if underlay_of(session, host) is None:
        return []
    mine = session.execute(
        select(OverlayBlock.project_id, OverlayBlock.block, OverlayBlock.gateway,
               OverlayProject.vni, OverlayProject.subnet)
        .join(OverlayProject, OverlayProject.project_id == OverlayBlock.project_id)
        .where(OverlayBlock.host == host).order_by(OverlayBlock.project_id)).all()
    if not mine:
        return []
    projects = [p for p, *_ in mine]
    peers: dict[str, set[str]] = {}
    for project, info in session.execute(
            select(OverlayBlock.project_id, Host.info).join(Host, Host.name == OverlayBlock.host)
            .where(OverlayBlock.project_id.in_(projects), OverlayBlock.host != host)).all():
        addr = (info or {}).get("underlay_address")
        if addr:
            peers.setdefault(project, set()).add(str(addr))
    subnets = {p: ipaddress.IPv4Network(s) for p, _, _, _, s in mine}
    names = _remote_names(session, host, subnets)
    return [OverlayNetwork(project_id=p, vni=vni, subnet=subnet, ip_range=block, gateway=gw,
                           peers=sorted(peers.get(p, set()), key=ipaddress.IPv4Address),
                           names=names.get(p, []))
            for p, block, gw, vni, subnet in mine]


def _remote_names(session: Session, host: str,
                  subnets: dict[str, ipaddress.IPv4Network]) -> dict[str, list[RemoteName]]:
    """Per project: the names (name, uuid) of its capsules and bare containers on other
    hosts, with the address each holds on the project network."""
    first_member = (select(Container.addresses).where(Container.capsule_id == Capsule.id)
                    .order_by(Container.position, Container.id).limit(1).scalar_subquery())
    rows = list(session.execute(
        select(Capsule.project_id, Capsule.name, Capsule.uuid, first_member)
        .where(Capsule.project_id.in_(list(subnets)), Capsule.host.is_not(None),
               Capsule.host != host, Capsule.deleting.is_(False))).all())
    rows += session.execute(
        select(Container.project_id, Container.name, Container.uuid, Container.addresses)
        .where(Container.project_id.in_(list(subnets)), Container.role == "bare",
               Container.host.is_not(None), Container.host != host,
               Container.deleting.is_(False))).all()
    out: dict[str, list[RemoteName]] = {}
    for project, name, uuid, raw in rows:
        net = network_uuid(project)
        addr = next((a.addr for a in parse_stored(raw) if a.network_id == net
                     and ipaddress.IPv4Address(a.addr) in subnets[project]), None)
        if addr is None:
            continue
        for n in (name, uuid):
            if n:
                out.setdefault(project, []).append(RemoteName(name=n, addr=addr))
    return out
