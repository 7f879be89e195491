"""`capsule token|quota|host|service` as an admin runs them, against a real server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Server, sleeper, template

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def ok_json(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_token_create_use_list_and_revoke(server: Server, unique: Callable[[str], str]) -> None:
    project = unique("tok")
    made = ok_json(server.cli("token", "create", "--project", project, "--user", "ann",
                              "--role", "reader", "--expires", "1d", "--format", "json"))
    assert made["token"].startswith("cap_") and made["roles"] == ["reader"]
    assert made["expires_at"] is not None
    with server.client(made["token"]) as api:
        assert api.get("/v1/capsules").status_code == 200
        refused = api.post("/v1/capsules", json={"template": template("x", [sleeper("a")])})
        assert refused.status_code == 403
    listed = ok_json(server.cli("token", "list", "--project", project, "--format", "json"))
    assert [t["uuid"] for t in listed] == [made["uuid"]] and "token" not in listed[0]
    table = server.cli("token", "list", "--project", project)
    assert made["uuid"] in table.stdout and "ann" in table.stdout

    plain = server.cli("token", "create", "-p", project, "-u", "bo")
    assert plain.returncode == 0 and plain.stdout.strip().startswith("cap_")
    assert "only time" in plain.stderr

    revoked = server.cli("token", "revoke", made["uuid"])
    assert revoked.returncode == 0, revoked.stderr
    with server.client(made["token"]) as api:
        assert api.get("/v1/capsules").status_code == 401
    bad = server.cli("token", "create", "-p", project, "-u", "x", "--role", "root")
    assert bad.returncode == 1 and "roles: unknown role 'root'" in bad.stderr
    missing = server.cli("token", "revoke", "no-such-token")
    assert missing.returncode == 1 and "no-such-token" in missing.stderr


def test_quota_update_show_reset(server: Server, unique: Callable[[str], str]) -> None:
    project = unique("quo")
    got = ok_json(server.cli("quota", "update", project, "--capsules", "2", "--cpu", "1.5",
                             "--memory", "-1", "--format", "json"))
    assert got["capsules"] == 2 and got["cpu"] == 1.5 and got["memory"] == -1
    shown = ok_json(server.cli("quota", "show", project, "--format", "json"))
    assert shown["capsules"] == {"limit": 2, "in_use": 0}
    table = server.cli("quota", "show", project)
    assert "unlimited" in table.stdout and "capsules" in table.stdout
    assert server.cli("quota", "update", project).returncode == 2
    assert server.cli("quota", "reset", project).returncode == 0
    assert ok_json(server.cli("quota", "show", project, "--format", "json"))["capsules"]["limit"] == 20


def test_host_and_service_commands(server: Server) -> None:
    [host] = ok_json(server.cli("host", "list", "--format", "json"))
    name = host["hostname"]
    assert host["cpus"] > 0 and host["state"] == "up"
    assert ok_json(server.cli("host", "show", name, "--format", "json"))["uuid"] == host["uuid"]
    assert name in server.cli("host", "list").stdout
    try:
        svc = ok_json(server.cli("service", "disable", name, "--reason", "kernel update",
                                 "--format", "json"))
        assert svc["disabled"] is True
        [listed] = ok_json(server.cli("service", "list", "--format", "json"))
        assert listed["disabled"] and listed["disabled_reason"] == "kernel update"
        assert "kernel update" in server.cli("service", "list").stdout
    finally:
        assert server.cli("service", "enable", name).returncode == 0
    assert ok_json(server.cli("service", "list", "--format", "json"))[0]["disabled"] is False
    down = ok_json(server.cli("service", "force-down", name, "--unset", "--format", "json"))
    assert down["forced_down"] is False
    nope = server.cli("host", "show", "no-such-host")
    assert nope.returncode == 1 and "no-such-host" in nope.stderr
