"""Properties of the parsers a tenant's input reaches first (hypothesis).

For any JSON- or YAML-shaped input, and any text: `parse_template` and
`parse_container_request` either return a spec or raise `InvalidInput`, never anything
else (which the API would turn into a 500); every problem reads `<field path>: <message>`
starting from a field the caller sent or one the format knows, and is bounded in length
whatever the caller sent. A valid template parses to what it says, the same from an
object, JSON text and YAML text, and host access decided on the parsed spec is never
wider than what the raw scan reports (DESIGN.md decision 11).

Runs are derandomized (the same examples every run) so that CI is deterministic; a
failure prints the shrunk example to add as a regular test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsuled import documents
from capsuled.domain.container_request import KNOWN, parse_container_request
from capsuled.domain.host_access import (bare_spec_asks, capsule_spec_asks, request_asks,
                                         template_asks)
from capsuled.domain.template import MAX_PROBLEM_CHARS, TOP_KEYS, parse_template
from capsuled.errors import InvalidInput

CI = settings(derandomize=True, database=None, deadline=None, max_examples=120,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ----------------------------------------------------------------------------- strategies

# Keys as YAML can make them (JSON only has strings), long ones included: they end up in
# problem paths, which must stay bounded.
texts = st.text(max_size=12) | st.text(min_size=300, max_size=2000)
keys = texts | st.integers() | st.none() | st.booleans() | st.floats(allow_nan=False)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30)
           | st.floats() | texts | st.sampled_from(["²", "1e400", "-1", "0", "true", "80"]))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(keys, inner, max_size=3), max_leaves=8)
json_junk = st.recursive(scalars.filter(lambda v: v == v), lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(texts, inner, max_size=3), max_leaves=8)


def maybe(valid: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = junk) -> st.SearchStrategy[Any]:
    """Mostly the right shape, now and then anything: most examples get past the first
    check of a field and reach the ones behind it."""
    return st.one_of(*[valid] * 15, bad)


def obj(bad: st.SearchStrategy[Any] = junk, required: tuple[str, ...] = (),
        **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[Any, Any]]:
    """A map with the `required` fields and any subset of the others, rarely with an
    unknown key too."""
    extra = st.one_of(*[st.just({})] * 10, st.dictionaries(keys if bad is junk else texts, bad,
                                                           min_size=1, max_size=1))
    known = st.fixed_dictionaries(
        {k: maybe(v, bad) for k, v in fields.items() if k in required},
        optional={k: maybe(v, bad) for k, v in fields.items() if k not in required})
    return st.builds(lambda k, e: {**e, **k}, known, extra)


names = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{1,20}\Z")
images = st.sampled_from(["busybox", "busybox:latest", "capsuled/infra", "registry:5000/a/b@x"])
paths = st.from_regex(r"\A/[a-z]{1,8}(/[a-z]{1,8}){0,2}\Z")
words = st.text(st.characters(exclude_characters="\x00"), max_size=10)
str_lists = st.lists(words, max_size=3)
str_maps = st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9]{0,8}\Z"), words, max_size=3)

container = obj(
    required=("name", "image"), name=names, image=images, command=str_lists, args=str_lists, workDir=paths, env=str_maps,
    resources=obj(requests=obj(cpu=st.floats(0.1, 16) | st.sampled_from(["0.5", "2"]),
                               memory=st.integers(4, 8192) | st.sampled_from(["64", "²"]))),
    ports=st.lists(obj(containerPort=st.integers(1, 65535), hostPort=st.integers(1, 65535),
                       protocol=st.sampled_from(["TCP", "UDP"]), name=names), max_size=2),
    volumeMounts=st.lists(obj(name=st.sampled_from(["v1", "v2"]), mountPath=paths,
                              readOnly=st.booleans()), max_size=2),
    imagePullPolicy=st.sampled_from(["Always", "ifnotpresent", "Never"]),
    tty=st.booleans(), stdin=st.booleans(),
    securityContext=obj(privileged=st.booleans(), capabilities=junk),
    livenessProbe=obj(exec=obj(command=str_lists), periodSeconds=st.integers(0, 4000),
                      timeoutSeconds=st.integers(1, 10), failureThreshold=st.integers(1, 5),
                      initialDelaySeconds=st.integers(0, 10)),
)
volume = obj(name=st.sampled_from(["v1", "v2"]), emptyDir=st.just({}),
             cinder=obj(size=st.integers(1, 10), autoRemove=st.booleans()))
templates = obj(
    required=("kind", "metadata", "spec"), kind=st.sampled_from(["capsule", "Capsule"]), capsuleVersion=st.just("beta"),
    restartPolicy=st.sampled_from(["Always", "OnFailure", "Never"]),
    metadata=obj(name=names, labels=str_maps, annotations=str_maps),
    availabilityZone=names,
    spec=obj(required=("containers",), containers=st.lists(container, min_size=1, max_size=3), initContainers=st.lists(container, max_size=2),
             volumes=st.lists(volume, max_size=2), restartPolicy=st.sampled_from(["Always", "Never"]),
             nodeSelector=str_maps, hostNetwork=st.booleans()),
)

requests = obj(
    json_junk,
    name=names, image=images, command=str_lists | st.text(max_size=20), entrypoint=str_lists,
    cpu=st.floats(0.1, 16) | st.sampled_from(["1", "1e999", "²", "nan"]) | st.integers(0, 10**400),
    memory=st.integers(4, 8192) | st.sampled_from(["64M", "64", "²"]), workdir=paths,
    environment=str_maps, labels=str_maps | st.just({"capsuled.x": "y"}),
    restart_policy=obj(json_junk, Name=st.sampled_from(["no", "always", "on-failure"]),
                       MaximumRetryCount=st.integers(-2, 2000)) | st.sampled_from(["on-failure:3", "always"]),
    interactive=st.booleans(), tty=st.booleans(), privileged=st.booleans(),
    auto_remove=st.booleans(), auto_heal=st.booleans(), hostname=names, capsule=names,
    runtime=st.sampled_from(["runc", "kata"]), image_driver=st.sampled_from(["docker", "glance"]),
    mounts=st.lists(obj(json_junk, destination=paths, size=st.integers(0, 20) | st.just("2"),
                        type=st.sampled_from(["volume", "bind"]), source=st.sampled_from(["", "aGk=", "/etc", "!"])),
                    max_size=2),
    healthcheck=obj(json_junk, cmd=st.text(max_size=10), interval=st.integers(0, 4000) | st.just("²"),
                    retries=st.integers(0, 5), timeout=st.integers(1, 5)),
    hints=st.dictionaries(st.sampled_from(["label:ssd", "zone", "label:"]), st.text(max_size=5), max_size=2),
    exposed_ports=st.dictionaries(st.sampled_from(["80", "80/tcp", "53/udp", "0", "x/tcp", "70000", "8/TCP"]),
                                  st.just({}) | st.just({"HostPort": "1"}), max_size=3) | junk,
    nets=st.just([]), host=names, availability_zone=names,
)


def dumped(value: Any) -> st.SearchStrategy[str]:
    return st.sampled_from([json.dumps(value), yaml.safe_dump(value, sort_keys=False)])


# ----------------------------------------------------------------------------- checks

def assert_well_formed(exc: InvalidInput, known: set[str], sent: Any) -> None:
    """Each problem is '<path>: <message>' whose path starts at a field the format knows
    or one the caller sent, and is bounded whatever the input's size."""
    assert exc.problems, "an InvalidInput without problems"
    roots = [f"{k}{sep}" for k in known for sep in (": ", ".", "[")]
    for k in sent if isinstance(sent, dict) else ():
        shown = (str(k) or "''")[:40]
        roots += [shown, shown.replace("\x00", "\\0")]  # NUL is shown escaped
    for problem in exc.problems:
        assert ": " in problem, problem
        assert len(problem) <= MAX_PROBLEM_CHARS, (len(problem), problem[:200])
        assert any(problem.startswith(r) for r in roots), (problem[:200], sorted(roots)[:20])
    assert len(exc.message) <= MAX_PROBLEM_CHARS * (len(exc.problems) + 1)


