"""The wire format of `ContainerOps` between the API and a host's agent (pure: no I/O).

In multi-host mode the agent serves its host's `ContainerOps` over HTTP and the API calls
it with the same methods (hostops/client.py on one side, hostops/server.py on
the other); this module is what both agree on. Every request carries the header
`X-Capsuled-Ops-Key: <key>`; a missing or wrong key is HTTP 401.

    POST /ops/{method}               body: {"<param>": value, …} (every parameter, by name)
                                     → 200 {"result": value}, or an error status with
                                       {"error": "<CapsuledError class>", "message": "…"}
    POST /ops/follow_logs            body as above → 200 application/octet-stream: the raw
                                     log bytes as Docker writes them, until the container
                                     stops or either side hangs up
    WS   /ops/attach/{container_id}  first frame (text): {"ok": true} or an error document,
    WS   /ops/exec/{exec_id}           then raw terminal bytes as binary frames both ways

Values: bytes are base64 strings; ExecResult and ImageInfo are objects with their field
names; get_archive's (bytes, stat) pair is {"data": base64, "stat": {…}}; Docker's
documents (top, stats, archive stat) pass through as JSON. Errors keep their class (any
class of capsuled.errors; an unknown name arrives as the class its HTTP status stands for
in capsuled/http_status.py, else as DriverError) and their message.
"""

from __future__ import annotations

import base64
import binascii
import inspect
from dataclasses import dataclass
from typing import Any, Literal

from capsuled import errors
from capsuled.errors import CapsuledError, DriverError, InvalidInput
from capsuled.hostops.protocol import (ARCHIVE_MAX_BYTES, EXEC_MAX_OUTPUT, EXEC_TIMEOUT, ExecResult,
                                       ImageInfo)

OPS_PREFIX = "/ops"
OPS_KEY_HEADER = "X-Capsuled-Ops-Key"
OCTET = "application/octet-stream"
HANDSHAKE_OK: dict[str, Any] = {"ok": True}

Transport = Literal["call", "stream", "socket"]


class WireError(ValueError):
    """A value does not have the shape its parameter or result needs."""


# -- value kinds ------------------------------------------------------------------------

class Kind:
    """How one parameter or result type crosses the wire."""

    name = "value"

    def encode(self, value: Any) -> Any:
        self.check(value)
        return value

    def decode(self, data: Any) -> Any:
        self.check(data)
        return data

    def check(self, value: Any) -> None:
        if not self.accepts(value):
            raise WireError(f"must be {self.name}")

    def accepts(self, value: Any) -> bool:
        return True


class _Str(Kind):
    name = "a string"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)


class _Int(Kind):
    name = "an integer"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)


class _Bool(Kind):
    name = "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class _Optional(Kind):
    def __init__(self, inner: Kind) -> None:
        self.inner = inner
        self.name = f"{inner.name} or null"

    def encode(self, value: Any) -> Any:
        return None if value is None else self.inner.encode(value)

    def decode(self, data: Any) -> Any:
        if data is None:
            return None
        try:
            return self.inner.decode(data)
        except WireError:
            raise WireError(f"must be {self.name}") from None


class _Signal(Kind):
    name = "a signal name, a number or null"

    def accepts(self, value: Any) -> bool:
        return value is None or isinstance(value, str) or (
            isinstance(value, int) and not isinstance(value, bool))


class _Bytes(Kind):
    name = "base64-encoded bytes"

    def encode(self, value: Any) -> Any:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise WireError("must be bytes")
        return base64.b64encode(bytes(value)).decode("ascii")

    def decode(self, data: Any) -> Any:
        if not isinstance(data, str):
            raise WireError(f"must be {self.name}")
        try:
            return base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise WireError(f"must be {self.name}") from None


class _StrList(Kind):
    name = "a list of strings"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    def encode(self, value: Any) -> Any:
        if isinstance(value, tuple):
            value = list(value)
        self.check(value)
        return list(value)


class _Document(Kind):
    """A JSON object passed through as is (Docker's top, stats, archive stat)."""

    name = "a JSON object"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def encode(self, value: Any) -> Any:
        self.check(value)
        return dict(value)

    def decode(self, data: Any) -> Any:
        self.check(data)
        return dict(data)


class _Nothing(Kind):
    name = "null"

    def accepts(self, value: Any) -> bool:
        return value is None


class _ExecResult(Kind):
    name = "an exec result {exit_code, output, exec_id, truncated, timed_out}"

    def encode(self, value: Any) -> Any:
        if not isinstance(value, ExecResult):
            raise WireError("must be an ExecResult")
        return {"exit_code": OPT_INT.encode(value.exit_code), "output": BYTES.encode(value.output),
                "exec_id": STR.encode(value.exec_id), "truncated": BOOL.encode(value.truncated),
                "timed_out": BOOL.encode(value.timed_out)}

    def decode(self, data: Any) -> Any:
        fields = _fields(data, self.name, ("exit_code", "output", "exec_id"))
        # An older agent sends neither flag: its output was never cut short.
        return ExecResult(exit_code=OPT_INT.decode(fields["exit_code"]),
                          output=BYTES.decode(fields["output"]), exec_id=STR.decode(fields["exec_id"]),
                          truncated=BOOL.decode(fields.get("truncated", False)),
                          timed_out=BOOL.decode(fields.get("timed_out", False)))


