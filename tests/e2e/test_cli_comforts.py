"""CLI comforts through the real `capsule` against a real server and engine: progress per
container while `create --wait` waits (the plain form a log or pipe gets), `-o wide` and
`-o yaml`, and errors that say what to type instead."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from conftest import Server, member, sleeper, template
from test_cli import cleanup  # noqa: F401 - the fixture, by name

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def create(server: Server, tmp_path: Path, tmpl: dict[str, Any], *args: str) -> Any:
    path = tmp_path / f"{tmpl['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(tmpl))
    return server.cli("create", "-f", str(path), "--wait", "--timeout", "90", *args)


def progress(stderr: str, name: str) -> dict[str, list[str]]:
    """Each line `capsule/NAME[/CONTAINER]: STATE` of a wait, as the states each took, in
    order, keyed by "" for the capsule and by the container otherwise."""
    seen: dict[str, list[str]] = {}
    for line in stderr.splitlines():
        m = re.fullmatch(rf"capsule/{re.escape(name)}(?:/(?P<part>[^:]+))?: (?P<state>.+)", line)
        if m:
            seen.setdefault(m["part"] or "", []).append(m["state"])
    return seen


def test_create_wait_prints_a_line_per_container_change_then_the_capsule(
        server: Server, docker_api: docker.APIClient, unique: Callable[[str], str],
        tmp_path: Path, cleanup: list[str]) -> None:
    name = unique("steps")
    cleanup.append(name)
    # The init container runs for a while, so the app containers wait for it: the first
    # look sees them not yet made.
    tmpl = template(name, [sleeper("web"), sleeper("side")],
                    initContainers=[{"name": "prepare", "image": "busybox",
                                     "command": ["sleep", "2"]}])
    result = create(server, tmp_path, tmpl)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"capsule/{name} created (")
    assert "\x1b[" not in result.stderr  # no control codes off a terminal

    seen = progress(result.stderr, name)
    assert set(seen) == {"", "prepare (init)", "web", "side"}, result.stderr
    assert seen["prepare (init)"][-1] == "completed"
    for app in ("web", "side"):
        assert seen[app][0] == "creating", result.stderr
        assert seen[app][-1].startswith("running"), result.stderr
        assert len(seen[app]) == len(set(seen[app]))  # a line per change, not per look
    assert seen[""][0] == "Creating" and seen[""][-1] == "Running"
    lines = [line for line in result.stderr.splitlines() if line.startswith("capsule/")]
    assert lines[-1] == f"capsule/{name}: Running"  # the capsule's last, after its containers
    assert lines.index("capsule/" + name + "/prepare (init): completed") < min(
        i for i, line in enumerate(lines) if re.match(rf"capsule/{name}/(web|side): running", line))
    # What the lines say is what the engine holds.
    body = json.loads(server.cli("describe", name, "-o", "json").stdout)[0]
    for app in ("web", "side"):
        assert member(docker_api, body["uuid"], app)["State"]["Running"]


def test_create_wait_json_prints_only_the_final_objects(
        server: Server, unique: Callable[[str], str], tmp_path: Path, cleanup: list[str]) -> None:
    name = unique("quiet")
    cleanup.append(name)
    result = create(server, tmp_path, template(name, [sleeper("main")]), "-o", "json")
    assert result.returncode == 0, result.stderr
    (body,) = json.loads(result.stdout)
    assert body["name"] == name and body["status"] == "Running"
    assert f"capsule/{name}: Running" in result.stderr  # progress stays on stderr


def test_wide_yaml_and_the_old_format_flag(server: Server, unique: Callable[[str], str],
                                           tmp_path: Path, cleanup: list[str]) -> None:
    name = unique("wide")
    cleanup.append(name)
    group = unique("grp")
    tmpl = template(name, [sleeper("main", image="busybox:latest")], labels={"group": group})
    assert create(server, tmp_path, tmpl).returncode == 0

    narrow = server.cli("list", "-l", f"group={group}")
    wide = server.cli("list", "-l", f"group={group}", "-o", "wide")
    assert narrow.returncode == 0 and wide.returncode == 0, wide.stderr
    header = wide.stdout.splitlines()[0].split()
    for title in ("HOST", "ADDRESSES", "IMAGES", "CREATED"):
        assert title in header and title not in narrow.stdout.splitlines()[0]
    row = wide.stdout.splitlines()[1]
    assert "busybox:latest" in row and re.search(r"\b\d+\.\d+\.\d+\.\d+\b", row), row

    as_yaml = server.cli("list", "-l", f"group={group}", "-o", "yaml")
    as_json = server.cli("list", "-l", f"group={group}", "--format", "json")
    assert as_yaml.returncode == 0 and as_json.returncode == 0
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)
    assert [c["name"] for c in json.loads(as_json.stdout)] == [name]

    members = server.cli("container", "list", "--capsule", name, "-o", "wide")
    assert members.returncode == 0, members.stderr
    assert "CAPSULE" in members.stdout.splitlines()[0] and "main" in members.stdout
    groups = yaml.safe_load(server.cli("security-group", "list", "-o", "yaml").stdout)
    assert "default" in [g["name"] for g in groups]


def test_errors_say_what_to_type_instead(server: Server, unique: Callable[[str], str],
                                         tmp_path: Path, cleanup: list[str]) -> None:
    name = unique("typo")
    cleanup.append(name)
    member_name = unique("member")
    assert create(server, tmp_path, template(name, [sleeper(member_name)])).returncode == 0

    missing = server.cli("describe", name[:-1] + "x")  # one letter off
    assert missing.returncode == 1
    assert f"did you mean {name}?" in missing.stderr
    assert "capsule list" in missing.stderr

    bare = server.cli("container", "logs", member_name)  # a capsule's container, by name
    assert bare.returncode == 1
    assert f"add --capsule {name}" in bare.stderr, bare.stderr

    logs = server.cli("logs", member_name)
    assert logs.returncode == 1
    assert f"capsule logs {name} -c {member_name}" in logs.stderr, logs.stderr

    selector = server.cli("list", "-l", "app")
    assert selector.returncode == 2 and "-l app=web" in selector.stderr

    elsewhere = server.cli("exec", name, "ls")
    assert elsewhere.returncode == 2 and "capsule container exec" in elsewhere.stderr
    assert "Traceback" not in missing.stderr + bare.stderr + logs.stderr
