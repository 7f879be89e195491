"""What the OpenAPI document says that FastAPI cannot see by itself.

Most handlers read their JSON body through a dependency (`deps.BodyDep`: the body merged
over the query string, as Zun's pecan does), so FastAPI documents no request body for
them. The routes name their body here (`openapi_extra=body(...)`), which changes the
document only: the handlers parse exactly as before. The schemas describe the shapes the
parsers accept, loosely where Zun's clients are loose (a number or a numeric string),
so that clients and fuzzers (tests/integration/test_fuzz_api.py) explore real requests.

`install` adds the X-Auth-Token security scheme and the OpenStack-API-Version header to
every /v1/… route.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from capsuled.api.microversions import HEADER, MAX, MIN, SERVICE

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
STRINGS: Schema = {"type": "array", "items": STRING}
STRING_MAP: Schema = {"type": "object", "additionalProperties": STRING}
# zunclient sends numbers as text as often as not; the parsers take both.
NUMBER_OR_TEXT: Schema = {"anyOf": [{"type": "number"}, STRING]}
INTEGER_OR_TEXT: Schema = {"anyOf": [INTEGER, STRING]}
BOOLEAN_OR_TEXT: Schema = {"anyOf": [BOOLEAN, {"type": "string", "enum": ["true", "false"]}]}
COMMAND: Schema = {"anyOf": [STRING, STRINGS],
                   "description": "A list of words, or one string split like a shell would "
                                  "(before microversion 1.20 only a string)"}


def obj(required: tuple[str, ...] = (), about: str | None = None, /, **props: Schema) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    if about:
        out["description"] = about
    return out


PROBE = obj((),
    "A Kubernetes probe: one of exec, httpGet, tcpSocket (HTTP and TCP target the capsule itself)",
    exec=obj(("command",), command=STRINGS),
    httpGet=obj(("port",), port=INTEGER_OR_TEXT, path=STRING,
                scheme={"type": "string", "enum": ["HTTP", "HTTPS"]},
                httpHeaders={"type": "array", "items": obj(("name", "value"), name=STRING,
                                                             value=STRING)}),
    tcpSocket=obj(("port",), port=INTEGER_OR_TEXT),
    initialDelaySeconds=INTEGER, periodSeconds=INTEGER, timeoutSeconds=INTEGER,
    successThreshold=INTEGER, failureThreshold=INTEGER)
TEMPLATE_CONTAINER = obj(
    ("image",), name=STRING, image=STRING, command=STRINGS, args=STRINGS, workDir=STRING,
    env=STRING_MAP,
    ports={"type": "array", "items": obj(
        ("containerPort",), containerPort=INTEGER_OR_TEXT, name=STRING,
        hostPort={"type": "integer", "description": "Publish containerPort on this host port "
                  "(claimed on the capsule's host; below limits.min_host_port: admins only)"},
        protocol={"type": "string", "enum": ["TCP", "UDP"]})},
    resources=obj(requests=obj(cpu=NUMBER_OR_TEXT, memory=INTEGER_OR_TEXT)),
    volumeMounts={"type": "array", "items": obj(("name", "mountPath"), name=STRING,
                                                 mountPath=STRING, readOnly=BOOLEAN)},
    imagePullPolicy={"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
    tty=BOOLEAN, stdin=BOOLEAN, securityContext=obj(privileged=BOOLEAN),
    livenessProbe=PROBE, readinessProbe=PROBE, startupProbe=PROBE,
    registry={"type": "string", "description": "Name or uuid of one of the project's "
              "registries to pull the image through (extension)"},
)
TEMPLATE = obj(
    ("kind", "metadata", "spec"),
    "A capsule template (README: The template); YAML or JSON text is accepted too",
    kind={"type": "string", "enum": ["capsule"]}, capsuleVersion={"type": "string", "enum": ["beta"]},
    metadata=obj(name=STRING, labels=STRING_MAP, annotations=STRING_MAP),
    restartPolicy={"type": "string", "enum": ["Always", "OnFailure", "Never"]},
    availabilityZone=STRING,
    spec=obj(("containers",), containers={"type": "array", "items": TEMPLATE_CONTAINER},
             initContainers={"type": "array", "items": TEMPLATE_CONTAINER},
             volumes={"type": "array", "items": obj(
                 ("name",), name=STRING, emptyDir={"type": "object"},
                 cinder=obj(("size",), size=INTEGER, autoRemove=BOOLEAN))},
             restartPolicy={"type": "string", "enum": ["Always", "OnFailure", "Never"]},
             nodeSelector=STRING_MAP,
             failurePolicy={"type": "string", "enum": ["RestartContainer", "RestartCapsule"],
                            "description": "What a failed liveness/startup probe restarts (extension)"},
             minReadySeconds={"type": "integer", "description": "An update is done once its "
                              "new containers stayed ready this long (extension; 0-3600, default 0)"},
             progressDeadlineSeconds={"type": "integer", "description": "An update not done "
                                      "this long after it began rolls back (extension; "
                                      "1-3600, default 120)"},
             securityGroups={"type": "array", "items": STRING, "description": "Names of the "
                             "project's security groups the capsule is in (extension; default "
                             "[\"default\"])"}),
)
CAPSULE_CREATE = obj(("template",), template={"anyOf": [TEMPLATE, STRING]})
CHANGE_CAUSE: Schema = {"type": "string", "description": "Why (shown in the revisions); "
                        "default: what changed"}
CAPSULE_UPDATE = obj(
    (), "Exactly one of template (a whole new template; the name stays) or containers "
    "(images and environment variables of named containers; an env value null removes it)",
    template={"anyOf": [TEMPLATE, STRING]},
    containers={"type": "array", "items": obj(("name",), name=STRING, image=STRING, env={
        "type": "object", "additionalProperties": {"anyOf": [STRING, {"type": "null"}]}})},
    change_cause=CHANGE_CAUSE,
    revision={"type": "integer", "description": "Refuse (409) unless the capsule is at this "
              "revision: an update made on what one last saw"})
CAPSULE_UPDATE_EXAMPLE = {"containers": [{"name": "main", "image": "busybox:1.36"}],
                          "change_cause": "busybox 1.36"}
CAPSULE_ROLLBACK = obj((), revision={"type": "integer", "description": "Default: the revision "
                                     "before the current one"}, change_cause=CHANGE_CAUSE)
CAPSULE_EXAMPLE = {"template": {"kind": "capsule", "metadata": {"name": "example"}, "spec": {
    "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]}}}

# Every field parse_container_request knows (container_request.KNOWN; a unit test checks).
CONTAINER_FIELDS: dict[str, Schema] = {
    "name": STRING, "image": STRING, "command": COMMAND, "entrypoint": COMMAND,
    "cpu": NUMBER_OR_TEXT, "memory": INTEGER_OR_TEXT, "disk": INTEGER, "cpu_policy": STRING,
    "workdir": STRING, "environment": STRING_MAP, "labels": STRING_MAP,
    "restart_policy": {"anyOf": [obj(Name={"type": "string", "enum": [
        "no", "always", "on-failure", "unless-stopped"]}, MaximumRetryCount=INTEGER_OR_TEXT),
        STRING]},
    "interactive": BOOLEAN_OR_TEXT, "tty": BOOLEAN_OR_TEXT, "image_driver": STRING,
    "image_pull_policy": {"type": "string", "enum": ["always", "ifnotpresent", "never"]},
    "security_groups": {"type": "array", "items": STRING, "description": "Names of the "
                        "project's security groups (default: [\"default\"])"},
    "hints": STRING_MAP, "nets": {"type": "array"},
    "auto_remove": BOOLEAN_OR_TEXT, "runtime": STRING, "hostname": STRING,
    "mounts": {"type": "array", "items": obj(
        source=STRING, destination=STRING, size=INTEGER_OR_TEXT,
        type={"type": "string", "enum": ["volume", "bind"]}, read_only=BOOLEAN)},
    "availability_zone": STRING, "auto_heal": BOOLEAN_OR_TEXT, "privileged": BOOLEAN_OR_TEXT,
    "healthcheck": obj(cmd=STRING, interval=INTEGER_OR_TEXT, retries=INTEGER_OR_TEXT,
                       timeout=INTEGER_OR_TEXT),
    "exposed_ports": {"type": "object", "additionalProperties": {"type": "object"},
                      "description": '≥ 1.24: {"80/tcp": {}, "53/udp": {}}, each published on a '
                                     "host port Docker picks (published_ports in the body)"},
    "registry": STRING, "host": STRING,
    "run": BOOLEAN_OR_TEXT,
    "capsule": {"type": "string", "description": "Extension: add the container to this capsule"},
}
CONTAINER_CREATE = obj(("image",), **CONTAINER_FIELDS)
CONTAINER_EXAMPLE = {"name": "example", "image": "busybox", "command": ["sleep", "3600"]}
CONTAINER_UPDATE = obj(cpu=NUMBER_OR_TEXT, memory=INTEGER_OR_TEXT, name=STRING,
                       auto_heal=BOOLEAN_OR_TEXT, capsule=STRING)
EXECUTE = obj(("command",), command=COMMAND, interactive=BOOLEAN_OR_TEXT, run=BOOLEAN_OR_TEXT,
              capsule=STRING)
RESIZE = obj(w=INTEGER_OR_TEXT, h=INTEGER_OR_TEXT)
EXECUTE_RESIZE = obj(("exec_id",), exec_id=STRING, w=INTEGER_OR_TEXT, h=INTEGER_OR_TEXT)
PUT_ARCHIVE = obj(("path", "data"), path=STRING,
                  data={"type": "string", "description": "A tar archive, base64 from 1.25"},
                  capsule=STRING)
IMAGE_PULL = obj(("repo",), repo=STRING, host=STRING)
REGISTRY = obj(("registry",), registry=obj(
    name=STRING, domain=STRING, username=STRING,
    password={"type": "string", "description": "Stored encrypted; shown as ***"}))
QUOTA = obj(**{r: {"type": "number"} for r in ("capsules", "containers", "cpu", "memory", "disk")})
TOKEN_CREATE = obj(("project_id", "user_id"), project_id=STRING, user_id=STRING, roles=STRINGS,
                   description=STRING, expires_in=INTEGER_OR_TEXT,
                   host={"type": "string", "description": "The host an agent token is for"})
SUBSCRIPTION = obj(
    ("url",), url={"type": "string", "description": "http(s) URL the events are POSTed to"},
    events={"type": "array", "items": STRING,
            "description": "Event patterns such as capsule.* (empty: every event)"},
    secret={"type": "string", "description": "HMAC-SHA256 key (generated and shown once if "
                                             "absent)"},
    name=STRING)
SUBSCRIPTION_EXAMPLE = {"url": "https://hooks.example.com/capsuled", "events": ["capsule.*"]}
SECURITY_GROUP_RULE = obj(
    direction={"type": "string", "enum": ["ingress"]},
    ethertype={"type": "string", "enum": ["IPv4"]},
    protocol={"type": "string", "enum": ["tcp", "udp", "icmp", "any"]},
    port_range_min=INTEGER_OR_TEXT, port_range_max=INTEGER_OR_TEXT,
    remote_ip_prefix={"type": "string", "description": "Source network (CIDR); neither this "
                                                       "nor remote_group: any source"},
    remote_group={"type": "string", "description": "Source group by name; default: the "
                                                   "whole project"},
    description=STRING)
SECURITY_GROUP = obj(("name",), name=STRING, description=STRING,
                     rules={"type": "array", "items": SECURITY_GROUP_RULE})
SECURITY_GROUP_UPDATE = obj(description=STRING, rules={
    "type": "array", "items": SECURITY_GROUP_RULE, "description": "Replaces every rule"})
SECURITY_GROUP_EXAMPLE = {"name": "web", "description": "HTTP from the project", "rules": [
    {"protocol": "tcp", "port_range_min": 80, "port_range_max": 80, "remote_group": "default"}]}
CAPSULE_SERVICE = obj(
    ("name", "selector", "ports"),
    name={"type": "string", "description": "RFC 1123 label; what the project's capsules "
                                           "resolve to the VIP"},
    selector={"type": "object", "additionalProperties": STRING,
              "description": "Labels a capsule must all carry to be a backend"},
    ports={"type": "array", "items": obj(
        ("port",), port=INTEGER, targetPort=INTEGER,
        protocol={"type": "string", "enum": ["TCP", "UDP"]},
        publish={"type": "integer", "description": "Also open on this port of every host "
                                                   "(services.publish_min..publish_max)"})})
CAPSULE_SERVICE_EXAMPLE = {"name": "web", "selector": {"app": "web"},
                           "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
SERVICE_UPDATE = obj(("host", "binary"), host=STRING, binary=STRING, disabled_reason=STRING,
                     forced_down=BOOLEAN_OR_TEXT)
AGENT_REGISTER = {"type": "object", "description": "The agent's HostInfo (capsuled.domain.channel)"}
AGENT_HEARTBEAT = obj(stats={"type": "object", "description": "The agent's AgentStats "
                            "(capsuled.domain.channel); dropped, never refused, when malformed"})
AGENT_REPORTS = obj(capsules={"type": "array", "items": {"type": "object"}},
                    containers={"type": "array", "items": {"type": "object"}})


def body(schema: Schema, example: Any = None, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body a dependency reads."""
    media: Schema = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"requestBody": {"required": required, "content": {"application/json": media}}}


