"""Zun-shaped addresses on the real Docker Engine: what the API shows is what Docker
holds, it stays across stop/start and a sandbox's recreation, each project sees only its
own network, and network_list / network_attach / network_detach answer as a one-network
project must."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import docker
import httpx
import pytest
from conftest import Capsules, Server, sandbox, sleeper, template, wait_for

from capsuled.domain.addresses import network_uuid, port_id

pytestmark = pytest.mark.docker

V = "OpenStack-API-Version"


def at(version: str) -> dict[str, str]:
    return {V: f"container {version}"}


def docker_ip(docker_api: docker.APIClient, container_id: str, project: str) -> str:
    nets = docker_api.inspect_container(container_id)["NetworkSettings"]["Networks"]
    (net,) = [n for n in nets.values()
              if docker_api.inspect_network(n["NetworkID"])["Labels"].get("capsuled.project") == project]
    return str(net["IPAddress"])


def runtime_id(docker_api: docker.APIClient, uuid_: str) -> str:
    (c,) = docker_api.containers(all=True, filters={"label": [f"capsuled.container={uuid_}"]})
    return str(c["Id"])


def addresses_of(api: httpx.Client, ident: str) -> dict[str, Any]:
    r = api.get(f"/v1/containers/{ident}")
    assert r.status_code == 200, r.text
    return r.json()["addresses"]  # type: ignore[no-any-return]


def only_ip(addresses: dict[str, Any], project: str) -> str:
    assert list(addresses) == [network_uuid(project)], addresses
    (entry,) = addresses[network_uuid(project)]
    return str(entry["addr"])


def run_bare(api: httpx.Client, name: str) -> dict[str, Any]:
    r = api.post("/v1/containers", params={"run": "true"},
                 json={"image": "busybox", "name": name, "command": ["sleep", "3600"]})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_state(api: httpx.Client, ident: str, status: str) -> dict[str, Any]:
    return wait_for(lambda: (b := api.get(f"/v1/containers/{ident}").json())["status"] == status  # type: ignore[no-any-return]
                    and b, timeout=60, what=f"{ident} {status}")


def delete_all(api: httpx.Client, uuids: list[str]) -> None:
    for u in uuids:
        api.delete(f"/v1/containers/{u}", params={"stop": "true"})
    for u in uuids:
        wait_for(lambda u=u: api.get(f"/v1/containers/{u}").status_code == 404, timeout=60,
                 what=f"{u} deleted")


def test_bare_addresses_match_docker_stay_across_stop_start_and_stay_in_the_project(
        server: Server, docker_api: docker.APIClient, unique: Any) -> None:
    pa, pb = unique("addr-a"), unique("addr-b")
    a = server.client(server.issue_token(pa, "alice", "member"))
    b = server.client(server.issue_token(pb, "bob", "member"))
    admin = server.client()
    made_a: list[str] = []
    made_b: list[str] = []
    try:
        ca = run_bare(a, unique("web"))
        made_a.append(ca["uuid"])
        cb = run_bare(b, unique("web"))
        made_b.append(cb["uuid"])
        wait_state(a, ca["uuid"], "Running")
        wait_state(b, cb["uuid"], "Running")
        got = wait_for(lambda: addresses_of(a, ca["uuid"]), what="a's addresses")
        ip = only_ip(got, pa)
        cid = runtime_id(docker_api, ca["uuid"])
        assert ip == docker_ip(docker_api, cid, pa)
        net = network_uuid(pa)
        (entry,) = got[net]
        assert entry["version"] == 4 and entry["preserve_on_delete"] is False
        assert entry["port"] == port_id(net, ca["uuid"]) and uuid.UUID(entry["subnet_id"])
        # The Docker network carries the id the API shows.
        docker_net = next(n for n in docker_api.inspect_container(cid)["NetworkSettings"]["Networks"].values())
        assert docker_api.inspect_network(docker_net["NetworkID"])["Labels"]["capsuled.network-id"] == net

        # Admins see the same; the other project sees its own network only, never a's.
        assert addresses_of(admin, ca["uuid"]) == got
        got_b = wait_for(lambda: addresses_of(b, cb["uuid"]), what="b's addresses")
        assert only_ip(got_b, pb) == docker_ip(docker_api, runtime_id(docker_api, cb["uuid"]), pb)
        assert network_uuid(pb) != net and net not in b.get("/v1/containers").text
        assert b.get(f"/v1/containers/{ca['uuid']}/network_list", headers=at("1.18")).status_code == 404

        # network_list: grouped per port (≥1.18), flat (1.13–1.17), 406 below 1.13.
        r = a.get(f"/v1/containers/{ca['uuid']}/network_list", headers=at("1.18"))
        assert r.status_code == 200, r.text
        assert r.json() == {"networks": [{"net_id": net, "port_id": entry["port"], "fixed_ips": [
            {"ip_address": ip, "version": 4, "subnet_id": entry["subnet_id"]}]}]}
        r = a.get(f"/v1/containers/{ca['uuid']}/network_list", headers=at("1.13"))
        assert r.json() == {"networks": [{"net_id": net, "port_id": entry["port"], "version": 4,
                                          "subnet_id": entry["subnet_id"], "ip_address": ip}]}
        assert a.get(f"/v1/containers/{ca['uuid']}/network_list",
                     headers=at("1.12")).status_code == 406

        # Stopped, it keeps showing its (reserved) address; started again, Docker gives it
        # the same one, even though another container was made on the network meanwhile.
        assert a.post(f"/v1/containers/{ca['uuid']}/stop", params={"timeout": "0"}).status_code == 202
        wait_state(a, ca["uuid"], "Stopped")
        assert addresses_of(a, ca["uuid"]) == got
        other = run_bare(a, unique("other"))
        made_a.append(other["uuid"])
        wait_state(a, other["uuid"], "Running")
        other_ip = only_ip(wait_for(lambda: addresses_of(a, other["uuid"])), pa)
        assert other_ip != ip
        assert a.post(f"/v1/containers/{ca['uuid']}/start").status_code == 202
        wait_state(a, ca["uuid"], "Running")
        assert docker_ip(docker_api, cid, pa) == ip
        assert addresses_of(a, ca["uuid"]) == got
    finally:
        delete_all(a, made_a)
        delete_all(b, made_b)
        for c in (a, b, admin):
            c.close()


def test_network_attach_and_detach_answer_for_a_one_network_project(
        server: Server, unique: Any) -> None:
    pa, pb = unique("attach-a"), unique("attach-b")
    a = server.client(server.issue_token(pa, "alice", "member"))
    made: list[str] = []
    try:
        c = run_bare(a, unique("c"))
        made.append(c["uuid"])
        wait_state(a, c["uuid"], "Running")
        path = f"/v1/containers/{c['uuid']}"
        mine = network_uuid(pa)
        r = a.post(f"{path}/network_attach", params={"network": mine}, headers=at("1.18"))
        assert r.status_code == 409, r.text
        assert "already attached" in r.json()["errors"][0]["detail"] and mine in r.text
        # Another project's network and one that exists nowhere: the same answer.
        theirs = a.post(f"{path}/network_attach", params={"network": network_uuid(pb)},
                        headers=at("1.18"))
        unknown_id = str(uuid.uuid4())
        unknown = a.post(f"{path}/network_attach", params={"network": unknown_id},
                         headers=at("1.18"))
        assert theirs.status_code == unknown.status_code == 400
        t, u = (x.json()["errors"][0]["detail"] for x in (theirs, unknown))
        assert t.replace(network_uuid(pb), "X") == u.replace(unknown_id, "X")
        assert t.startswith("network:") and "exactly one network" in t
        assert a.post(f"{path}/network_attach", headers=at("1.18")).status_code == 400
        assert a.post(f"{path}/network_attach", params={"network": mine},
                      headers=at("1.7")).status_code == 406

        r = a.post(f"{path}/network_detach", params={"network": mine}, headers=at("1.18"))
        assert r.status_code == 400 and "not supported" in r.json()["errors"][0]["detail"]
        r = a.post(f"{path}/network_detach", params={"port": port_id(mine, c["uuid"])},
                   headers=at("1.16"))
        assert r.status_code == 400 and "port" in r.json()["errors"][0]["detail"]
        r = a.post(f"{path}/network_detach", params={"network": network_uuid(pb)},
                   headers=at("1.18"))
        assert r.status_code == 400 and "not a network of this project" in r.text
        # Nothing happened, so nothing is recorded.
        actions = a.get(f"{path}/container_actions").json()["containerActions"]
        assert {x["action"] for x in actions} == {"create"}
    finally:
        delete_all(a, made)
        a.close()


def test_capsule_members_show_the_sandbox_address_and_keep_it_when_it_is_remade(
        server: Server, docker_api: docker.APIClient, unique: Any) -> None:
    project = unique("addr-cap")
    api = server.client(server.issue_token(project, "carol", "member"))
    caps = Capsules(api)
    try:
        name = unique("pod")
        body = caps.create(template(name, [sleeper("one"), sleeper("two")]))
        caps.wait_status(body["uuid"], "Running")
        got = wait_for(lambda: caps.get(body["uuid"])["addresses"], what="the capsule's addresses")
        ip = only_ip(got, project)
        first = sandbox(docker_api, body["uuid"])
        assert ip == docker_ip(docker_api, first["Id"], project)
        capsule = caps.get(body["uuid"])
        for c in capsule["containers"]:
            assert c["addresses"] == got  # the sandbox's one port, shared
            assert addresses_of(api, c["uuid"]) == got
        (entry,) = got[network_uuid(project)]
        assert entry["port"] == port_id(network_uuid(project), body["uuid"])
        member = capsule["containers"][0]["uuid"]
        r = api.post(f"/v1/containers/{member}/network_attach",
                     params={"network": network_uuid(project)}, headers=at("1.18"))
        assert r.status_code == 409 and name in r.json()["errors"][0]["detail"]

        # The sandbox dies; the agent makes a new one, with the same address.
        docker_api.remove_container(first["Id"], force=True)
        wait_for(lambda: (s := docker_api.containers(filters={"label": [
            f"capsuled.capsule={body['uuid']}", "capsuled.role=sandbox"]})) and s[0]["Id"] != first["Id"],
            timeout=60, what="a new sandbox")
        caps.wait_status(body["uuid"], "Running")
        again = sandbox(docker_api, body["uuid"])
        assert again["Id"] != first["Id"]
        assert docker_ip(docker_api, again["Id"], project) == ip
        assert caps.get(body["uuid"])["addresses"] == got
    finally:
        caps.cleanup()
        api.close()


def test_a_remade_sandbox_gets_its_address_back_when_a_lower_one_is_free(
        server: Server, docker_api: docker.APIClient, unique: Any) -> None:
    # The address a remade sandbox asks for is the one its agent reported: the API does
    # not wake the agent for a capsule's first address, and nothing here changes the
    # host's desired set after it (the lower address is freed behind capsuled's back), so
    # the store's copy never reaches the agent. Docker's first free one would be lower.
    project = unique("addr-back")
    api = server.client(server.issue_token(project, "dan", "member"))
    caps = Capsules(api)
    squatter = None
    try:
        low = caps.create(template(unique("low"), [sleeper("s")]))
        caps.wait_status(low["uuid"], "Running")
        (net,) = docker_api.networks(filters={"label": [
            f"capsuled.instance={server.instance}", f"capsuled.project={project}"]})
        squatter = docker_api.create_container(
            "busybox", command=["sleep", "600"], labels={"capsuled.test": "addr-back"},
            host_config=docker_api.create_host_config(network_mode=net["Name"]))["Id"]
        docker_api.start(squatter)
        keep = caps.create(template(unique("keep"), [sleeper("s")]))
        caps.wait_status(keep["uuid"], "Running")
        ip = only_ip(wait_for(lambda: caps.get(keep["uuid"])["addresses"]), project)
        freed = docker_ip(docker_api, squatter, project)
        assert ipaddress.ip_address(freed) < ipaddress.ip_address(ip)
        docker_api.remove_container(squatter, force=True)
        squatter = None
        first = sandbox(docker_api, keep["uuid"])
        docker_api.remove_container(first["Id"], force=True)
        wait_for(lambda: (s := docker_api.containers(filters={"label": [
            f"capsuled.capsule={keep['uuid']}", "capsuled.role=sandbox"]})) and s[0]["Id"] != first["Id"],
            timeout=60, what="a new sandbox")
        caps.wait_status(keep["uuid"], "Running")
        assert docker_ip(docker_api, sandbox(docker_api, keep["uuid"])["Id"], project) == ip
    finally:
        if squatter is not None:
            docker_api.remove_container(squatter, force=True)
        caps.cleanup()
        api.close()
