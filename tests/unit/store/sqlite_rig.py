"""A migrated SQLite store with one registered host, for tests of the store and its users."""

from __future__ import annotations

from pathlib import Path

from capsuled.domain.channel import HostInfo
from capsuled.store.engine import Store, make_engine, upgrade
from capsuled.store.hosts import register_host


def sqlite_store(directory: Path, host: str = "h1", cpus: float = 8, memory_mb: int = 8192) -> Store:
    engine = make_engine(f"sqlite:///{directory / 'db.sqlite'}")
    upgrade(engine)
    store = Store(engine)
    with store.transaction() as s:
        register_host(s, HostInfo(name=host, cpus=cpus, memory_mb=memory_mb, disk_gb=50))
    return store
