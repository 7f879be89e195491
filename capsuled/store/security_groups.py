"""Security group rows, who is in which group, and the firewalls the agent channel carries.

A group row holds its rules; membership lives in the specs (a capsule's or bare
container's `security_groups`), where it changes with the spec. `default` has no row: its
rules are domain.security_groups.DEFAULT_RULES in every project.

Every lookup is scoped to one project unless the caller may see all of them: another
project's group is as unknown as a missing one (the same message).

Agents learn of changes through their host's revision (the watch): a rule change wakes the
hosts of the group's members; a member that comes, goes or moves wakes the hosts whose
firewalls name one of its groups as a remote group (`members_changed`). Those wake-ups are
written after the change commits, in a transaction of their own that touches only host
rows in id order (`install`), so they add no lock-order cycle to the transaction that made
the change. Should one be lost (a crash in between), the agent's next watch, which returns
the whole desired set after at most its timeout, brings the firewall up to date anyway.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid as uuidlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, func, null, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from capsuled.domain import security_groups as sg
from capsuled.domain.channel import Assignment, ContainerAssignment
from capsuled.domain.template import short
from capsuled.errors import Conflict, InvalidInput, NotFound
from capsuled.store.tables import Capsule, Container, Host, SecurityGroup, utcnow

LOG = logging.getLogger(__name__)
_WAKE = "capsuled.security_groups.wake"  # session.info: host names to wake after commit
BARE = "bare"


def not_found(name: str) -> str:
    """The one message for a group that is missing or another project's."""
    return f"no security group named {short(name)} in this project"


# -- rows ---------------------------------------------------------------------------------

