"""`capsule security-group` and `capsule run --security-group` against the whole API built
in process over SQLite: rules spelled PROTO[:PORT[-PORT]][@SOURCE] round-trip, `set`
replaces them, a bad spelling is the CLI's own usage error, and the server's refusals
(another project's group, a group in use) come back as one line."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

with warnings.catch_warnings():  # Starlette would like httpx2; httpx is what we ship
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from capsuled.cli import compose
from capsuled.cli.capsule.main import Runtime, app
from capsuled.cli.capsule.security_groups import describe_rule, parse_rule
from capsuled.config import Settings
from capsuled.domain.channel import HostInfo
from capsuled.paths import ADMIN_TOKEN_FILE
from cli_env import clean_env  # noqa: F401 - the autouse fixture, by name

BASE = "http://testserver"


@pytest.fixture()
def cli(tmp_path: Path) -> Iterator[Any]:
    settings = Settings.model_validate({"state_dir": tmp_path})
    opened = compose.open_store(settings)
    built = compose.build_api(settings, opened.store, lambda host: None)  # type: ignore[arg-type, return-value]
    built.control.register(HostInfo(name="h1", cpus=8, memory_mb=8192, disk_gb=50))
    admin = (tmp_path / ADMIN_TOKEN_FILE).read_text().strip()
    runner = CliRunner()
    with TestClient(built.app) as http:
        tokens = {}

        def invoke(*args: str, project: str = "team-a") -> Any:
            if project not in tokens:
                r = http.post("/v1/tokens", json={"project_id": project, "user_id": "u",
                                                  "roles": ["member"]},
                              headers={"X-Auth-Token": admin})
                tokens[project] = r.json()["token"]
            rt = Runtime(transport=http._transport, poll_interval=0)
            return runner.invoke(app, list(args), obj=rt,
                                 env={"CAPSULE_URL": BASE, "CAPSULE_TOKEN": tokens[project]})
        yield invoke
    opened.store.engine.dispose()


@pytest.mark.parametrize("text,rule", [
    ("tcp:8080@default", {"protocol": "tcp", "port_range_min": 8080, "port_range_max": 8080,
                          "remote_group": "default"}),
    ("UDP:53-54@10.0.0.0/8", {"protocol": "udp", "port_range_min": 53, "port_range_max": 54,
                              "remote_ip_prefix": "10.0.0.0/8"}),
    ("icmp", {"protocol": "icmp"}),
    ("any@192.0.2.7", {"protocol": "any", "remote_ip_prefix": "192.0.2.7"}),
])
def test_rules_are_spelled_and_read_back(text: str, rule: dict[str, Any]) -> None:
    assert parse_rule(text) == rule
    assert describe_rule(rule) == text.replace("UDP", "udp")


def test_create_list_set_delete_and_run_in_a_group(cli: Any) -> None:
    made = cli("security-group", "create", "web", "--rule", "tcp:8080@default", "-r", "icmp",
               "-d", "HTTP", "-o", "json")
    assert made.exit_code == 0, made.output
    body = json.loads(made.output)
    assert [describe_rule(r) for r in body["rules"]] == ["tcp:8080@default", "icmp"]
    listed = cli("security-group", "list")
    assert listed.exit_code == 0, listed.output
    assert "default" in listed.output and "tcp:8080@default, icmp" in listed.output
    changed = cli("security-group", "set", "web", "--rule", "tcp:9000-9010@10.0.0.0/8")
    assert changed.exit_code == 0 and "tcp:9000-9010@10.0.0.0/8" in changed.output
    shown = cli("security-group", "show", "web", "-o", "json")
    assert json.loads(shown.output)["description"] == "HTTP"

    ran = cli("run", "--name", "box", "--security-group", "web", "-o", "json", "busybox")
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output)["security_groups"] == ["web"]
    busy = cli("security-group", "delete", "web")
    assert busy.exit_code != 0 and "in use by 1" in busy.output
    theirs = cli("run", "--security-group", "web", "busybox", project="team-b")
    assert theirs.exit_code != 0 and "no security group named 'web' in this project" in theirs.output

    bad = cli("security-group", "create", "x", "--rule", "tcp:eighty")
    assert bad.exit_code == 2 and "PROTO[:PORT[-PORT]][@SOURCE]" in bad.output
    empty = cli("security-group", "set", "web")
    assert empty.exit_code == 2
    assert cli("security-group", "create", "closed").exit_code == 0
    assert cli("security-group", "delete", "closed").exit_code == 0
