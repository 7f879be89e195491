"""Multi-host on one machine: two stateless API replicas on PostgreSQL and two agents, each
driving its own Docker Engine (host-b's is an extra dockerd with its own data root,
socket and address pool, from scripts/extra-dockerd.sh), talking to the API over HTTP.
"""

from __future__ import annotations

import ipaddress
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import httpx
import pytest
from capsuled.drivers.network.vxlan import Chains, vni_match, vxlan_name
from conftest import exec_in, free_port, sleeper, template, wait_for
from multihost_rig import DOWN_AFTER, HOSTB_NETNS, Cluster, cluster  # noqa: F401 (the fixture)
from multihost_rig import create as _create
from multihost_rig import delete_all as _delete_all
from multihost_rig import in_netns as _in_netns
from multihost_rig import wait_status as _wait
from websockets.sync.client import connect as ws_connect

pytestmark = [pytest.mark.docker]


def _docker_capsules(client: docker.APIClient, instance: str) -> set[str]:
    return {c["Labels"]["capsuled.capsule"] for c in client.containers(
        all=True, filters={"label": [f"capsuled.instance={instance}"]})}


def test_capsules_spread_across_hosts_and_run_on_their_engines(cluster: Cluster) -> None:
    made = []
    apis = [cluster.client(0), cluster.client(1)]
    for i in range(4):
        made.append(_create(apis[i % 2], f"spread-{i}")["uuid"])
    bodies = [_wait(apis[(i + 1) % 2], u, "Running") for i, u in enumerate(made)]
    hosts = {b["uuid"]: b["host"] for b in bodies}
    assert set(hosts.values()) == {"host-a", "host-b"}, hosts
    for host, client in cluster.dockers.items():
        on_engine = _docker_capsules(client, cluster.instance)
        assert {u for u, h in hosts.items() if h == host} <= on_engine
        assert not ({u for u, h in hosts.items() if h != host} & on_engine)
    _delete_all(apis[0], made)


def test_logs_and_exec_of_a_container_on_host_b_through_the_other_replica(cluster: Cluster) -> None:
    with cluster.client(1) as creator, cluster.client(0) as reader:
        r = creator.post("/v1/containers", params={"run": "true"}, json={
            "image": "busybox", "name": "on-b", "host": "host-b",
            "command": ["sh", "-c", "printf 'line one\\nline two\\n'; sleep 300"]})
        assert r.status_code == 202, r.text
        u = r.json()["uuid"]
        try:
            wait_for(lambda: reader.get(f"/v1/containers/{u}").json()["status"] == "Running",
                     what="on-b running")
            assert reader.get(f"/v1/containers/{u}").json()["host"] == "host-b"
            logs = reader.get(f"/v1/containers/{u}/logs")
            assert logs.status_code == 200 and logs.json() == "line one\nline two\n"
            ex = reader.post(f"/v1/containers/{u}/execute", params={"run": "true"},
                             json={"command": "sh -c 'hostname; exit 3'"})
            assert ex.status_code == 200, ex.text
            assert ex.json()["exit_code"] == 3 and ex.json()["output"].strip() == "on-b"
            # An interactive exec: the user's websocket to this replica, the replica's to
            # host-b's agent, then Docker's.
            it = reader.post(f"/v1/containers/{u}/execute", params={"run": "true"},
                             json={"command": "sh", "interactive": True})
            assert it.status_code == 200, it.text
            with ws_connect(it.json()["proxy_url"], open_timeout=10) as ws:
                ws.send(b"echo from-$(hostname)\n")
                seen = b""
                while b"from-on-b" not in seen:
                    seen += ws.recv(timeout=10)  # type: ignore[operator]
            # Replicas share the one-time websocket tokens: a URL (and a resize made before
            # connecting) from one replica works through the other, once.
            it = reader.post(f"/v1/containers/{u}/execute", params={"run": "true"},
                             json={"command": "sh", "interactive": True})
            exec_id = it.json()["exec_id"]
            assert creator.post(f"/v1/containers/{u}/execute_resize",
                                json={"exec_id": exec_id, "w": 91, "h": 37}).status_code == 200
            url = it.json()["proxy_url"].replace(cluster.urls[0].split("//")[1],
                                                 cluster.urls[1].split("//")[1])
            assert url != it.json()["proxy_url"]
            with ws_connect(url, open_timeout=10) as ws:
                ws.send(b"stty size\n")
                seen = b""
                while b"37 91" not in seen:
                    seen += ws.recv(timeout=10)  # type: ignore[operator]
            with pytest.raises(Exception, match="40[13]"):
                with ws_connect(it.json()["proxy_url"], open_timeout=10) as ws:
                    ws.recv(timeout=5)
            top = reader.get(f"/v1/containers/{u}/top")
            assert top.status_code == 200 and any("sleep" in " ".join(p) for p in top.json()["Processes"])
            found = cluster.dockers["host-b"].containers(filters={"label": [f"capsuled.container={u}"]})
            assert len(found) == 1
            assert not cluster.dockers["host-a"].containers(all=True, filters={
                "label": [f"capsuled.container={u}"]})
        finally:
            reader.delete(f"/v1/containers/{u}", params={"force": "true"})


