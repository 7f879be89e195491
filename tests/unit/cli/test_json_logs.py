"""JSON log lines: their fields, and the request id of the request that logged them, also
from the worker threads handlers run in (the API in process, over SQLite)."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capsuled import logs
from capsuled.cli import compose
from capsuled.config import Settings
from capsuled.paths import ADMIN_TOKEN_FILE

with warnings.catch_warnings():  # Starlette would like httpx2; httpx is what we ship
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture()
def lines() -> Iterator[io.StringIO]:
    """What the root logger writes, as `logs.setup(..., "json")` configures its handler."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.RequestIdFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def parsed(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_is_one_object_with_its_fields(lines: io.StringIO) -> None:
    log = logging.getLogger("capsuled.test")
    log.warning("plain %s", "words\nand a newline")
    token = logs.REQUEST_ID.set("req-1")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed for %r", object())
    finally:
        logs.REQUEST_ID.reset(token)
    first, second = parsed(lines)
    assert set(first) == {"time", "level", "logger", "message"}
    assert (first["level"], first["logger"]) == ("WARNING", "capsuled.test")
    assert first["message"] == "plain words\nand a newline"
    assert first["time"].endswith("+00:00")
    assert second["request_id"] == "req-1" and second["level"] == "ERROR"
    assert "ValueError: boom" in second["exception"]


def no_ops(host: str) -> Any:
    raise AssertionError("no host operations here")


def test_what_a_request_logs_carries_its_request_id(tmp_path: Path, lines: io.StringIO) -> None:
    settings = Settings.model_validate({"state_dir": tmp_path})
    opened = compose.open_store(settings)
    built = compose.build_api(settings, opened.store, no_ops)
    admin = (tmp_path / ADMIN_TOKEN_FILE).read_text().strip()
    template = {"kind": "capsule", "metadata": {"name": "nowhere"},
                "spec": {"containers": [{"name": "web", "image": "busybox"}]}}
    try:
        with TestClient(built.app) as http:
            # No host: the placement warns (in a worker thread) about the capsule.
            r = http.post("/v1/capsules", json={"template": template},
                          headers={"X-Auth-Token": admin})
            assert r.status_code == 202, r.text
            other = http.get("/v1/capsules", headers={"X-Auth-Token": admin})
    finally:
        opened.store.engine.dispose()
    warned = [line for line in parsed(lines) if "no host for capsule nowhere" in line["message"]]
    assert len(warned) == 1
    assert warned[0]["request_id"] == r.headers["x-openstack-request-id"]
    assert warned[0]["request_id"] != other.headers["x-openstack-request-id"]
    assert warned[0]["logger"] == "capsuled.api.services.placement"
    # Outside any request nothing claims one.
    logging.getLogger("capsuled.test").warning("after")
    assert "request_id" not in parsed(lines)[-1]
