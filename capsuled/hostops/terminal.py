"""A terminal over a websocket: raw bytes both ways between a client and a container's
RawStream. The API serves users' attach/exec sessions with it, and the agent serves the
API's; one implementation for both hops."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
from starlette.websockets import WebSocket

from capsuled.hostops.protocol import RawStream

_CHUNK = 65536


async def bridge(websocket: WebSocket, stream: RawStream,
                 limiter: anyio.CapacityLimiter | None = None) -> None:
    """Binary frames both ways until either side ends; then both are closed (the stream's
    close shuts its socket down, which frees the thread blocked reading it).

    The blocking reads and writes run on `limiter`'s threads: a session lasts as long as
    its user wants, so it must not hold a thread of the pool ordinary requests use."""

    async def container_to_client() -> None:
        while True:
            data = await anyio.to_thread.run_sync(stream.recv, _CHUNK, abandon_on_cancel=True,
                                                  limiter=limiter)
            if not data:
                return
            await websocket.send_bytes(data)

    async def client_to_container() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or (message.get("text") or "").encode()
            if data:
                await anyio.to_thread.run_sync(stream.sendall, data, limiter=limiter)

    async def until_done(pump: Callable[[], Any], group: anyio.abc.TaskGroup) -> None:
        try:
            await pump()
        except Exception:  # noqa: BLE001 - either side hanging up ends the session, quietly
            pass
        group.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(until_done, container_to_client, group)
            group.start_soon(until_done, client_to_container, group)
    finally:
        # In a thread: closing a remote session waits for the agent's closing handshake.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stream.close, limiter=limiter)
        with contextlib.suppress(Exception):  # already closed by the client
            await websocket.close()