def decoded(value: Any) -> Any:
    """What parse_template reads: text decoded within the budgets, or the object itself."""
    if not isinstance(value, str):
        return value
    try:
        return documents.load_text(value)
    except documents.DocumentError:
        return None


def check_template(value: Any) -> None:
    try:
        spec = parse_template(value)
    except InvalidInput as exc:
        assert_well_formed(exc, TOP_KEYS | {"template"}, decoded(value))
        return
    # Anything the parsed spec would make privileged, the raw scan reports too.
    assert set(capsule_spec_asks(spec)) <= set(template_asks(decoded(value)))


# ----------------------------------------------------------------------------- template


@CI
@given(junk)
def test_any_value_is_a_spec_or_invalid_input(value: Any) -> None:
    check_template(value)


@CI
@given(templates)
def test_template_shaped_objects_are_a_spec_or_invalid_input(value: dict[Any, Any]) -> None:
    check_template(value)


@CI
@given(templates.flatmap(lambda t: st.tuples(st.just(t), dumped(t))))
def test_template_text_parses_as_its_object(case: tuple[dict[Any, Any], str]) -> None:
    value, text = case
    check_template(text)
    try:
        from_object = parse_template(value)
    except InvalidInput:
        return
    assert parse_template(text) == from_object


@CI
@given(st.text(max_size=400) | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
       | st.sampled_from(["&a [*a]", "a: &a {b: *a}", "!!python/object:os.system {}", "? [a]\n: b",
                          "!!set {a, b}", "!!binary aGk=", "kind: 2026-01-01", "{\"a\": NaN}",
                          "{" * 70, "- " * 70 + "x", "kind: capsule\nmetadata: {}\nspec: *x"]))
