"""`capsuled doctor` against the real pieces: a healthy all-in-one is all ok, and a wrong
database URL, a schema behind or ahead, a stopped agent, a refused agent token and a
broken configuration file each fail (or warn) with words that say what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from capsuled.store.engine import MIGRATIONS, make_engine
from conftest import VENV_BIN, Server, free_port, wait_for


def _chain() -> list[str]:
    """This checkout's migrations, oldest first (the head last): no test edit per migration."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return [r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions("base", "heads")][::-1]


HEAD = _chain()[-1]

pytestmark = pytest.mark.docker
START = 120.0  # seconds a server may take to answer on a busy machine


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """(exit status, {check name: check}) of `capsuled [args] doctor --json` (global options
    before `doctor`, its own after)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAPSULED_")}
    done = subprocess.run([str(VENV_BIN / "capsuled"), *args, "--json"], capture_output=True,
                          text=True, timeout=120, env={**clean, **(env or {})})
    body = json.loads(done.stdout)
    assert body["ok"] is (done.returncode == 0), done.stdout
    return done.returncode, {c["name"]: c for c in body["checks"]}


def migrate_to(url: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = make_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def test_a_healthy_all_in_one_is_all_ok(own_server: Callable[..., Server]) -> None:
    host = f"doctor-{uuid.uuid4().hex[:6]}"
    srv = own_server(start_timeout=START, CAPSULED_AGENT__HOST_NAME=host)
    wait_for(lambda: srv.client().get("/v1/hosts").json()["hosts"], what="the host to register")
    code, checks = doctor("--state-dir", str(srv.state_dir), "doctor")
    assert code == 0, checks
    assert {n: c["status"] for n, c in checks.items()} == {
        "config": "ok", "docker": "ok", "infra image": "ok", "iptables": "ok", "nftables": "ok",
        "docker root": "ok", "database": "ok", "agents": "ok", "keystone": "skip",
        "state directory": "ok"}
    assert f"schema at {HEAD} (current)" in checks["database"]["message"]
    assert checks["agents"]["message"].startswith(f"1 up, last heartbeats: {host} (")
    assert "storage driver" in checks["docker"]["message"]


def test_a_stopped_agent_is_named_with_its_last_heartbeat(
        own_server: Callable[..., Server]) -> None:
    host = f"doctor-{uuid.uuid4().hex[:6]}"
    srv = own_server(start_timeout=START, CAPSULED_AGENT__HOST_NAME=host)
    wait_for(lambda: srv.client().get("/v1/hosts").json()["hosts"], what="the host to register")
    assert srv.stop() == 0  # the all-in-one's agent stops with it
    time.sleep(2.5)
    code, checks = doctor("--state-dir", str(srv.state_dir), "doctor",
                          env={"CAPSULED_API__HOST_DOWN_AFTER": "2"})
    assert code == 1
    agents = checks["agents"]
    assert agents["status"] == "fail"
    assert f"down: {host} (last heartbeat " in agents["message"]
    assert "Start the agent" in agents["message"] and agents["message"].endswith("up: none")
    assert checks["database"]["status"] == "ok"


@pytest.mark.parametrize(("url", "words"), [
    ("postgresql+psycopg://postgres:wrong-pass@127.0.0.1:{closed}/capsuled", "Connection refused"),
    ("postgresql+psycopg://nosuchuser:secret-pw@127.0.0.1:5432/postgres", "nosuchuser"),
    ("mongodb://127.0.0.1/x", "mongodb is not supported"),
])
def test_a_wrong_database_url_fails_in_words(url: str, words: str) -> None:
    url = url.format(closed=free_port())
    code, checks = doctor("--database-url", url, "doctor", "--mode", "api")
    assert code == 1
    database = checks["database"]
    assert database["status"] == "fail" and words in database["message"], database
    assert "database_url" in database["message"]
    assert "wrong-pass" not in json.dumps(checks) and "secret-pw" not in json.dumps(checks)
    assert checks["agents"]["status"] == "skip"
    assert "docker" not in checks  # an API server drives no engine


def test_a_schema_behind_warns_and_one_ahead_fails(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capsuled.db'}"
    migrate_to(url, "0017")
    code, checks = doctor("--database-url", url, "doctor", "--mode", "api")
    assert checks["database"]["status"] == "warn", checks
    behind = len(_chain()) - 1 - _chain().index("0017")
    assert (f"at schema revision 0017, {behind} migration(s) behind this version ({HEAD}): run "
            "`capsuled db upgrade`") in checks["database"]["message"]
    done = subprocess.run([str(VENV_BIN / "capsuled"), "--database-url", url, "db", "upgrade"],
                          capture_output=True, text=True, timeout=120)
    assert f"migrated from revision 0017 to {HEAD}" in done.stdout, done.stderr
    _, checks = doctor("--database-url", url, "doctor", "--mode", "api")
    assert checks["database"]["status"] == "ok"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    engine.dispose()
    code, checks = doctor("--database-url", url, "doctor", "--mode", "api")
    assert code == 1 and checks["database"]["status"] == "fail"
    assert f"0099, which this version (newest {HEAD}) does not know" in checks["database"]["message"]


def test_a_missing_sqlite_database_is_not_created_by_the_doctor(tmp_path: Path) -> None:
    code, checks = doctor("--state-dir", str(tmp_path / "state"), "doctor", "--mode", "api")
    assert code == 1
    assert checks["database"]["message"].startswith(
        f"no database at {tmp_path / 'state' / 'capsuled.db'}: the server creates it")
    assert not (tmp_path / "state").exists()
    assert checks["state directory"]["status"] == "warn"


def test_an_agent_checks_its_api_and_token(own_server: Callable[..., Server],
                                           tmp_path: Path) -> None:
    server = own_server(start_timeout=START)
    host = f"doctor-{uuid.uuid4().hex[:6]}"
    token_file = tmp_path / "agent-token"
    token_file.write_text("not-a-token\n")
    conf = tmp_path / "capsuled.conf"
    conf.write_text(f'[agent]\nhost_name = "{host}"\napi_url = "{server.url}"\n'
                    f'token_file = "{token_file}"\n')
    code, checks = doctor("--config-file", str(conf), "doctor")  # agent: api_url is set
    assert code == 1 and "database" not in checks
    assert checks["api"]["status"] == "fail"
    assert "the API refused the agent token" in checks["api"]["message"]
    assert f"capsule token create --role agent --host {host}" in checks["api"]["message"]
    with server.client() as c:
        r = c.post("/v1/tokens", json={"project_id": "service", "user_id": host,
                                       "roles": ["agent"], "host": host})
    assert r.status_code == 201, r.text
    token_file.write_text(r.json()["token"])
    code, checks = doctor("--config-file", str(conf), "doctor")
    assert checks["api"]["status"] == "ok", checks["api"]
    assert f"accepts the agent token of host {host} (deployment {server.instance})" in \
        checks["api"]["message"]
    assert code == 0


def test_an_agent_with_a_replica_down_warns(own_server: Callable[..., Server],
                                            tmp_path: Path) -> None:
    """The agent fails over to the replica that answers: a warning, not a failure."""
    server = own_server(start_timeout=START)
    host = f"doctor-{uuid.uuid4().hex[:6]}"
    with server.client() as c:
        r = c.post("/v1/tokens", json={"project_id": "service", "user_id": host,
                                       "roles": ["agent"], "host": host})
    assert r.status_code == 201, r.text
    (tmp_path / "agent-token").write_text(r.json()["token"])
    gone = f"http://127.0.0.1:{free_port()}"
    conf = tmp_path / "capsuled.conf"
    conf.write_text(f'[agent]\nhost_name = "{host}"\napi_url = ["{gone}", "{server.url}"]\n'
                    f'token_file = "{tmp_path / "agent-token"}"\n')
    code, checks = doctor("--config-file", str(conf), "doctor")
    assert checks["api"]["status"] == "warn", checks["api"]
    assert checks["api"]["message"].startswith(f"{server.url} accepts the agent token")
    assert f"API at {gone} unreachable" in checks["api"]["message"]
    conf.write_text(f'[agent]\nhost_name = "{host}"\napi_url = "{gone}"\n'
                    f'token_file = "{tmp_path / "agent-token"}"\n')
    code, checks = doctor("--config-file", str(conf), "doctor")
    assert code == 1 and checks["api"]["status"] == "fail", checks["api"]


def test_an_unreachable_keystone_fails_in_words(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capsuled.db'}"
    migrate_to(url, "head")
    port = free_port()
    code, checks = doctor("--database-url", url, "doctor", "--mode", "api", env={
        "CAPSULED_KEYSTONE__AUTH_URL": f"http://127.0.0.1:{port}/v3",
        "CAPSULED_KEYSTONE__PASSWORD": "pw", "CAPSULED_KEYSTONE__TIMEOUT": "3"})
    assert code == 1
    assert checks["keystone"]["status"] == "fail"
    assert checks["keystone"]["message"].startswith(
        f"Keystone at http://127.0.0.1:{port}/v3 did not answer")


def test_a_broken_configuration_file_is_the_first_failure(tmp_path: Path) -> None:
    conf = tmp_path / "capsuled.conf"
    conf.write_text("[agent]\nworkerz = 3\n")
    conf.chmod(0o644)
    code, checks = doctor("--config-file", str(conf), "doctor")
    assert code == 1 and list(checks) == ["config"]
    assert checks["config"]["message"] == (
        f"{conf}: [agent] workerz: unknown key (did you mean workers?)")
    conf.write_text(f'state_dir = "{tmp_path}"\n')
    _, checks = doctor("--config-file", str(conf), "doctor", "--mode", "api")
    assert checks["config"]["status"] == "warn"
    assert f"chmod 640 {conf}" in checks["config"]["message"]


def test_the_text_report_has_one_line_per_check(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAPSULED_")}
    done = subprocess.run([sys.executable, "-m", "capsuled", "--state-dir", str(tmp_path),
                           "doctor", "--mode", "api"], capture_output=True, text=True,
                          timeout=120, env=clean)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["ok", "fail", "skip", "skip", "ok"], lines
    assert lines[1].startswith("fail  database         no database at ")
