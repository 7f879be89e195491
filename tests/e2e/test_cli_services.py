"""`capsule svc create/list/show/delete` against the real server, as a member of a fresh
project: what a person reads, what a script parses, and the errors both get."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import Server

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def test_a_member_creates_lists_shows_and_deletes_a_service(server: Server) -> None:
    token = server.issue_token(f"svc-cli-{uuid.uuid4().hex[:8]}", "u", "member")
    env = {"CAPSULE_TOKEN": token}
    made = server.cli("svc", "create", "web", "-l", "app=web", "-p", "80:8080",
                      "-p", "53/udp", "--publish", "53/udp=30999", "-o", "json", env=env)
    assert made.returncode == 0, made.stderr
    body = json.loads(made.stdout)
    assert body["ports"] == [{"port": 80, "targetPort": 8080, "protocol": "TCP", "publish": None},
                             {"port": 53, "targetPort": 53, "protocol": "UDP", "publish": 30999}]
    listed = server.cli("svc", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "web" in listed.stdout and body["vip"] in listed.stdout
    assert "80→8080/TCP" in listed.stdout and "53→53/UDP (host 30999)" in listed.stdout
    shown = server.cli("svc", "show", "web", env=env)
    assert shown.returncode == 0 and "app=web" in shown.stdout and "SERVING" in shown.stdout

    again = server.cli("svc", "create", "web", "-l", "app=web", "-p", "80", env=env)
    assert again.returncode == 1 and "a service named web already exists" in again.stderr
    bad = server.cli("svc", "create", "Web", "-l", "app=web", "-p", "80", env=env)
    assert bad.returncode == 1 and "name: must be" in bad.stderr
    usage = server.cli("svc", "create", "x", "-l", "app=web", "-p", "eighty", env=env)
    assert usage.returncode == 2 and "PORT[:TARGET_PORT]" in usage.stderr
    usage = server.cli("svc", "create", "x", "-l", "app=web", "-p", "80",
                       "--publish", "81=30998", env=env)
    assert usage.returncode == 2 and "not one of the service's --port" in usage.stderr

    gone = server.cli("svc", "delete", "web", "nope", env=env)
    assert gone.returncode == 1 and "svc/web deleted" in gone.stdout
    assert "nope could not be found" in gone.stderr
    assert "No services found." in server.cli("svc", "list", env=env).stderr
