"""Properties of the Pod translator (hypothesis), as test_parser_properties.py holds the
template parser to them: for any input, Pod-shaped or not, `parse_pod` returns a spec or
raises `InvalidInput` whose problems are bounded '<path>: <message>' lines starting at a
field the caller sent or a Pod knows; and host access decided on the parsed spec is never
wider than what the raw scan of the Pod reports (DESIGN.md decision 11)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from capsuled.domain.host_access import capsule_spec_asks, template_asks
from capsuled.domain.kube import POD_KEYS, parse_manifest, parse_pod
from capsuled.errors import InvalidInput
from tests.unit.fuzz.test_parser_properties import (CI, assert_well_formed, images, junk, names,
                                                     obj, paths, str_lists, words)

quantities = st.sampled_from(["100m", "0.5", "2", "64Mi", "1Gi", "100M", "1e3", "-1", "m", ""]) \
    | st.integers(-1, 2**40) | st.floats(allow_nan=True)
env = st.lists(obj(required=("name",), name=st.from_regex(r"\A[A-Z][A-Z0-9_]{0,6}\Z"),
                   value=words | st.sampled_from(["$(A)", "$$(B)", "$(", "$"]),
                   valueFrom=st.just({})), max_size=3)
probe = obj(exec=obj(command=str_lists), httpGet=obj(port=st.integers(0, 70000) | names,
                                                      path=paths, host=names),
            tcpSocket=obj(port=st.integers(1, 65535)), periodSeconds=st.integers(0, 4000),
            terminationGracePeriodSeconds=st.integers(0, 5))
container = obj(
    required=("name", "image"), name=names, image=images, command=str_lists, args=str_lists,
    workingDir=paths, env=env, lifecycle=junk, envFrom=junk, stdinOnce=st.booleans(),
    resources=obj(requests=obj(cpu=quantities, memory=quantities),
                  limits=obj(cpu=quantities, memory=quantities, gpu=quantities), claims=junk),
    ports=st.lists(obj(containerPort=st.integers(1, 65535), hostPort=st.integers(1, 65535),
                       protocol=st.sampled_from(["TCP", "UDP", "SCTP"]), name=names,
                       hostIP=st.sampled_from(["", "0.0.0.0", "127.0.0.1"])), max_size=2),
    volumeMounts=st.lists(obj(name=st.sampled_from(["v1", "v2"]), mountPath=paths,
                              readOnly=st.booleans(), subPath=names), max_size=2),
    securityContext=obj(privileged=st.booleans(), runAsUser=st.integers(0, 10),
                        capabilities=junk),
    livenessProbe=probe, readinessProbe=probe, startupProbe=probe,
    tty=st.booleans(), stdin=st.booleans(), imagePullPolicy=st.sampled_from(["Always", "Never"]),
)
volume = obj(name=st.sampled_from(["v1", "v2"]), emptyDir=st.just({}) | obj(medium=names),
             hostPath=obj(path=paths), configMap=junk)
pods = obj(
    required=("apiVersion", "kind", "metadata", "spec"),
    apiVersion=st.sampled_from(["v1", "apps/v1"]), kind=st.sampled_from(["Pod", "List"]),
    metadata=obj(name=names, labels=st.dictionaries(names, words, max_size=2),
                 namespace=names, creationTimestamp=st.none()),
    status=st.just({}) | junk,
    spec=obj(required=("containers",), containers=st.lists(container, min_size=1, max_size=2),
             initContainers=st.lists(container, max_size=1), volumes=st.lists(volume, max_size=2),
             restartPolicy=st.sampled_from(["Always", "Never"]), hostNetwork=st.booleans(),
             hostPID=st.booleans(), dnsPolicy=st.sampled_from(["ClusterFirst", "None"]),
             nodeSelector=st.dictionaries(names, words, max_size=2),
             terminationGracePeriodSeconds=st.integers(0, 30)),
)


def check_pod(value: Any) -> None:
    try:
        spec = parse_pod(value)
    except InvalidInput as exc:
        assert_well_formed(exc, POD_KEYS | {"template"}, value if not isinstance(value, str) else None)
        return
    assert set(capsule_spec_asks(spec)) <= set(template_asks(value))


@CI
@given(junk)
def test_any_value_is_a_spec_or_invalid_input(value: Any) -> None:
    check_pod(value)


@CI
@given(pods)
def test_pod_shaped_objects_are_a_spec_or_invalid_input(value: dict[Any, Any]) -> None:
    check_pod(value)


@CI
@given(st.lists(pods, max_size=3).map(lambda items: {"kind": "List", "items": items}) | junk)
def test_lists_and_anything_else_through_the_one_entry(value: Any) -> None:
    try:
        parse_manifest(value)
    except InvalidInput as exc:
        assert exc.problems
