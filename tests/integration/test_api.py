"""The Zun capsule API through HTTP: transport conventions, bodies, lists, errors."""

from __future__ import annotations

import httpx
import pytest
from conftest import Capsules, Server, sleeper, template

pytestmark = pytest.mark.docker

VERSION_HEADERS = ("OpenStack-API-Minimum-Version", "OpenStack-API-Maximum-Version",
                   "OpenStack-API-Version", "Vary")


def test_root_and_v1_documents_are_public(server: Server) -> None:
    root = httpx.get(server.url + "/")
    assert root.status_code == 200 and root.headers["content-type"] == "application/json"
    version = root.json()["versions"][0]
    assert (version["id"], version["status"], version["min_version"], version["max_version"]) == (
        "v1", "CURRENT", "1.1", "1.40")
    assert version["links"][0]["href"] == server.url + "/v1/"
    for path in ("/v1", "/v1/"):
        doc = httpx.get(server.url + path)
        assert doc.status_code == 200
        assert doc.json()["capsules"][0]["href"] == server.url + "/v1/capsules/"
        assert doc.headers["x-openstack-request-id"].startswith("req-")


def test_missing_version_header_means_1_1_with_legacy_body(server: Server, capsules: Capsules,
                                                           unique) -> None:
    body = capsules.create(template(unique("legacy"), [sleeper("a")], labels={"k": "v"}))
    r = httpx.get(f"{server.url}/v1/capsules/{body['uuid']}", headers={"X-Auth-Token": server.token})
    assert r.headers["OpenStack-API-Version"] == "container 1.1"
    legacy = r.json()
    assert legacy["meta_name"] == body["name"] and legacy["meta_labels"] == {"k": "v"}
    assert legacy["restart_policy"] == "always"
    assert {"volumes_info", "containers_uuids", "capsule_version"} <= legacy.keys()
    assert "name" not in legacy


def test_version_headers_echo_the_request(server: Server) -> None:
    for asked, effective in (("container 1.32", "1.32"), ("container latest", "1.40")):
        r = httpx.get(server.url + "/v1/capsules/",
                      headers={"X-Auth-Token": server.token, "OpenStack-API-Version": asked})
        assert r.status_code == 200
        assert r.headers["OpenStack-API-Version"] == f"container {effective}"
        assert r.headers["OpenStack-API-Minimum-Version"] == "container 1.1"
        assert r.headers["OpenStack-API-Maximum-Version"] == "container 1.40"
        assert r.headers["Vary"] == "OpenStack-API-Version"


@pytest.mark.parametrize("value", ["container 1.41", "container 1.0", "container abc", "compute 2.1", "junk"])
def test_unsupported_versions_get_406(server: Server, value: str) -> None:
    r = httpx.get(server.url + "/v1/capsules",
                  headers={"X-Auth-Token": server.token, "OpenStack-API-Version": value})
    assert r.status_code == 406, r.text
    err = r.json()["errors"][0]
    assert err["status"] == 406 and err["title"]
    assert r.headers["OpenStack-API-Maximum-Version"] == "container 1.40"


def test_token_required_except_version_documents(server: Server) -> None:
    r = httpx.get(server.url + "/v1/capsules")
    assert r.status_code == 401
    assert r.json()["errors"][0]["code"] == "container.not-authenticated"
    r = httpx.get(server.url + "/v1/capsules", headers={"X-Auth-Token": "nope"})
    assert r.status_code == 401
    assert r.headers["x-openstack-request-id"].startswith("req-")


def test_create_returns_202_location_and_zun_shaped_body(api: httpx.Client, capsules: Capsules,
                                                         unique) -> None:
    name = unique("shape")
    tmpl = template(name, [sleeper("a", resources={"requests": {"cpu": 0.25, "memory": 32}}),
                           sleeper("b", resources={"requests": {"cpu": 0.5, "memory": 64}})],
                    initContainers=[{"name": "init", "image": "busybox", "command": ["true"],
                                     "resources": {"requests": {"cpu": 1, "memory": 16}}}])
    tmpl["metadata"]["annotations"] = {"owner": "me"}
    r = api.post("/v1/capsules/", json={"template": tmpl})
    assert r.status_code == 202, r.text
    body = r.json()
    capsules.created.append(body["uuid"])
    assert r.headers["Location"].endswith(f"/v1/capsules/{body['uuid']}")
    assert body["status"] == "Creating" and body["name"] == name
    assert body["cpu"] == 1.0 and body["memory"] == "96"  # max(apps' sum, init peak)
    assert body["restart_policy"] == {"Name": "always", "MaximumRetryCount": "0"}
    assert body["annotations"] == {"owner": "me"}
    assert [c["name"] for c in body["containers"]] == ["a", "b"]
    assert [c["name"] for c in body["init_containers"]] == ["init"]
    assert body["containers"][0]["memory"] == "32" and body["containers"][0]["cpu"] == 0.25
    assert body["containers"][0]["restart_policy"] == {"Name": "always", "MaximumRetryCount": "0"}
    assert body["init_containers"][0]["restart_policy"]["Name"] == "no"
    assert body["host"]  # the admin sees the host
    for key in ("uuid", "links", "user_id", "project_id", "labels", "status_reason", "addresses",
                "created_at", "updated_at"):
        assert key in body
    running = capsules.wait_status(body["uuid"], "Running")
    assert all(c["status"] == "Running" for c in running["containers"])