class _ImageInfo(Kind):
    name = "an image {id, repo, tag, size, created}"

    def encode(self, value: Any) -> Any:
        if not isinstance(value, ImageInfo):
            raise WireError("must be an ImageInfo")
        return {"id": STR.encode(value.id), "repo": STR.encode(value.repo),
                "tag": STR.encode(value.tag), "size": INT.encode(value.size),
                "created": INT.encode(value.created), "project": OPT_STR.encode(value.project)}

    def decode(self, data: Any) -> Any:
        f = _fields(data, self.name, ("id", "repo", "tag", "size", "created"))
        # `project` is newer: an older agent leaves it out.
        return ImageInfo(id=STR.decode(f["id"]), repo=STR.decode(f["repo"]), tag=STR.decode(f["tag"]),
                         size=INT.decode(f["size"]), created=INT.decode(f["created"]),
                         project=OPT_STR.decode(f.get("project")))


class _List(Kind):
    def __init__(self, inner: Kind) -> None:
        self.inner = inner
        self.name = f"a list of {inner.name.removeprefix('an ').removeprefix('a ')}s"

    def encode(self, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise WireError(f"must be {self.name}")
        return [self.inner.encode(v) for v in value]

    def decode(self, data: Any) -> Any:
        if not isinstance(data, list):
            raise WireError(f"must be {self.name}")
        return [self.inner.decode(v) for v in data]


class _Archive(Kind):
    name = "an archive {data, stat}"

    def encode(self, value: Any) -> Any:
        if not (isinstance(value, tuple) and len(value) == 2):
            raise WireError("must be a (bytes, stat) pair")
        return {"data": BYTES.encode(value[0]), "stat": DOCUMENT.encode(value[1])}

    def decode(self, data: Any) -> Any:
        f = _fields(data, self.name, ("data", "stat"))
        return BYTES.decode(f["data"]), DOCUMENT.decode(f["stat"])


def _fields(data: Any, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise WireError(f"must be {name}")
    return data


STR = _Str()
INT = _Int()
BOOL = _Bool()
OPT_INT = _Optional(INT)
OPT_STR = _Optional(STR)
SIGNAL = _Signal()
BYTES = _Bytes()
STR_LIST = _StrList()
DOCUMENT = _Document()
NOTHING = _Nothing()
EXEC_RESULT = _ExecResult()
IMAGE = _ImageInfo()
IMAGES = _List(IMAGE)
ARCHIVE = _Archive()


# -- the methods ------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    name: str
    params: tuple[tuple[str, Kind], ...]
    result: Kind
    transport: Transport = "call"
    # Values of trailing parameters a caller may leave out (an older API does not send
    # the bounds added since; the agent then applies the defaults).
    defaults: tuple[tuple[str, Any], ...] = ()

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p for p, _ in self.params)


_CID = ("container_id", STR)
_LOG_PARAMS = (_CID, ("stdout", BOOL), ("stderr", BOOL), ("timestamps", BOOL),
               ("tail", OPT_INT), ("since", OPT_INT))

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("start", (_CID,), NOTHING),
    Method("stop", (_CID, ("timeout", INT)), NOTHING),
    Method("restart", (_CID, ("timeout", INT)), NOTHING),
    Method("kill", (_CID, ("signal", SIGNAL)), NOTHING),
    Method("pause", (_CID,), NOTHING),
    Method("unpause", (_CID,), NOTHING),
    Method("update_resources", (_CID, ("nano_cpus", OPT_INT), ("memory_bytes", OPT_INT)), NOTHING),
    Method("logs", _LOG_PARAMS, BYTES),
    Method("follow_logs", _LOG_PARAMS, NOTHING, "stream"),
    Method("exec_run", (_CID, ("command", STR_LIST), ("max_output", INT), ("timeout", INT)),
           EXEC_RESULT, defaults=(("max_output", EXEC_MAX_OUTPUT), ("timeout", EXEC_TIMEOUT))),
    Method("top", (_CID, ("ps_args", OPT_STR)), DOCUMENT),
    Method("stats", (_CID,), DOCUMENT),
    Method("get_archive", (_CID, ("path", STR), ("max_bytes", INT)), ARCHIVE,
           defaults=(("max_bytes", ARCHIVE_MAX_BYTES),)),
    Method("put_archive", (_CID, ("path", STR), ("data", BYTES)), NOTHING),
    Method("attach", (_CID,), NOTHING, "socket"),
    Method("resize", (_CID, ("height", INT), ("width", INT)), NOTHING),
    Method("exec_interactive", (_CID, ("command", STR_LIST)), STR),
    Method("exec_stream", (("exec_id", STR),), NOTHING, "socket"),
    Method("exec_resize", (("exec_id", STR), ("height", INT), ("width", INT)), NOTHING),
    Method("list_images", (), IMAGES),
    Method("pull_image", (("repo", STR), ("tag", STR)), IMAGE),
    Method("remove_image", (("ref", STR),), NOTHING),
    Method("commit", (_CID, ("repository", STR), ("tag", STR), ("project", STR)), IMAGE),
    Method("search_images", (("term", STR), ("limit", INT)), DOCUMENT),
)}

