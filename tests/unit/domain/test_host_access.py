from capsuled.domain.host_access import request_asks, template_asks


def test_a_plain_template_asks_for_nothing() -> None:
    t = {"kind": "capsule", "spec": {"containers": [{"image": "busybox"}],
                                     "volumes": [{"name": "v", "emptyDir": {}}]}}
    assert template_asks(t) == []
    assert template_asks({"spec": "nonsense"}) == []
    assert template_asks(None) == []


def test_every_host_level_template_field_is_named_with_its_path() -> None:
    t = {"spec": {
        "hostNetwork": True, "hostPID": True, "hostIPC": False, "runtimeClassName": "kata",
        "initContainers": [{"image": "b", "securityContext": {"privileged": True}}],
        "containers": [{"image": "b"},
                       {"image": "b", "privileged": True, "devices": ["/dev/kvm"],
                        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}
    assert template_asks(t) == [
        "spec.hostNetwork", "spec.hostPID", "spec.runtimeClassName",
        "spec.initContainers[0].securityContext.privileged",
        "spec.containers[1].privileged", "spec.containers[1].devices",
        "spec.containers[1].securityContext.capabilities.add",
        "spec.volumes[0].hostPath"]


def test_container_request_asks() -> None:
    assert request_asks({"image": "busybox", "privileged": False, "runtime": "runc"}) == []
    assert request_asks({"privileged": True, "runtime": "kata",
                         "mounts": [{"source": "data", "destination": "/d"},
                                    {"source": "/etc", "destination": "/host-etc"}]}) == [
        "privileged", "runtime", "mounts[1].source"]
    # Zun's type bind injects a file (base64 content, which may well start with "/").
    assert request_asks({"mounts": [{"type": "bind", "source": "/9j/4AAQ", "destination": "/f"}]}) == []