def test_show_by_name_and_ambiguous_name_is_409(api: httpx.Client, capsules: Capsules, unique) -> None:
    name = unique("dup")
    first = capsules.create(template(name, [sleeper("a")]))
    assert capsules.get(name)["uuid"] == first["uuid"]
    capsules.create(template(name, [sleeper("a")]))
    r = api.get(f"/v1/capsules/{name}")
    assert r.status_code == 409 and "Multiple capsules" in r.json()["errors"][0]["title"]
    assert api.get("/v1/capsules/no-such-capsule").status_code == 404


def test_list_paginates_sorts_and_filters_by_label(api: httpx.Client, capsules: Capsules, unique) -> None:
    tag = unique("batch")
    made = [capsules.create(template(f"{tag}-{i}", [sleeper("a")], labels={"batch": tag, "i": str(i)}))
            for i in range(3)]
    r = api.get("/v1/capsules", params={"labels": f"batch={tag}", "limit": 2, "sort_key": "name"})
    page = r.json()
    assert [c["name"] for c in page["capsules"]] == [f"{tag}-0", f"{tag}-1"]
    assert page["next"] and "marker=" in page["next"]
    page2 = api.get(page["next"]).json()
    assert [c["name"] for c in page2["capsules"]] == [f"{tag}-2"] and page2["next"] is None
    one = api.get("/v1/capsules", params=[("labels", f"batch={tag}"), ("labels", "i=1")]).json()
    assert [c["uuid"] for c in one["capsules"]] == [made[1]["uuid"]]
    desc = api.get("/v1/capsules", params={"labels": f"batch={tag}", "sort_dir": "desc"}).json()
    assert [c["uuid"] for c in desc["capsules"]] == [m["uuid"] for m in reversed(made)]


@pytest.mark.parametrize("params,field", [({"limit": 0}, "limit"), ({"limit": "x"}, "limit"),
                                          ({"sort_dir": "up"}, "sort_dir"),
                                          ({"sort_key": "nope"}, "sort_key"),
                                          ({"labels": "novalue"}, "labels"),
                                          ({"all_projects": "maybe"}, "all_projects")])