# The request/response methods (POST /ops/{method} answering JSON).
CALLS = frozenset(n for n, m in METHODS.items() if m.transport == "call")


def call_path(method: str) -> str:
    return f"{OPS_PREFIX}/{method}"


def socket_path(method: str, ident: str) -> str:
    """The websocket path of `attach` (a container id) or `exec_stream` (an exec id)."""
    if method == "attach":
        return f"{OPS_PREFIX}/attach/{ident}"
    if method == "exec_stream":
        return f"{OPS_PREFIX}/exec/{ident}"
    raise ValueError(f"{method} is not a websocket operation")


def method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise DriverError(f"the agent has no operation {name!r}") from None


def bind(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A call's arguments by parameter name, as `inspect.Signature.bind` would bind them."""
    m = method(name)
    defaults = dict(m.defaults)
    sig = inspect.Signature([inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                               default=defaults.get(p, inspect.Parameter.empty))
                             for p in m.param_names])
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def encode_args(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The JSON body of a call (the caller's side)."""
    m = method(name)
    values = bind(name, *args, **kwargs)
    out: dict[str, Any] = {}
    for param, kind in m.params:
        try:
            out[param] = kind.encode(values[param])
        except WireError as exc:
            raise TypeError(f"{name}: {param}: {exc}") from None
    return out


def decode_args(name: str, body: Any) -> list[Any]:
    """A call's positional arguments from its JSON body (the serving side); InvalidInput
    naming each bad or missing parameter."""
    m = method(name)
    if not isinstance(body, dict):
        raise InvalidInput(f"{name}: the body must be a JSON object of its parameters")
    problems = [f"{name}.{k}: unknown parameter" for k in body if k not in m.param_names]
    out: list[Any] = []
    defaults = dict(m.defaults)
    for param, kind in m.params:
        if param not in body:
            if param in defaults:
                out.append(defaults[param])
            else:
                problems.append(f"{name}.{param}: is required")
            continue
        try:
            out.append(kind.decode(body[param]))
        except WireError as exc:
            problems.append(f"{name}.{param}: {exc}")
    if problems:
        raise InvalidInput(problems)
    return out


def encode_result(name: str, value: Any) -> Any:
    """The JSON of a call's result (the serving side); a value of the wrong type is a bug
    in the host's ContainerOps, reported as DriverError."""
    try:
        return method(name).result.encode(value)
    except WireError as exc:
        raise DriverError(f"{name}: the host's runtime returned a bad result: {exc}") from None


def decode_result(name: str, data: Any) -> Any:
    """A call's result from its JSON (the caller's side); DriverError if malformed."""
    try:
        return method(name).result.decode(data)
    except WireError as exc:
        raise DriverError(f"{name}: the agent answered with a malformed result: {exc}") from None


# -- errors -----------------------------------------------------------------------------

ERRORS: dict[str, type[CapsuledError]] = {
    name: obj for name, obj in vars(errors).items()
    if isinstance(obj, type) and issubclass(obj, CapsuledError)}


def encode_error(exc: BaseException) -> dict[str, Any]:
    """{"error": class name, "message": …}. A subclass defined elsewhere travels as its
    nearest capsuled.errors ancestor; anything not a CapsuledError is a DriverError."""
    if not isinstance(exc, CapsuledError):
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return {"error": "DriverError", "message": message}
    name = next(c.__name__ for c in type(exc).__mro__ if ERRORS.get(c.__name__) is c)
    doc: dict[str, Any] = {"error": name, "message": exc.message}
    if isinstance(exc, InvalidInput):
        doc["problems"] = list(exc.problems)
    return doc


def is_error(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("error"), str)


def decode_error(doc: Any, fallback: type[CapsuledError] | None = None) -> CapsuledError:
    """The exception an error document stands for; a class this side does not know is
    `fallback` (the class of the answer's HTTP status), else DriverError."""
    if not is_error(doc):
        return DriverError(f"the agent answered with a malformed error: {str(doc)[:200]}")
    message = doc.get("message")
    message = message if isinstance(message, str) else str(message)
    cls = ERRORS.get(doc["error"]) or fallback
    if cls is None:
        return DriverError(message)
    if issubclass(cls, InvalidInput):
        problems = doc.get("problems")
        if not (isinstance(problems, list) and problems and all(isinstance(p, str) for p in problems)):
            problems = [message]
        return cls(problems, summary=message)
    try:
        return cls(message)
    except TypeError:  # a class with a constructor of its own that we do not know
        return DriverError(message)
