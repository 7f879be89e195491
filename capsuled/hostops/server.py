"""The agent's ops endpoint: this host's `ContainerOps` served over HTTP to the API.

In multi-host mode users' reads and imperative actions (logs, exec, attach, top, stats,
archives, start/stop/…) reach the container's host through here; the API's RemoteOps is
the client. The wire format is hostops/wire.py. Every request, websockets included,
must carry `X-Capsuled-Ops-Key`; anything else is refused with 401 before routing. The
agent keeps only the key's SHA-256 (`OpsKey`): the API derives the key and hands it over
in the answer to the agent's registration (api/services/agents.py). Every call naming a
container is refused with 404 unless the container is this deployment's (`owns`, wired
by the composition root to the `capsuled.instance` label), so neither a confused API nor
a stolen key reaches the host's other containers. TLS: `serve_ops(..., ssl_certfile,
ssl_keyfile)`.

Built on Starlette (FastAPI's own foundation): the agent may not import FastAPI, and this
app needs nothing of it beyond routing.

Open log streams and terminal sessions are registered in `app.state.sessions`; the server
`serve_ops` starts closes them first when it shuts down, so that stopping never waits on
a quiet container.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from functools import partial
from typing import Any

import anyio
import anyio.abc
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from capsuled.domain.channel import ops_key_digest
from capsuled.errors import CapsuledError, DriverError, InvalidInput, NotFound
from capsuled.hostops import wire
from capsuled.hostops.protocol import ContainerOps, RawStream
from capsuled.hostops.terminal import bridge
from capsuled.http_status import status_for

LOG = logging.getLogger(__name__)
_CHUNK = 65536
# Threads for long-lived work, apart from the default pool that serves the quick calls:
# open log streams and terminals (each API replica caps its own, 200 by default), and
# calls that wait on a container or on the Engine (stops, execs, pulls, archives).
_STREAM_THREADS = 1024
_WAIT_THREADS = 128
_WAITS = frozenset({"stop", "restart", "exec_run", "pull_image", "get_archive", "put_archive",
                    "commit"})


class Sessions:
    """The open streams' close functions (thread-safe): what shutdown has to cut."""

    def __init__(self) -> None:
        self._open: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._next = 0

    def add(self, close: Callable[[], None]) -> int:
        with self._lock:
            self._next += 1
            self._open[self._next] = close
            return self._next

    def discard(self, token: int) -> None:
        with self._lock:
            self._open.pop(token, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def close_all(self) -> None:
        with self._lock:
            closers, self._open = list(self._open.values()), {}
        for close in closers:
            with contextlib.suppress(Exception):
                close()


class OpsKey:
    """The key the ops endpoint accepts, kept as its digest only. Unset (before the
    agent's registration answered), every request is refused."""

    def __init__(self, key: str | None = None) -> None:
        self._digest: str | None = None
        if key is not None:
            self.set(key)

    def set(self, key: str) -> None:
        if not key:
            raise ValueError("the ops endpoint needs a non-empty key")
        self._digest = ops_key_digest(key)

    def accepts(self, given: bytes) -> bool:
        digest = self._digest
        return digest is not None and hmac.compare_digest(ops_key_digest(given), digest)


def create_ops_app(ops: ContainerOps, key: str | OpsKey,
                   owns: Callable[[str], bool] | None = None) -> Starlette:
    """The ASGI app serving `ops` to whoever presents `key`. `owns(container_id)` says
    whether a container is this deployment's; calls for any other are 404 (None: no
    check, for tests of the wire alone)."""
    if not isinstance(key, OpsKey):
        key = OpsKey(key)
    sessions = Sessions()

    def owned(container_id: str) -> None:
        if owns is not None and not owns(container_id):
            raise NotFound(f"No such container: {container_id}")
    streams = anyio.CapacityLimiter(_STREAM_THREADS)
    waits = anyio.CapacityLimiter(_WAIT_THREADS)

    async def call(request: Request) -> Response:
        name = request.path_params["method"]
        m = wire.METHODS.get(name)
        if m is None or m.transport == "socket":
            return _error(DriverError(f"the agent has no operation {name!r}"), 404)
        try:
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                raise InvalidInput(f"{name}: the body must be JSON") from None
            args = wire.decode_args(name, body)
            if m.param_names[:1] == ("container_id",):
                await anyio.to_thread.run_sync(owned, args[0])
            if m.transport == "stream":
                chunks = await anyio.to_thread.run_sync(partial(getattr(ops, name), *args),
                                                        limiter=streams)
                return _Follow(chunks, sessions, streams)
            result = await anyio.to_thread.run_sync(partial(getattr(ops, name), *args),
                                                    limiter=waits if name in _WAITS else None)
            return JSONResponse({"result": wire.encode_result(name, result)})
        except Exception as exc:  # noqa: BLE001 - every failure crosses the wire as an error
            return _error(exc)

    async def attach(websocket: WebSocket) -> None:
        cid = websocket.path_params["container_id"]
        await _session(websocket, partial(_owned_then, owned, cid, ops.attach),
                       sessions, streams)

    async def exec_session(websocket: WebSocket) -> None:
        await _session(websocket, partial(ops.exec_stream, websocket.path_params["exec_id"]),
                       sessions, streams)

    app = Starlette(routes=[
        Route(f"{wire.OPS_PREFIX}/{{method}}", call, methods=["POST"]),
        WebSocketRoute(f"{wire.OPS_PREFIX}/attach/{{container_id}}", attach),
        WebSocketRoute(f"{wire.OPS_PREFIX}/exec/{{exec_id}}", exec_session),
    ])
    app.add_middleware(_RequireKey, key=key)
    app.state.sessions = sessions
    return app


def owned_by(listing: Callable[[], Iterable[str]], remember: int = 10_000) -> Callable[[str], bool]:
    """`owns` for create_ops_app: a container is ours if `listing()`, the ids of this
    deployment's containers, has its exact id. A container's labels never change, so an
    id found ours stays ours: remembered (up to `remember` of them), it spares the listing
    on later calls."""
    known: set[str] = set()

    def owns(container_id: str) -> bool:
        if container_id in known:
            return True
        if container_id not in set(listing()):
            return False
        if len(known) >= remember:
            known.clear()
        known.add(container_id)
        return True

    return owns


def _owned_then(check: Callable[[str], None], container_id: str,
                open_stream: Callable[[str], RawStream]) -> RawStream:
    """The ownership check (raises NotFound), then `open_stream`."""
    check(container_id)
    return open_stream(container_id)


class _RequireKey:
    """401 for any request without the right key, HTTP and websocket alike."""

    def __init__(self, app: ASGIApp, key: OpsKey) -> None:
        self._app = app
        self._key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        wanted = wire.OPS_KEY_HEADER.lower().encode("latin-1")
        given = next((v for k, v in scope.get("headers") or [] if k.lower() == wanted), b"")
        if self._key.accepts(given):
            await self._app(scope, receive, send)
            return
        refusal = PlainTextResponse(f"missing or wrong {wire.OPS_KEY_HEADER}", status_code=401)
        if scope["type"] == "http":
            await refusal(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(refusal)
        else:
            await websocket.close(code=4401, reason="ops key refused")


def _error(exc: BaseException, status: int | None = None) -> JSONResponse:
    if not isinstance(exc, CapsuledError):
        LOG.exception("ops call failed unexpectedly", exc_info=exc)
    # The status is for people reading logs or using curl: the client goes by the document.
    doc = wire.encode_error(exc)
    return JSONResponse(doc, status_code=status_for(exc) if status is None else status)


# -- follow_logs ------------------------------------------------------------------------

class _Follow(StreamingResponse):
    """Raw log bytes from a blocking iterator, each next() in a worker thread.

    A thread waiting for a quiet container's next line is abandoned when the client hangs
    up, and the iterator is closed, which (for the Docker driver's stream) shuts its
    socket down and so wakes that thread.
    """

    def __init__(self, chunks: Iterator[bytes], sessions: Sessions,
                 limiter: anyio.CapacityLimiter) -> None:
        self._source = chunks
        self._sessions = sessions
        self._limiter = limiter
        self._token = sessions.add(partial(_close, chunks))
        super().__init__(self._pump(), media_type=wire.OCTET)

    async def _pump(self) -> AsyncIterator[bytes]:
        it = iter(self._source)
        while True:
            chunk = await anyio.to_thread.run_sync(_next_chunk, it, abandon_on_cancel=True,
                                                   limiter=self._limiter)
            if chunk is None:
                return
            if chunk:
                yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._sessions.discard(self._token)
            _close(self._source)


def _next_chunk(it: Iterator[bytes]) -> bytes | None:
    try:
        return bytes(next(it))
    except StopIteration:
        return None
    except Exception as exc:  # noqa: BLE001 - the stream ends; the status line went long ago
        LOG.debug("log stream ended: %s", exc)
        return None


def _close(source: Any) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):  # e.g. a generator still running in a thread
            close()


# -- attach and exec sessions -----------------------------------------------------------

async def _session(websocket: WebSocket, open_stream: Callable[[], RawStream],
                   sessions: Sessions, limiter: anyio.CapacityLimiter) -> None:
    try:
        stream = await anyio.to_thread.run_sync(open_stream, limiter=limiter)
    except Exception as exc:  # noqa: BLE001 - the error is the first frame
        if not isinstance(exc, CapsuledError):
            LOG.exception("opening a terminal stream failed unexpectedly")
        with contextlib.suppress(Exception):  # the client may be gone already
            await websocket.accept()
            await websocket.send_text(json.dumps(wire.encode_error(exc)))
            await websocket.close()
        return
    token = sessions.add(stream.close)
    try:
        await websocket.accept()
        await websocket.send_text(json.dumps(wire.HANDSHAKE_OK))
    except BaseException:
        sessions.discard(token)
        stream.close()
        raise
    try:
        await bridge(websocket, stream, limiter)
    finally:
        sessions.discard(token)


# -- serving ----------------------------------------------------------------------------

def serve_ops(app: ASGIApp, host: str, port: int, startup_timeout: float = 10.0,
              log_level: str = "warning", ssl_certfile: str | None = None,
              ssl_keyfile: str | None = None,
              log_to_root: bool = False) -> tuple[uvicorn.Server, threading.Thread]:
    """Run `app` with uvicorn in a daemon thread; return once it listens (with TLS when
    given a PEM certificate and key). `log_to_root`: uvicorn's records go to the root
    logger's handlers (JSON logs) instead of handlers of its own.

    Stop it with `stop_ops(server, thread)`. Raises OSError if it cannot listen.
    """
    logging_args: dict[str, Any] = {"log_config": None} if log_to_root else {}
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            access_log=False, timeout_graceful_shutdown=5,
                            ws_per_message_deflate=False, ssl_certfile=ssl_certfile,
                            ssl_keyfile=ssl_keyfile, **logging_args)
    server = _OpsServer(config, getattr(getattr(app, "state", None), "sessions", None))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # noqa: BLE001 - uvicorn exits with SystemExit on bind errors
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"ops-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            why = f" ({failure[0]!r})" if failure else ""
            raise OSError(f"the ops endpoint could not listen on {host}:{port}{why}")
        time.sleep(0.02)
    return server, thread


class _OpsServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, sessions: Sessions | None) -> None:
        super().__init__(config)
        self._sessions = sessions

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        # Cut open log streams and terminals first: each then ends its response or
        # websocket by itself, and uvicorn's graceful wait is short instead of 5 s.
        if self._sessions is not None:
            self._sessions.close_all()
        await super().shutdown(sockets)


def stop_ops(server: uvicorn.Server, thread: threading.Thread, timeout: float = 10.0) -> None:
    """Ask the server to exit, and wait for it (open streams are cut after 5 s)."""
    server.should_exit = True
    thread.join(timeout)
    if thread.is_alive():
        server.force_exit = True
        thread.join(timeout)
