"""A hostile member drives the `capsule` CLI: privileged templates from a file, a directory
or stdin are refused by the server (403 naming the field) and nothing is created."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
import yaml
from conftest import Server, sleeper, template

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def _privileged(name: str) -> dict[str, object]:
    tmpl = template(name, [sleeper("app")])
    tmpl["spec"]["containers"][0]["securityContext"] = {"privileged": True}  # type: ignore[index]
    return tmpl


@pytest.mark.parametrize("how", ["file", "directory", "stdin"])
def test_member_cannot_create_privileged_capsules_with_the_cli(
        server: Server, docker_api: docker.APIClient, tmp_path: Path, how: str) -> None:
    token = server.issue_token("cli-esc", "mallory", "member")
    text = yaml.safe_dump(_privileged(f"cli-esc-{how}"))
    (tmp_path / "evil.yaml").write_text(text)
    source = {"file": str(tmp_path / "evil.yaml"), "directory": str(tmp_path), "stdin": "-"}[how]
    proc = server.cli("create", "-f", source, input=text if how == "stdin" else None,
                      env={"CAPSULE_TOKEN": token})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "spec.containers[0].securityContext.privileged" in proc.stderr
    listed = server.cli("list", "-o", "json", env={"CAPSULE_TOKEN": token})
    assert listed.returncode == 0 and yaml.safe_load(listed.stdout) == []
    found = docker_api.containers(all=True, filters={"label": ["capsuled.project=cli-esc"]})
    assert found == []
