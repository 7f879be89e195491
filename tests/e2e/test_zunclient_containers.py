"""The unmodified python-zunclient library driving containers on a real server and Docker:
every container call it has that makes sense without Neutron, Glance or Cinder."""

from __future__ import annotations

import io
import tarfile
import urllib.request
from collections.abc import Iterator

import docker
import pytest
from conftest import Server, member, sleeper, template, wait_for
from zunclient import client as zun_client
from zunclient.common.apiclient import exceptions as zun_exc

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture()
def zun(server: Server):  # type: ignore[no-untyped-def]
    return zun_client.Client("1.latest", auth_token=server.token,
                             endpoint_override=server.url + "/v1")


@pytest.fixture()
def made(zun) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    uuids: list[str] = []
    yield uuids
    for u in uuids:
        try:
            zun.containers.delete(u, force=True)
        except zun_exc.NotFound:
            pass


def status_of(zun, ident: str, *statuses: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    got = {}

    def check() -> bool:
        got["c"] = zun.containers.get(ident)
        return got["c"].status in statuses
    wait_for(check, timeout=timeout, what=f"{ident} {statuses}")
    return got["c"]


def docker_of(docker_api: docker.APIClient, uuid: str) -> dict:  # type: ignore[type-arg]
    found = docker_api.containers(all=True, filters={"label": [f"capsuled.container={uuid}"]})
    assert len(found) == 1, found
    return docker_api.inspect_container(found[0]["Id"])  # type: ignore[no-any-return]


def test_run_list_show_logs_exec_top_stats(zun, made, docker_api: docker.APIClient,  # type: ignore[no-untyped-def]
                                            unique) -> None:
    name = unique("zc")
    c = zun.containers.run(name=name, image="busybox", memory="48", cpu=0.5,
                           command=["sh", "-c", "echo hello; echo oops >&2; sleep 3600"],
                           environment={"A": "1"}, labels={"via": "zunclient"},
                           restart_policy={"Name": "on-failure", "MaximumRetryCount": "1"})
    made.append(c.uuid)
    assert c.name == name and c.status == "Creating"
    shown = status_of(zun, name, "Running")
    assert shown.memory == "48" and shown.cpu == 0.5 and shown.environment == {"A": "1"}
    assert name in [x.name for x in zun.containers.list()]
    d = docker_of(docker_api, c.uuid)
    assert d["HostConfig"]["Memory"] == 48 * 1024 * 1024 and "A=1" in d["Config"]["Env"]

    wait_for(lambda: "oops" in zun.containers.logs(c.uuid, stdout=True, stderr=True), timeout=10)
    assert zun.containers.logs(c.uuid, stdout=True, stderr=False) == "hello\n"
    assert zun.containers.logs(c.uuid, stdout=False, stderr=True) == "oops\n"

    result = zun.containers.execute(c.uuid, command="sh -c 'echo $A; exit 4'", run=True,
                                    interactive=False)
    assert result["output"] == "1\n" and result["exit_code"] == 4

    top = zun.containers.top(c.uuid)
    assert any("sleep" in " ".join(p) for p in top["Processes"])
    top_args = zun.containers.top(c.uuid, ps_args="-o pid,comm")
    assert top_args["Titles"] == ["PID", "COMMAND"]
    stats = zun.containers.stats(c.uuid)
    assert stats["CONTAINER"] == c.uuid and "MEM %" in stats


def test_lifecycle_through_zunclient(zun, made, docker_api: docker.APIClient,  # type: ignore[no-untyped-def]
                                     unique) -> None:
    c = zun.containers.create(name=unique("zl"), image="busybox", command=["sleep", "3600"])
    made.append(c.uuid)
    status_of(zun, c.uuid, "Created")
    zun.containers.start(c.uuid)
    status_of(zun, c.uuid, "Running")
    zun.containers.pause(c.uuid)
    status_of(zun, c.uuid, "Paused")
    assert docker_of(docker_api, c.uuid)["State"]["Paused"] is True
    zun.containers.unpause(c.uuid)
    status_of(zun, c.uuid, "Running")
    zun.containers.stop(c.uuid, 1)
    status_of(zun, c.uuid, "Stopped")
    zun.containers.restart(c.uuid, 1)
    status_of(zun, c.uuid, "Running")
    zun.containers.kill(c.uuid)  # Docker's default: SIGKILL
    assert status_of(zun, c.uuid, "Stopped").status_detail == "Exited(137)"

    new = unique("renamed")
    zun.containers.rename(c.uuid, new)
    assert zun.containers.get(new).uuid == c.uuid
    zun.containers.update(c.uuid, memory="96", cpu=0.25)
    wait_for(lambda: docker_of(docker_api, c.uuid)["HostConfig"]["Memory"] == 96 * 1024 * 1024, timeout=15)

    actions = [a.action for a in zun.actions.list(c.uuid)]
    assert {"create", "start", "pause", "unpause", "stop", "reboot", "kill"} <= set(actions)
    first = zun.actions.list(c.uuid)[0]
    assert zun.actions.get(c.uuid, first.request_id).action == "create"

    with pytest.raises(zun_exc.Conflict):
        zun.containers.pause(c.uuid)  # Stopped: wrong state
    zun.containers.delete(c.uuid)
    wait_for(lambda: not docker_api.containers(all=True, filters={"label": [f"capsuled.container={c.uuid}"]}),
             timeout=30, what="container removed")
    with pytest.raises(zun_exc.NotFound):
        wait_for(lambda: zun.containers.get(c.uuid) and False, timeout=15, interval=0.3)


def test_archive_round_trip_through_zunclient(zun, made, unique) -> None:  # type: ignore[no-untyped-def]
    c = zun.containers.run(name=unique("za"), image="busybox", command=["sleep", "3600"])
    made.append(c.uuid)
    status_of(zun, c.uuid, "Running")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("note.txt")
        payload = b"copied in\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    zun.containers.put_archive(c.uuid, "/tmp", buf.getvalue())
    got = zun.containers.get_archive(c.uuid, "/tmp/note.txt")
    assert got["stat"]["name"] == "note.txt" and got["stat"]["size"] == len(payload)
    with tarfile.open(fileobj=io.BytesIO(got["data"])) as tar:
        assert tar.extractfile("note.txt").read() == payload  # type: ignore[union-attr]


def test_run_with_mounts_through_zunclient(zun, made, docker_api: docker.APIClient,  # type: ignore[no-untyped-def]
                                           unique) -> None:
    # What `zun run --mount size=1,destination=/data --mount type=bind,source=FILE,…`
    # hands the library: the size as text and the file's bytes (the library encodes them).
    c = zun.containers.run(name=unique("zm"), image="busybox", command=["sleep", "3600"],
                           mounts=[{"size": "1", "destination": "/data"},
                                   {"type": "bind", "source": b"injected\n", "destination": "/etc/note"}])
    made.append(c.uuid)
    status_of(zun, c.uuid, "Running")
    info = docker_of(docker_api, c.uuid)
    assert [(m["Type"], m["Destination"]) for m in info["Mounts"]] == [("volume", "/data")]
    out = zun.containers.execute(c.uuid, command="cat /etc/note", run=True)
    assert out["output"] == "injected\n" and out["exit_code"] == 0


def test_run_with_a_healthcheck_through_zunclient(zun, made, docker_api: docker.APIClient,  # type: ignore[no-untyped-def]
                                                  unique) -> None:
    # What `zun run --healthcheck cmd=true,interval=2,retries=3,timeout=1 --auto-heal` sends.
    c = zun.containers.run(name=unique("zh"), image="busybox", command=["sleep", "3600"],
                           healthcheck={"cmd": "true", "interval": "2", "retries": "3", "timeout": "1"},
                           auto_heal=True)
    made.append(c.uuid)
    got = status_of(zun, c.uuid, "Running")
    assert got.healthcheck == {"cmd": "true", "interval": 2, "retries": 3, "timeout": 1}
    assert got.auto_heal is True
    assert docker_of(docker_api, c.uuid)["Config"]["Healthcheck"]["Test"] == ["CMD", "sh", "-c", "true"]


def test_run_with_exposed_ports_through_zunclient(zun, made, docker_api: docker.APIClient,  # type: ignore[no-untyped-def]
                                                  unique) -> None:
    # What `zun run -p 8080 -p 53/udp` hands the library.
    c = zun.containers.run(name=unique("zp"), image="busybox", exposed_ports={"8080": {}, "53/udp": {}},
                           command=["sh", "-c", "mkdir /www && echo published > /www/index.html "
                                                "&& exec httpd -f -p 8080 -h /www"])
    made.append(c.uuid)
    status_of(zun, c.uuid, "Running")
    got = wait_for(lambda: (lambda b: b if all(p["host_port"] for p in b.published_ports) else None)(
        zun.containers.get(c.uuid)), what="the host ports Docker picked, reported")
    assert sorted(got.ports) == [53, 8080]  # Zun's shape: the container ports
    host_ports = {(p["protocol"], p["container_port"]): p["host_port"] for p in got.published_ports}
    assert set(host_ports) == {("TCP", 8080), ("UDP", 53)}
    info = docker_of(docker_api, c.uuid)
    assert info["HostConfig"]["PortBindings"]["8080/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": ""}]
    assert info["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"] == str(host_ports[("TCP", 8080)])
    page = wait_for(lambda: _get(f"http://127.0.0.1:{host_ports[('TCP', 8080)]}/"), timeout=15,
                    what="the page through the published port")
    assert page == "published\n"
    with pytest.raises(zun_exc.BadRequest) as bad:
        zun.containers.run(image="busybox", exposed_ports={"80/sctp": {}})
    assert "exposed_ports.80/sctp" in str(bad.value)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return None


