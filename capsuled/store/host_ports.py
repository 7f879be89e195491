"""Fixed host ports as a host resource: who holds which (protocol, port) on which host.

A capsule's template hostPorts are claimed when it is placed, in the same transaction and
under the same host row locks as its CPU and memory (placement reads `held` through
`hosts.capacities`, then `claim` writes the rows), and released when its row goes (the
foreign key cascades: a delete the agent confirmed, a force delete, an unplaced capsule).
The unique key (host, protocol, port) is the backstop: a claim the locks somehow let
through fails its transaction instead of double-booking a port.

A service's published ports (store/capsule_services.py) are held on every host at once:
`service_ports` lists them for the scheduler, which sees them taken everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from capsuled.domain.ports import HostPortKey, capsule_host_ports
from capsuled.domain.spec import CapsuleSpec
from capsuled.store.tables import Capsule, CapsuleService, HostPort, ServicePublish, table


@dataclass(frozen=True)
class PortHolder:
    """Who holds a host port: the scheduler says "your capsule web" (or "your service
    web") to its own project and "another project" to everyone else."""

    project_id: str
    capsule: str  # its name, or its uuid when it has none
    uuid: str = ""  # the capsule's
    kind: str = "capsule"  # or "service": a service publishes it on every host


def held(session: Session, only: str | None = None) -> dict[str, dict[HostPortKey, PortHolder]]:
    """Per host (or `only` that host), every claimed (protocol, port) and its holder."""
    out: dict[str, dict[HostPortKey, PortHolder]] = {}
    rows = session.execute(_HELD if only is None else _HELD.where(_HP.host == only))
    for host, proto, port, project, name, uuid in rows:
        out.setdefault(host, {})[(proto, port)] = PortHolder(project, name or uuid, uuid)
    return out


def claim(session: Session, capsule: Capsule, spec: CapsuleSpec, keep: bool = False) -> None:
    """Make the capsule's claims those of `spec` on its host (none when unplaced): at
    create, and again whenever its spec changes (capsules.change_spec). The caller has
    checked, under the host locks, that the new ports are free there. `keep` (a rollout
    begins) adds without releasing: the old revision's ports stay the capsule's until the
    rollout ends (rollouts._end), so no other capsule can take one that a rollback needs."""
    want = set(capsule_host_ports(spec)) if capsule.host else set()
    have = {(r.protocol, r.port): r for r in capsule.host_ports}
    for key, row in have.items():
        if row.host != capsule.host or (key not in want and not keep):
            capsule.host_ports.remove(row)
    kept = {(r.protocol, r.port) for r in capsule.host_ports}
    if capsule.host is None:
        return
    for proto, port in sorted(want - kept):
        capsule.host_ports.append(HostPort(host=capsule.host, protocol=proto, port=port,
                                           project_id=capsule.project_id))


def service_ports(session: Session) -> dict[HostPortKey, PortHolder]:
    """Every host port a service publishes, with its holder: held on every host."""
    out: dict[HostPortKey, PortHolder] = {}
    for proto, port, project, name, uuid in session.execute(_PUBLISHED):
        out[(proto, port)] = PortHolder(project, name, uuid, kind="service")
    return out


# Built once, Core: every placement reads both.
_HP, _C = table(HostPort).c, table(Capsule).c
_HELD = select(_HP.host, _HP.protocol, _HP.port, _HP.project_id, _C.name, _C.uuid).join_from(
    table(HostPort), table(Capsule), _C.id == _HP.capsule_id)
_SP, _CS = table(ServicePublish).c, table(CapsuleService).c
_PUBLISHED = select(_SP.protocol, _SP.port, _SP.project_id, _CS.name, _CS.uuid).join_from(
    table(ServicePublish), table(CapsuleService), _CS.id == _SP.service_id)
