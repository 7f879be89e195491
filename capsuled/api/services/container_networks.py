"""network_list, network_attach and network_detach of /v1/containers.

A project has exactly one network today (domain.addresses.network_uuid): every bare
container and capsule sandbox of the project joins it at creation and keeps it for life.
So attach can only name that network, on which the container already is (409), and
detach of it is refused (400): a container without a network would have no DNS, no
neighbours and no address to show. Any other network id gets one answer, whether it is
another project's or exists nowhere, so nothing can be learnt about other tenants.
Nothing changes, so no container action is recorded (Zun records successful ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capsuled.api.microversions import ApiVersion
from capsuled.domain.addresses import Address, network_uuid, parse_stored, port_id
from capsuled.domain.template import short
from capsuled.errors import Conflict, InvalidInput
from capsuled.identity.base import Principal
from capsuled.store.tables import Container

DETACH_BY_PORT = (1, 17)

Getter = Callable[[Principal, str, str | None], Container]


def addresses(row: Container) -> tuple[list[Address], str]:
    """The container's addresses and the owner of its port (a member's: its capsule)."""
    owner = row.capsule.uuid if row.capsule is not None else row.uuid
    return parse_stored(row.addresses), owner


def attach(get: Getter, who: Principal, ident: str, params: dict[str, Any]) -> None:
    row = _target(get, who, ident, params, "network_attach")
    network, port = _text(params, "network"), _text(params, "port")
    _text(params, "fixed_ip")  # checked for its type; the answer does not depend on it
    if network is None and port is None:
        raise InvalidInput("network: give the network to attach (or port)")
    mine = _named_ours(row, network, port)
    raise Conflict(f"network: container {row.name} is already attached to network {mine}, "
                   f"the one network of its project")


def detach(get: Getter, who: Principal, ident: str, params: dict[str, Any],
           version: ApiVersion) -> None:
    row = _target(get, who, ident, params, "network_detach")
    network, port = _text(params, "network"), _text(params, "port")
    if port is not None and not version.at_least(DETACH_BY_PORT):
        raise InvalidInput("port: detaching by port needs API version 1.17 or later")
    if network is None and port is None:
        raise InvalidInput("network: give the network to detach (or port)")
    mine = _named_ours(row, network, port)
    raise InvalidInput(f"network: detaching container {row.name} from network {mine} is not "
                       f"supported: it is its project's one network, which containers keep "
                       f"for life")


def _named_ours(row: Container, network: str | None, port: str | None) -> str:
    """The project's network id, once `network` and `port` (when given) are found to name
    it and the container's own port; else the same 4xx for another project's and none."""
    mine = network_uuid(row.project_id)
    if network is not None and network != mine:
        raise _unknown("network", network, mine)
    if port is not None and port != _port(row):
        raise _unknown("port", port, mine)
    return mine


def _target(get: Getter, who: Principal, ident: str, params: dict[str, Any],
            action: str) -> Container:
    capsule = _text(params, "capsule")
    row = get(who, ident, capsule)
    if row.capsule is not None:
        owner = row.capsule.name or row.capsule.uuid
        raise Conflict(f"Cannot {action} container {row.name}: it belongs to capsule {owner}; "
                       f"it shares the capsule's network (delete or recreate the capsule "
                       f"instead).")
    if row.deleting:
        raise Conflict(f"Container {row.name} is being deleted.")
    return row


def _port(row: Container) -> str:
    return port_id(network_uuid(row.project_id), row.uuid)


def _unknown(field: str, value: str, mine: str) -> InvalidInput:
    # The same words for another project's network (or port) and for none at all.
    return InvalidInput(f"{field}: {short(value)} is not a network of this project; a "
                        f"project has exactly one network today ({mine}), and every "
                        f"container is on it")


def _text(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value in ("", "None"):  # zunclient sends unset options as 'None'
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: must be a string, not {type(value).__name__}")
    return value