def test_agent_tokens_reach_only_their_own_host(cluster: Cluster) -> None:
    with cluster.client(0, cluster.agent_tokens["host-a"]) as agent_a:
        assert agent_a.get("/v1/agents/host-a/assignments", params={"timeout": 0}).status_code == 200
        other = agent_a.get("/v1/agents/host-b/assignments", params={"timeout": 0})
        assert other.status_code == 403 and "host-a" in other.json()["errors"][0]["detail"]
        for path in ("/v1/capsules", "/v1/containers", "/v1/hosts", "/v1/tokens"):
            assert agent_a.get(path).status_code == 403, path
    with cluster.client(0) as admin:  # and users' tokens cannot use the agent channel
        assert admin.get("/v1/agents/host-a/assignments", params={"timeout": 0}).status_code == 403


def test_a_disabled_host_gets_nothing_new(cluster: Cluster) -> None:
    with cluster.client(0) as api:
        assert api.put("/v1/services/disable", json={"host": "host-b", "binary": "capsuled-agent"}
                       ).status_code == 200
        made = []
        try:
            made = [_create(api, f"nob-{i}")["uuid"] for i in range(3)]
            assert {_wait(api, u, "Running")["host"] for u in made} == {"host-a"}
        finally:
            api.put("/v1/services/enable", json={"host": "host-b", "binary": "capsuled-agent"})
            _delete_all(api, made)


def test_a_killed_agent_makes_its_capsules_unknown_until_it_returns(cluster: Cluster) -> None:
    with cluster.client(0) as api:
        assert api.put("/v1/services/disable", json={"host": "host-a", "binary": "capsuled-agent"}
                       ).status_code == 200
        try:
            u = _create(api, "on-b-unknown")["uuid"]
        finally:
            api.put("/v1/services/enable", json={"host": "host-a", "binary": "capsuled-agent"})
        assert _wait(api, u, "Running")["host"] == "host-b"
        agent = cluster.agents["host-b"]
        agent.stop(signal.SIGKILL)
        body = _wait(api, u, "Unknown", timeout=DOWN_AFTER + 15)
        assert body["status_reason"].startswith("its host is down: no heartbeat")
        assert body["host"] == "host-b"  # which one: for the admin, in its own field
        assert [s["state"] for s in api.get("/v1/services").json()["services"]
                if s["host"] == "host-b"] == ["down"]
        agent.start()
        _wait(api, u, "Running", timeout=60)
        members = cluster.dockers["host-b"].containers(all=True, filters={
            "label": [f"capsuled.capsule={u}"]})
        assert sorted(m["Labels"]["capsuled.role"] for m in members) == ["app", "sandbox"]
        _delete_all(api, [u])


