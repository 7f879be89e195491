"""CLI comforts against the in-memory capsule API: -o wide/yaml, progress per container
while waiting, and errors that say what to type instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import yaml
from typer.testing import CliRunner

from capsuled.cli.capsule.main import Runtime, app
from cli_env import clean_env  # noqa: F401 - the autouse fixture, by name
from test_capsule_cli import BASE, TOKEN, WEB, FakeCapsuled, cli, fake, write  # noqa: F401


def test_wide_adds_columns_and_yaml_is_the_json(cli: Any, fake: FakeCapsuled) -> None:
    fake.add("web", host="node-1", addresses={"net": [{"addr": "10.0.0.5"}]})
    narrow = cli("list").stdout.splitlines()[0].split()
    wide = cli("list", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:len(narrow)] == narrow
    assert wide[0].split()[len(narrow):] == ["HOST", "ADDRESSES", "IMAGES", "CPU", "MEMORY",
                                             "CREATED"]
    assert "node-1" in wide[1] and "10.0.0.5" in wide[1] and "busybox" in wide[1]
    as_yaml = cli("list", "--output", "yaml")
    assert as_yaml.exit_code == 0, as_yaml.output
    assert yaml.safe_load(as_yaml.stdout) == json.loads(cli("list", "--format", "json").stdout)


def test_describe_yaml_is_the_list_of_bodies(cli: Any, fake: FakeCapsuled) -> None:
    web = fake.add("web")
    result = cli("describe", "web", "-o", "yaml")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == [web]


def test_a_bad_format_names_the_choices(cli: Any) -> None:
    result = cli("list", "-o", "xml")
    assert result.exit_code == 2
    assert "table" in result.stderr and "wide" in result.stderr and "yaml" in result.stderr


def test_wait_prints_each_container_then_the_capsule_off_a_terminal(
        cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    original = fake._show

    def show(capsule: dict[str, Any]) -> httpx.Response:
        response = original(capsule)
        capsule["containers"][1]["status"] = capsule["status"]  # `probe` follows the capsule
        return httpx.Response(200, json=capsule) if response.status_code == 200 else response

    fake._show = show  # type: ignore[method-assign]
    result = cli("create", "-f", str(write(tmp_path, "web.yaml", WEB)), "--wait")
    assert result.exit_code == 0, result.output
    # The fake's capsule: init `prepare` exited 0, `web` runs (2 restarts), `probe` follows
    # the capsule's status (Created, then Running).
    assert result.stderr.splitlines() == [
        "capsule/web/prepare (init): completed",
        "capsule/web/web: running, 2 restarts",
        "capsule/web/probe: starting",
        "capsule/web: Created",
        "capsule/web/probe: running",
        "capsule/web: Running",
    ]


def test_a_failed_member_shows_why(cli: Any, fake: FakeCapsuled, tmp_path: Path) -> None:
    original = fake._create

    def failing(request: httpx.Request) -> httpx.Response:
        response = original(request)
        capsule = fake.capsules[response.json()["uuid"]]
        capsule["containers"][1].update(status="Error", status_reason="image busybox:nope not found")
        fake.scripts[capsule["uuid"]] = [("Error", "container probe failed")]
        return response

    fake._create = failing  # type: ignore[method-assign]
    result = cli("create", "-f", str(write(tmp_path, "web.yaml", WEB)), "--wait")
    assert result.exit_code == 1
    assert "capsule/web/probe: failed: image busybox:nope not found" in result.stderr


def test_an_unknown_capsule_suggests_close_names_and_the_list(cli: Any, fake: FakeCapsuled) -> None:
    fake.add("web-demo")
    fake.add("db")
    result = cli("describe", "web-dmeo")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: Capsule web-dmeo could not be found",
        "  hint: did you mean web-demo?",
        "  hint: `capsule list` shows the capsules you can see"]


def test_unknown_commands_and_selectors_say_what_to_type(cli: Any) -> None:
    moved = cli("exec", "web", "ls")
    assert moved.exit_code == 2 and "capsule container exec" in moved.stderr
    docker_word = cli("ps")
    assert docker_word.exit_code == 2 and "capsule list" in docker_word.stderr
    selector = cli("list", "-l", "app")
    assert selector.exit_code == 2 and "e.g. -l app=web" in selector.stderr


def test_a_server_without_an_extension_is_named(tmp_path: Path) -> None:
    def zun(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"errors": [{"status": 404, "title":
                                                     "The resource could not be found."}]})

    rt = Runtime(transport=httpx.MockTransport(zun), poll_interval=0)
    result = CliRunner().invoke(app, ["events"], obj=rt,
                                env={"CAPSULE_URL": BASE, "CAPSULE_TOKEN": TOKEN})
    assert result.exit_code == 1
    assert "has no /v1/events: a capsuled extension" in result.stderr


def test_an_old_server_says_which_version_it_speaks() -> None:
    def old(request: httpx.Request) -> httpx.Response:
        return httpx.Response(406, json={"errors": [{"status": 406, "title": (
            "Version 1.40 was requested but the minor version is not supported by this "
            "server. The supported range is 1.1 to 1.39.")}]})

    rt = Runtime(transport=httpx.MockTransport(old), poll_interval=0)
    result = CliRunner().invoke(app, ["list"], obj=rt,
                                env={"CAPSULE_URL": BASE, "CAPSULE_TOKEN": TOKEN})
    assert result.exit_code == 1
    assert "supported range is 1.1 to 1.39" in result.stderr
    assert "this client speaks container 1.40" in result.stderr
