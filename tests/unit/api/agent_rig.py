"""An API app on SQLite with one registered host, h1, and an agent token for it: what
tests of the agent channel drive in process, without Docker."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

with warnings.catch_warnings():  # Starlette would like httpx2; httpx is what we ship
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from capsuled.cli import compose
from capsuled.config import Settings
from capsuled.domain.channel import HostInfo
from capsuled.paths import ADMIN_TOKEN_FILE


@contextmanager
def agent_channel(tmp_path: Path) -> Iterator[tuple[TestClient, Any, str]]:
    """(a client of the app, the app, h1's agent token)."""
    settings = Settings.model_validate({"state_dir": tmp_path})
    opened = compose.open_store(settings)

    def no_ops(host: str) -> Any:
        raise AssertionError("no host operations here")
    built = compose.build_api(settings, opened.store, no_ops)
    built.control.register(HostInfo(name="h1", cpus=4, memory_mb=4096, disk_gb=50))
    try:
        with TestClient(built.app, raise_server_exceptions=False) as client:
            admin = (tmp_path / ADMIN_TOKEN_FILE).read_text().strip()
            r = client.post("/v1/tokens", headers={"X-Auth-Token": admin}, json={
                "project_id": "service", "user_id": "agent-h1", "roles": ["agent"],
                "host": "h1"})
            assert r.status_code == 201, r.text
            yield client, built.app, r.json()["token"]
    finally:
        opened.store.engine.dispose()
