"""ContainerOps over HTTP: how the API reaches the agent of a container's host in
multi-host mode (the agent side is hostops/server.py; the wire is hostops/wire.py).

Errors the host's runtime raised arrive as the same capsuled.errors class with the same
message (a class this side does not know, from a newer agent, as the class its HTTP
status stands for in capsuled/http_status.py). Not reaching the agent is `Unavailable`
naming its URL; an agent that refuses the ops key is `Unavailable` too, saying so (a
configuration problem of the deployment, not the user's).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from capsuled.errors import CapsuledError, DriverError, Unavailable
from capsuled.hostops import wire
from capsuled.hostops.protocol import (ARCHIVE_MAX_BYTES, EXEC_MAX_OUTPUT, EXEC_TIMEOUT,
                                       ContainerOps, ExecResult, ImageInfo, RawStream)
from capsuled.http_status import error_class_for

# Seconds without a byte from the agent before a call is given up, for calls whose work
# takes long on the agent before it answers: a pull downloads an image; an archive is read
# (up to its size cap) or written by the Docker Engine first. Every other call has the
# client's timeout, stop/restart/exec_run that plus their own wait.
_SLOW_READ = {"pull_image": 1800.0, "get_archive": 300.0, "put_archive": 300.0, "commit": 600.0}
_CLOSE_TIMEOUT = 2.0
T = TypeVar("T")


class RemoteOps:
    """One host's ContainerOps, served by its agent at `base_url`."""

    def __init__(self, base_url: str, key: str, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, ca_file: str | None = None) -> None:
        self.url = base_url.rstrip("/")
        self._key = key
        # https:// agents are verified against `ca_file` (an operator's private CA), else
        # against the system's CAs; never unverified, or the key goes to whoever answers.
        self._tls = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, transport=transport,
            verify=self._tls if self._tls is not None else True,
            headers={wire.OPS_KEY_HEADER: key, "Accept": "application/json"},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=16))

    def close(self) -> None:
        self._http.close()

    # -- request/response -----------------------------------------------------------
    def start(self, container_id: str) -> None:
        self._call("start", container_id)

    def stop(self, container_id: str, timeout: int) -> None:
        self._call("stop", container_id, timeout, read=self._timeout + max(timeout, 0))

    def restart(self, container_id: str, timeout: int) -> None:
        self._call("restart", container_id, timeout, read=self._timeout + max(timeout, 0))

    def kill(self, container_id: str, signal: str | int | None) -> None:
        self._call("kill", container_id, signal)

    def pause(self, container_id: str) -> None:
        self._call("pause", container_id)

    def unpause(self, container_id: str) -> None:
        self._call("unpause", container_id)

    def update_resources(self, container_id: str, nano_cpus: int | None,
                         memory_bytes: int | None) -> None:
        self._call("update_resources", container_id, nano_cpus, memory_bytes)

    def logs(self, container_id: str, stdout: bool, stderr: bool, timestamps: bool,
             tail: int | None, since: int | None) -> bytes:
        return self._result(bytes, "logs", container_id, stdout, stderr, timestamps, tail, since)

    def exec_run(self, container_id: str, command: list[str], max_output: int = EXEC_MAX_OUTPUT,
                 timeout: int = EXEC_TIMEOUT) -> ExecResult:
        return self._result(ExecResult, "exec_run", container_id, command, max_output, timeout,
                            read=self._timeout + max(timeout, 0))

    def top(self, container_id: str, ps_args: str | None) -> dict[str, Any]:
        return self._result(dict, "top", container_id, ps_args)

    def stats(self, container_id: str) -> dict[str, Any]:
        return self._result(dict, "stats", container_id)

    def get_archive(self, container_id: str, path: str,
                    max_bytes: int = ARCHIVE_MAX_BYTES) -> tuple[bytes, dict[str, Any]]:
        return self._result(tuple, "get_archive", container_id, path, max_bytes)

    def put_archive(self, container_id: str, path: str, data: bytes) -> None:
        self._call("put_archive", container_id, path, data)

    def resize(self, container_id: str, height: int, width: int) -> None:
        self._call("resize", container_id, height, width)

    def exec_interactive(self, container_id: str, command: list[str]) -> str:
        return self._result(str, "exec_interactive", container_id, command)

    def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        self._call("exec_resize", exec_id, height, width)

    def list_images(self) -> list[ImageInfo]:
        return self._result(list, "list_images")

    def pull_image(self, repo: str, tag: str) -> ImageInfo:
        return self._result(ImageInfo, "pull_image", repo, tag)

    def search_images(self, term: str, limit: int) -> dict[str, Any]:
        return self._result(dict, "search_images", term, limit)

    def remove_image(self, ref: str) -> None:
        self._call("remove_image", ref)

    def commit(self, container_id: str, repository: str, tag: str, project: str) -> ImageInfo:
        return self._result(ImageInfo, "commit", container_id, repository, tag, project)

    def _result(self, kind: type[T], name: str, *args: Any, read: float | None = None) -> T:
        """A call whose result the wire decodes to a `kind`; checked, so the type holds."""
        value = self._call(name, *args, read=read)
        if not isinstance(value, kind):
            raise DriverError(f"{name}: the agent at {self.url} answered with a "
                              f"{type(value).__name__}, not a {kind.__name__}")
        return value

    def _call(self, name: str, *args: Any, read: float | None = None) -> Any:
        body = wire.encode_args(name, *args)
        timeout = httpx.Timeout(self._timeout, read=read or _SLOW_READ.get(name, self._timeout))
        try:
            r = self._http.post(wire.call_path(name), json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise self._unreachable(name, exc) from exc
        if r.status_code == 200:
            try:
                doc = r.json()
            except ValueError:
                raise DriverError(f"{name}: the agent at {self.url} answered with something "
                                  "other than JSON") from None
            if not isinstance(doc, dict) or "result" not in doc:
                raise DriverError(f"{name}: the agent at {self.url} answered without a result")
            return wire.decode_result(name, doc["result"])
        raise self._failure(name, r)

    # -- streams ----------------------------------------------------------------------
    def follow_logs(self, container_id: str, stdout: bool, stderr: bool, timestamps: bool,
                    tail: int | None, since: int | None) -> Iterator[bytes]:
        body = wire.encode_args("follow_logs", container_id, stdout, stderr, timestamps, tail, since)
        # The answer's head must come within the timeout; the body then has no read bound
        # (a quiet container writes nothing for hours): the stream ends when the client
        # leaves, whose relay closes it (see _LogStream.close).
        request = self._http.build_request("POST", wire.call_path("follow_logs"), json=body,
                                           timeout=httpx.Timeout(self._timeout))
        try:
            r = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._unreachable("follow_logs", exc) from exc
        # httpcore reads the body's read timeout from this dict when the body is first read.
        request.extensions["timeout"] = {**request.extensions.get("timeout", {}), "read": None}
        if r.status_code != 200:
            try:
                r.read()
            except httpx.HTTPError as exc:
                raise self._unreachable("follow_logs", exc) from exc
            finally:
                r.close()
            raise self._failure("follow_logs", r)
        return _LogStream(r)

    def attach(self, container_id: str) -> RawStream:
        return self._socket("attach", container_id)

    def exec_stream(self, exec_id: str) -> RawStream:
        return self._socket("exec_stream", exec_id)

    def _socket(self, name: str, ident: str) -> RawStream:
        scheme, rest = self.url.split("://", 1)
        url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}{wire.socket_path(name, ident)}"
        # None is websockets' default: the system's trust for wss, nothing for ws.
        tls = self._tls if scheme == "https" else None
        try:
            ws = connect(url, additional_headers={wire.OPS_KEY_HEADER: self._key}, ssl=tls,
                         open_timeout=self._timeout, close_timeout=_CLOSE_TIMEOUT,
                         compression=None, max_size=None, legacy=True)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise self._refused(name) from None
            raise Unavailable(f"{name}: the agent at {self.url} refused the websocket "
                              f"(HTTP {status})") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise self._unreachable(name, exc) from exc
        try:
            first = ws.recv(timeout=self._timeout)
        except (TimeoutError, ConnectionClosed, OSError) as exc:
            ws.close()
            raise self._unreachable(name, exc) from exc
        try:
            doc = json.loads(first) if isinstance(first, str) else None
        except ValueError:
            doc = None
        if doc == wire.HANDSHAKE_OK:
            return _WebSocketStream(ws)
        ws.close()
        if wire.is_error(doc):
            raise wire.decode_error(doc)
        raise DriverError(f"{name}: the agent at {self.url} opened the session without a handshake")

    # -- failures ---------------------------------------------------------------------
    def _unreachable(self, name: str, exc: BaseException) -> Unavailable:
        why = str(exc) or type(exc).__name__
        return Unavailable(f"{name}: the agent at {self.url} is unreachable ({why})")

    def _refused(self, name: str) -> Unavailable:
        return Unavailable(f"{name}: the agent at {self.url} refused the ops key "
                           f"({wire.OPS_KEY_HEADER}): the API's and the agent's ops keys differ")

    def _failure(self, name: str, r: httpx.Response) -> CapsuledError:
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if wire.is_error(doc):
            return wire.decode_error(doc, error_class_for(r.status_code))
        # The key check answers 401 in plain text; an error of the host's is a document.
        if r.status_code == 401:
            return self._refused(name)
        return Unavailable(f"{name}: the agent at {self.url} answered HTTP {r.status_code}: "
                           f"{r.text[:200]}")


