"""The API under schemathesis: every operation of /openapi.json, fuzzed as a member, as an
admin and (the agent channel) as an agent, answers below 500 and logs no internal error.

A server of its own (its Docker objects are removed at the end by instance label) with a
small quota, so that the capsules and containers the fuzzer creates stay few. Half the
cases of an operation on a container or capsule aim at a real one (created first), so
the fuzzer reaches the handlers behind the lookup, not only their 404s.

Not fuzzed: the terminal websocket (/v1/containers/{ident}/terminal is no HTTP route and
not in the document; test_containers covers it). Bounded on purpose: waits that a case
could make long (stop/reboot timeouts, long polls, followed logs of a real container) are
clamped to a second, so that the whole suite stays within a few minutes on two cores.
Runs are derandomized: CI sees the same cases every time.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from conftest import LATEST, Server, remove_instance_objects, sleeper, start_server, template

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

# Per operation, role, mode and aim; CI's default keeps the suite near two minutes, a
# deeper run locally: FUZZ_EXAMPLES=100 pytest tests/integration/test_fuzz_api.py
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
ENV = {
    # Few and small: whatever the fuzzer creates fits on any CI machine.
    "CAPSULED_QUOTA__CAPSULES": "3", "CAPSULED_QUOTA__CONTAINERS": "8",
    "CAPSULED_QUOTA__CPU": "2", "CAPSULED_QUOTA__MEMORY": "2048", "CAPSULED_QUOTA__DISK": "4",
    "CAPSULED_API__EXEC_TIMEOUT": "3",
}
AGENT_HOST = "fuzz-agent"
WAITS = {"timeout", "wait_timeout"}  # seconds a case may make the server wait


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory,
                docker_api: docker.APIClient) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("fuzz"), docker_api, **ENV)
    instance = srv.instance
    try:
        yield srv
    finally:
        srv.stop()
        remove_instance_objects(docker_api, instance)


@pytest.fixture(scope="module")
def schema(fuzz_server: Server) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


@pytest.fixture(scope="module")
def targets(fuzz_server: Server) -> dict[str, str]:
    """A capsule and a bare container of the member's project: real idents to aim at."""
    token = fuzz_server.issue_token("fuzz-member", "mallory", "member")
    with fuzz_server.client(token) as c:
        r = c.post("/v1/capsules", json={"template": template("fuzz-target", [sleeper("main")])})
        assert r.status_code == 202, r.text
        capsule = r.json()["uuid"]
        r = c.post("/v1/containers", json={"name": "fuzz-bare", "image": "busybox",
                                           "command": ["sleep", "3600"], "run": True})
        assert r.status_code == 202, r.text
        return {"token": token, "capsule": capsule, "container": r.json()["uuid"]}


def log_offset(server: Server) -> int:
    assert server.log is not None
    return server.log.stat().st_size


def internal_errors(server: Server, since: int) -> list[str]:
    assert server.log is not None
    with open(server.log, "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return [line for line in text.splitlines()
            if "internal error" in line or "Exception in ASGI application" in line]


def operations(schema: Any, only_agents: bool = False) -> list[Any]:
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if not only_agents or op.path.startswith("/v1/agents/")]


def clamp(case: Any, real: bool) -> None:
    """Keep waits short: a stop of a real container with timeout=300 would wait 300 s."""
    if not isinstance(case.query, dict):
        case.query = {}
    query = case.query
    for key in WAITS & query.keys():
        try:
            if float(query[key]) > 1:
                query[key] = "1"
        except (TypeError, ValueError, OverflowError):
            pass
    if case.path.endswith("/{ident}") and "wait_while" in query and "wait_timeout" not in query:
        query["wait_timeout"] = "1"
    if real and case.path.endswith("/logs"):
        query.pop("follow", None)  # a followed log of a running container never ends
    if real and case.path.endswith(("/stop", "/reboot")) and "timeout" not in query:
        query["timeout"] = "1"  # busybox's sleep ignores SIGTERM: the default 10 s each
    if case.path.endswith("/assignments") and "timeout" not in query:
        query["timeout"] = "0"


def fuzz(server: Server, ops: list[Any], token: str, aim: dict[str, str] | None = None,
         examples: int = EXAMPLES) -> list[str]:
    """Every case of every operation; what answered 5xx (with a curl line to reproduce)."""
    failures: list[str] = []
    headers = {"X-Auth-Token": token}
    for op in ops:
        seen: list[int] = []
        strategies = []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies.append(op.as_strategy(mode, headers=headers).map(lambda c: (c, False)))
            fixed = _aimed(op, aim)
            if fixed:  # at a real object, in the newest microversion: as deep as it goes
                strategies.append(op.as_strategy(mode, headers={**headers, **LATEST},
                                                 path_parameters=fixed).map(lambda c: (c, True)))

        @settings(max_examples=examples * len(strategies), derandomize=True, database=None,
                  deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(st.one_of(strategies))
        def run(pair: tuple[Any, bool]) -> None:
            case, real = pair
            clamp(case, real)
            if not any(k.lower() == "openstack-api-version" for k in case.headers or {}):
                case.headers = {**(case.headers or {}), **LATEST}
            try:
                response = case.call(base_url=server.url, timeout=60)
            except Exception as exc:  # the server hung up or never answered: as bad as a 500
                failures.append(f"{op.method.upper()} {op.path}: {type(exc).__name__}: {exc}\n"
                                f"  {case.as_curl_command()}")
                return
            seen.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{op.method.upper()} {op.path}: {response.status_code} "
                                f"{response.text[:300]}\n  {case.as_curl_command()}")

        started = time.monotonic()
        run()
        print(f"fuzzed {op.method.upper()} {op.path} in {time.monotonic() - started:.1f}s: "
              f"{sorted(Counter(seen).items())}")
    return failures


