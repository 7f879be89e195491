"""A container's host that cannot be reached: members read that, not the host's name or
its agent's address (issue 9, "no leaks")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capsuled.api.policy import Policy
from capsuled.api.services.containers import ContainerService, LogRequest
from capsuled.api.services.quotas import QuotaService
from capsuled.config import QuotaSettings
from capsuled.domain.container_request import parse_container_request
from capsuled.domain.template import Limits
from capsuled.errors import DriverError, RuntimeConflict, Unavailable
from capsuled.hostops.protocol import ContainerOps
from capsuled.identity.base import Principal
from capsuled.store import containers as repo
from capsuled.store.engine import Store, make_engine, upgrade

SECRET_HOST = "rack7-node-secret"
AGENT = "http://10.20.30.40:9518"
ALICE = Principal(user_id="alice", project_id="p1", roles=("member",))


class _Unreachable:
    def logs(self, *args: Any) -> bytes:
        raise Unavailable(f"logs: the agent at {AGENT} is unreachable (timed out)")


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    return Store(engine)


def _service(store: Store, ops_for: Any) -> ContainerService:
    return ContainerService(store, lambda: None, ops_for, Limits(), policy=Policy(),
                            quotas=QuotaService(store, QuotaSettings().model_dump()))


def _running(store: Store) -> str:
    spec = parse_container_request({"image": "busybox"}, Limits())
    with store.transaction() as s:
        row = repo.create_bare(s, spec, "c1", ALICE.project_id, ALICE.user_id, SECRET_HOST,
                               "running")
        row.status, row.runtime_id = "Running", "f" * 64
        return row.uuid


def test_an_unreachable_agent_is_503_naming_neither_host_nor_address(store: Store) -> None:
    uuid = _running(store)
    svc = _service(store, lambda host: _Unreachable())
    with pytest.raises(Unavailable) as exc:
        svc.logs(ALICE, uuid, LogRequest())
    assert exc.value.message == ("logs: the container's host cannot be reached now; "
                                 "try again later")


def test_a_host_without_an_agent_is_503_without_its_name(store: Store) -> None:
    uuid = _running(store)

    def ops_for(host: str) -> ContainerOps:
        raise Unavailable(f"host {host} has no reachable agent")
    svc = _service(store, ops_for)
    with pytest.raises(Unavailable) as exc:
        svc.logs(ALICE, uuid, LogRequest())
    assert SECRET_HOST not in exc.value.message and "cannot be reached" in exc.value.message


class _AgentWasFaster:
    """The host as the API finds it when the agent, woken by the saved desired state,
    paused or unpaused the container first (seen in Zun's tempest pause test)."""

    def pause(self, cid: str) -> None:
        raise RuntimeConflict(f"pause {cid[:12]}: Container {cid} is already paused")

    def unpause(self, cid: str) -> None:
        raise DriverError(f"unpause {cid[:12]}: Container {cid} is not paused")


@pytest.mark.parametrize("action,status", [("pause", "Running"), ("unpause", "Paused")])
def test_a_state_the_agent_reached_first_is_success(store: Store, action: str, status: str) -> None:
    uuid = _running(store)
    with store.transaction() as s:
        repo.get_container(s, uuid, None).status = status
    svc = _service(store, lambda host: _AgentWasFaster())
    svc.action(ALICE, uuid, action, "req-1")  # no error: the container is as asked
    with store.transaction() as s:
        (act,) = [a for a in repo.list_actions(s, uuid) if a.action == action]
        assert act.message is None
