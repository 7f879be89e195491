"""Agents' ops keys are derived, never stored: the database keeps the agent's boot nonce and
the key's digest, the agent keeps the digest, and the API derives the key again to present
it. A database copy without the API's ops secret yields no key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from capsuled.api.services.agents import ControlPlane, OpsKeys
from capsuled.domain.channel import HostInfo, ops_key_digest
from capsuled.errors import Unavailable
from capsuled.hostops.server import OpsKey
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.tables import Host, Meta


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    return Store(engine)


def info(nonce: str | None = "boot-1", **kw: object) -> HostInfo:
    return HostInfo(name="h1", cpus=2, memory_mb=1024, disk_gb=10,
                    ops_url="https://h1:9518", ops_nonce=nonce, **kw)  # type: ignore[arg-type]


def everything_stored(store: Store) -> str:
    with store.transaction() as s:
        hosts = [json.dumps(h.info) for h in s.scalars(select(Host))]
        meta = [f"{m.key}={m.value}" for m in s.scalars(select(Meta))]
    return "\n".join(hosts + meta)


def test_the_key_is_handed_to_the_agent_and_stored_only_as_a_digest(store: Store) -> None:
    plane = ControlPlane(store, ops_keys=OpsKeys(store, "operator-secret"))
    key = plane.register(info()).ops_key
    assert key and len(key) >= 40
    stored = everything_stored(store)
    assert key not in stored and "operator-secret" not in stored
    assert ops_key_digest(key) in stored
    # Any replica with the same secret presents the same key; the agent accepts it.
    assert OpsKeys(store, "operator-secret").endpoint("h1") == ("https://h1:9518", key)
    agent = OpsKey(key)
    assert agent.accepts(key.encode()) and not agent.accepts(b"x" + key.encode())
    assert not OpsKey().accepts(b"")  # before registration: nothing is accepted


def test_a_new_boot_gets_a_new_key_and_another_secret_is_refused_clearly(store: Store) -> None:
    plane = ControlPlane(store, ops_keys=OpsKeys(store, "s1"))
    first = plane.register(info("boot-1")).ops_key
    second = plane.register(info("boot-2")).ops_key
    assert first != second
    assert plane.register(info("boot-2")).ops_key == second  # re-registration: same key
    with pytest.raises(Unavailable, match="another ops secret"):
        OpsKeys(store, "not-s1").endpoint("h1")


def test_without_a_configured_secret_one_is_kept_in_meta_and_shared(store: Store) -> None:
    key = ControlPlane(store).register(info()).ops_key
    assert key is not None and key not in everything_stored(store)
    assert OpsKeys(store).endpoint("h1") == ("https://h1:9518", key)  # another replica


def test_no_ops_endpoint_no_key_and_legacy_agents_still_work(store: Store) -> None:
    plane = ControlPlane(store)
    bare = HostInfo(name="h1", cpus=2, memory_mb=1024, disk_gb=10)
    assert plane.register(bare).ops_key is None
    assert plane.ops_keys.endpoint("h1") is None
    # An agent from before derived keys sends its own key (and ignores the answer).
    plane.register(HostInfo(name="h1", cpus=2, memory_mb=1024, disk_gb=10,
                            ops_url="http://h1:9518", ops_key="legacy"))
    assert plane.ops_keys.endpoint("h1") == ("http://h1:9518", "legacy")