def _aimed(op: Any, aim: dict[str, str] | None) -> dict[str, str] | None:
    """Path parameters naming a real object, for operations on one (never DELETE: the
    target has to outlive the run)."""
    if aim is None or op.method.upper() == "DELETE":
        return None
    for prefix, param, key in (("/v1/capsules/{ident}", "ident", "capsule"),
                               ("/v1/containers/{ident}", "ident", "container"),
                               ("/v1/agents/{host}", "host", "host")):
        if op.path.startswith(prefix) and key in aim:
            return {param: aim[key]}
    return None


def report(failures: list[str], errors: list[str]) -> str:
    return "\n".join([f"{len(failures)} 5xx answers:", *failures[:20],
                      f"{len(errors)} internal errors logged:", *errors[:20]])


# ----------------------------------------------------------------------------- the document


def test_document_describes_bodies_tokens_and_the_microversion(fuzz_server: Server) -> None:
    doc = httpx.get(f"{fuzz_server.url}/openapi.json").json()
    bodies = {(m.upper(), p) for p, ops in doc["paths"].items() for m, op in ops.items()
              if "requestBody" in op}
    assert {("POST", "/v1/capsules"), ("POST", "/v1/containers"),
            ("PATCH", "/v1/containers/{ident}"), ("POST", "/v1/containers/{ident}/execute"),
            ("POST", "/v1/containers/{ident}/resize"), ("POST", "/v1/containers/{ident}/put_archive"),
            ("POST", "/v1/tokens"), ("PUT", "/v1/quotas/{project_id}")} <= bodies
    create = doc["paths"]["/v1/containers"]["post"]["requestBody"]["content"]["application/json"]
    assert {"image", "command", "cpu", "memory", "mounts", "healthcheck", "capsule"} <= set(
        create["schema"]["properties"])
    capsule = doc["paths"]["/v1/capsules"]["post"]["requestBody"]["content"]["application/json"]
    assert capsule["schema"]["required"] == ["template"]
    assert doc["components"]["securitySchemes"]["token"] == {
        "type": "apiKey", "in": "header", "name": "X-Auth-Token",
        "description": "A capsuled token (POST /v1/tokens), or a Keystone token"}
    listing = doc["paths"]["/v1/capsules"]["get"]
    assert listing["security"] == [{"token": []}]
    assert "OpenStack-API-Version" in [p["name"] for p in listing["parameters"]]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_every_v1_operation_needs_a_token_as_documented(fuzz_server: Server, schema: Any) -> None:
    """The document says every /v1/… operation takes a token: each answers 401 without."""
    with httpx.Client(base_url=fuzz_server.url, timeout=10) as c:
        for op in operations(schema):
            if not op.path.startswith("/v1/"):
                continue
            path = op.path.replace("{", "").replace("}", "")  # /v1/containers/ident/…
            r = c.request(op.method.upper(), path, headers=LATEST)
            assert r.status_code == 401, (op.method, op.path, r.status_code, r.text)


# ----------------------------------------------------------------------------- the fuzz


def test_fuzz_as_a_member(fuzz_server: Server, schema: Any, targets: dict[str, str],
                          docker_api: docker.APIClient) -> None:
    since = log_offset(fuzz_server)
    failures = fuzz(fuzz_server, operations(schema), targets["token"], targets)
    errors = internal_errors(fuzz_server, since)
    assert not failures and not errors, report(failures, errors)
    # The quota held whatever the fuzzer asked for: nothing of the member's beyond it.
    with fuzz_server.client(targets["token"]) as c:
        usage = c.get("/v1/quotas/fuzz-member", params={"usages": "true"}).json()
    assert usage["capsules"]["in_use"] <= 3 and usage["containers"]["in_use"] <= 8, usage


def test_fuzz_as_an_admin(fuzz_server: Server, schema: Any, targets: dict[str, str]) -> None:
    since = log_offset(fuzz_server)
    failures = fuzz(fuzz_server, operations(schema), fuzz_server.token, targets)
    errors = internal_errors(fuzz_server, since)
    assert not failures and not errors, report(failures, errors)


@pytest.fixture(scope="module")
def agent_token(fuzz_server: Server) -> str:
    with fuzz_server.client() as c:
        r = c.post("/v1/tokens", json={"project_id": "service", "user_id": AGENT_HOST,
                                       "roles": ["agent"], "host": AGENT_HOST})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_fuzz_the_agent_channel_as_an_agent(fuzz_server: Server, schema: Any, agent_token: str) -> None:
    """Last: what a fuzzed agent registers (a host with odd capacities) must not steer
    the member and admin runs."""
    since = log_offset(fuzz_server)
    failures = fuzz(fuzz_server, operations(schema, only_agents=True), agent_token,
                    {"host": AGENT_HOST}, examples=EXAMPLES * 2)
    errors = internal_errors(fuzz_server, since)
    assert not failures and not errors, report(failures, errors)



# ----------------------------------------------------------------------------- found by the fuzz


def test_agent_reports_that_are_not_lists_are_a_400(fuzz_server: Server, agent_token: str) -> None:
    with fuzz_server.client(agent_token) as c:
        r = c.post(f"/v1/agents/{AGENT_HOST}/reports", json={"capsules": False, "containers": 1.5})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["detail"] == "containers: must be a list"