def test_bad_list_parameters_get_400_naming_the_field(api: httpx.Client, params: dict, field: str) -> None:
    r = api.get("/v1/capsules", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["title"].startswith(field)


def test_unknown_marker_is_404(api: httpx.Client) -> None:
    r = api.get("/v1/capsules", params={"marker": "5b1c6a3e-0000-4000-8000-000000000000"})
    assert r.status_code == 404


def test_bad_template_is_400_listing_every_problem_and_creates_nothing(api: httpx.Client,
                                                                      unique) -> None:
    name = unique("bad")
    before = len(api.get("/v1/capsules").json()["capsules"])
    tmpl = template(name, [
        {"name": "a", "image": "busybox", "resources": {"requests": {"memory": "256Mi"}}},
        {"name": "a", "image": "busybox", "volumeMounts": [{"name": "ghost", "mountPath": "/g"}]},
        {"name": "c"},
        {"name": "d", "image": "busybox", "resources": {"requests": {"cpu": 64, "memory": 100000}}},
    ], restartPolicy="Sometimes")
    r = api.post("/v1/capsules", json={"template": tmpl})
    assert r.status_code == 400
    err = r.json()["errors"][0]
    assert err["code"] == "container.invalid-input"
    detail = err["detail"].splitlines()
    for expected in ("spec.containers[0].resources.requests.memory: must be a positive integer (MiB)",
                     "spec.containers[1].name: duplicate container name 'a' (also spec.containers[0])",
                     "spec.containers[1].volumeMounts[0].name: names no volume in spec.volumes: 'ghost'",
                     "spec.containers[2].image: is required",
                     "spec.containers[3].resources.requests.cpu: must be between 0.1 and 16.0 cores",
                     "spec.containers[3].resources.requests.memory: must be between 4 and 8192 (MiB)",
                     "spec.restartPolicy: must be one of Always, OnFailure, Never, not 'Sometimes'"):
        assert expected in detail, detail
    assert len(api.get("/v1/capsules").json()["capsules"]) == before
    assert api.get(f"/v1/capsules/{name}").status_code == 404


@pytest.mark.parametrize("body,status,needle", [
    ({}, 400, "template: is required"),
    ({"template": {"kind": "capsule"}, "extra": 1}, 400, "extra: unknown field"),
    ({"template": "kind: [unclosed"}, 400, "not valid YAML or JSON"),
    ({"template": []}, 400, "template: must be an object"),
    ({"template": {"kind": "capsule", "metadata": {}, "spec": {"containers": []}}}, 400,
     "spec.containers: must not be empty"),
])
def test_bad_bodies_are_4xx(api: httpx.Client, body: dict, status: int, needle: str) -> None:
    r = api.post("/v1/capsules", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["errors"][0]["detail"]


def test_non_json_content_type_is_415_and_bad_json_is_400(api: httpx.Client) -> None:
    r = api.post("/v1/capsules", content=b"kind: capsule", headers={"Content-Type": "text/yaml"})
    assert r.status_code == 415
    assert "application/json" in r.json()["errors"][0]["title"]
    r = api.post("/v1/capsules", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["errors"][0]["title"]


def test_template_as_json_string_is_accepted(api: httpx.Client, capsules: Capsules, unique) -> None:
    import json

    name = unique("str")
    r = api.post("/v1/capsules", json={"template": json.dumps(template(name, [sleeper("a")]))})
    assert r.status_code == 202, r.text
    capsules.created.append(r.json()["uuid"])
    assert r.json()["name"] == name


def test_oversized_capsule_is_accepted_but_errors_with_no_valid_host(api: httpx.Client,
                                                                     capsules: Capsules, unique) -> None:
    # Zun answers 202 and records the scheduling failure on the capsule (zunclient relies on it).
    # The quota must not refuse it first.
    assert api.put("/v1/quotas/admin", json={"cpu": -1, "memory": -1, "containers": -1}).status_code == 200
    big = [sleeper(f"c{i}", resources={"requests": {"cpu": 16, "memory": 8192}}) for i in range(20)]
    body = capsules.create(template(unique("huge"), big))
    assert body["status"] == "Error"
    assert body["status_reason"].startswith("There are not enough hosts available.")
    assert "CPU" in body["status_reason"] or "MiB" in body["status_reason"]
    r = api.delete(f"/v1/capsules/{body['uuid']}")
    assert r.status_code == 204
    assert api.get(f"/v1/capsules/{body['uuid']}").status_code == 404


def test_delete_is_204_then_deleting_then_gone(api: httpx.Client, capsules: Capsules, unique) -> None:
    body = capsules.create(template(unique("gone"), [sleeper("a")]))
    capsules.wait_status(body["uuid"], "Running")
    r = api.delete(f"/v1/capsules/{body['name']}/")
    assert r.status_code == 204
    shown = api.get(f"/v1/capsules/{body['uuid']}")
    assert shown.status_code == 404 or shown.json()["status"] == "Deleting"
    capsules.wait_gone(body["uuid"])
    assert api.delete(f"/v1/capsules/{body['uuid']}").status_code == 404


def test_events_tell_the_story(api: httpx.Client, capsules: Capsules, unique) -> None:
    body = capsules.create(template(unique("ev"), [sleeper("a")]))
    capsules.wait_status(body["uuid"], "Running")
    events = api.get(f"/v1/capsules/{body['uuid']}/events").json()["events"]
    reasons = [e["reason"] for e in events]
    assert reasons[0] == "Accepted"
    assert "SandboxCreated" in reasons and "Running" in reasons
    assert any(e["container"] == "a" and e["reason"] == "Started" for e in events)
    # In the order things happened: the container started, then the capsule was Running.
    assert reasons.index("Started") < reasons.index("Running"), reasons


def test_unprefixed_paths_mean_v1(api: httpx.Client, capsules: Capsules, unique) -> None:
    body = capsules.create(template(unique("nov1"), [sleeper("a")]))
    r = api.get(f"/capsules/{body['uuid']}")
    assert r.status_code == 200 and r.json()["uuid"] == body["uuid"]
