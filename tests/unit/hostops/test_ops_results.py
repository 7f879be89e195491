"""The ops client hands back each call's result as the type its method declares: the
wire decodes it, and the client checks it (so strict typing holds past the JSON)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from capsuled import errors
from capsuled.hostops import wire
from capsuled.hostops.client import RemoteOps
from capsuled.hostops.protocol import ExecResult, ImageInfo

KEY = "k" * 32


def _answering(results: dict[str, Any]) -> RemoteOps:
    """A client whose agent answers each method with `results[method]`, as the wire encodes it."""
    def answer(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        doc = {"result": wire.encode_result(name, results[name])}
        return httpx.Response(200, content=json.dumps(doc).encode(),
                              headers={"content-type": "application/json"})
    return RemoteOps("http://agent.test:9518", KEY, transport=httpx.MockTransport(answer))


def test_each_result_comes_back_as_its_declared_type() -> None:
    image = ImageInfo(id="sha256:1", repo="busybox", tag="latest", size=10, created=0)
    ran = ExecResult(exit_code=0, output=b"hi\n", exec_id="e1")
    ops = _answering({"logs": b"line\n", "exec_run": ran, "top": {"Titles": ["PID"]},
                      "stats": {"cpu": 1}, "get_archive": (b"tar", {"size": 3}),
                      "exec_interactive": "e2", "list_images": [image], "pull_image": image,
                      "commit": image})
    assert ops.logs("c1", True, True, False, None, None) == b"line\n"
    assert ops.exec_run("c1", ["echo", "hi"]) == ran
    assert ops.top("c1", None) == {"Titles": ["PID"]}
    assert ops.stats("c1") == {"cpu": 1}
    assert ops.get_archive("c1", "/etc") == (b"tar", {"size": 3})
    assert ops.exec_interactive("c1", ["sh"]) == "e2"
    assert ops.list_images() == [image]
    assert ops.pull_image("busybox", "latest") == image
    assert ops.commit("c1", "busybox", "latest", "p") == image


def test_a_result_of_another_type_is_a_driver_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = _answering({})
    monkeypatch.setattr(ops, "_call", lambda name, *args, read=None: "not bytes")
    with pytest.raises(errors.DriverError, match="logs: .* answered with a str, not a bytes"):
        ops.logs("c1", True, True, False, None, None)
