"""parse_template: what it accepts (and how it normalises it), and every problem it names."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from capsuled.domain.spec import Probe, spec_hash
from capsuled.domain.spec import (CapsuleSpec, ContainerSpec, HealthCheck, Port, VolumeMount,
                                  VolumeSpec)
from capsuled.domain.template import parse_template
from capsuled.errors import InvalidInput

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "web.yaml"
NAME_MSG = ("must be 2 to 255 characters of letters, digits, '_', '.' or '-', "
            "starting with a letter or digit")
CONTAINER_NAME_MSG = ("must be 1 to 63 letters, digits, '_', '.' or '-', "
                      "starting with a letter or digit")


def box(name: str | None = "web", **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"image": "busybox", **extra}
    if name is not None:
        c["name"] = name
    return c


def tmpl(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"kind": "capsule", "metadata": {"name": "demo"},
            "spec": {"containers": list(containers) or [box()], **spec}}


def problems(template: Any) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        parse_template(template)
    return exc.value.problems


# --------------------------------------------------------------------------- accepted


def test_parse_accepts_example_web_yaml() -> None:
    spec = parse_template(yaml.safe_load(EXAMPLE.read_text()))
    assert spec == CapsuleSpec(
        name="web-demo",
        labels={"app": "web", "tier": "front"},
        annotations={"owner": "demo"},
        restart_policy="Always",
        init_containers=[ContainerSpec(
            name="prepare", role="init", image="busybox", command=["sh", "-c"],
            args=["echo 'hello from a capsule' > /www/index.html"],
            volume_mounts=[VolumeMount(name="site", mount_path="/www")])],
        containers=[
            ContainerSpec(name="web", role="app", image="busybox",
                          command=["httpd", "-f", "-p", "8080", "-h", "/www"],
                          ports=[Port(container_port=8080, protocol="TCP")],
                          cpu=0.5, memory=64,
                          volume_mounts=[VolumeMount(name="site", mount_path="/www",
                                                     read_only=True)]),
            ContainerSpec(name="probe", role="app", image="busybox", command=["sh", "-c"],
                          args=["while true; do wget -q -O- http://127.0.0.1:8080/ > /tmp/last;"
                                " sleep 5; done"],
                          cpu=0.1, memory=16),
        ],
        volumes=[VolumeSpec(name="site", type="emptyDir")],
    )


def test_parse_accepts_yaml_text_same_as_object() -> None:
    text = EXAMPLE.read_text()
    assert parse_template(text) == parse_template(yaml.safe_load(text))


def test_parse_accepts_json_string() -> None:
    obj = yaml.safe_load(EXAMPLE.read_text())
    spec = parse_template(json.dumps(obj))
    assert spec == parse_template(obj)
    assert spec.name == "web-demo"
    assert [c.name for c in spec.containers] == ["web", "probe"]


def test_parse_accepts_yaml_flow_mapping_text() -> None:
    # Starts with "{" like JSON, but is YAML: it used to be rejected as bad JSON.
    spec = parse_template("{kind: capsule, metadata: {name: flow}, "
                          "spec: {containers: [{name: web, image: busybox}]}}")
    assert spec.name == "flow"
    assert [(c.name, c.image) for c in spec.containers] == [("web", "busybox")]


def test_parse_keeps_container_names() -> None:
    spec = parse_template(tmpl(box("alpha"), box("beta"),
                               initContainers=[box("setup")]))
    assert [c.name for c in spec.init_containers] == ["setup"]
    assert [c.name for c in spec.containers] == ["alpha", "beta"]
    assert [c.role for c in spec.all_containers] == ["init", "app", "app"]


def test_parse_names_unnamed_containers_by_position() -> None:
    spec = parse_template(tmpl(box(None), box(None), initContainers=[box(None)]))
    assert [c.name for c in spec.all_containers] == ["init-0", "container-0", "container-1"]


def test_parse_accepts_template_without_name() -> None:
    t = tmpl()
    t["metadata"] = {}
    assert parse_template(t).name is None


@pytest.mark.parametrize(("top", "in_spec", "expected"), [
    (None, None, "Always"),
    ("Never", None, "Never"),
    (None, "OnFailure", "OnFailure"),
    ("Never", "Never", "Never"),
    ("OnFailure", "OnFailure", "OnFailure"),
], ids=["default", "top-level", "in-spec", "both-never", "both-onfailure"])
def test_parse_restart_policy_when_given(top: str | None, in_spec: str | None,
                                         expected: str) -> None:
    t = tmpl()
    if top is not None:
        t["restartPolicy"] = top
    if in_spec is not None:
        t["spec"]["restartPolicy"] = in_spec
    assert parse_template(t).restart_policy == expected


def test_parse_rejects_restart_policy_when_conflicting() -> None:
    t = tmpl(restartPolicy="Never")
    t["restartPolicy"] = "Always"
    assert problems(t) == ["spec.restartPolicy: conflicts with the top-level restartPolicy"]


@pytest.mark.parametrize(("cinder", "expected"), [
    ({"size": 2, "autoRemove": True}, VolumeSpec(name="data", type="cinder", size=2,
                                                 auto_remove=True)),
    ({"size": 1, "autoRemove": False}, VolumeSpec(name="data", type="cinder", size=1,
                                                  auto_remove=False)),
    ({"size": 5}, VolumeSpec(name="data", type="cinder", size=5, auto_remove=False)),
], ids=["auto-remove", "keep", "default-keep"])
def test_parse_cinder_volume_when_size_given(cinder: dict[str, Any], expected: VolumeSpec) -> None:
    t = tmpl(box(volumeMounts=[{"name": "data", "mountPath": "/data"}]),
             volumes=[{"name": "data", "cinder": cinder}])
    spec = parse_template(t)
    assert spec.volumes == [expected]
    assert spec.containers[0].volume_mounts == [VolumeMount(name="data", mount_path="/data")]


@pytest.mark.parametrize("empty_dir", [{}, None], ids=["braces", "null"])
def test_parse_empty_dir_volume(empty_dir: Any) -> None:
    t = tmpl(box(volumeMounts=[{"name": "scratch", "mountPath": "/tmp/s", "readOnly": True}]),
             volumes=[{"name": "scratch", "emptyDir": empty_dir}])
    spec = parse_template(t)
    assert spec.volumes == [VolumeSpec(name="scratch", type="emptyDir")]
    assert spec.containers[0].volume_mounts == [
        VolumeMount(name="scratch", mount_path="/tmp/s", read_only=True)]


@pytest.mark.parametrize(("given", "expected"), [
    ("always", "Always"), ("Always", "Always"), ("ALWAYS", "Always"),
    ("ifnotpresent", "IfNotPresent"), ("IfNotPresent", "IfNotPresent"),
    ("never", "Never"), ("Never", "Never"),
])
def test_parse_normalises_image_pull_policy_case(given: str, expected: str) -> None:
    spec = parse_template(tmpl(box(imagePullPolicy=given)))
    assert spec.containers[0].image_pull_policy == expected


@pytest.mark.parametrize(("given", "expected"), [
    ("true", True), ("false", False), (True, True), (False, False),
])
def test_parse_tty_when_bool_or_string(given: Any, expected: bool) -> None:
    assert parse_template(tmpl(box(tty=given))).containers[0].tty is expected


@pytest.mark.parametrize(("requests", "cpu", "memory"), [
    ({"memory": "256"}, None, 256),
    ({"memory": 256}, None, 256),
    ({"cpu": "0.5", "memory": "4"}, 0.5, 4),
    ({"cpu": 16, "memory": 8192}, 16.0, 8192),
    ({"cpu": 0.1}, 0.1, None),
], ids=["memory-digit-string", "memory-int", "cpu-string-min-memory", "maxima", "cpu-min"])
def test_parse_resources_when_in_range(requests: dict[str, Any], cpu: float | None,
                                       memory: int | None) -> None:
    c = parse_template(tmpl(box(resources={"requests": requests}))).containers[0]
    assert (c.cpu, c.memory) == (cpu, memory)


def test_parse_ports_when_container_port_is_digit_string() -> None:
    c = parse_template(tmpl(box(ports=[
        {"containerPort": "8080"},
        {"containerPort": 53, "protocol": "UDP", "hostPort": 5353, "name": "dns"},
    ]))).containers[0]
    assert c.ports == [Port(container_port=8080, protocol="TCP"),
                       Port(container_port=53, protocol="UDP", host_port=5353, name="dns")]


def test_parse_keeps_command_args_env_and_workdir() -> None:
    c = parse_template(tmpl(box(command=["sh", "-c"], args=["echo hi"], workDir="/srv",
                                env={"A": "1", "B": ""}, stdin=True))).containers[0]
    assert (c.command, c.args, c.zun_command) == (["sh", "-c"], ["echo hi"],
                                                  ["sh", "-c", "echo hi"])
    assert (c.workdir, c.env, c.stdin) == ("/srv", {"A": "1", "B": ""}, True)


def test_parse_stringifies_label_numbers() -> None:
    t = tmpl()
    t["metadata"]["labels"] = {"tier": 1, "app": "web"}
    assert parse_template(t).labels == {"tier": "1", "app": "web"}


# --------------------------------------------------------------------------- rejected


def _without(key: str) -> dict[str, Any]:
    t = tmpl()
    del t[key]
    return t


def _with(path: list[str | int], value: Any) -> dict[str, Any]:
    t = tmpl(box("web"), box("side"), volumes=[])
    t["spec"]["initContainers"] = [box("setup")]
    node: Any = t
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return t


def _meta(**meta: Any) -> dict[str, Any]:
    t = tmpl()
    t["metadata"] = meta
    return t


def _c1(**extra: Any) -> dict[str, Any]:
    """Two app containers, the second carrying `extra`."""
    return tmpl(box("web"), box("side", **extra))


def _vol(volume: dict[str, Any], mounted: bool = True) -> dict[str, Any]:
    mounts = [{"name": volume.get("name", "data"), "mountPath": "/data"}] if mounted else []
    return tmpl(box(volumeMounts=mounts), volumes=[volume])


REJECTED: list[tuple[str, Any, str]] = [
    # top level
    ("missing-kind", _without("kind"), "kind: is required (kind: capsule)"),
    ("wrong-kind", {**tmpl(), "kind": "Pod"}, "kind: must be 'capsule', not 'Pod'"),
    ("bad-capsule-version", {**tmpl(), "capsuleVersion": "v1"}, "capsuleVersion: must be 'beta'"),
    ("missing-metadata", _without("metadata"),
     "metadata: is required (it may be empty: metadata: {})"),
    ("metadata-not-object", {**tmpl(), "metadata": ["x"]}, "metadata: must be an object"),
    ("unknown-top-key", {**tmpl(), "apiVersion": "v1"}, "apiVersion: unknown field"),
    ("nets-top-key", {**tmpl(), "nets": []}, "nets: unknown field"),
    ("unknown-metadata-key", _meta(name="demo", namespace="x"), "metadata.namespace: unknown field"),
    ("missing-spec", _without("spec"), "spec: is required"),
    ("spec-not-object", {**tmpl(), "spec": "x"}, "spec: must be an object"),
    ("unknown-spec-key", tmpl(hostNetwork=True), "spec.hostNetwork: unknown field"),
    ("bad-zone", {**tmpl(), "availabilityZone": ""},
     "availabilityZone: must be a string of 1 to 255 characters"),
    # metadata.name
    ("name-one-char", _meta(name="a"), f"metadata.name: {NAME_MSG}"),
    ("name-leading-dash", _meta(name="-web"), f"metadata.name: {NAME_MSG}"),
    ("name-space", _meta(name="web demo"), f"metadata.name: {NAME_MSG}"),
    ("name-trailing-newline", _meta(name="web\n"), f"metadata.name: {NAME_MSG}"),
    ("name-too-long", _meta(name="a" * 256), f"metadata.name: {NAME_MSG}"),
    ("name-not-string", _meta(name=42), f"metadata.name: {NAME_MSG}"),
    ("label-key-bad", _meta(labels={"-x": "y"}), "metadata.labels.-x: is not a valid key"),
    ("label-value-list", _meta(labels={"x": ["y"]}),
     "metadata.labels.x: must be a string (quote numbers: \"80\")"),
    # containers
    ("containers-missing", {**tmpl(), "spec": {}},
     "spec.containers: is required: a capsule needs at least one container"),
    ("containers-empty", {**tmpl(), "spec": {"containers": []}},
     "spec.containers: must not be empty: a capsule needs at least one container"),
    ("containers-not-list", {**tmpl(), "spec": {"containers": {"image": "busybox"}}},
     "spec.containers: must be a list"),
    ("too-many-containers", tmpl(*[box(f"c{i}") for i in range(25)]),
     "spec.containers: a capsule holds at most 24 containers"),
    ("missing-image", tmpl(box("web"), {"name": "side"}), "spec.containers[1].image: is required"),
    ("missing-init-image", _with(["spec", "initContainers", 0], {"name": "setup"}),
     "spec.initContainers[0].image: is required"),
    ("image-too-short", _c1(image="a"),
     "spec.containers[1].image: must be an image reference such as busybox or busybox:latest"),
    ("image-trailing-newline", _c1(image="busybox\n"),
     "spec.containers[1].image: must be an image reference such as busybox or busybox:latest"),
    ("container-name-bad", tmpl(box("web"), box("_side")),
     f"spec.containers[1].name: {CONTAINER_NAME_MSG}"),
    ("container-name-newline", tmpl(box("web"), box("side\n")),
     f"spec.containers[1].name: {CONTAINER_NAME_MSG}"),
    ("duplicate-app-names", tmpl(box("web"), box("web")),
     "spec.containers[1].name: duplicate container name 'web' (also spec.containers[0])"),
    ("duplicate-init-and-app-name", tmpl(box("web"), initContainers=[box("web")]),
     "spec.containers[0].name: duplicate container name 'web' (also spec.initContainers[0])"),
    ("duplicate-init-names", tmpl(initContainers=[box("a1"), box("a1")]),
     "spec.initContainers[1].name: duplicate container name 'a1' (also spec.initContainers[0])"),
    ("duplicate-with-default-name", tmpl(box("container-1"), box(None)),
     "spec.containers[1].name: duplicate container name 'container-1' (also spec.containers[0])"),
    ("security-context", _c1(securityContext={"runAsUser": 0}),
     "spec.containers[1].securityContext.runAsUser: is not supported"),
    ("security-context-type", _c1(securityContext=["privileged"]),
     "spec.containers[1].securityContext: must be an object"),
    ("liveness-probe-grpc", _c1(livenessProbe={"grpc": {"port": 80}}),
     "spec.containers[1].livenessProbe.grpc: is not supported"),
    ("probe-http-host", _c1(readinessProbe={"httpGet": {"port": 80, "host": "10.0.0.9"}}),
     "spec.containers[1].readinessProbe.httpGet.host: is not supported: a probe always targets its own capsule"),
    ("probe-tcp-host", _c1(startupProbe={"tcpSocket": {"port": 80, "host": "169.254.169.254"}}),
     "spec.containers[1].startupProbe.tcpSocket.host: is not supported: a probe always targets its own capsule"),
    ("probe-two-kinds", _c1(readinessProbe={"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}}),
     "spec.containers[1].readinessProbe: must have exactly one of exec, httpGet, tcpSocket"),
    ("probe-no-kind", _c1(readinessProbe={"periodSeconds": 1}),
     "spec.containers[1].readinessProbe: must have exactly one of exec, httpGet, tcpSocket"),
    ("probe-success-liveness", _c1(livenessProbe={"tcpSocket": {"port": 1}, "successThreshold": 2}),
     "spec.containers[1].livenessProbe.successThreshold: must be 1 for a liveness probe"),
    ("probe-success-startup", _c1(startupProbe={"tcpSocket": {"port": 1}, "successThreshold": 3}),
     "spec.containers[1].startupProbe.successThreshold: must be 1 for a startup probe"),
    ("probe-huge-period", _c1(readinessProbe={"tcpSocket": {"port": 1}, "periodSeconds": 10**400}),
     "spec.containers[1].readinessProbe.periodSeconds: must be a whole number from 1 to 3600"),
    ("probe-zero-failure", _c1(readinessProbe={"tcpSocket": {"port": 1}, "failureThreshold": 0}),
     "spec.containers[1].readinessProbe.failureThreshold: must be a whole number from 1 to 1000"),
    ("probe-bool-timeout", _c1(readinessProbe={"tcpSocket": {"port": 1}, "timeoutSeconds": True}),
     "spec.containers[1].readinessProbe.timeoutSeconds: must be a whole number from 1 to 3600"),
    ("probe-port-range", _c1(readinessProbe={"tcpSocket": {"port": 70000}}),
     "spec.containers[1].readinessProbe.tcpSocket.port: must be a port number from 1 to 65535 "
     "or the name of a container port"),
    ("probe-port-unknown-name", _c1(readinessProbe={"httpGet": {"port": "web"}}),
     "spec.containers[1].readinessProbe.httpGet.port: names no TCP port of this container: 'web'"),
    ("probe-http-path", _c1(readinessProbe={"httpGet": {"port": 80, "path": "no-slash"}}),
     "spec.containers[1].readinessProbe.httpGet.path: must be an absolute URL path of printable "
     "ASCII, at most 1024 characters"),
    ("probe-http-scheme", _c1(readinessProbe={"httpGet": {"port": 80, "scheme": "FTP"}}),
     "spec.containers[1].readinessProbe.httpGet.scheme: must be HTTP or HTTPS"),
    ("probe-http-header-crlf", _c1(readinessProbe={"httpGet": {"port": 80, "httpHeaders": [
        {"name": "X-A", "value": "a\r\nHost: evil"}]}}),
     "spec.containers[1].readinessProbe.httpGet.httpHeaders[0].value: must be printable text "
     "without line breaks, at most 1024 characters"),
    ("liveness-probe-no-command", _c1(livenessProbe={"exec": {"command": []}}),
     "spec.containers[1].livenessProbe.exec.command: must be a non-empty list of strings"),
    ("liveness-probe-period", _c1(livenessProbe={"exec": {"command": ["true"]}, "periodSeconds": 0}),
     "spec.containers[1].livenessProbe.periodSeconds: must be a whole number from 1 to 3600"),
    ("liveness-probe-on-init", _with(["spec", "initContainers", 0, "livenessProbe"],
                                     {"exec": {"command": ["true"]}}),
     "spec.initContainers[0].livenessProbe: is not allowed on init containers (they run to completion)"),
    ("readiness-probe-on-init", _with(["spec", "initContainers", 0, "readinessProbe"],
                                      {"exec": {"command": ["true"]}}),
     "spec.initContainers[0].readinessProbe: is not allowed on init containers (they run to completion)"),
    ("container-labels", _c1(labels={"a": "b"}), "spec.containers[1].labels: is not supported"),
    ("init-security-context",
     _with(["spec", "initContainers", 0, "securityContext"], {"capabilities": {}}),
     "spec.initContainers[0].securityContext.capabilities: is not supported"),
    ("unknown-container-key", _c1(restart="always"), "spec.containers[1].restart: unknown field"),
    ("command-not-list", _c1(command="sleep 1"), "spec.containers[1].command: must be a list of strings"),
    ("args-with-number", _c1(args=["sleep", 1]), "spec.containers[1].args: must be a list of strings"),
    ("workdir-relative", _c1(workDir="srv"), "spec.containers[1].workDir: must be an absolute path"),
    ("env-int", _c1(env={"PORT": 80}),
     "spec.containers[1].env.PORT: must be a string (quote numbers: \"80\")"),
    ("env-bool", _c1(env={"DEBUG": True}),
     "spec.containers[1].env.DEBUG: must be a string (quote numbers: \"80\")"),
    ("env-not-map", _c1(env=["A=1"]), "spec.containers[1].env: must be a map of strings"),
    ("pull-policy-unknown", _c1(imagePullPolicy="Sometimes"),
     "spec.containers[1].imagePullPolicy: must be one of Always, IfNotPresent, Never"),
    ("tty-yes", _c1(tty="yes"), "spec.containers[1].tty: must be true or false"),
    ("stdin-string", _c1(stdin="true"), "spec.containers[1].stdin: must be true or false"),
    # resources
    ("cpu-17", _c1(resources={"requests": {"cpu": 17}}),
     "spec.containers[1].resources.requests.cpu: must be between 0.1 and 16.0 cores"),
    ("cpu-too-small", _c1(resources={"requests": {"cpu": 0.05}}),
     "spec.containers[1].resources.requests.cpu: must be between 0.1 and 16.0 cores"),
    ("cpu-zero", _c1(resources={"requests": {"cpu": 0}}),
     "spec.containers[1].resources.requests.cpu: must be a positive number of cores (e.g. 0.5)"),
    ("cpu-words", _c1(resources={"requests": {"cpu": "half"}}),
     "spec.containers[1].resources.requests.cpu: must be a positive number of cores (e.g. 0.5)"),
    ("cpu-bool", _c1(resources={"requests": {"cpu": True}}),
     "spec.containers[1].resources.requests.cpu: must be a positive number of cores (e.g. 0.5)"),
    ("memory-9000", _c1(resources={"requests": {"memory": 9000}}),
     "spec.containers[1].resources.requests.memory: must be between 4 and 8192 (MiB)"),
    ("memory-2", _c1(resources={"requests": {"memory": 2}}),
     "spec.containers[1].resources.requests.memory: must be between 4 and 8192 (MiB)"),
    ("memory-256Mi", _c1(resources={"requests": {"memory": "256Mi"}}),
     "spec.containers[1].resources.requests.memory: must be a positive integer (MiB)"),
    ("memory-superscript-digit", _c1(resources={"requests": {"memory": "²"}}),
     "spec.containers[1].resources.requests.memory: must be a positive integer (MiB)"),
    ("memory-float", _c1(resources={"requests": {"memory": 64.5}}),
     "spec.containers[1].resources.requests.memory: must be a positive integer (MiB)"),
    ("memory-zero-string", _c1(resources={"requests": {"memory": "0"}}),
     "spec.containers[1].resources.requests.memory: must be a positive integer (MiB)"),
    ("resources-limits", _c1(resources={"limits": {"memory": 64}}),
     "spec.containers[1].resources.limits: is not supported"),
    ("requests-unknown-key", _c1(resources={"requests": {"gpu": 1}}),
     "spec.containers[1].resources.requests.gpu: unknown field"),
    # ports
    ("protocol-lower-case", _c1(ports=[{"containerPort": 80, "protocol": "tcp"}]),
     "spec.containers[1].ports[0].protocol: must be TCP or UDP"),
    ("container-port-missing", _c1(ports=[{"hostPort": 80}]),
     "spec.containers[1].ports[0].containerPort: is required: a port number from 1 to 65535"),
    ("container-port-too-big", _c1(ports=[{"containerPort": 70000}]),
     "spec.containers[1].ports[0].containerPort: is required: a port number from 1 to 65535"),
    ("container-port-superscript", _c1(ports=[{"containerPort": "²"}]),
     "spec.containers[1].ports[0].containerPort: is required: a port number from 1 to 65535"),
    ("host-port-string", _c1(ports=[{"containerPort": 80, "hostPort": "80"}]),
     "spec.containers[1].ports[0].hostPort: must be a port number from 1 to 65535"),
    ("port-name-number", _c1(ports=[{"containerPort": 80, "name": 80}]),
     "spec.containers[1].ports[0].name: must be a string"),
    # volumes and mounts
    ("mount-names-no-volume", _c1(volumeMounts=[{"name": "nope", "mountPath": "/x"}]),
     "spec.containers[1].volumeMounts[0].name: names no volume in spec.volumes: 'nope'"),
    ("mount-relative-path", tmpl(box(volumeMounts=[{"name": "data", "mountPath": "data"}]),
                                 volumes=[{"name": "data", "emptyDir": {}}]),
     "spec.containers[0].volumeMounts[0].mountPath: is required: an absolute path"),
    ("mount-path-twice", tmpl(box(volumeMounts=[{"name": "data", "mountPath": "/d"},
                                                {"name": "data", "mountPath": "/d"}]),
                              volumes=[{"name": "data", "emptyDir": {}}]),
     "spec.containers[0].volumeMounts[1].mountPath: /d is mounted twice"),
    ("volume-not-mounted", _vol({"name": "data", "emptyDir": {}}, mounted=False),
     "spec.volumes[0]: volume 'data' is not mounted by any container"),
    ("duplicate-volume-names",
     tmpl(box(volumeMounts=[{"name": "data", "mountPath": "/data"}]),
          volumes=[{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]),
     "spec.volumes[1].name: duplicate volume name 'data'"),
    ("volume-without-name", _vol({"emptyDir": {}}, mounted=False), "spec.volumes[0].name: is required"),
    ("volume-without-source", _vol({"name": "data"}),
     "spec.volumes[0]: needs exactly one source: cinder or emptyDir"),
    ("volume-two-sources", _vol({"name": "data", "emptyDir": {}, "cinder": {"size": 1}}),
     "spec.volumes[0]: needs exactly one source: cinder or emptyDir"),
    ("empty-dir-options", _vol({"name": "data", "emptyDir": {"medium": "Memory"}}),
     "spec.volumes[0].emptyDir: takes no options (emptyDir: {})"),
    ("cinder-empty", _vol({"name": "data", "cinder": {}}),
     "spec.volumes[0].cinder.size: is required (GiB)"),
    ("mounting-container-has-other-error",
     tmpl(box(volumeMounts=[{"name": "data", "mountPath": "/data"}],
              resources={"requests": {"cpu": 17}}),
          volumes=[{"name": "data", "emptyDir": {}}]),
     "spec.containers[0].resources.requests.cpu: must be between 0.1 and 16.0 cores"),
    ("cinder-neither-size-nor-id", _vol({"name": "data", "cinder": {"autoRemove": True}}),
     "spec.volumes[0].cinder.size: is required (GiB)"),
    ("cinder-both-size-and-id",
     _vol({"name": "data", "cinder": {"size": 1, "volumeID": "0" * 36}}),
     "spec.volumes[0].cinder.volumeID: reusing an existing volume is not supported yet; use size"),
    ("cinder-volume-id", _vol({"name": "data", "cinder": {"volumeID": "0" * 36}}),
     "spec.volumes[0].cinder.volumeID: reusing an existing volume is not supported yet; use size"),
    ("cinder-size-zero", _vol({"name": "data", "cinder": {"size": 0}}),
     "spec.volumes[0].cinder.size: must be a positive integer (GiB)"),
    ("cinder-auto-remove-string",
     _vol({"name": "data", "cinder": {"size": 1, "autoRemove": "yes"}}),
     "spec.volumes[0].cinder.autoRemove: must be true or false"),
    ("cinder-unknown-key", _vol({"name": "data", "cinder": {"size": 1, "type": "ssd"}}),
     "spec.volumes[0].cinder.type: unknown field"),
    # restart policy
    ("restart-policy-top-unknown", {**tmpl(), "restartPolicy": "always"},
     "restartPolicy: must be one of Always, OnFailure, Never, not 'always'"),
    ("restart-policy-spec-unknown", tmpl(restartPolicy="Sometimes"),
     "spec.restartPolicy: must be one of Always, OnFailure, Never, not 'Sometimes'"),
]


@pytest.mark.parametrize(("template", "expected"), [(t, e) for _, t, e in REJECTED],
                         ids=[i for i, _, _ in REJECTED])
def test_parse_rejects_with_exact_path_when_one_problem(template: dict[str, Any],
                                                        expected: str) -> None:
    assert problems(copy.deepcopy(template)) == [expected]


def test_parse_names_unmounted_volume_by_its_list_index_when_earlier_volume_invalid() -> None:
    t = tmpl(box(volumeMounts=[{"name": "a", "mountPath": "/a"}]),
             volumes=[{"name": "a", "cinder": {"size": "big"}}, {"name": "b", "emptyDir": {}}])
    assert problems(t) == ["spec.volumes[0].cinder.size: must be a positive integer (GiB)",
                           "spec.volumes[1]: volume 'b' is not mounted by any container"]


def test_a_liveness_probe_becomes_a_health_check_that_restarts() -> None:
    spec = parse_template(tmpl(box("web", livenessProbe={
        "exec": {"command": ["cat", "/tmp/alive"]}, "periodSeconds": 2, "failureThreshold": 2,
        "initialDelaySeconds": 5})))
    assert spec.containers[0].health == HealthCheck(command=["cat", "/tmp/alive"], interval=2,
                                                    timeout=1, retries=2, start_period=5,
                                                    restart=True)
    assert parse_template(tmpl(box("web"))).containers[0].health is None


def test_probes_of_each_kind_parse_with_kubernetes_defaults() -> None:
    spec = parse_template(tmpl(box(
        "web", ports=[{"containerPort": 8080, "name": "http"}],
        readinessProbe={"httpGet": {"port": "http", "path": "/ready", "scheme": "HTTPS",
                                    "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                        "successThreshold": 2, "periodSeconds": 1},
        livenessProbe={"tcpSocket": {"port": 9000}},
        startupProbe={"exec": {"command": ["true"]}, "failureThreshold": 30})))
    c = spec.containers[0]
    assert c.readiness == Probe(kind="http", port=8080, path="/ready", scheme="HTTPS",
                                headers=[("X-Probe", "1")], period=1, success_threshold=2)
    assert c.liveness == Probe(kind="tcp", port=9000)
    assert (c.liveness.period, c.liveness.timeout, c.liveness.failure_threshold,
            c.liveness.initial_delay) == (10, 1, 3, 0)
    assert c.startup == Probe(kind="exec", command=["true"], failure_threshold=30)
    assert c.health is None


def test_an_exec_liveness_probe_behind_a_startup_probe_is_the_probers() -> None:
    c = parse_template(tmpl(box("web", livenessProbe={"exec": {"command": ["true"]}},
                                startupProbe={"tcpSocket": {"port": 80}}))).containers[0]
    assert c.health is None and c.liveness == Probe(kind="exec", command=["true"])


def test_failure_policy_is_an_extension_with_a_container_default() -> None:
    assert parse_template(tmpl(box("web"))).failure_policy == "RestartContainer"
    assert parse_template(tmpl(box("web"), failurePolicy="RestartCapsule")).failure_policy == "RestartCapsule"
    assert problems(tmpl(box("web"), failurePolicy="Always")) == [
        "spec.failurePolicy: must be RestartContainer or RestartCapsule"]


def test_probes_do_not_change_the_spec_hash() -> None:
    plain = parse_template(tmpl(box("web"))).containers[0]
    probed = parse_template(tmpl(box("web", readinessProbe={"tcpSocket": {"port": 80}}))).containers[0]
    assert spec_hash(plain, "Always") == spec_hash(probed, "Always")


def test_parse_reports_invalid_volume_also_unmounted_when_no_container_mounts_it() -> None:
    t = tmpl(volumes=[{"name": "data", "cinder": {}}])
    assert problems(t) == ["spec.volumes[0].cinder.size: is required (GiB)",
                           "spec.volumes[0]: volume 'data' is not mounted by any container"]


def test_parse_error_message_names_the_problem_when_one() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_template(_c1(resources={"requests": {"memory": "256Mi"}}))
    assert exc.value.message == ("Invalid capsule template: spec.containers[1].resources.requests"
                                 ".memory: must be a positive integer (MiB)")


def test_parse_reports_every_problem_together() -> None:
    t = tmpl(box("web", resources={"requests": {"memory": "256Mi", "cpu": 17}}),
             box("web", ports=[{"containerPort": 80, "protocol": "tcp"}],
                 securityContext={"seLinuxOptions": {}}),
             restartPolicy="Sometimes")
    del t["kind"]
    t["metadata"]["name"] = "x"
    t["unexpected"] = 1
    with pytest.raises(InvalidInput) as exc:
        parse_template(t)
    expected = [
        "unexpected: unknown field",
        "kind: is required (kind: capsule)",
        f"metadata.name: {NAME_MSG}",
        "spec.restartPolicy: must be one of Always, OnFailure, Never, not 'Sometimes'",
        "spec.containers[0].resources.requests.cpu: must be between 0.1 and 16.0 cores",
        "spec.containers[0].resources.requests.memory: must be a positive integer (MiB)",
        "spec.containers[1].securityContext.seLinuxOptions: is not supported",
        "spec.containers[1].ports[0].protocol: must be TCP or UDP",
        "spec.containers[1].name: duplicate container name 'web' (also spec.containers[0])",
    ]
    assert sorted(exc.value.problems) == sorted(expected)
    assert exc.value.message.startswith(f"Invalid capsule template: {len(expected)} problems: ")
    for item in expected:
        assert item in exc.value.message


@pytest.mark.parametrize(("template", "expected"), [
    (["kind", "capsule"], "template: must be an object"),
    ("just a string", "template: must be an object"),
    (None, "template: must be an object"),
], ids=["list", "scalar-yaml", "none"])
def test_parse_rejects_when_not_an_object(template: Any, expected: str) -> None:
    assert problems(template) == [expected]


@pytest.mark.parametrize("text", ['{"kind": "capsule", ', "kind: [capsule\nspec: {"],
                         ids=["broken-json", "broken-yaml"])
def test_parse_rejects_when_text_does_not_parse(text: str) -> None:
    found = problems(text)
    assert len(found) == 1
    assert found[0].startswith("template: not valid YAML or JSON (")
    assert "\n" not in found[0]


# --------------------------------------------------------------------------- totals


def _spec(apps: list[tuple[float, int]], inits: list[tuple[float, int]]) -> CapsuleSpec:
    def mk(role: str, i: int, cpu: float, mem: int) -> dict[str, Any]:
        return box(f"{role}{i}", resources={"requests": {"cpu": cpu, "memory": mem}})
    return parse_template(tmpl(*[mk("a", i, c, m) for i, (c, m) in enumerate(apps)],
                               initContainers=[mk("i", i, c, m) for i, (c, m) in enumerate(inits)]))


@pytest.mark.parametrize(("apps", "inits", "cpu", "memory"), [
    ([(0.5, 256), (0.25, 128)], [(0.1, 64)], 0.75, 384),
    ([(0.5, 256), (0.25, 128)], [(2.0, 1024), (0.1, 64)], 2.0, 1024),
    ([(0.5, 256)], [(0.1, 512)], 0.5, 512),
    ([(0.1, 4), (0.2, 4)], [], 0.3, 8),
], ids=["zun-example", "init-bigger", "mixed-max", "rounded"])
def test_totals_take_larger_of_app_sum_and_init_peak(apps: list[tuple[float, int]],
                                                     inits: list[tuple[float, int]],
                                                     cpu: float, memory: int) -> None:
    spec = _spec(apps, inits)
    assert spec.total_cpu() == cpu
    assert spec.total_memory() == memory


def test_totals_zero_when_no_requests() -> None:
    spec = parse_template(tmpl(box("a"), box("b")))
    assert (spec.total_cpu(), spec.total_memory()) == (0.0, 0)
