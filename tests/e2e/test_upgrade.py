"""Upgrading keeps every capsule: a server of an earlier version (this repository at the
commit that merged published ports, schema 0017, four migrations back) creates capsules
and a bare container through its API, on SQLite, PostgreSQL and MariaDB; it stops; this
version starts on the same database and state directory. It migrates the database as it starts, lists everything with the same uuids,
adopts the running containers without recreating one, and manages them (update,
delete) as if it had made them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import docker
import pytest
from sqlalchemy import create_engine, make_url, text
from conftest import (ROOT, Capsules, Server, free_port, member, remove_instance_objects,
                      sleeper, template, wait_for)

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

# "Merge i-ports: published ports ...; migration 0017 after 0015": the release before
# overlay networks (0018), revisions (0016), security groups (0019) and services (0020).
PREVIOUS = "1dd8ae6"
PREVIOUS_SCHEMA = "0017"
ADMIN_URLS = {
    "postgresql": os.environ.get("CAPSULED_TEST_POSTGRESQL_URL",
                                 "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
    "mariadb": os.environ.get("CAPSULED_TEST_MARIADB_URL",
                              "mysql+pymysql://root@127.0.0.1:3306/test"),
}


def previous_release(into: Path) -> Path:
    """The earlier version's package, extracted from this repository's history."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS,
                           "capsuled"], capture_output=True, timeout=120)
    assert done.returncode == 0, (
        f"the upgrade test needs commit {PREVIOUS} (git fetch --unshallow): {done.stderr!r}")
    with tarfile.open(fileobj=BytesIO(done.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def read_one(url: str, sql: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def schema_revision(url: str) -> str:
    return read_one(url, "SELECT version_num FROM alembic_version")


def migration_steps(since: str) -> list[tuple[str, str]]:
    """The upgrades this checkout runs from revision `since` to its head, in order (read
    from its migrations, so a new migration needs no edit here)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from capsuled.store.engine import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    chain = list(script.walk_revisions(since, "heads"))[::-1]  # oldest first, `since` too
    assert chain[0].revision == since
    return [(str(r.down_revision), r.revision) for r in chain[1:]]


def instance_of(url: str) -> str:
    return read_one(url, "SELECT value FROM meta WHERE meta.key = 'instance_id'")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each engine the server runs on (multi-host: PostgreSQL or
    MariaDB, where production upgrades happen)."""
    kind: str = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'capsuled.db'}"
        return
    admin_url = ADMIN_URLS[kind]
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT",
                          connect_args={"connect_timeout": 5})
    name = f"capsuled_upgrade_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:  # unreachable: fails, as every database test here does
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name}"
                              + (" WITH (FORCE)" if kind == "postgresql" else "")))
        admin.dispose()


@pytest.fixture()
def servers(docker_api: docker.APIClient,
            database_url: str) -> Iterator[list[tuple[Server, str]]]:
    """Servers on `database_url`, killed and their Docker objects removed at the end
    (before the database is dropped: the deployment's id is read from it)."""
    made: list[tuple[Server, str]] = []
    yield made
    for srv, _ in made:
        if srv.proc is not None:
            srv.stop(signal.SIGKILL)
    for instance in {instance_of(url) for _, url in made}:
        remove_instance_objects(docker_api, instance)


def start(state: Path, url: str, made: list[tuple[Server, str]], **env: str) -> Server:
    port = free_port()
    srv = Server(url=f"http://127.0.0.1:{port}", state_dir=state, port=port,
                 env={"CAPSULED_AGENT__RELIST_INTERVAL": "2", **env}, start_timeout=120,
                 args=["--database-url", url])
    made.append((srv, url))
    srv.start()
    return srv


def snapshot(docker_api: docker.APIClient, instance: str) -> dict[str, tuple[str, bool]]:
    """Every container of the deployment: Docker id → (started at, running)."""
    out = {}
    for c in docker_api.containers(all=True, filters={"label": [f"capsuled.instance={instance}"]}):
        state = docker_api.inspect_container(c["Id"])["State"]
        out[c["Id"]] = (state["StartedAt"], state["Running"])
    return out