def test_two_replicas_never_oversubscribe_a_host(cluster: Cluster) -> None:
    with cluster.client(0) as api:
        hosts = {h["hostname"]: h for h in api.get("/v1/hosts").json()["hosts"]}
    free = sum(int(h["cpus"] - h["cpu_used"]) for h in hosts.values())

    def create(i: int) -> dict[str, Any]:
        with cluster.client(i % 2) as c:
            r = c.post("/v1/capsules", json={"template": template(f"tight-{i}", [
                sleeper("app", resources={"requests": {"cpu": 1.0, "memory": 8}})])})
            assert r.status_code == 202, r.text
            return r.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=20) as pool:
        bodies = list(pool.map(create, range(100)))
    placed = [b for b in bodies if b["status"] != "Error"]
    refused = [b for b in bodies if b["status"] == "Error"]
    assert len(placed) == free, (free, [b["status_reason"] for b in refused[:3]])
    assert all("not enough hosts" in b["status_reason"] for b in refused)
    with cluster.client(0) as api:
        for h in api.get("/v1/hosts").json()["hosts"]:
            assert h["cpu_used"] <= h["cpus"], h
        _delete_all(api, [b["uuid"] for b in bodies])


def test_node_selector_and_label_hints_pick_hosts_by_label(cluster: Cluster) -> None:
    with cluster.client(1) as api:
        u = _create(api, "wants-b", nodeSelector={"name": "host-b"})["uuid"]
        assert _wait(api, u, "Running")["host"] == "host-b"
        nowhere = _create(api, "wants-none", nodeSelector={"name": "host-z"})
        assert nowhere["status"] == "Error" and "no host that is up has label name=host-z" in nowhere["status_reason"]
        r = api.post("/v1/containers", params={"run": "true"}, json={
            "image": "busybox", "command": ["sleep", "300"], "hints": {"label:name": "host-a"}})
        assert r.status_code == 202, r.text
        bare = r.json()["uuid"]
        wait_for(lambda: api.get(f"/v1/containers/{bare}").json()["status"] == "Running",
                 what="hinted container running")
        assert api.get(f"/v1/containers/{bare}").json()["host"] == "host-a"
        labels = {h["hostname"]: h["labels"] for h in api.get("/v1/hosts").json()["hosts"]}
        assert labels == {"host-a": {"name": "host-a"}, "host-b": {"name": "host-b"}}
        api.delete(f"/v1/containers/{bare}", params={"force": "true"})
        _delete_all(api, [u, nowhere["uuid"]])


