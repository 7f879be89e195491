"""A hostile member tries to get host-level powers through every input form and path
(issue 9, "Escape"). Each ask must be a 403 naming the field, leave nothing behind, and
Docker must never have been asked for a privileged container on a member's behalf."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
import yaml
from conftest import Server, sleeper, template, wait_for

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def member(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.issue_token("esc-proj", "mallory", "member")) as c:
        yield c


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.token) as c:
        yield c


def privileged_template(name: str, init: bool = False) -> dict[str, Any]:
    tmpl = template(name, [sleeper("app")])
    box = {**sleeper("boot"), "command": ["true"]} if init else tmpl["spec"]["containers"][0]
    box["securityContext"] = {"privileged": True}
    if init:
        tmpl["spec"]["initContainers"] = [box]
    return tmpl


FORMS = {
    "object": lambda t: t,
    "yaml-text": lambda t: yaml.safe_dump(t),
    "json-text": lambda t: json.dumps(t),
    # YAML that spells privileged in ways a raw-dict check would not see as `True`.
    "yaml-text-yes": lambda t: yaml.safe_dump(t).replace("privileged: true", "privileged: yes"),
    "yaml-anchor": lambda t: ("x: &p {privileged: true}\n" + yaml.safe_dump(t)).replace(
        "securityContext:\n      privileged: true", "securityContext: *p"),
}


def _project_privileged(docker_api: docker.APIClient, project: str) -> list[str]:
    found = docker_api.containers(all=True, filters={"label": [f"capsuled.project={project}"]})
    return [c["Id"] for c in found
            if docker_api.inspect_container(c["Id"])["HostConfig"]["Privileged"]]


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("init", [False, True], ids=["app", "init"])
def test_privileged_template_in_any_form_is_refused(member: httpx.Client, admin: httpx.Client,
                                                    docker_api: docker.APIClient, form: str,
                                                    init: bool) -> None:
    before = len(admin.get("/v1/capsules", params={"all_projects": "1"}).json()["capsules"])
    body = FORMS[form](privileged_template(f"esc-{form}", init))
    r = member.post("/v1/capsules", json={"template": body})
    if form == "yaml-anchor":
        # The anchor's extra top-level key is refused by the parser (400) or the policy (403);
        # never accepted.
        assert r.status_code in (400, 403), r.text
    else:
        assert r.status_code == 403, r.text
        group = "initContainers" if init else "containers"
        assert f"spec.{group}[0].securityContext.privileged" in r.json()["errors"][0]["detail"]
    after = len(admin.get("/v1/capsules", params={"all_projects": "1"}).json()["capsules"])
    assert after == before
    assert _project_privileged(docker_api, "esc-proj") == []


def test_yaml_anchor_alone_cannot_smuggle_privileged(member: httpx.Client) -> None:
    text = ("kind: capsule\nmetadata: {name: esc-anchor}\n"
            "spec:\n  containers:\n  - &c {image: busybox, command: [sleep, '60'],"
            " securityContext: {privileged: true}}\n")
    r = member.post("/v1/capsules", json={"template": text})
    assert r.status_code == 403, r.text
    assert "spec.containers[0].securityContext.privileged" in r.text


@pytest.mark.parametrize("value", [True, "true", "True", "TRUE"])
def test_privileged_bare_container_spellings_are_refused(member: httpx.Client, value: Any) -> None:
    r = member.post("/v1/containers", params={"run": "true"},
                    json={"image": "busybox", "name": "esc-bare", "privileged": value})
    assert r.status_code == 403, r.text
    assert "privileged" in r.json()["errors"][0]["detail"]
    names = [c["name"] for c in member.get("/v1/containers").json()["containers"]]
    assert "esc-bare" not in names


def test_run_in_capsule_cannot_be_privileged(member: httpx.Client, admin: httpx.Client) -> None:
    cap = member.post("/v1/capsules", json={"template": template("esc-host", [sleeper("app")])})
    assert cap.status_code == 202, cap.text
    uuid = cap.json()["uuid"]
    try:
        r = member.post("/v1/containers", json={"image": "busybox", "name": "esc-add",
                                                "capsule": uuid, "privileged": "true"})
        assert r.status_code == 403, r.text
        got = member.get("/v1/containers", params={"capsule": uuid}).json()["containers"]
        assert [c["name"] for c in got] == ["app"]
    finally:
        member.delete(f"/v1/capsules/{uuid}")


def test_patch_cannot_grant_privileged(member: httpx.Client) -> None:
    r = member.post("/v1/containers", json={"image": "busybox", "name": "esc-patch",
                                            "command": ["sleep", "60"]})
    assert r.status_code == 202, r.text
    uuid = r.json()["uuid"]
    try:
        p = member.patch(f"/v1/containers/{uuid}", json={"privileged": True})
        assert p.status_code == 400 and "privileged: cannot be updated" in p.text
    finally:
        member.delete(f"/v1/containers/{uuid}", params={"force": "true"})


def test_reserved_labels_are_refused(member: httpx.Client) -> None:
    r = member.post("/v1/containers", json={"image": "busybox", "name": "esc-label",
                                            "labels": {"capsuled.project": "other"}})
    assert r.status_code == 400, r.text
    assert "labels.capsuled.project" in r.text and "reserved" in r.text


def test_admin_yaml_text_privileged_runs_and_shows_truthfully(
        admin: httpx.Client, docker_api: docker.APIClient) -> None:
    r = admin.post("/v1/capsules",
                   json={"template": yaml.safe_dump(privileged_template("esc-admin"))})
    assert r.status_code == 202, r.text
    uuid = r.json()["uuid"]
    try:
        member_uuid = r.json()["containers"][0]["uuid"]

        def privileged() -> bool | None:
            found = docker_api.containers(all=True, filters={"label": [f"capsuled.container={member_uuid}"]})
            return docker_api.inspect_container(found[0]["Id"])["HostConfig"]["Privileged"] if found else None
        assert wait_for(privileged, what="the privileged member") is True
        shown = admin.get(f"/v1/capsules/{uuid}").json()["containers"][0]
        assert shown["privileged"] is True
        plain = admin.post("/v1/containers", json={"image": "busybox", "name": "esc-plain"})
        try:
            assert plain.json()["privileged"] is False
        finally:
            admin.delete(f"/v1/containers/{plain.json()['uuid']}", params={"force": "true"})
    finally:
        admin.delete(f"/v1/capsules/{uuid}")