def test_an_upgrade_migrates_and_keeps_every_capsule_running(
        tmp_path: Path, docker_api: docker.APIClient, servers: list[tuple[Server, str]],
        database_url: str) -> None:
    old_code = previous_release(tmp_path / "previous")
    state = tmp_path / "state"
    state.mkdir()

    old = start(state, database_url, servers, PYTHONPATH=str(old_code))
    assert schema_revision(database_url) == PREVIOUS_SCHEMA
    made: list[dict[str, Any]] = []
    with old.client() as api:
        capsules = Capsules(api)
        made.append(capsules.create(template("upg-web", [sleeper("web"), sleeper("side")])))
        made.append(capsules.create(template("upg-db", [sleeper("db")],
                                             labels={"tier": "data"})))
        for body in made:
            capsules.wait_status(body["uuid"], "Running")
        r = api.post("/v1/containers", params={"run": "true"}, json={
            "name": "upg-bare", "image": "busybox", "command": ["sleep", "3600"]})
        assert r.status_code == 202, r.text
        bare = r.json()["uuid"]
        wait_for(lambda: api.get(f"/v1/containers/{bare}").json()["status"] == "Running",
                 what="the bare container to run")
    instance = instance_of(database_url)
    before = snapshot(docker_api, instance)
    assert len(before) == 6 and all(running for _, running in before.values())
    assert old.stop() == 0
    assert snapshot(docker_api, instance) == before  # stopping the server stops no container

    new = start(state, database_url, servers)  # this checkout's code
    assert instance_of(database_url) == instance
    steps = migration_steps(PREVIOUS_SCHEMA)
    assert schema_revision(database_url) == steps[-1][1]  # this checkout's head
    log = new.log.read_text() if new.log else ""
    assert re.search(".*".join(re.escape(f"Running upgrade {a} -> {b}") for a, b in steps),
                     log, re.S), log[-3000:]

    with new.client() as api:
        capsules = Capsules(api)
        listed = {c["uuid"]: c for c in api.get("/v1/capsules").json()["capsules"]}
        assert set(listed) == {b["uuid"] for b in made}
        web = made[0]["uuid"]
        for body in made:
            capsules.wait_status(body["uuid"], "Running")
        assert listed[made[1]["uuid"]]["labels"] == {"tier": "data"}
        assert api.get(f"/v1/containers/{bare}").json()["status"] == "Running"
        # Adopted, not recreated: the same Docker containers, never restarted.
        wait_for(lambda: api.get(f"/v1/capsules/{web}").json()["status"] == "Running",
                 what="the capsule to stay Running")
        assert snapshot(docker_api, instance) == before

        # The earlier version's capsules have their first revision (migration 0016) and
        # can be updated and deleted by this one.
        revs = api.get(f"/v1/capsules/{web}/revisions").json()["revisions"]
        assert [r["revision"] for r in revs] == [1]
        side = member(docker_api, web, "side")["Id"]
        r = api.patch(f"/v1/capsules/{web}",
                      json={"containers": [{"name": "web", "env": {"UPGRADED": "1"}}]})
        assert r.status_code == 202, r.text
        wait_for(lambda: (b := capsules.get(web))["rollout"] is None and b["revision"] == 2
                 and b["status"] == "Running", timeout=90, what="the update to end")
        assert "UPGRADED=1" in member(docker_api, web, "web")["Config"]["Env"]
        assert member(docker_api, web, "side")["Id"] == side
        assert api.delete(f"/v1/capsules/{made[1]['uuid']}").status_code == 204
        capsules.wait_gone(made[1]["uuid"])
        assert not docker_api.containers(all=True, filters={"label": [
            f"capsuled.capsule={made[1]['uuid']}"]})
