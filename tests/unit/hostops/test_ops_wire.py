"""The ContainerOps wire codec: every method's arguments and results survive JSON, errors
keep their class and message, and the method table matches the protocol."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest

from capsuled import errors
from capsuled.errors import (CapsuledError, Conflict, DriverError, ImageNotFound, InvalidInput,
                             NotFound, RuntimeConflict, Unavailable)
from capsuled.hostops import wire
from capsuled.hostops.protocol import (ARCHIVE_MAX_BYTES, EXEC_MAX_OUTPUT, EXEC_TIMEOUT,
                                       ContainerOps, ExecResult, ImageInfo)

BINARY = bytes(range(256)) + b"\x00\xff\xfe"
IMG = ImageInfo(id="sha256:ab", repo="busybox", tag="latest", size=4_000_000, created=1700000000)

# Arguments (positional, in protocol order) and a result for every method.
CASES: dict[str, tuple[tuple[Any, ...], Any]] = {
    "start": (("c1",), None),
    "stop": (("c1", 10), None),
    "restart": (("c1", 0), None),
    "kill": (("c1", "SIGTERM"), None),
    "pause": (("c1",), None),
    "unpause": (("c1",), None),
    "update_resources": (("c1", 500_000_000, None), None),
    "logs": (("c1", True, False, True, 10, 1700000000), BINARY),
    "follow_logs": (("c1", False, True, False, None, None), None),
    "exec_run": (("c1", ["sh", "-c", "printf é"], 4096, 5),
                 ExecResult(exit_code=None, output=BINARY, exec_id="e1", truncated=True)),
    "top": (("c1", "aux"), {"Titles": ["PID", "CMD"], "Processes": [["1", "sleep"]]}),
    "stats": (("c1",), {"cpu_stats": {"online_cpus": 2}, "memory_stats": {"usage": 1024}}),
    "get_archive": (("c1", "/etc", 1024), (BINARY, {"name": "etc", "size": 4096, "mode": 2147484141})),
    "put_archive": (("c1", "/tmp", BINARY), None),
    "attach": (("c1",), None),
    "resize": (("c1", 24, 80), None),
    "exec_interactive": (("c1", ["sh"]), "exec-id"),
    "exec_stream": (("exec-id",), None),
    "exec_resize": (("exec-id", 40, 120), None),
    "list_images": ((), [IMG, ImageInfo(id="sha256:cd", repo="a/b", tag="1", size=0, created=0)]),
    "pull_image": (("busybox", "latest"), IMG),
    "commit": (("c1", "team/app", "v1", "proj-a"),
               ImageInfo(id="sha256:ef", repo="team/app", tag="v1", size=1, created=2,
                         project="proj-a")),
    "remove_image": (("busybox:latest",), None),
    "search_images": (("busybox", 25), {"results": [{"name": "busybox", "star_count": 1}]}),
}


def _protocol_methods() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(ContainerOps).items()
            if not name.startswith("_") and callable(fn)}


def test_the_method_table_is_the_protocol() -> None:
    protocol = _protocol_methods()
    assert set(wire.METHODS) == set(protocol) == set(CASES)
    for name, sig in protocol.items():
        assert wire.METHODS[name].param_names == tuple(p for p in sig.parameters if p != "self"), name
    assert wire.CALLS == set(wire.METHODS) - {"follow_logs", "attach", "exec_stream"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_arguments_round_trip_through_json(name: str) -> None:
    args, _ = CASES[name]
    body = json.loads(json.dumps(wire.encode_args(name, *args)))
    assert set(body) == set(wire.METHODS[name].param_names)
    assert wire.decode_args(name, body) == list(args)
    # By keyword as well as by position.
    kwargs = dict(zip(wire.METHODS[name].param_names, args, strict=True))
    assert wire.encode_args(name, **kwargs) == body


@pytest.mark.parametrize("name", sorted(CASES))
def test_results_round_trip_through_json(name: str) -> None:
    _, result = CASES[name]
    data = json.loads(json.dumps(wire.encode_result(name, result)))
    assert wire.decode_result(name, data) == result


def test_bytes_travel_as_base64_and_stay_exact() -> None:
    body = wire.encode_args("put_archive", "c", "/", BINARY)
    assert isinstance(body["data"], str)
    assert wire.decode_args("put_archive", body)[2] == BINARY
    assert wire.encode_result("logs", b"") == ""
    assert wire.decode_result("logs", "") == b""


@pytest.mark.parametrize("signal", [None, "SIGKILL", 9])
def test_kill_takes_a_name_a_number_or_nothing(signal: Any) -> None:
    assert wire.decode_args("kill", wire.encode_args("kill", "c", signal)) == ["c", signal]


def test_bad_arguments_are_invalid_input_naming_each_parameter() -> None:
    with pytest.raises(InvalidInput) as err:
        wire.decode_args("logs", {"container_id": 5, "stdout": "yes", "stderr": True,
                                  "timestamps": False, "tail": True, "bogus": 1})
    assert err.value.problems == [
        "logs.bogus: unknown parameter", "logs.container_id: must be a string",
        "logs.stdout: must be true or false", "logs.tail: must be an integer or null",
        "logs.since: is required"]
    with pytest.raises(InvalidInput, match="JSON object"):
        wire.decode_args("start", ["c"])
    with pytest.raises(InvalidInput, match="base64"):
        wire.decode_args("put_archive", {"container_id": "c", "path": "/", "data": "not base64!"})
    with pytest.raises(InvalidInput, match="list of strings"):
        wire.decode_args("exec_run", {"container_id": "c", "command": "ls -l"})
    with pytest.raises(InvalidInput, match="kill.signal"):
        wire.decode_args("kill", {"container_id": "c", "signal": True})


def test_calling_with_the_wrong_arguments_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="stop"):
        wire.encode_args("stop", "c")
    with pytest.raises(TypeError, match="timeout"):
        wire.encode_args("stop", "c", "10")
    with pytest.raises(DriverError, match="no operation 'nope'"):
        wire.encode_args("nope")


def test_malformed_results_are_driver_errors() -> None:
    with pytest.raises(DriverError, match="malformed result"):
        wire.decode_result("exec_run", {"exit_code": 0, "output": ""})
    with pytest.raises(DriverError, match="malformed result"):
        wire.decode_result("list_images", {"id": "x"})
    with pytest.raises(DriverError, match="malformed result"):
        wire.decode_result("get_archive", {"data": "", "stat": []})
    with pytest.raises(DriverError, match="bad result"):
        wire.encode_result("stats", ["not", "a", "dict"])


def test_an_image_from_an_older_agent_has_no_project() -> None:
    old = {"id": "sha256:1", "repo": "busybox", "tag": "latest", "size": 1, "created": 0}
    assert wire.decode_result("pull_image", old).project is None


def test_bounds_an_older_peer_does_not_send_take_their_defaults() -> None:
    # An older API calls exec_run and get_archive without the bounds: the agent applies
    # the protocol's defaults, never an unbounded read.
    assert wire.decode_args("exec_run", {"container_id": "c", "command": ["ls"]}) == [
        "c", ["ls"], EXEC_MAX_OUTPUT, EXEC_TIMEOUT]
    assert wire.decode_args("get_archive", {"container_id": "c", "path": "/"}) == [
        "c", "/", ARCHIVE_MAX_BYTES]
    assert wire.encode_args("exec_run", "c", ["ls"])["max_output"] == EXEC_MAX_OUTPUT
    # An older agent's exec result has no flags: nothing was cut short.
    old = {"exit_code": 0, "output": "", "exec_id": "e"}
    assert wire.decode_result("exec_run", old) == ExecResult(exit_code=0, output=b"", exec_id="e")


def test_paths() -> None:
    assert wire.call_path("stop") == "/ops/stop"
    assert wire.socket_path("attach", "abc") == "/ops/attach/abc"
    assert wire.socket_path("exec_stream", "e1") == "/ops/exec/e1"
    with pytest.raises(ValueError):
        wire.socket_path("logs", "abc")


def _all_error_classes() -> list[type[CapsuledError]]:
    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, CapsuledError)]


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_round_trips_with_its_message(cls: type[CapsuledError]) -> None:
    exc = cls(["a: is wrong", "b: too"]) if cls is InvalidInput else cls("stop 0123abcd: it broke")
    doc = json.loads(json.dumps(wire.encode_error(exc)))
    assert doc["error"] == cls.__name__ and doc["message"] == exc.message
    back = wire.decode_error(doc)
    assert type(back) is cls and back.message == exc.message
    if cls is InvalidInput:
        assert back.problems == ["a: is wrong", "b: too"]  # type: ignore[attr-defined]


def test_specific_errors_keep_their_class() -> None:
    for exc in (NotFound("No such container: x"), RuntimeConflict("container is paused"),
                ImageNotFound("no image"), Unavailable("engine down"), Conflict("busy")):
        assert type(wire.decode_error(wire.encode_error(exc))) is type(exc)


def test_unknown_and_foreign_errors_become_driver_errors() -> None:
    back = wire.decode_error({"error": "KeyError", "message": "'x'"})
    assert type(back) is DriverError and back.message == "'x'"
    doc = wire.encode_error(RuntimeError("boom"))
    assert doc == {"error": "DriverError", "message": "RuntimeError: boom"}

    class Local(NotFound):
        pass
    assert wire.encode_error(Local("gone")) == {"error": "NotFound", "message": "gone"}
    assert type(wire.decode_error({"nonsense": 1})) is DriverError
    assert type(wire.decode_error({"error": "InvalidInput", "message": "m"})) is InvalidInput
    assert wire.decode_error({"error": "InvalidInput", "message": "m"}).message == "m"
    assert not wire.is_error({"result": None})