def test_capsule_children_are_refused_lifecycle_actions(zun, server: Server, docker_api,  # type: ignore[no-untyped-def]
                                                       unique) -> None:
    name = unique("zcap")
    cap = zun.capsules.create(template=template(name, [sleeper("main")]))
    try:
        wait_for(lambda: zun.capsules.get(cap.uuid).status == "Running", timeout=60)
        child = zun.capsules.get(cap.uuid).containers[0]["uuid"]
        assert zun.containers.get(child).name == "main"  # reads work
        assert child not in [c.uuid for c in zun.containers.list()]  # Zun's list: bare only
        with pytest.raises(zun_exc.Conflict) as info:
            zun.containers.stop(child, 1)
        assert name in str(info.value)
        with pytest.raises(zun_exc.Conflict):
            zun.containers.delete(child)
        assert member(docker_api, cap.uuid, "main")["State"]["Running"] is True
    finally:
        zun.capsules.delete(cap.uuid)


def test_bad_run_is_a_400_naming_the_field(zun) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(zun_exc.BadRequest) as info:
        zun.containers.run(image="busybox", memory="lots")
    assert "memory" in str(info.value)


def test_images_list_show_delete_and_failed_pull(zun, docker_api: docker.APIClient, unique) -> None:  # type: ignore[no-untyped-def]
    repo = f"capsuled-test/{unique('img')}"
    docker_api.tag("busybox:latest", repo, "v1")
    try:
        listed = {f"{i.repo}:{i.tag}": i for i in zun.images.list()}
        assert "busybox:latest" in listed and f"{repo}:v1" in listed
        mine = listed[f"{repo}:v1"]
        assert mine.image_id == docker_api.inspect_image("busybox:latest")["Id"] and mine.size > 0
        assert zun.images.get(mine.uuid).repo == repo
        zun.images.delete(mine.uuid)
        assert f"{repo}:v1" not in {t for i in docker_api.images() for t in i.get("RepoTags") or []}
        with pytest.raises(zun_exc.NotFound):
            zun.images.get(mine.uuid)
        # No registry here: a pull fails with a clear 404, not a 500.
        with pytest.raises(zun_exc.NotFound) as info:
            zun.images.create(repo="capsuled-test/does-not-exist:1")
        assert "does-not-exist" in str(info.value)
    finally:
        try:
            docker_api.remove_image(f"{repo}:v1")
        except docker.errors.NotFound:
            pass


