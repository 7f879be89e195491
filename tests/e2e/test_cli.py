"""The `capsule` CLI as a user runs it: a real subprocess against a real server and engine."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from conftest import ROOT, Server, containers_of, exec_in, member, sandbox, sleeper, template, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture()
def cleanup(server: Server) -> Iterator[list[str]]:
    """Names/uuids to delete after the test, whatever the test did."""
    names: list[str] = []
    yield names
    with server.client() as api:
        for n in names:
            api.delete(f"/v1/capsules/{n}")


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs)))
    return path


def as_json(proc: Any) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_create_wait_describe_delete_the_example(server: Server, docker_api: docker.APIClient,
                                                  unique: Callable[[str], str],
                                                  tmp_path: Path, cleanup: list[str]) -> None:
    name = unique("web")
    doc = yaml.safe_load((ROOT / "examples" / "web.yaml").read_text())
    doc["metadata"]["name"] = name
    cleanup.append(name)
    path = write(tmp_path / "web.yaml", doc)

    created = server.cli("create", "-f", str(path), "--wait", "--timeout", "90")
    assert created.returncode == 0, created.stderr
    assert f"capsule/{name} created" in created.stdout

    described = server.cli("describe", name)
    assert described.returncode == 0, described.stderr
    for word in ("Running", "web", "probe", "prepare", "site"):
        assert word in described.stdout, word

    body = as_json(server.cli("describe", name, "--format", "json"))[0]
    assert body["status"] == "Running"
    # The init container wrote the page into the shared volume; the web container serves it.
    web = member(docker_api, body["uuid"], "web")
    assert web["State"]["Running"]
    assert exec_in(docker_api, web["Id"], "wget", "-q", "-O-", "http://127.0.0.1:8080/") == (
        0, "hello from a capsule\n")
    mount = next(m for m in web["Mounts"] if m["Destination"] == "/www")
    assert mount["RW"] is False

    deleted = server.cli("delete", name, "--wait", "--timeout", "60")
    assert deleted.returncode == 0, deleted.stderr
    assert f"capsule/{name} deleted" in deleted.stdout
    assert containers_of(docker_api, body["uuid"]) == []
    assert server.cli("describe", name).returncode == 1


def test_create_from_a_directory_list_by_label_and_delete_by_label(
        server: Server, docker_api: docker.APIClient, unique: Callable[[str], str],
        tmp_path: Path, cleanup: list[str]) -> None:
    group = unique("grp")
    names = [unique("a"), unique("b"), unique("c")]
    cleanup.extend(names)
    write(tmp_path / "one.yaml", template(names[0], [sleeper("main")], labels={"group": group}))
    # Two documents in one file, and a JSON file beside it.
    write(tmp_path / "two.yml", template(names[1], [sleeper("main")], labels={"group": group}),
          template(names[2], [sleeper("main")], labels={"group": group, "tier": "back"}))
    (tmp_path / "notes.txt").write_text("not a template")

    created = server.cli("create", "-f", str(tmp_path), "--wait", "--format", "json")
    bodies = as_json(created)
    assert sorted(b["name"] for b in bodies) == sorted(names)
    assert {b["status"] for b in bodies} == {"Running"}

    listed = as_json(server.cli("list", "-l", f"group={group}", "--format", "json"))
    assert sorted(c["name"] for c in listed) == sorted(names)
    narrowed = as_json(server.cli("list", "-l", f"group={group}", "-l", "tier=back", "--format", "json"))
    assert [c["name"] for c in narrowed] == [names[2]]

    table = server.cli("list", "-l", f"group={group}")
    assert table.returncode == 0, table.stderr
    for n in names:
        assert n in table.stdout
    assert "Running" in table.stdout

    deleted = server.cli("delete", "-l", f"group={group}", "--wait", "--format", "json")
    assert sorted(as_json(deleted)) == sorted(names)
    for body in bodies:
        assert containers_of(docker_api, body["uuid"]) == []
    assert as_json(server.cli("list", "-l", f"group={group}", "--format", "json")) == []


def test_json_template_from_stdin_shares_namespaces(server: Server, docker_api: docker.APIClient,
                                                     unique: Callable[[str], str],
                                                     cleanup: list[str]) -> None:
    name = unique("stdin")
    cleanup.append(name)
    tmpl = template(name, [sleeper("one"), sleeper("two")])
    created = server.cli("create", "-f", "-", "--wait", input=json.dumps(tmpl))
    assert created.returncode == 0, created.stderr
    body = as_json(server.cli("describe", name, "-o", "json"))[0]
    infra = sandbox(docker_api, body["uuid"])
    for member_name in ("one", "two"):
        c = member(docker_api, body["uuid"], member_name)
        for mode in ("NetworkMode", "IpcMode", "PidMode"):
            assert c["HostConfig"][mode] == f"container:{infra['Id']}", mode
    # Shared PID namespace: one container sees the other's sleep.
    code, out = exec_in(docker_api, member(docker_api, body["uuid"], "one")["Id"], "ps")
    assert code == 0 and out.count("sleep 3600") == 2, out


def test_bad_template_is_one_clear_error_and_creates_nothing(server: Server, unique: Callable[[str], str],
                                                             tmp_path: Path) -> None:
    name = unique("bad")
    bad = template(name, [{"name": "x", "image": "busybox", "resources": {"requests": {"memory": -1}}},
                          {"name": "x", "image": "busybox"}])
    result = server.cli("create", "-f", str(write(tmp_path / "bad.yaml", bad)))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "spec.containers[0].resources.requests.memory" in result.stderr
    assert "duplicate" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert server.cli("describe", name).returncode == 1

    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: capsule\nspec: [unclosed\n")
    result = server.cli("create", "-f", str(broken))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not valid YAML" in result.stderr


def test_init_failure_fails_wait_with_the_reason(server: Server, unique: Callable[[str], str],
                                                 tmp_path: Path, cleanup: list[str]) -> None:
    name = unique("initfail")
    cleanup.append(name)
    tmpl = template(name, [sleeper("main")],
                    initContainers=[{"name": "setup", "image": "busybox", "command": ["sh", "-c", "exit 3"]}])
    result = server.cli("create", "-f", str(write(tmp_path / "t.yaml", tmpl)), "--wait", "--timeout", "60")
    assert result.returncode == 1
    assert f"capsule {name} failed" in result.stderr
    assert "setup" in result.stderr and "3" in result.stderr


def test_usage_errors_and_missing_server(server: Server, tmp_path: Path) -> None:
    both = server.cli("delete", "some-name", "--all")
    assert both.returncode == 2
    assert "exactly one of" in both.stderr

    bad_label = server.cli("list", "-l", "novalue")
    assert bad_label.returncode == 2
    assert "key=value" in bad_label.stderr

    unknown = server.cli("describe", "no-such-capsule-anywhere")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: ") and "no-such-capsule-anywhere" in unknown.stderr

    unauth = server.cli("list", env={"CAPSULE_TOKEN": "wrong"})
    assert unauth.returncode == 1 and unauth.stderr.startswith("error: ")

    down = server.cli("list", env={"CAPSULE_URL": "http://127.0.0.1:9"})
    assert down.returncode == 1
    assert down.stderr.startswith("error: ") and "Traceback" not in down.stderr

    helped = server.cli("create", "--help")
    assert helped.returncode == 0 and "--wait" in helped.stdout


def test_delete_all_removes_every_capsule_and_its_objects(tmp_path_factory: pytest.TempPathFactory,
                                                          docker_api: docker.APIClient) -> None:
    # A server of its own: --all must not take the shared server's capsules with it.
    from conftest import remove_instance_objects, start_server
    srv = start_server(tmp_path_factory.mktemp("delete-all"), docker_api)
    instance = srv.instance
    try:
        tmpl = template("first", [sleeper("main")])
        tmpl2 = template("second", [sleeper("main")], volumes=[{"name": "data", "emptyDir": {}}])
        tmpl2["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        path = tmp_path_factory.mktemp("tmpl") / "all.yaml"
        write(path, tmpl, tmpl2)
        assert srv.cli("create", "-f", str(path), "--wait").returncode == 0
        label = f"capsuled.instance={instance}"
        assert len(docker_api.volumes(filters={"label": [label]})["Volumes"] or []) == 1
        done = srv.cli("delete", "--all", "--wait")
        assert done.returncode == 0, done.stderr
        assert "capsule/first deleted" in done.stdout and "capsule/second deleted" in done.stdout
        wait_for(lambda: docker_api.containers(all=True, filters={"label": [label]}) == [],
                 timeout=30, what="containers removed")
        assert not (docker_api.volumes(filters={"label": [label]})["Volumes"] or [])
        assert srv.cli("list").stderr.strip() == "No capsules found."
    finally:
        srv.stop()
        remove_instance_objects(docker_api, instance)