SECURITY_SCHEME = "token"
VERSION_PARAMETER: Schema = {
    "name": HEADER, "in": "header", "required": False,
    "description": (f"The microversion: '{SERVICE} {MIN[0]}.{MIN[1]}' to "
                    f"'{SERVICE} {MAX[0]}.{MAX[1]}', or '{SERVICE} latest'; absent means "
                    f"{MIN[0]}.{MIN[1]}"),
    "schema": {"type": "string", "pattern": rf"^{SERVICE} (latest|{MAX[0]}\.[0-9]{{1,2}})$"},
}


def install(app: FastAPI) -> None:
    """Build the document once, with the security scheme and the version header. Every
    /v1/… route takes a token and the microversion (tests/integration/test_fuzz_api.py
    checks that each answers 401 without a token); /metrics takes a token only; /, /v1
    and /healthz take neither."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        doc.setdefault("components", {})["securitySchemes"] = {SECURITY_SCHEME: {
            "type": "apiKey", "in": "header", "name": "X-Auth-Token",
            "description": "A capsuled token (POST /v1/tokens), or a Keystone token"}}
        for path, ops in doc["paths"].items():
            if path == "/metrics":  # a token, but no microversion: it is no Zun resource
                for op in ops.values():
                    op["security"] = [{SECURITY_SCHEME: []}]
            if not path.startswith("/v1/"):
                continue
            for op in ops.values():
                op["security"] = [{SECURITY_SCHEME: []}]
                op.setdefault("parameters", []).append(dict(VERSION_PARAMETER))
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