def create(session: Session, project_id: str, user_id: str, name: str, description: str,
           rules: Sequence[sg.Rule]) -> SecurityGroup:
    if name == sg.DEFAULT or find(session, name, project_id) is not None:
        raise Conflict(f"A security group named {name} already exists in this project.")
    check_remote_groups(session, project_id, rules, "rules", own=name)
    row = SecurityGroup(uuid=str(uuidlib.uuid4()), name=name, description=description,
                        rules=[r.model_dump(mode="json") for r in rules],
                        project_id=project_id, user_id=user_id, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def find(session: Session, ident: str, project_id: str | None) -> SecurityGroup | None:
    """By uuid or name, within `project_id` (None: any project)."""
    if "\x00" in ident or len(ident) > 255:  # PostgreSQL refuses NUL; no name is longer
        return None
    stmt = select(SecurityGroup)
    if project_id is not None:
        stmt = stmt.where(SecurityGroup.project_id == project_id)
    found = list(session.scalars(stmt.where((SecurityGroup.uuid == ident.lower())
                                            | (SecurityGroup.name == ident)).limit(2)).all())
    if len(found) > 1:  # one name per project: only an all-projects lookup meets two
        raise Conflict(f"Multiple security groups exist with name {ident}. Please use the "
                       "security group uuid instead.")
    return found[0] if found else None


def get(session: Session, ident: str, project_id: str | None) -> SecurityGroup:
    row = find(session, ident, project_id)
    if row is None:
        raise NotFound(f"Security group {short(ident)} could not be found.")
    return row


def list_(session: Session, project_id: str | None, limit: int,
          marker: str | None = None) -> list[SecurityGroup]:
    """By name (then id) in one project, or every project's by id; after `marker` (a uuid)."""
    stmt = select(SecurityGroup)
    if project_id is not None:
        stmt = stmt.where(SecurityGroup.project_id == project_id)
    if marker is not None:
        after = session.scalars(stmt.where(SecurityGroup.uuid == marker)).first()
        if after is None:
            raise NotFound(f"Marker {short(marker)} could not be found.")
        stmt = stmt.where(SecurityGroup.id > after.id)
    return list(session.scalars(stmt.order_by(SecurityGroup.id).limit(limit)).all())


def rules(row: SecurityGroup) -> list[sg.Rule]:
    return [sg.Rule.model_validate(r) for r in row.rules or []]


def update_row(session: Session, row: SecurityGroup, description: str | None,
               new_rules: Sequence[sg.Rule] | None) -> None:
    """New description and/or rules; the hosts of the group's members are woken."""
    if description is not None:
        row.description = description
    if new_rules is not None:
        check_remote_groups(session, row.project_id, new_rules, "rules", own=row.name)
        row.rules = [r.model_dump(mode="json") for r in new_rules]
        wake(session, {m.host for m in members(session, row.project_id) if row.name in m.groups})
    row.updated_at = utcnow()
    session.flush()


def delete(session: Session, row: SecurityGroup) -> None:
    """Refused while a capsule or container is in it, or another group's rule names it as
    a remote group (Neutron refuses the first too, with SecurityGroupInUse)."""
    users = [m for m in members(session, row.project_id, deleting=True) if row.name in m.groups]
    if users:
        raise Conflict(f"Security group {row.name} is in use by {len(users)} capsule(s) or "
                       "container(s); take it off them (or delete them) first.")
    naming = sorted(g.name for g in session.scalars(select(SecurityGroup).where(
        SecurityGroup.project_id == row.project_id, SecurityGroup.id != row.id))
        if row.name in sg.remote_groups(rules(g)))
    if naming:
        raise Conflict(f"Security group {row.name} is the remote group of rules in "
                       f"{', '.join(naming)}; change those rules first.")
    session.delete(row)


def count(session: Session, project_id: str) -> int:
    return session.scalar(select(func.count()).select_from(SecurityGroup).where(
        SecurityGroup.project_id == project_id)) or 0


def rules_by_name(session: Session, project_id: str) -> dict[str, list[sg.Rule]]:
    """Every group of the project with its rules, `default` included."""
    out: dict[str, list[sg.Rule]] = {sg.DEFAULT: list(sg.DEFAULT_RULES)}
    for row in session.scalars(select(SecurityGroup).where(SecurityGroup.project_id == project_id)):
        out[row.name] = rules(row)
    return out


def check_names(session: Session, project_id: str, names: Iterable[str], field: str) -> None:
    """InvalidInput naming `field` for each name that is no group of the project (another
    project's group is no more known than a missing one)."""
    wanted = [n for n in names if n != sg.DEFAULT]
    if not wanted:
        return
    have = set(session.scalars(select(SecurityGroup.name).where(
        SecurityGroup.project_id == project_id, SecurityGroup.name.in_(wanted))))
    missing = [n for n in wanted if n not in have]
    if missing:
        raise InvalidInput([f"{field}: {not_found(n)}" for n in missing])


def check_remote_groups(session: Session, project_id: str, new_rules: Sequence[sg.Rule],
                        field: str, own: str) -> None:
    """Each rule's remote group is a group of the project (or the group itself)."""
    problems = []
    have: set[str] | None = None
    for i, rule in enumerate(new_rules):
        name = rule.remote_group
        if name is None or name in (sg.DEFAULT, own):
            continue
        if have is None:
            have = set(rules_by_name(session, project_id))
        if name not in have:
            problems.append(f"{field}[{i}].remote_group: {not_found(name)}")
    if problems:
        raise InvalidInput(problems)


# -- members ------------------------------------------------------------------------------

def members(session: Session, project_id: str, deleting: bool = False,
            elsewhere_than: str | None = None) -> list[sg.Member]:
    """The project's capsules and bare containers with their groups and last known
    addresses (a capsule's are its sandbox's, which every member row holds); those being
    deleted only with `deleting` (their addresses are on their way out). With
    `elsewhere_than` a host, only those placed on other hosts, and without their groups
    (every member is in `default`, and the specs they are read from are most of what
    this reads): what the remote group `default` stands for there (sg.peers_of)."""
    first = (select(Container.addresses).where(Container.capsule_id == Capsule.id)
             .order_by(Container.position, Container.id).limit(1).scalar_subquery())
    light = elsewhere_than is not None
    capsules = select(Capsule.uuid, Capsule.host, null() if light else Capsule.spec,
                      first).where(Capsule.project_id == project_id)
    bare = select(Container.uuid, Container.host, null() if light else Container.spec,
                  Container.addresses).where(Container.project_id == project_id,
                                             Container.role == BARE)
    if light:
        capsules = capsules.where(or_(Capsule.host.is_(None), Capsule.host != elsewhere_than))
        bare = bare.where(or_(Container.host.is_(None), Container.host != elsewhere_than))
    if not deleting:
        capsules = capsules.where(Capsule.deleting.is_(False))
        bare = bare.where(Container.deleting.is_(False))
    out = []
    for stmt in (capsules, bare):
        for uuid, host, spec, addresses in session.execute(stmt):
            out.append(_member(uuid, host, spec, addresses))
    return out


def _member(uuid: str, host: str | None, spec: Any, addresses: Any) -> sg.Member:
    groups = spec.get("security_groups") if isinstance(spec, dict) else None
    ips: list[str] = []
    nets: list[str] = []
    for a in addresses if isinstance(addresses, list) else []:
        try:
            ips.append(str(ipaddress.IPv4Address(a["addr"])))
            nets.append(str(ipaddress.IPv4Network(a["subnet"], strict=False)))
        except (KeyError, TypeError, ValueError):
            continue  # a malformed row hides one address, never the whole project's
    return sg.Member(uuid=uuid, host=host,
                     groups=tuple(groups) if isinstance(groups, list) else (sg.DEFAULT,),
                     addresses=tuple(ips), subnets=tuple(dict.fromkeys(nets)))


def members_changed(session: Session, project_id: str, groups: Collection[str],
                    host: str | None) -> None:
    """A member of `groups` on `host` came, went, changed groups or addresses: wake the
    hosts whose firewalls name one of those groups as a remote group, and, since every
    member is in the project (remote group `default`), the other hosts that name that.
    On `host` itself `default` stands for the project's own network, whoever is in it
    (sg.peers_of): naming it there depends on no member's address, so every capsule's
    first report would otherwise make its own agent read its whole desired set again."""
    changed = set(groups) - {sg.DEFAULT}
    by_group = rules_by_name(session, project_id)
    hosts = set()
    for m in members(session, project_id):
        if m.host is None or m.host in hosts:
            continue
        named = {n for g in m.groups for n in sg.remote_groups(by_group.get(g, ()))}
        if named & changed or (sg.DEFAULT in named and m.host != host):
            hosts.add(m.host)
    wake(session, hosts)


def wake(session: Session, hosts: Iterable[str | None]) -> None:
    """Bump these hosts' revisions once `session` has committed (see the module doc)."""
    pending: set[str] = session.info.setdefault(_WAKE, set())
    pending.update(h for h in hosts if h)


def install(factory: sessionmaker[Session]) -> None:
    """Wake the hosts a committed session asked for (`wake`), in a transaction of its own."""
    def after_commit(session: Session) -> None:
        hosts = session.info.pop(_WAKE, None)
        if hosts:
            _bump(factory, hosts)

    def forget(session: Session, *_: Any) -> None:
        session.info.pop(_WAKE, None)

    event.listen(factory, "after_commit", after_commit)
    event.listen(factory, "after_rollback", forget)
    event.listen(factory, "after_soft_rollback", forget)


def _bump(factory: sessionmaker[Session], hosts: Collection[str]) -> None:
    try:
        with factory() as s, s.begin():
            ids = s.scalars(select(Host.id).where(Host.name.in_(sorted(hosts))).order_by(Host.id))
            for host_id in list(ids):  # one row at a time in id order, as every host locker
                s.execute(update(Host).where(Host.id == host_id)
                          .values(revision=Host.revision + 1))
    except Exception as exc:  # noqa: BLE001 - logged; the agents' watch timeout catches up
        LOG.warning("waking hosts %s for a security group change failed: %s",
                    ", ".join(sorted(hosts)), exc)


# -- what the agents are told ---------------------------------------------------------------

@dataclass
class _Project:
    rules: dict[str, list[sg.Rule]]
    members: list[sg.Member] | None = None  # read when a group other than default is remote
    elsewhere: list[sg.Member] | None = None  # read when default is: on other hosts only


def with_firewalls(session: Session, host: str, capsules: Sequence[Assignment],
                   containers: Sequence[ContainerAssignment]
                   ) -> tuple[list[Assignment], list[ContainerAssignment]]:
    """The assignments with each unit's firewall (units without a project network: none)."""
    projects: dict[str, _Project] = {}
    peers: dict[tuple[str, str], sg.Peers] = {}

    def firewall(project: str | None, groups: Sequence[str],
                 open_ports: Sequence[Any]) -> sg.Firewall | None:
        if project is None:
            return None
        known = projects.get(project)
        if known is None:
            known = projects[project] = _Project(rules_by_name(session, project))

        def remote(group: str) -> sg.Peers:
            key = (project, group)
            if key not in peers:
                if group == sg.DEFAULT:
                    if known.elsewhere is None:
                        known.elsewhere = members(session, project, elsewhere_than=host)
                    peers[key] = sg.peers_of(group, known.elsewhere, host)
                else:
                    if known.members is None:
                        known.members = members(session, project)
                    peers[key] = sg.peers_of(group, known.members, host)
            return peers[key]

        return sg.effective(groups, known.rules, remote, open_ports)

    out_c = [a.model_copy(update={"firewall": firewall(
        a.project_id, a.spec.security_groups, sg.capsule_open_ports(a.spec))}) for a in capsules]
    out_b = [a.model_copy(update={"firewall": firewall(
        a.project_id, a.spec.security_groups, sg.bare_open_ports(a.spec))}) for a in containers]
    return out_c, out_b


def groups_in(spec: Mapping[str, Any] | None) -> list[str]:
    """The groups a stored spec (a capsule's or a bare container's JSON) names."""
    groups = (spec or {}).get("security_groups")
    return list(groups) if isinstance(groups, list) else [sg.DEFAULT]