def _read_until(ws, needle: bytes, timeout: float = 10) -> bytes:  # type: ignore[no-untyped-def]
    import time
    seen = b""
    deadline = time.monotonic() + timeout
    ws.settimeout(timeout)
    while needle not in seen and time.monotonic() < deadline:
        data = ws.recv()
        seen += data if isinstance(data, bytes) else data.encode()
    return seen


def test_attach_and_interactive_exec_over_websocket(zun, made, unique) -> None:  # type: ignore[no-untyped-def]
    import websocket  # websocket-client: what the zun CLI itself uses for attach and exec -it
    c = zun.containers.run(name=unique("tty"), image="busybox", command=["sh"], interactive=True)
    made.append(c.uuid)
    status_of(zun, c.uuid, "Running")
    url = zun.containers.attach(c.uuid)
    assert url.startswith("ws://") and c.uuid in url
    ws = websocket.create_connection(url, subprotocols=["binary", "base64"], timeout=10)
    try:
        ws.send_binary(b"echo attached-$((40+2))\n")
        assert b"attached-42" in _read_until(ws, b"attached-42")
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketException):  # the URL was for one use
        websocket.create_connection(url, timeout=5).recv()

    # What `zun exec --interactive` and `openstack appcontainer exec --interactive` send:
    # run=False (Zun: create the exec; the websocket starts it).
    session = zun.containers.execute(c.uuid, command="sh", run=False, interactive=True)
    assert session["proxy_url"].startswith("ws://") and session["exec_id"]
    zun.containers.execute_resize(c.uuid, session["exec_id"], 100, 30)
    ws = websocket.create_connection(session["proxy_url"], subprotocols=["binary"], timeout=10)
    try:
        ws.send_binary(b"stty size; echo exec-$((6*7))\n")
        out = _read_until(ws, b"exec-42")
        assert b"exec-42" in out and b"30 100" in out
    finally:
        ws.close()

    plain = zun.containers.run(name=unique("notty"), image="busybox", command=["sleep", "3600"])
    made.append(plain.uuid)
    status_of(zun, plain.uuid, "Running")
    with pytest.raises(zun_exc.BadRequest) as info:
        zun.containers.attach(plain.uuid)
    assert "interactive" in str(info.value)
    # An exec that does not run and has no session to start it would never run: refused.
    with pytest.raises(zun_exc.BadRequest) as info:
        zun.containers.execute(plain.uuid, command="true", run=False)
    assert str(info.value).startswith("run:") and "interactive" in str(info.value)