def test_any_text_is_a_spec_or_invalid_input(text: str) -> None:
    check_template(text)


@CI
@given(st.text(max_size=300) | junk.map(lambda v: yaml.safe_dump(v, sort_keys=False)) | json_junk.map(json.dumps))
def test_load_text_is_a_value_or_invalid_input(text: str) -> None:
    """The decoder on its own (the CLI decodes files with it too, one or many documents)."""
    for load in (documents.load_text, lambda t: documents.load_yaml_all(t, "file")):
        try:
            load(text)
        except documents.DocumentError as exc:
            problem = exc.message
            assert problem.startswith(("template: ", "file: ")) and len(problem) <= MAX_PROBLEM_CHARS, problem


@CI
@given(st.lists(st.sampled_from(["kind: capsule", "metadata: {}", "spec:", "  containers:",
                                 "  - name: a", "    image: busybox", "    securityContext:",
                                 "      privileged: true", "  - &x {name: b, image: busybox}",
                                 "  - *x", "    env: {A: 1}", "  volumes: [{name: v, emptyDir: {}}]",
                                 "\t", "---", "... ", "%YAML 1.1", "!!str", "- ? x"]), max_size=12))
def test_yaml_from_template_lines_is_a_spec_or_invalid_input(lines: list[str]) -> None:
    check_template("\n".join(lines))


# A template this server accepts, with what it should parse to.
valid_containers = st.lists(
    st.fixed_dictionaries(
        {"name": names, "image": images},
        optional={"command": str_lists, "args": str_lists, "env": str_maps,
                  "securityContext": st.fixed_dictionaries({"privileged": st.booleans()}),
                  "resources": st.fixed_dictionaries({"requests": st.fixed_dictionaries(
                      {"cpu": st.floats(0.1, 4), "memory": st.integers(4, 1024)})})}),
    min_size=1, max_size=4, unique_by=lambda c: c["name"])


