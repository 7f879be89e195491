"""domain/kube.py: what a Pod manifest becomes, and every field refused by its Pod path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from capsuled.domain.host_access import capsule_spec_asks, template_asks
from capsuled.domain.kube import expand, is_kube, parse_manifest, parse_pod, unwrap
from capsuled.domain.spec import Port, Probe, VolumeMount, VolumeSpec
from capsuled.domain.template import parse_template
from capsuled.domain.template_out import render_template
from capsuled.errors import InvalidInput

# What `kubectl run web --image=nginx --dry-run=client -o yaml` writes.
KUBECTL_RUN = """
apiVersion: v1
kind: Pod
metadata:
  creationTimestamp: null
  labels:
    run: web
  name: web
spec:
  containers:
  - image: nginx
    name: web
    resources: {}
  dnsPolicy: ClusterFirst
  restartPolicy: Always
status: {}
"""


def pod(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": list(containers) or [{"name": "app", "image": "busybox"}],
                     **spec}}


def box(**extra: Any) -> dict[str, Any]:
    return {"name": "app", "image": "busybox", **extra}


def problems(document: Any) -> list[str]:
    with pytest.raises(InvalidInput) as exc:
        parse_pod(document)
    return exc.value.problems


def test_what_kubectl_run_writes_is_accepted() -> None:
    spec = parse_pod(yaml.safe_load(KUBECTL_RUN))
    assert spec.name == "web" and spec.labels == {"run": "web"}
    assert spec.restart_policy == "Always"
    assert [(c.name, c.image) for c in spec.containers] == [("web", "nginx")]


def test_a_pod_becomes_the_spec_of_the_equivalent_capsule_template() -> None:
    manifest = pod(
        box(command=["sh", "-c"], args=["exec httpd -f"], workingDir="/srv",
            env=[{"name": "MODE", "value": "fast"}, {"name": "EMPTY"}],
            ports=[{"containerPort": 8080, "hostPort": 18080, "protocol": "TCP", "name": "http"}],
            resources={"requests": {"cpu": "250m", "memory": "64Mi"}},
            volumeMounts=[{"name": "scratch", "mountPath": "/scratch", "readOnly": True}],
            readinessProbe={"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 2},
            livenessProbe={"tcpSocket": {"port": 8080}},
            imagePullPolicy="Always", tty=True, stdin=True),
        initContainers=[{"name": "setup", "image": "busybox", "command": ["true"]}],
        volumes=[{"name": "scratch", "emptyDir": {}}], restartPolicy="OnFailure",
        nodeSelector={"disk": "ssd"})
    manifest["metadata"].update(labels={"app": "web"}, annotations={"team": "a"})
    spec = parse_pod(manifest)
    app = spec.containers[0]
    assert (app.command, app.args, app.workdir) == (["sh", "-c"], ["exec httpd -f"], "/srv")
    assert app.env == {"MODE": "fast", "EMPTY": ""}
    assert app.ports == [Port(container_port=8080, host_port=18080, name="http")]
    assert (app.cpu, app.memory) == (0.25, 64)
    assert app.volume_mounts == [VolumeMount(name="scratch", mount_path="/scratch", read_only=True)]
    assert app.readiness == Probe(kind="http", port=8080, period=2)
    assert app.liveness == Probe(kind="tcp", port=8080)
    assert (app.image_pull_policy, app.tty, app.stdin) == ("Always", True, True)
    assert [c.name for c in spec.init_containers] == ["setup"]
    assert spec.volumes == [VolumeSpec(name="scratch", type="emptyDir")]
    assert (spec.restart_policy, spec.node_selector) == ("OnFailure", {"disk": "ssd"})
    assert (spec.labels, spec.annotations) == ({"app": "web"}, {"team": "a"})
    # The same capsule as its template: written out and parsed again, nothing changes.
    assert parse_template(render_template(spec)) == spec


@pytest.mark.parametrize(("resources", "cpu", "memory"), [
    ({"requests": {"cpu": "500m", "memory": "128Mi"}}, 0.5, 128),
    ({"limits": {"cpu": 2, "memory": "1Gi"}}, 2.0, 1024),
    ({"requests": {"cpu": 0.25, "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}, 1.0, 256),
    ({"requests": {"memory": "100M"}}, None, 96),  # 10^8 bytes, rounded up to whole MiB
    ({"limits": {"memory": 67108864}}, None, 64),  # a bare number is bytes
    ({"requests": {"cpu": ".1"}}, 0.1, None),
])
def test_quantities_become_cores_and_mib_and_the_limit_is_the_claim(
        resources: dict[str, Any], cpu: float | None, memory: int | None) -> None:
    app = parse_pod(pod(box(resources=resources))).containers[0]
    assert (app.cpu, app.memory) == (cpu, memory)


def test_env_values_command_and_args_expand_references_as_kubernetes_does() -> None:
    app = parse_pod(pod(box(env=[{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(C)"},
                                 {"name": "C", "value": "c"}],
                            command=["echo", "$(B)", "$$(A)", "$(date)", "$(A"]))).containers[0]
    assert app.env == {"A": "x", "B": "x-$(C)", "C": "c"}  # only earlier variables
    assert app.command == ["echo", "x-$(C)", "$(A)", "$(date)", "$(A"]


@pytest.mark.parametrize(("text", "out"), [
    ("$(X)", "v"), ("$$(X)", "$(X)"), ("$$", "$"), ("a$b", "a$b"), ("$", "$"),
    ("$(Y)", "$(Y)"), ("$()", "$()"), ("$(X", "$(X"), ("$(X)$(X)", "vv")])
def test_expand(text: str, out: str) -> None:
    assert expand(text, {"X": "v"}) == out


def test_every_unsupported_field_is_refused_by_its_path_all_at_once() -> None:
    manifest = pod(box(lifecycle={"preStop": {"exec": {"command": ["x"]}}},
                       envFrom=[{"configMapRef": {"name": "cm"}}],
                       env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                       ports=[{"containerPort": 80, "hostIP": "10.0.0.1"}],
                       volumeMounts=[{"name": "data", "mountPath": "/d", "subPath": "x"},
                                     {"name": "cache", "mountPath": "/c"}],
                       resources={"limits": {"nvidia.com/gpu": 1}},
                       readinessProbe={"exec": {"command": ["true"]},
                                       "terminationGracePeriodSeconds": 5},
                       securityContext={"runAsUser": 0}, colour="blue"),
                   volumes=[{"name": "data", "configMap": {"name": "cm"}},
                            {"name": "cache", "emptyDir": {"medium": "Memory"}}],
                   tolerations=[{"operator": "Exists"}], terminationGracePeriodSeconds=5,
                   serviceAccountName="robot")
    manifest["metadata"]["namespace"] = "prod"
    found = problems(manifest)
    c = "spec.containers[0]"
    for expected in ("metadata.namespace: is not supported",
                     "spec.serviceAccountName: is not supported",
                     "spec.terminationGracePeriodSeconds: is not supported",
                     "spec.tolerations: is not supported",
                     "spec.volumes[0].configMap: is not supported (only emptyDir volumes)",
                     "spec.volumes[1].emptyDir.medium: is not supported",
                     f"{c}.lifecycle: is not supported", f"{c}.envFrom: is not supported",
                     f"{c}.colour: unknown field",
                     f"{c}.env[0].valueFrom: is not supported",
                     f"{c}.ports[0].hostIP: is not supported",
                     f"{c}.volumeMounts[0].subPath: is not supported",
                     f"{c}.resources.limits.nvidia.com/gpu: is not supported (only cpu and memory)",
                     f"{c}.readinessProbe.terminationGracePeriodSeconds: is not supported",
                     f"{c}.securityContext.runAsUser: is not supported"):
        assert expected in found
    # No false second problem: the refused volume still names a volume its mount finds.
    assert not any("names no volume" in p or "not mounted" in p for p in found)
    assert len(found) == 15


def test_the_parsers_problems_are_named_by_the_pods_paths() -> None:
    found = problems(pod(box(workingDir="srv", resources={"limits": {"memory": "64Gi",
                                                                     "cpu": "3000x"}},
                             env=[{"name": "A=B", "value": "x"}, {"name": "N", "value": 80}]),
                         restartPolicy="Sometimes"))
    c = "spec.containers[0]"
    assert f"{c}.workingDir: must be an absolute path" in found
    assert f"{c}.resources.limits.memory: must be between 4Mi and 8192Mi" in found
    assert any(p.startswith(f"{c}.resources.limits.cpu: must be a CPU quantity") for p in found)
    assert any(p.startswith(f"{c}.env[0].name: ") for p in found)
    assert any(p.startswith(f"{c}.env[1].value: must be a string") for p in found)
    assert any(p.startswith("spec.restartPolicy: must be one of") for p in found)


def test_a_limit_below_its_request_is_refused() -> None:
    assert problems(pod(box(resources={"requests": {"cpu": 1}, "limits": {"cpu": "500m"}}))) == [
        "spec.containers[0].resources.limits.cpu: must be at least requests.cpu"]


@pytest.mark.parametrize(("change", "expected"), [
    ({"apiVersion": "apps/v1"}, "apiVersion: must be v1 for a Pod, not 'apps/v1'"),
    ({"kind": "Deployment"}, "kind: 'Deployment' is not supported: only Pod"),
    ({"metadata": {}}, "metadata.name: is required (it names the capsule)"),
    ({"metadata": {"name": "web", "generateName": "web-"}}, "metadata.generateName: is not supported"),
    ({"spec": None}, "spec: is required: an object with containers"),
    ({"status": {"phase": "Running"}}, "status: is not supported"),
])
def test_top_level_problems(change: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems({**pod(), **change}))


def test_container_names_are_required_as_in_kubernetes() -> None:
    assert problems(pod({"image": "busybox"})) == ["spec.containers[0].name: is required"]


def test_host_level_fields_reach_the_same_decisions_as_a_template() -> None:
    manifest = pod(box(securityContext={"privileged": True},
                       ports=[{"containerPort": 80, "hostPort": 80}]),
                   hostNetwork=True, volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    # The raw scan, made before parsing, sees them at the Pod's paths...
    assert template_asks(manifest) == ["spec.hostNetwork",
                                       "spec.containers[0].ports[0].hostPort (80 is below 1024)",
                                       "spec.containers[0].securityContext.privileged",
                                       "spec.volumes[0].hostPath"]
    # ...and what may be granted is decided on the parsed spec, as for a template.
    allowed = pod(box(securityContext={"privileged": True},
                      ports=[{"containerPort": 80, "hostPort": 80}]))
    assert capsule_spec_asks(parse_pod(allowed)) == [
        "spec.containers[0].securityContext.privileged",
        "spec.containers[0].ports[0].hostPort (80 is below 1024)"]
    found = problems(manifest)
    assert "spec.hostNetwork: is not supported" in found
    assert "spec.volumes[0].hostPath: is not supported (only emptyDir volumes)" in found


def test_empty_values_and_capsule_like_defaults_ask_for_nothing() -> None:
    spec = parse_pod(pod(box(stdinOnce=False, ports=[{"containerPort": 80, "hostIP": "0.0.0.0"}]),
                         hostNetwork=False, shareProcessNamespace=True, tolerations=[],
                         securityContext={}, imagePullSecrets=None))
    assert spec.containers[0].ports == [Port(container_port=80)]
    # Not the capsule's behaviour: refused even though it is Kubernetes' default.
    assert problems(pod(shareProcessNamespace=False)) == ["spec.shareProcessNamespace: is not supported"]
    # A source given empty is still not an emptyDir.
    assert problems(pod(box(volumeMounts=[{"name": "v", "mountPath": "/v"}]),
                        volumes=[{"name": "v", "hostPath": {}}])) == [
        "spec.volumes[0].hostPath: is not supported (only emptyDir volumes)"]


def test_lists_detection_and_templates_through_one_entry() -> None:
    assert is_kube(pod()) and is_kube({"kind": "List"}) and not is_kube({"kind": "capsule"})
    assert unwrap({"apiVersion": "v1", "kind": "List", "items": [pod()]}) == pod()
    with pytest.raises(InvalidInput, match="items: a List sent as one template must hold exactly one Pod, not 2"):
        unwrap({"kind": "List", "items": [pod(), pod()]})
    template = {"kind": "capsule", "metadata": {"name": "web"},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    assert parse_manifest(template) == parse_manifest({"kind": "List", "items": [pod()]})


def test_text_nul_and_depth_are_refused_like_a_templates() -> None:
    assert parse_pod(KUBECTL_RUN).name == "web"
    assert problems(pod(box(image="busy\x00box"))) == [
        "spec.containers[0].image: must not contain NUL characters"]
    deep: Any = "x"
    for _ in range(100):
        deep = [deep]
    with pytest.raises(InvalidInput, match="nested deeper"):
        parse_pod(pod(box(args=deep)))


def test_references_cannot_expand_a_small_manifest_into_a_huge_one() -> None:
    """Values refer to values: ten doublings of 64 KiB would be 64 MiB of environment."""
    env = [{"name": "V0", "value": "x" * 65536}]
    env += [{"name": f"V{i}", "value": f"$(V{i - 1})$(V{i - 1})"} for i in range(1, 11)]
    found = problems(pod(box(env=env, args=["$(V0)"] * 1000)))
    assert found[0].startswith("spec.containers[0].env[2].value: its $(VAR) references expand "
                               "to more than 262144 characters in all")
    assert "spec.containers[0].args: its $(VAR) references expand to more than 262144 characters in all" in found