def test_a_host_port_taken_on_one_host_sends_the_next_capsule_to_the_other(cluster: Cluster) -> None:
    port = free_port()
    ported = sleeper("app", ports=[{"containerPort": 8080, "hostPort": port}])
    made: list[str] = []
    try:
        for i in range(2):
            with cluster.client(i) as api:  # one through each replica
                r = api.post("/v1/capsules", json={"template": template(f"port-{i}", [ported])})
                assert r.status_code == 202, r.text
                made.append(r.json()["uuid"])
        with cluster.client(0) as api:
            hosts = {_wait(api, u, "Running")["host"]: u for u in made}
            assert set(hosts) == {"host-a", "host-b"}
            for host, u in hosts.items():  # each engine publishes it for its own capsule
                (sb,) = cluster.dockers[host].containers(filters={"label": [
                    f"capsuled.capsule={u}", "capsuled.role=sandbox"]})
                bindings = cluster.dockers[host].inspect_container(sb["Id"])["HostConfig"]["PortBindings"]
                assert bindings == {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
            r = api.post("/v1/capsules", json={"template": template("port-2", [ported])})
            third = r.json()
            made.append(third["uuid"])
            assert third["status"] == "Error"
            head = (f"There are not enough hosts available. (no host has TCP port {port} free: "
                    "used by ")
            reason = third["status_reason"]
            assert reason.startswith(head) and reason.endswith(")"), reason
            # One holder a host, in the scheduler's host order (not part of the message's
            # promise): the project's own capsules, named.
            assert sorted(reason[len(head):-1].split(", ")) == [
                "your capsule port-0", "your capsule port-1"]
    finally:
        with cluster.client(0) as api:
            _delete_all(api, made)


PAGE = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 8080 -h /www"


def _web(api: httpx.Client, name: str, host: str, *groups: str) -> dict[str, Any]:
    """A capsule serving its name on port 8080, on `host` (in `groups`, default: default)."""
    extra: dict[str, Any] = {"securityGroups": list(groups)} if groups else {}
    r = api.post("/v1/capsules", json={"template": template(name, [{
        "name": "web", "image": "busybox", "command": ["sh", "-c", PAGE.format(text=name)]}],
        nodeSelector={"name": host}, **extra)})
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def _ip(body: dict[str, Any]) -> str:
    (addrs,) = body["addresses"].values()
    return str(addrs[0]["addr"])


def _app(cluster: Cluster, body: dict[str, Any]) -> tuple[docker.APIClient, str]:
    client = cluster.dockers[body["host"]]
    (found,) = client.containers(filters={"label": [f"capsuled.capsule={body['uuid']}",
                                                    "capsuled.role=app"]})
    return client, str(found["Id"])


def _get(cluster: Cluster, body: dict[str, Any], target: str) -> tuple[int, str]:
    """From `body`'s capsule: GET http://target:8080/ (at most 3 s)."""
    client, cid = _app(cluster, body)
    return exec_in(client, cid, "sh", "-c", f"timeout 3 wget -qO- http://{target}:8080/ 2>&1")


def test_a_project_network_spans_hosts_and_other_projects_stay_out(
        cluster: Cluster, request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params["cluster"] != "postgresql":
        # The data path is the same on any database; the allocation on MariaDB is
        # tested in test_databases.py. One run keeps the suite within its budget.
        pytest.skip("networks across hosts are proven once, on the PostgreSQL cluster")
    with cluster.client() as admin:
        tokens = {}
        for project in ("span-p", "span-q"):
            r = admin.post("/v1/tokens", json={"project_id": project, "user_id": "u",
                                               "roles": ["member"]})
            assert r.status_code == 201, r.text
            tokens[project] = r.json()["token"]
        admin_hosts = {h["hostname"]: h for h in admin.get("/v1/hosts").json()["hosts"]}
        assert set(admin_hosts) == {"host-a", "host-b"}
    p, q = cluster.client(0, tokens["span-p"]), cluster.client(1, tokens["span-q"])
    made: dict[str, list[str]] = {"span-p": [], "span-q": []}
    try:
        for api, project, name, host in ((p, "span-p", "pa", "host-a"), (p, "span-p", "pb", "host-b"),
                                          (q, "span-q", "qa", "host-a"), (q, "span-q", "qb", "host-b")):
            made[project].append(_web(api, name, host)["uuid"])
        with cluster.client() as admin:  # admins see the host
            pa, pb, qa, qb = (_wait(admin, u, "Running") for u in [*made["span-p"], *made["span-q"]])
        assert (pa["host"], pb["host"], qa["host"], qb["host"]) == ("host-a", "host-b", "host-a", "host-b")

        # One subnet for the project on both hosts, a block of it each, addresses from them.
        nets = {h: _project_network(cluster, h, "span-p") for h in ("host-a", "host-b")}
        (cfg_a,), (cfg_b,) = (nets[h]["IPAM"]["Config"] for h in ("host-a", "host-b"))
        assert cfg_a["Subnet"] == cfg_b["Subnet"] and cfg_a["IPRange"] != cfg_b["IPRange"]
        assert ipaddress.ip_address(_ip(pa)) in ipaddress.ip_network(cfg_a["IPRange"])
        assert ipaddress.ip_address(_ip(pb)) in ipaddress.ip_network(cfg_b["IPRange"])
        assert ipaddress.ip_network(cfg_a["Subnet"]).subnet_of(
            ipaddress.ip_network(_overlay_pool(cluster)))

        # VXLAN's 50 bytes come off the containers' MTU, or large packets would be lost.
        for body in (pa, pb):
            client, cid = _app(cluster, body)
            assert exec_in(client, cid, "cat", "/sys/class/net/eth0/mtu") == (0, "1450\n")

        # The project's capsules reach each other across the hosts, by address and by name.
        wait_for(lambda: _get(cluster, pa, _ip(pb)) == (0, "pb\n"), timeout=20,
                 what="pa reaches pb's address across the hosts")
        assert _get(cluster, pb, _ip(pa)) == (0, "pa\n")
        wait_for(lambda: _get(cluster, pa, "pb") == (0, "pb\n"), timeout=20,
                 what="pa reaches pb by name")
        wait_for(lambda: _get(cluster, pb, "pa") == (0, "pa\n"), timeout=20,
                 what="pb reaches pa by name")
        assert _get(cluster, pb, pa["uuid"]) == (0, "pa\n")  # its uuid is a name too

        # Security groups hold across hosts (host B's rules are made in its engine's
        # namespace): 8080 from the project answers there, a group without rules drops it.
        for name, rules in (("web8080", [{"protocol": "tcp", "port_range_min": 8080,
                                          "remote_group": "default"}]), ("closed", [])):
            assert p.post("/v1/security_groups", json={"name": name, "rules": rules}).status_code == 201
        made["span-p"] += [_web(p, "pc", "host-b", "web8080")["uuid"],
                           _web(p, "pd", "host-b", "closed")["uuid"]]
        with cluster.client() as admin:
            pc, pd = (_wait(admin, u, "Running") for u in made["span-p"][2:])
        wait_for(lambda: _get(cluster, pa, _ip(pc)) == (0, "pc\n"), timeout=20,
                 what="pa reaches pc's allowed port across the hosts")
        code, out = _get(cluster, pa, _ip(pd))
        assert code != 0 and "pd" not in out
        assert _get(cluster, pb, _ip(pd))[0] != 0  # not even from pd's own host

        # Another project's capsules, on either host, reach neither, by address or name.
        chains = Chains.of(cluster.instance)
        tries = [(other, target) for other in (qa, qb) for target in (_ip(pa), _ip(pb), "pa", "pb")]
        with ThreadPoolExecutor(len(tries)) as pool:  # each waits out its timeout: at once
            got = list(pool.map(lambda t: _get(cluster, *t), tries))
        for (other, target), (code, out) in zip(tries, got):
            assert code != 0, (other["host"], target, out)
        # On host B (its engine manages no iptables) it is the agent's isolation rule that
        # dropped qb's packets to pb's bridge.
        listed = _in_netns(HOSTB_NETNS, "iptables", "-w", "-L", chains.isolate, "-v", "-x",
                           "-n").stdout.splitlines()
        assert int(listed[2].split()[0]) > 0, listed
        # ... and its own capsules reach each other as well.
        wait_for(lambda: _get(cluster, qa, "qb") == (0, "qb\n"), timeout=20,
                 what="qa reaches qb by name")
        # Nothing forwarded may reach a VTEP (a container sending VXLAN frames into another
        # project's segment): host B's rules drop it, and VXLAN for the project's VNIs from
        # a non-peer is dropped (test_overlay_deployments.py sends such packets).
        rules = _in_netns(HOSTB_NETNS, "iptables", "-w", "-S").stdout
        assert f"-A {chains.forward} -p udp -m udp --dport 4789 -j DROP" in rules
        assert f"-A {chains.input} -s 172.31.250.1/32 -p udp -m udp --dport 4789 -j RETURN" in rules
        for project in ("span-p", "span-q"):
            shown = _in_netns(HOSTB_NETNS, "ip", "-d", "link", "show",
                              vxlan_name(cluster.instance, project)).stdout
            vni = int(shown.split(" vxlan id ")[1].split()[0])
            assert (f"-A {chains.input} -p udp -m udp --dport 4789 {vni_match(vni)} -j DROP"
                    in rules), (project, vni)
    finally:
        for api, project in ((p, "span-p"), (q, "span-q")):
            _delete_all(api, made[project])
            api.close()
        with cluster.client(0, tokens["span-p"]) as api:
            for name in ("web8080", "closed"):
                api.delete(f"/v1/security_groups/{name}")


def _project_network(cluster: Cluster, host: str, project: str) -> dict[str, Any]:
    client = cluster.dockers[host]
    (net,) = client.networks(filters={"label": [f"capsuled.instance={cluster.instance}",
                                                f"capsuled.project={project}"]})
    return client.inspect_network(net["Id"])  # type: ignore[no-any-return]


def _overlay_pool(cluster: Cluster) -> str:
    env = cluster.agents["host-a"].env
    return re.sub(r"\s", "", env["CAPSULED_OVERLAY__POOL"])