def test_hosts_services_and_availability_zones(zun) -> None:  # type: ignore[no-untyped-def]
    [svc] = zun.services.list()
    assert svc.binary == "capsuled-agent" and svc.state == "up" and not svc.disabled
    [host] = zun.hosts.list()
    assert host.hostname == svc.host and host.cpus > 0 and host.mem_total > 0
    assert zun.hosts.get(host.uuid).hostname == svc.host
    zones = [z.availability_zone for z in zun.availability_zones.list()]
    assert zones == [svc.availability_zone]
    try:
        _, body = zun.services.disable(svc.host, "zun-compute", reason="drain")
        assert body["service"]["disabled"] is True
        [now] = zun.services.list()
        assert now.disabled and now.disabled_reason == "drain"
    finally:
        _, body = zun.services.enable(svc.host, "zun-compute")
    assert body["service"]["disabled"] is False
    assert not zun.services.list()[0].disabled
    _, body = zun.services.force_down(svc.host, "capsuled-agent", force_down=False)
    assert body["service"]["forced_down"] is False


def test_quotas_through_zunclient(server: Server, unique) -> None:  # type: ignore[no-untyped-def]
    zun = zun_client.Client("1.latest", auth_token=server.token, endpoint_override=server.url + "/v1")
    project = unique("zq")
    assert zun.quotas.defaults(project).containers == 40
    zun.quotas.update(project, containers=3, cpu=2, memory=512)
    got = zun.quotas.get(project)
    assert (got.containers, got.cpu, got.memory, got.disk) == (3, 2, 512, 100)
    used = zun.quotas.get(project, usages=True)
    assert used.containers == {"limit": 3, "in_use": 0}
    zun.quotas.delete(project)
    assert zun.quotas.get(project).containers == 40
    zun.quota_classes.update("default", disk=50)
    try:
        assert zun.quota_classes.get("default").disk == 50
        assert zun.quotas.get(project).disk == 50
    finally:
        zun.quota_classes.update("default", disk=100)


def test_zunclient_create_in_the_default_security_group(zun, made, unique) -> None:  # type: ignore[no-untyped-def]
    """What Zun's tempest suite sends on every create at microversion 1.1 and later."""
    c = zun.containers.create(name=unique("zsg"), image="busybox", command=["sleep", "60"],
                              security_groups=["default"])
    made.append(c.uuid)
    assert zun.containers.get(c.uuid).security_groups == ["default"]


def test_addresses_and_network_list_through_zunclient(zun, made, docker_api: docker.APIClient,  # type: ignore[no-untyped-def]
                                                      unique) -> None:
    from capsuled.domain.addresses import network_uuid, port_id
    c = zun.containers.run(name=unique("znet"), image="busybox", command=["sleep", "3600"])
    made.append(c.uuid)
    status_of(zun, c.uuid, "Running")
    shown = wait_for(lambda: zun.containers.get(c.uuid).addresses, what="addresses")
    net = network_uuid(zun.containers.get(c.uuid).project_id)
    (entry,) = shown[net]
    (docker_net,) = docker_of(docker_api, c.uuid)["NetworkSettings"]["Networks"].values()
    assert entry["addr"] == docker_net["IPAddress"] and entry["port"] == port_id(net, c.uuid)
    (listed,) = zun.containers.network_list(c.uuid)
    assert (listed.net_id, listed.port_id) == (net, entry["port"])
    assert listed.fixed_ips == [{"ip_address": entry["addr"], "version": 4,
                                 "subnet_id": entry["subnet_id"]}]
    with pytest.raises(zun_exc.Conflict) as conflict:
        zun.containers.network_attach(c.uuid, network=net)
    assert "already attached" in str(conflict.value)
    with pytest.raises(zun_exc.BadRequest) as bad:
        zun.containers.network_attach(c.uuid, network="someone-elses-net")
    assert "network" in str(bad.value) and "one network" in str(bad.value)
    with pytest.raises(zun_exc.BadRequest) as bad:
        zun.containers.network_detach(c.uuid, network=net)
    assert "not supported" in str(bad.value)
    with pytest.raises(zun_exc.BadRequest):
        zun.containers.network_detach(c.uuid, port=entry["port"])
    assert zun.containers.get(c.uuid).addresses == shown
