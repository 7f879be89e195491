"""`capsule run` and `capsule container …` as a user runs them: a real subprocess against a
real server and engine, checked with `docker inspect`."""

from __future__ import annotations

import json
import os
import subprocess
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from conftest import VENV_BIN, Server, exec_in, sandbox, sleeper, template, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

# stdout with bytes that are not text (busybox printf stops at a NUL, hence /dev/zero), a
# line on stderr, and a quick exit on SIGTERM (as PID 1, sh would ignore it).
SCRIPT = (r"trap 'exit 0' TERM; printf 'line one\nline two\n'; head -c 2 /dev/zero;"
          r" printf '\001\377\376bin\n'; printf 'to stderr\n' >&2; sleep 3600 & wait")
STDOUT = b"line one\nline two\n\x00\x00\x01\xff\xfebin\n"


def cli(server: Server, *args: str, input: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """The `capsule` command, bytes in and out (Server.cli decodes text)."""
    return subprocess.run([str(VENV_BIN / "capsule"), *args], check=False, capture_output=True,
                          input=input, timeout=timeout,
                          env={**os.environ, "CAPSULE_URL": server.url, "CAPSULE_TOKEN": server.token,
                               "COLUMNS": "200"})


def ok(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def as_json(proc: subprocess.CompletedProcess[bytes]) -> Any:
    return json.loads(ok(proc))


def inspect(docker_api: docker.APIClient, container_uuid: str) -> dict[str, Any]:
    found = docker_api.containers(all=True, filters={"label": [f"capsuled.container={container_uuid}"]})
    assert len(found) == 1, found
    return docker_api.inspect_container(found[0]["Id"])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bare(server: Server) -> Iterator[dict[str, Any]]:
    """One running bare container for the module, made with `capsule run --wait`."""
    name = f"bare-{uuidlib.uuid4().hex[:8]}"
    body = as_json(cli(server, "run", "--wait", "--timeout", "60", "--name", name, "-e", "GREETING=hi",
                       "-m", "64", "-l", "suite=e2e", "-o", "json", "busybox", "sh", "-c", SCRIPT))
    yield body
    with server.client() as api:
        api.delete(f"/v1/containers/{body['uuid']}", params={"stop": "true"})


def test_run_makes_a_bare_container_that_list_shows(server: Server, bare: dict[str, Any],
                                                    docker_api: docker.APIClient) -> None:
    assert bare["status"] == "Running" and bare["capsule_id"] is None
    listed = {c["uuid"]: c for c in as_json(cli(server, "container", "list", "--format", "json"))}
    assert listed[bare["uuid"]]["name"] == bare["name"]
    assert listed[bare["uuid"]]["command"] == ["sh", "-c", SCRIPT]

    d = inspect(docker_api, bare["uuid"])
    assert d["State"]["Running"]
    assert not d["HostConfig"]["NetworkMode"].startswith("container:")
    assert d["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert "GREETING=hi" in d["Config"]["Env"] and d["Config"]["Labels"]["suite"] == "e2e"


def test_logs_are_byte_exact(server: Server, bare: dict[str, Any]) -> None:
    name = bare["name"]
    with server.client() as api:  # the script has run once its stderr line is there
        wait_for(lambda: "to stderr" in api.get(f"/v1/containers/{name}/logs").json(), timeout=15,
                 what="the script's output")
    assert ok(cli(server, "container", "logs", "--no-stderr", name)) == STDOUT
    stamped = ok(cli(server, "container", "logs", "-t", "--no-stdout", name))
    assert stamped.startswith(b"20") and stamped.endswith(b" to stderr\n")


def test_exec_output_and_exit_code(server: Server, bare: dict[str, Any]) -> None:
    name = bare["name"]
    proc = cli(server, "container", "exec", name, "sh", "-c", "printf 'a\\nb'; head -c 1 /dev/zero; exit 3")
    assert proc.returncode == 3, proc.stderr.decode()
    assert proc.stdout == b"a\nb\x00"

    # -i: a terminal session over the websocket, stdin piped in and ended with ^D.
    proc = cli(server, "container", "exec", "-i", name, "sh", input=b"echo hi-$((40+2))\n", timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"hi-42" in proc.stdout


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 4, "sub/deeper/c": b"",
             "with space.txt": b"spaced\n"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "link").symlink_to("a.txt")
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def test_cp_round_trips_a_directory_tree(server: Server, bare: dict[str, Any], tmp_path: Path,
                                        docker_api: docker.APIClient) -> None:
    name = bare["name"]
    files = make_tree(tmp_path / "tree")
    ok(cli(server, "container", "cp", str(tmp_path / "tree"), f"{name}:/tmp"))  # into /tmp
    out = tmp_path / "out"
    out.mkdir()
    ok(cli(server, "container", "cp", f"{name}:/tmp/tree", str(out)))  # into out
    assert read_tree(out / "tree") == files
    assert os.readlink(out / "tree" / "link") == "a.txt"

    # A destination that does not exist becomes the copy (the contents, with /.).
    ok(cli(server, "container", "cp", f"{tmp_path / 'tree'}/.", f"{name}:/tmp/renamed"))
    cid = inspect(docker_api, bare["uuid"])["Id"]
    assert exec_in(docker_api, cid, "cat", "/tmp/renamed/sub/deeper/c", "/tmp/renamed/with space.txt") == (
        0, "spaced\n")


def test_stop_and_start_change_the_real_container(server: Server, bare: dict[str, Any],
                                                  docker_api: docker.APIClient) -> None:
    name, uuid = bare["name"], bare["uuid"]
    started_at = inspect(docker_api, uuid)["State"]["StartedAt"]
    stopped = cli(server, "container", "stop", "--timeout", "5", name)
    assert ok(stopped) == f"container/{name} stopped\n".encode()
    wait_for(lambda: not inspect(docker_api, uuid)["State"]["Running"], timeout=15, what="docker stop")
    assert inspect(docker_api, uuid)["State"]["ExitCode"] == 0  # SIGTERM, not the SIGKILL after 5 s

    assert ok(cli(server, "container", "start", name)) == f"container/{name} started\n".encode()
    wait_for(lambda: inspect(docker_api, uuid)["State"]["Running"], timeout=15, what="docker start")
    assert inspect(docker_api, uuid)["State"]["StartedAt"] != started_at


@pytest.fixture()
def capsule_name(server: Server) -> Iterator[str]:
    name = f"pod-{uuidlib.uuid4().hex[:8]}"
    yield name
    with server.client() as api:
        api.delete(f"/v1/capsules/{name}")


def test_run_in_a_capsule_joins_its_sandbox_and_its_lifecycle_is_refused(
        server: Server, docker_api: docker.APIClient, capsule_name: str, tmp_path: Path) -> None:
    name = capsule_name
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(template(name, [sleeper("main")])))
    ok(cli(server, "create", "-f", str(path), "--wait", "--timeout", "60"))

    added = as_json(cli(server, "run", "--capsule", name, "--name", "extra", "--wait", "--timeout", "60",
                        "-o", "json", "busybox", "sleep", "3600"))
    capsule_uuid = added["capsule_id"]
    assert added["status"] == "Running" and capsule_uuid
    d = inspect(docker_api, added["uuid"])
    assert d["HostConfig"]["NetworkMode"] == f"container:{sandbox(docker_api, capsule_uuid)['Id']}"

    members = as_json(cli(server, "container", "list", "--capsule", name, "-o", "json"))
    assert sorted(c["name"] for c in members) == ["extra", "main"]

    # Reads work, by name with --capsule; the shared UTS namespace shows in the hostname.
    assert ok(cli(server, "container", "exec", "--capsule", name, "extra", "hostname")) == f"{name}\n".encode()
    updated = as_json(cli(server, "container", "update", "--capsule", name, "-m", "32", "extra", "-o", "json"))
    assert updated["memory"] == "32"

    # Lifecycle actions belong to the capsule: refused, with the server's reason.
    for args in (["stop", added["uuid"]], ["delete", added["uuid"]]):
        refused = cli(server, "container", *args)
        assert refused.returncode == 1, args
        err = refused.stderr.decode()
        assert err.startswith("error: Cannot ") and f"belongs to capsule {name}" in err, err
        assert err.count("\n") == 1
    assert inspect(docker_api, added["uuid"])["State"]["Running"]


def test_errors_are_one_line(server: Server) -> None:
    # One error line; then, for a name the server did not find, what to type instead.
    missing = cli(server, "container", "show", "no-such-container-anywhere")
    assert missing.returncode == 1
    first, *hints = missing.stderr.decode().splitlines()
    assert first == "error: Container no-such-container-anywhere could not be found."
    assert hints and all(line.startswith("  hint: ") for line in hints)
    assert "capsule container list" in hints[-1]

    bad = cli(server, "run", "--memory", "1", "busybox")
    assert bad.returncode == 1
    assert bad.stderr.startswith(b"error: memory: must be between") and bad.stderr.count(b"\n") == 1


def test_run_with_mounts(server: Server, docker_api: docker.APIClient, tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_bytes(b"port=8080\n\xff\n")
    name = f"mnt-{uuidlib.uuid4().hex[:8]}"
    body = as_json(cli(server, "run", "--wait", "--name", name, "--mount", "size=1,destination=/data",
                       "--mount", f"type=bind,source={conf},destination=/etc/app/app.conf",
                       "-o", "json", "busybox", "sleep", "3600"))
    try:
        info = inspect(docker_api, body["uuid"])
        assert [(m["Type"], m["Destination"]) for m in info["Mounts"]] == [("volume", "/data")]
        assert ok(cli(server, "container", "exec", name, "cat", "/etc/app/app.conf")) == b"port=8080\n\xff\n"
    finally:
        ok(cli(server, "container", "delete", "--stop", name))
    bad = cli(server, "run", "--mount", "source=myvol,destination=/d", "busybox")
    assert bad.returncode == 1 and b"mounts[0].source: named (Cinder) volumes" in bad.stderr


def test_capsule_logs_picks_the_only_container_or_asks_which(server: Server,
                                                             bare: dict[str, Any]) -> None:
    name = f"logs-{uuidlib.uuid4().hex[:8]}"
    said = {"name": "talker", "image": "busybox",
            "command": ["sh", "-c", "echo from talker; sleep 3600"]}
    with server.client() as api:
        r = api.post("/v1/capsules", json={"template": template(name, [said])})
        assert r.status_code == 202, r.text
        two = f"{name}-two"
        r = api.post("/v1/capsules", json={"template": template(two, [said, sleeper("quiet")])})
        assert r.status_code == 202, r.text
        try:
            wait_for(lambda: b"from talker" in cli(server, "logs", name).stdout, timeout=30,
                     what="the talker's output through `capsule logs NAME`")
            asked = cli(server, "logs", two)
            assert asked.returncode == 2
            assert b"talker, quiet" in asked.stderr and b"-c CONTAINER" in asked.stderr
            wait_for(lambda: cli(server, "logs", two, "-c", "talker").stdout == b"from talker\n",
                     timeout=30, what="-c picks the container")
            # A name that is no capsule is a bare container's, as `docker logs NAME`.
            # (stdout and stderr interleave in either order: the last line is one of them)
            assert ok(cli(server, "logs", "--tail", "1", bare["name"])) in (
                b"to stderr\n", STDOUT.splitlines(keepends=True)[-1])
            missing = cli(server, "logs", f"{name}-nope")
            assert missing.returncode == 1
            first, *hints = missing.stderr.decode().splitlines()
            assert first == f"error: no capsule or bare container is named {name}-nope"
            assert hints[0].startswith("  hint: did you mean ") and name in hints[0], hints
        finally:
            for gone in (name, two):
                api.delete(f"/v1/capsules/{gone}")