class _LogStream:
    """A followed log as an iterator of raw chunks; ends quietly when the connection does
    (as the Docker driver's stream does). close() may come from another thread: it shuts
    the socket down first so that a reader blocked on a quiet container wakes up."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = response.iter_raw()
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> _LogStream:
        return self

    def __next__(self) -> bytes:
        while not self._closed:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            except (httpx.HTTPError, httpx.StreamError, OSError):
                break
            if chunk:
                return chunk
        self.close()
        raise StopIteration

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._response.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class _WebSocketStream:
    """A terminal session on the agent's websocket as a RawStream."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._pending = b""

    def recv(self, size: int) -> bytes:
        while not self._pending:
            try:
                message = self._ws.recv()
            except (ConnectionClosed, OSError):
                return b""
            self._pending = message.encode() if isinstance(message, str) else bytes(message)
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def sendall(self, data: bytes) -> None:
        try:
            self._ws.send(bytes(data))
        except ConnectionClosed as exc:
            raise BrokenPipeError("the terminal session has ended") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()


class RemoteOpsPool:
    """ops_for(host) for the API: one RemoteOps per (agent URL, key), kept for reuse."""

    def __init__(self, lookup: Callable[[str], tuple[str, str] | None], timeout: float = 30.0,
                 ca_file: str | None = None) -> None:
        self._lookup = lookup
        self._timeout = timeout
        self._ca_file = ca_file
        self._clients: dict[tuple[str, str], RemoteOps] = {}
        self._lock = threading.Lock()

    def __call__(self, host: str) -> ContainerOps:
        found = self._lookup(host)
        if found is None:
            raise Unavailable(f"host {host} has no reachable agent")
        url, key = found
        with self._lock:
            ops = self._clients.get((url, key))
            if ops is None:
                # A new key for a known URL: the agent was reconfigured; drop the old client.
                for stale in [k for k in self._clients if k[0] == url]:
                    self._clients.pop(stale).close()
                ops = self._clients[(url, key)] = RemoteOps(url, key, self._timeout,
                                                            ca_file=self._ca_file)
            return ops

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for ops in clients:
            ops.close()


def ops_for_hosts(lookup: Callable[[str], tuple[str, str] | None],
                  timeout: float = 30.0, ca_file: str | None = None) -> RemoteOpsPool:
    """`lookup(host)` gives the agent's (ops URL, key), or None if it has none;
    https:// agents are verified against `ca_file` (default: the system's CAs)."""
    return RemoteOpsPool(lookup, timeout, ca_file)
