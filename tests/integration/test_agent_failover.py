"""An agent given both API replicas (`--api A --api B`) on PostgreSQL outlives the one it
talks to: after a kill -9 of that replica its heartbeats, watches and reports go to the
other, so the host stays up, a capsule created through the survivor runs on it, and the
survivor reaches the agent's ops endpoint (registered in the shared database)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import remove_instance_objects, wait_for
from multihost_rig import (ADMIN_URLS, DOWN_AFTER, MAIN_DOCKER, Cluster, Proc, create,
                           delete_all, start_agent, start_replicas, wait_status)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

pytestmark = [pytest.mark.docker]

HOST = "host-failover"


class Rig:
    def __init__(self, cluster: Cluster, apis: list[Proc], tmp: Path) -> None:
        self.cluster, self.apis, self.tmp = cluster, apis, tmp


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("failover")
    admin = create_engine(ADMIN_URLS["postgresql"], isolation_level="AUTOCOMMIT")
    name = f"capsuled_fo_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    db_url = make_url(ADMIN_URLS["postgresql"]).set(database=name).render_as_string(
        hide_password=False)
    env = {"CAPSULED_API__HOST_DOWN_AFTER": str(DOWN_AFTER), "CAPSULED_LOG_LEVEL": "info"}
    c = Cluster([], "", {}, {HOST: docker.APIClient(MAIN_DOCKER, version="auto")})
    apis: list[Proc] = []
    try:
        start_replicas(c, apis, tmp, db_url, env)
        with c.client() as api:
            start_agent(c, api, HOST, MAIN_DOCKER, c.urls, tmp, env)
            c.instance = api.get(f"/v1/agents/{HOST}", headers={
                "X-Auth-Token": c.agent_tokens[HOST]}).json()["instance_id"]
            wait_for(lambda: _host_up(c, 0), timeout=120, what="the agent registered and up")
        yield Rig(c, apis, tmp)
    finally:
        for p in [*c.agents.values(), *apis]:
            p.stop()
        if c.instance:
            remove_instance_objects(c.dockers[HOST], c.instance)
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def _host_up(c: Cluster, replica: int) -> bool:
    with c.client(replica) as api:
        return any(s["host"] == HOST and s["state"] == "up"
                   for s in api.get("/v1/services").json()["services"])


def test_the_agent_fails_over_when_its_replica_is_killed(rig: Rig) -> None:
    c = rig.cluster
    agent_log = rig.tmp / f"agent-{HOST}.log"
    # It talks to the first it was given until that one fails.
    assert f"(now {c.urls[0]})" in agent_log.read_text()
    rig.apis[0].stop(signal.SIGKILL)
    # Longer than a host may be silent before it is down: without fail-over its
    # heartbeats would have stopped with the replica.
    time.sleep(2 * DOWN_AFTER)
    assert _host_up(c, 1), "the host went down: its heartbeats did not reach replica 1"
    with c.client(1) as survivor:
        made = create(survivor, "after-failover")["uuid"]
        body = wait_status(survivor, made, "Running", timeout=45)
        assert body["host"] == HOST
        # The ops endpoint the agent registered is reached from the survivor too.
        r = survivor.post("/v1/containers", params={"run": "true"}, json={
            "image": "busybox", "name": "ops-after-failover", "host": HOST,
            "command": ["sh", "-c", "echo from-the-agent; sleep 300"]})
        assert r.status_code == 202, r.text
        bare = r.json()["uuid"]
        wait_for(lambda: survivor.get(f"/v1/containers/{bare}").json()["status"] == "Running",
                 timeout=45, what="the bare container running")
        wait_for(lambda: survivor.get(f"/v1/containers/{bare}/logs").json()
                 == "from-the-agent\n", timeout=15, what="its logs through the survivor")
        assert _host_up(c, 1)
        delete_all(survivor, [made])
        assert survivor.delete(f"/v1/containers/{bare}", params={"force": "true"}
                               ).status_code in (202, 204)
    # The loops that lost the replica together switched once, and said so once.
    switches = [line for line in agent_log.read_text().splitlines() if "switching to" in line]
    assert len(switches) == 1, switches
    assert f"API replica {c.urls[0]} failed" in switches[0] and c.urls[1] in switches[0]
