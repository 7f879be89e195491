"""`capsule commit` and `capsule rebuild` as a user runs them, checked with docker inspect."""

from __future__ import annotations

import json
import os
import subprocess
import uuid as uuidlib

import docker
import pytest
from conftest import VENV_BIN, Server, exec_in, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def cli(server: Server, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "capsule"), *args], check=False, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "CAPSULE_URL": server.url, "CAPSULE_TOKEN": token,
                               "COLUMNS": "200"})


def test_commit_then_rebuild_with_wait(server: Server, docker_api: docker.APIClient) -> None:
    token = server.issue_token("cli-acts", "carol", "member")
    name, repo = f"cli-acts-{uuidlib.uuid4().hex[:6]}", f"cli-acts-{uuidlib.uuid4().hex[:6]}"
    ran = cli(server, token, "run", "--wait", "--name", name, "-o", "json", "busybox", "sh", "-c",
              "trap 'exit 0' TERM; while true; do sleep 1; done")
    assert ran.returncode == 0, ran.stderr
    uuid = json.loads(ran.stdout)["uuid"]
    try:
        [old] = docker_api.containers(filters={"label": [f"capsuled.container={uuid}"]})
        assert exec_in(docker_api, old["Id"], "sh", "-c", "echo cli > /cli") == (0, "")
        done = cli(server, token, "commit", name, f"{repo}:v1")
        assert done.returncode == 0 and f"committed as {repo}:v1" in done.stdout, done.stderr
        assert docker_api.inspect_image(f"{repo}:v1")["Config"]["Labels"]["capsuled.project"] == "cli-acts"
        refused = cli(server, token, "container", "commit", name, "busybox")
        assert refused.returncode == 1 and refused.stderr.startswith("error:") \
            and "repository" in refused.stderr, refused.stderr

        rebuilt = cli(server, token, "rebuild", "--image", f"{repo}:v1", "--wait", name)
        assert rebuilt.returncode == 0 and "rebuilt (Running)" in rebuilt.stdout, rebuilt.stderr
        [new] = docker_api.containers(filters={"label": [f"capsuled.container={uuid}"]})
        assert new["Id"] != old["Id"] and new["Image"] == f"{repo}:v1"
        assert exec_in(docker_api, new["Id"], "cat", "/cli") == (0, "cli\n")
        bad = cli(server, token, "rebuild", "--image", "Not Valid!", name)
        assert bad.returncode == 1 and "image" in bad.stderr, bad.stderr
    finally:
        with server.client(token) as api:
            api.delete(f"/v1/containers/{uuid}", params={"stop": "true"})
            wait_for(lambda: api.get(f"/v1/containers/{uuid}").status_code == 404, timeout=30)
        try:
            docker_api.remove_image(f"{repo}:v1", force=True)
        except docker.errors.APIError:
            pass
