"""Transport conventions every request gets, as one pure ASGI middleware:
path normalisation (trailing slash, implicit /v1), the request id (also in the log lines
the request causes, capsuled.logs), microversion negotiation and its response headers,
the body size limit (413 before a byte more than the limit is read), a last-resort 500
in Zun's shape (a client gone before its body arrived is no fault: nothing is answered and
it is counted as 499), and the request's count and duration for /metrics (by route template,
taken from the route that matched: no store access, a few microseconds)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capsuled.api import microversions
from capsuled.api.errors import internal_error
from capsuled.api.metrics import ApiMetrics
from capsuled.errors import PayloadTooLarge, VersionNotAcceptable
from capsuled.logs import REQUEST_ID

LOG = logging.getLogger(__name__)
# nginx's code for "client closed request": the status a request that nobody waits for
# any more is counted under, so it is neither a success nor the server's fault.
CLIENT_GONE = 499

_UNVERSIONED = ("/", "/openapi.json", "/docs", "/healthz", "/metrics")


class ApiMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = 1_048_576,
                 max_agent_body_bytes: int = 16 * 1_048_576,
                 metrics: ApiMetrics | None = None) -> None:
        self.app = app
        self.max_body = max_body_bytes
        # An agent's report covers every container on its host.
        self.max_agent_body = max_agent_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = f"req-{uuid.uuid4()}"
        status = 500  # unless an answer starts

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        reset = REQUEST_ID.set(request_id)
        try:
            await self._handle(scope, receive, counted, request_id)
        except ClientDisconnect:
            status = CLIENT_GONE
            LOG.info("%s %s: the client went away before its request arrived whole",
                     scope["method"], scope["path"])
        finally:
            REQUEST_ID.reset(reset)
            if self.metrics is not None:
                # The route that matched (Starlette's router records it in the scope): its
                # template, never the path, so random paths add no label values.
                route = getattr(scope.get("route"), "path", None)
                self.metrics.request_done(scope["method"], route, status,
                                          time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        path = _normalise(scope["path"])
        scope["path"], scope["raw_path"] = path, path.encode()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        extra = {"x-openstack-request-id": request_id}
        if path.startswith("/v1"):
            header = _header(scope, microversions.HEADER.lower())
            try:
                version = microversions.parse(header)
            except VersionNotAcceptable as exc:
                extra.update({k: v for k, v in microversions.response_headers(
                    microversions.ApiVersion(*microversions.MIN)).items()
                    if k != microversions.HEADER})
                await _send_json(send, 406, _error(request_id, 406, "version-not-acceptable",
                                                   exc.message), extra)
                return
            state["api_version"] = version
            extra.update(microversions.response_headers(version))
        limit = self.max_agent_body if path.startswith("/v1/agents/") else self.max_body
        declared = _header(scope, "content-length")
        if declared is not None and (not declared.isascii() or not declared.isdigit()
                                     or len(declared) > 15 or int(declared) > limit):
            await _send_json(send, 413, _error(request_id, 413, "payload-too-large",
                                               f"The request body is larger than {limit} bytes."),
                             extra)
            return
        receive = _bounded(receive, limit)
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for k, v in extra.items():
                    headers[k] = v
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            raise  # nobody to answer
        except Exception as exc:
            if started:
                raise
            response = internal_error(request_id, path, exc)
            for k, v in extra.items():
                response.headers[k] = v
            await response(scope, receive, send)


def _bounded(receive: Receive, limit: int) -> Receive:
    """`receive` that raises PayloadTooLarge once more than `limit` body bytes arrived
    (a chunked body declares no length)."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        return message
    return bounded


def _normalise(path: str) -> str:
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    if path in _UNVERSIONED or path == "/v1" or path.startswith(("/v1/", "/ui/")) or path == "/ui":
        return path
    return "/v1" + path  # Zun treats /capsules as /v1/capsules


def _header(scope: Scope, name: str) -> str | None:
    for k, v in scope.get("headers", []):
        if k.decode("latin-1").lower() == name:
            return str(v.decode("latin-1"))
    return None


def _error(request_id: str, status: int, code: str, title: str) -> dict[str, Any]:
    return {"errors": [{"request_id": request_id, "code": f"container.{code}", "status": status,
                        "title": title, "detail": title, "links": [],
                        "min_version": microversions.fmt(microversions.MIN),
                        "max_version": microversions.fmt(microversions.MAX)}]}


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})