@CI
@given(valid_containers, st.booleans(), str_maps, st.sampled_from(["Always", "OnFailure", "Never"]))
def test_valid_template_round_trips(containers: list[dict[str, Any]], with_volume: bool,
                                    labels: dict[str, str], policy: str) -> None:
    spec: dict[str, Any] = {"containers": containers, "restartPolicy": policy}
    if with_volume:
        spec["volumes"] = [{"name": "data", "emptyDir": {}}]
        containers[0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    value = {"kind": "capsule", "metadata": {"name": "cap", "labels": labels}, "spec": spec}
    parsed = parse_template(value)
    assert parse_template(json.dumps(value)) == parsed
    assert parse_template(yaml.safe_dump(value)) == parsed
    assert [c.name for c in parsed.containers] == [c["name"] for c in containers]
    assert [c.image for c in parsed.containers] == [c["image"] for c in containers]
    assert parsed.labels == labels and parsed.restart_policy == policy
    privileged = {f"spec.containers[{i}].securityContext.privileged"
                  for i, c in enumerate(containers) if c.get("securityContext", {}).get("privileged")}
    assert [c.privileged for c in parsed.containers] == [
        bool(c.get("securityContext", {}).get("privileged")) for c in containers]
    assert set(capsule_spec_asks(parsed)) == privileged
    assert privileged <= set(template_asks(value))


# ----------------------------------------------------------------------------- container request


def check_request(body: dict[str, Any], command_as_string: bool = False) -> None:
    try:
        spec = parse_container_request(body, command_as_string=command_as_string)
    except InvalidInput as exc:
        assert_well_formed(exc, set(KNOWN), body)
        return
    assert set(bare_spec_asks(spec)) <= set(request_asks(body))


@CI
@given(st.dictionaries(texts, json_junk, max_size=6), st.booleans())
def test_any_request_is_a_spec_or_invalid_input(body: dict[str, Any], as_string: bool) -> None:
    check_request(body, as_string)


@CI
@given(requests, st.booleans())
def test_request_shaped_bodies_are_a_spec_or_invalid_input(body: dict[str, Any], as_string: bool) -> None:
    check_request(body, as_string)


@CI
@given(st.fixed_dictionaries({"image": images}, optional={
    "name": names, "command": str_lists, "environment": str_maps, "privileged": st.booleans(),
    "cpu": st.floats(0.1, 16), "memory": st.integers(4, 8192)}))
def test_valid_request_round_trips(body: dict[str, Any]) -> None:
    spec = parse_container_request(body)
    assert spec.container.image == body["image"]
    assert spec.container.name == body.get("name", "")
    assert spec.container.args == body.get("command", [])
    assert spec.container.env == body.get("environment", {})
    assert spec.container.privileged == body.get("privileged", False)
    assert bare_spec_asks(spec) == (["privileged"] if body.get("privileged") else [])
    assert set(bare_spec_asks(spec)) <= set(request_asks(body))


def test_strategies_reach_valid_specs() -> None:
    """Guard against strategies that only ever make invalid input (vacuous properties)."""
    found = []

    @settings(derandomize=True, database=None, deadline=None, max_examples=300)
    @given(templates)
    def probe(value: dict[Any, Any]) -> None:
        try:
            parse_template(value)
            found.append(value)
        except InvalidInput:
            pass

    probe()
    assert found, "the template strategy never produced a valid template"


# ----------------------------------------------------------------------------- found by the above


def test_control_characters_in_yaml_text_are_invalid_input() -> None:
    """PyYAML refuses them while the loader is built, before it parses anything."""
    with pytest.raises(InvalidInput, match=r"^template: not valid YAML"):
        parse_template("kind: capsule\x08")


def test_numeric_keys_in_a_security_context_are_invalid_input() -> None:
    """YAML keys may be numbers: sorting them with the string ones was a TypeError (500)."""
    with pytest.raises(InvalidInput) as exc:
        parse_template("kind: capsule\nmetadata: {}\nspec:\n  containers:\n"
                       "  - {image: busybox, securityContext: {0: x, capabilities: y}}\n")
    assert exc.value.problems == ["spec.containers[0].securityContext.0: is not supported",
                                  "spec.containers[0].securityContext.capabilities: is not supported"]


def test_huge_and_empty_unknown_keys_make_bounded_problems_with_a_path() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_template({"kind": "capsule", "metadata": {}, "spec": {"containers": [
            {"image": "busybox", "x" * 100_000: 1}]}, "": 2})
    assert exc.value.problems[0] == "'': unknown field"
    assert exc.value.problems[1].startswith("spec.containers[0].xxx")
    assert exc.value.problems[1].endswith("…: unknown field")
    assert all(len(p) <= MAX_PROBLEM_CHARS for p in exc.value.problems)
    with pytest.raises(InvalidInput) as exc:
        parse_container_request({"image": "busybox", "": 1, "y" * 100_000: 2})
    assert exc.value.problems[0] == "'': unknown field"
    assert len(exc.value.problems[1]) <= MAX_PROBLEM_CHARS


def test_nul_under_an_empty_key_names_the_whole_path() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_container_request({"image": "busybox", "": ["\x00"]})
    assert exc.value.problems == ["''[0]: must not contain NUL characters"]
    with pytest.raises(InvalidInput) as exc:
        parse_template({"": {"a\x00" * 500: 1}})
    assert exc.value.problems[0].startswith("''.a\\0a\\0")
    assert len(exc.value.problems[0]) <= MAX_PROBLEM_CHARS
