"""/v1/containers: thin handlers over ContainerService.

Zun reads parameters from the query string and the JSON body alike (BodyDep merges them);
`capsule=<name|uuid>` is our extension that reaches the containers of a capsule.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any
from urllib.parse import urlencode

import anyio
import anyio.abc
from fastapi import APIRouter, Request, Response, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse

from capsuled.api import openapi as doc
from capsuled.api.deps import BaseUrlDep, BodyDep, PrincipalDep, VersionDep, allow, flag, given
from capsuled.api.microversions import ApiVersion
from capsuled.api.routers.capsules import _limit, _marker, _sort_dir, filter_value
from capsuled.api.services.images import image_uuid
from capsuled.api.services import container_networks
from capsuled.api.services.containers import (ContainerService, LogRequest, parse_since,
                                              parse_stop_timeout, parse_tail)
from capsuled.api.state import app_state
from capsuled.api.streams import StreamLease, Streams
from capsuled.api.views import action_view, any_container_view
from capsuled.domain.addresses import network_list as zun_network_list
from capsuled.domain.template import whole_number
from capsuled.errors import (CapsuledError, InvalidInput, NotAuthenticated, TooManyRequests,
                             VersionNotAcceptable)
from capsuled.hostops.terminal import bridge
from capsuled.store.capsules import Page

router = APIRouter(prefix="/v1/containers")
LIST_FILTERS = ("name", "image", "project_id", "user_id", "host", "status")
OCTET = "application/octet-stream"


def _service(request: Request) -> ContainerService:
    return app_state(request, "containers", ContainerService)


def _streams(request: Request) -> Streams:
    return app_state(request, "streams", Streams)


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


@router.post("", status_code=202, dependencies=[allow("container:create")],
             openapi_extra=doc.body(doc.CONTAINER_CREATE, doc.CONTAINER_EXAMPLE))
def create(request: Request, response: Response, body: BodyDep, who: PrincipalDep,
           version: VersionDep, base: BaseUrlDep) -> dict[str, Any]:
    """Create a container (run=true also starts it); `capsule` adds it to a capsule."""
    run = flag(body.pop("run", None), "run")
    for key, least in (("registry", (1, 31)), ("exposed_ports", (1, 24))):
        if body.get(key) not in (None, {}) and not version.at_least(least):
            raise InvalidInput(f"{key}: needs microversion {least[0]}.{least[1]} or later "
                               f"(this request asked for {version})")
    row = _service(request).create(who, body, run, _request_id(request),
                                   command_as_string=not version.at_least((1, 20)))
    response.headers["Location"] = f"{base}/v1/containers/{row.uuid}"
    return any_container_view(row, _service(request).shows_host(who), base)


@router.get("", dependencies=[allow("container:get_all")])
def list_(request: Request, who: PrincipalDep, base: BaseUrlDep, limit: str | None = None,
          marker: str | None = None, sort_key: str = "id", sort_dir: str = "asc",
          all_projects: str | None = None, capsule: str | None = None) -> dict[str, Any]:
    """Bare containers (Zun's semantics); `capsule=<ident>` lists a capsule's instead."""
    page = Page(limit=_limit(limit, request.app.state.settings.api.max_limit),
                marker=_marker(marker), sort_key=filter_value("sort_key", sort_key),
                sort_dir=_sort_dir(sort_dir))
    filters = {k: filter_value(k, request.query_params[k]) for k in LIST_FILTERS
               if k in request.query_params}
    if not _service(request).shows_host(who):
        # Where a member's containers run is the operator's business (and tells of other
        # tenants' placement), so hosts are neither shown to members nor filtered or sorted by.
        if "host" in filters:
            raise InvalidInput("host: only administrators may filter containers by host")
        if page.sort_key == "host":
            raise InvalidInput("sort_key: only administrators may sort containers by host")
    rows = _service(request).list(who, page, flag(all_projects, "all_projects"), capsule, filters)
    nxt = None
    if rows and len(rows) == page.limit:
        params = {k: v for k, v in request.query_params.multi_items() if k != "marker"}
        params.update(limit=str(page.limit), marker=rows[-1].uuid)
        nxt = f"{base}/v1/containers?{urlencode(params)}"
    return {"containers": [any_container_view(r, _service(request).shows_host(who), base) for r in rows], "next": nxt}


@router.get("/{ident}", dependencies=[allow("container:get_one")])
def show(request: Request, ident: str, who: PrincipalDep, base: BaseUrlDep,
         capsule: str | None = None) -> dict[str, Any]:
    return any_container_view(_service(request).get(who, ident, capsule), _service(request).shows_host(who), base)


@router.delete("/{ident}", status_code=204, dependencies=[allow("container:delete")])
def delete(request: Request, ident: str, who: PrincipalDep, force: str | None = None,
           stop: str | None = None, all_projects: str | None = None) -> Response:
    _service(request).delete(who, ident, flag(force, "force"), flag(stop, "stop"),
                             _request_id(request), flag(all_projects, "all_projects"))
    return Response(status_code=204)


@router.patch("/{ident}", dependencies=[allow("container:update")],
              openapi_extra=doc.body(doc.CONTAINER_UPDATE))
def update(request: Request, ident: str, body: BodyDep, who: PrincipalDep,
           base: BaseUrlDep) -> dict[str, Any]:
    """Update cpu/memory (applied live) or rename; a capsule's container needs `capsule`."""
    capsule = body.pop("capsule", None)
    row = _service(request).update(who, ident, body, capsule)
    return any_container_view(row, _service(request).shows_host(who), base)


def _lifecycle(action: str) -> Any:
    async def handler(request: Request, ident: str, who: PrincipalDep, timeout: str | None = None,
                      signal: str | None = None) -> Response:
        seconds = parse_stop_timeout(given(timeout))
        # A stop waits up to its timeout for the container: on the waits' own threads, so
        # that many of them cannot hold the pool every other request needs.
        await _streams(request).run_wait(partial(
            _service(request).action, who, ident, action, _request_id(request),
            timeout=seconds, signal=given(signal)))
        return Response(status_code=202)
    handler.__name__ = action
    handler.__doc__ = f"{action.capitalize()} a bare container."
    return handler


for _action in ("start", "stop", "reboot", "pause", "unpause", "kill"):
    router.add_api_route(f"/{{ident}}/{_action}", _lifecycle(_action), methods=["POST"],
                         status_code=202, name=_action,
                         dependencies=[allow(f"container:{_action}")])


@router.post("/{ident}/rename", dependencies=[allow("container:rename")])
def rename(request: Request, ident: str, who: PrincipalDep, base: BaseUrlDep,
           name: str | None = None) -> dict[str, Any]:
    return any_container_view(_service(request).rename(who, ident, given(name)), _service(request).shows_host(who), base)


@router.get("/{ident}/logs", dependencies=[allow("container:logs")])
async def logs(request: Request, ident: str, who: PrincipalDep, stdout: str | None = None,
               stderr: str | None = None, timestamps: str | None = None, tail: str | None = None,
               since: str | None = None, follow: str | None = None,
               capsule: str | None = None) -> Response:
    """A JSON string (Zun); with Accept: application/octet-stream the exact bytes, and with
    follow=true as well, a stream until the container stops (extensions)."""
    stdout, stderr = given(stdout), given(stderr)
    want_out, want_err = flag(stdout, "stdout"), flag(stderr, "stderr")
    # Naming one stream (Zun's habit: stdout=true) means only that one; turning one off
    # (stderr=false) means the other. Neither named: both.
    if stdout is None:
        want_out = stderr is None or not want_err
    if stderr is None:
        want_err = stdout is None or not want_out
    req = LogRequest(stdout=want_out, stderr=want_err, timestamps=flag(timestamps, "timestamps"),
                     tail=parse_tail(given(tail)), since=parse_since(given(since)))
    raw = OCTET in request.headers.get("accept", "")
    if flag(follow, "follow"):
        if not raw:
            raise InvalidInput(f"follow: needs Accept: {OCTET} (a JSON string cannot stream)")
        streams = _streams(request)
        lease = streams.open_stream(who.project_id)
        try:
            source = await streams.run_stream(_service(request).follow_logs, who, ident, req, capsule)
        except BaseException:
            lease.release()
            raise
        return _Follow(source, lease, streams)
    data = await anyio.to_thread.run_sync(_service(request).logs, who, ident, req, capsule)
    if raw:
        return Response(data, media_type=OCTET)
    return Response(json.dumps(data.decode("utf-8", "replace")), media_type="application/json")


class _Follow(StreamingResponse):
    """A followed log, relayed on the streams' own threads and counted until it ends,
    however it ends: the container stops, the client hangs up, or the response never
    starts. Then the source is closed too (its close() wakes the thread blocked reading
    it, which would otherwise wait for the container's next output)."""

    def __init__(self, source: Iterator[bytes], lease: StreamLease, streams: Streams) -> None:
        self._source = source
        self._lease = lease
        self._streams = streams
        super().__init__(_relay(source, streams), media_type=OCTET)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._lease.release()
            close = getattr(self._source, "close", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await self._streams.run_stream(close)


async def _relay(stream: Iterator[bytes], streams: Streams) -> AsyncIterator[bytes]:
    done = object()
    while True:
        # Abandoned on cancel: the thread stays blocked in next() until _Follow closes it.
        chunk = await streams.run_stream(next, stream, done, abandon_on_cancel=True)
        if chunk is done:
            return
        yield chunk


@router.post("/{ident}/execute", dependencies=[allow("container:execute")],
             openapi_extra=doc.body(doc.EXECUTE))
async def execute(request: Request, ident: str, body: BodyDep, who: PrincipalDep) -> dict[str, Any]:
    """Run a command: its output and exit code, or with interactive=true a TTY session to
    join at `proxy_url` (a websocket).

    The output is capped and the wait bounded (settings api.exec_max_output, exec_timeout);
    `output_truncated` and `timed_out` (extensions) say when either cut it short, and
    exit_code is then null if the command was still running."""
    # Zun's run=false means "create the exec, start it later": the `zun` and `openstack`
    # CLIs send it with interactive=true, whose session starts when the websocket joins.
    # Without interactive nothing could ever start it, so that pair stays refused.
    interactive = flag(given(body.get("interactive")), "interactive")
    if given(body.get("run")) is not None and not flag(given(body.get("run")), "run") \
            and not interactive:
        raise InvalidInput("run: an exec that does not run is only possible with "
                           "interactive=true (its session starts when the websocket joins)")
    service = _service(request)
    if interactive:
        _streams(request).check(who.project_id)  # no URL for a session that would be refused
        exec_id, token, uuid = await anyio.to_thread.run_sync(
            service.exec_interactive, who, ident, body.get("command"), body.get("capsule"))
        return {"output": None, "exit_code": None, "exec_id": exec_id,
                "proxy_url": _ws_url(request, uuid, token)}
    api = request.app.state.settings.api
    result = await _streams(request).run_wait(partial(
        service.execute, who, ident, body.get("command"), body.get("capsule"),
        max_output=api.exec_max_output, timeout=api.exec_timeout))
    return {"output": result.output.decode("utf-8", "replace"), "exit_code": result.exit_code,
            "exec_id": result.exec_id, "proxy_url": None,
            "output_base64": base64.b64encode(result.output).decode(),
            "output_truncated": result.truncated, "timed_out": result.timed_out}


@router.get("/{ident}/attach", dependencies=[allow("container:attach")])
def attach(request: Request, ident: str, who: PrincipalDep) -> Response:
    """The websocket URL of an interactive container's terminal (a JSON string, as Zun)."""
    _streams(request).check(who.project_id)  # no URL for a session that would be refused
    token, uuid = _service(request).attach_token(who, ident)
    return Response(json.dumps(_ws_url(request, uuid, token)), media_type="application/json")


@router.post("/{ident}/resize", dependencies=[allow("container:resize")],
             openapi_extra=doc.body(doc.RESIZE))
def resize(request: Request, ident: str, body: BodyDep, who: PrincipalDep) -> Response:
    _service(request).resize(who, ident, body.get("w"), body.get("h"))
    return Response(status_code=200)


@router.post("/{ident}/execute_resize", dependencies=[allow("container:execute_resize")],
             openapi_extra=doc.body(doc.EXECUTE_RESIZE))
def execute_resize(request: Request, ident: str, body: BodyDep, who: PrincipalDep) -> Response:
    exec_id = given(body.get("exec_id"))
    if not exec_id:
        raise InvalidInput("exec_id: is required")
    _service(request).resize(who, ident, body.get("w"), body.get("h"), exec_id)
    return Response(status_code=200)


@router.websocket("/{ident}/terminal")
async def terminal(websocket: WebSocket, ident: str, token: str = "") -> None:
    """The websocket side of attach and interactive exec: raw terminal bytes both ways."""
    service: ContainerService = websocket.app.state.containers
    streams: Streams = websocket.app.state.streams
    try:
        stream, session = await streams.run_stream(service.open_session, ident, token)
    except CapsuledError as exc:
        await websocket.close(code=4401 if isinstance(exc, NotAuthenticated) else 4400,
                              reason=exc.message[:120])
        return
    try:
        project = await anyio.to_thread.run_sync(service.project_of, session.container_uuid)
        lease = streams.open_stream(project or "")
    except TooManyRequests as exc:
        await streams.run_stream(stream.close)
        await _refuse(websocket, 429, exc.message)
        return
    except BaseException:
        await streams.run_stream(stream.close)
        raise
    try:
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="binary" if "binary" in offered else None)
        await bridge(websocket, stream, streams.streams_limiter)
    finally:
        lease.release()


async def _refuse(websocket: WebSocket, status: int, message: str) -> None:
    """Refuse a websocket handshake with an HTTP status when the server can (else a close
    code of 4000 + status), the message in Zun's error shape."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(
            {"errors": [{"status": status, "title": message, "detail": message}]},
            status_code=status))
    else:
        await websocket.close(code=4000 + status, reason=message[:120])


def _ws_url(request: Request, uuid: str, token: str) -> str:
    base = str(request.base_url).rstrip("/")
    scheme = "wss" if base.startswith("https") else "ws"
    return f"{scheme}://{base.split('://', 1)[1]}/v1/containers/{uuid}/terminal?{urlencode({'token': token})}"


@router.get("/{ident}/top", dependencies=[allow("container:top")])
def top(request: Request, ident: str, who: PrincipalDep, ps_args: str | None = None,
        capsule: str | None = None) -> dict[str, Any]:
    return _service(request).top(who, ident, given(ps_args), capsule)


@router.get("/{ident}/stats", dependencies=[allow("container:stats")])
def stats(request: Request, ident: str, who: PrincipalDep, capsule: str | None = None) -> dict[str, Any]:
    return _service(request).stats(who, ident, capsule)


@router.get("/{ident}/get_archive", dependencies=[allow("container:get_archive")])
def get_archive(request: Request, ident: str, who: PrincipalDep, version: VersionDep,
                path: str | None = None, capsule: str | None = None) -> dict[str, Any]:
    data, stat = _service(request).get_archive(
        who, ident, path, capsule, max_bytes=request.app.state.settings.api.archive_max_bytes)
    return {"data": _encode(data, version), "stat": stat}


@router.post("/{ident}/put_archive", dependencies=[allow("container:put_archive")],
             openapi_extra=doc.body(doc.PUT_ARCHIVE))
def put_archive(request: Request, ident: str, body: BodyDep, who: PrincipalDep,
                version: VersionDep) -> Response:
    data = body.get("data")
    if not version.at_least((1, 25)) and isinstance(data, str):
        data = base64.b64encode(data.encode("latin-1", "replace")).decode()
    _service(request).put_archive(who, ident, body.get("path"), data, body.get("capsule"))
    return Response(status_code=200)


def _encode(data: bytes, version: ApiVersion) -> str:
    # Before 1.25 Zun sent the tar as a (latin-1) string; base64 since.
    return base64.b64encode(data).decode() if version.at_least((1, 25)) else data.decode("latin-1")


@router.get("/{ident}/container_actions", dependencies=[allow("container:actions")])
def actions(request: Request, ident: str, who: PrincipalDep, limit: str | None = None,
            marker: str | None = None) -> dict[str, Any]:
    """Oldest first; extensions: pages of `limit` after the action whose request_id is
    `marker`. Only the newest actions are kept (limits.actions_per_container)."""
    found = _service(request).actions(
        who, ident, _limit(limit, request.app.state.settings.api.max_limit),
        None if marker is None else filter_value("marker", marker))
    return {"containerActions": [action_view(a, _service(request).shows_host(who))
                                 for a in found]}


@router.get("/{ident}/container_actions/{request_id}", dependencies=[allow("container:actions")])
def action_detail(request: Request, ident: str, request_id: str, who: PrincipalDep) -> dict[str, Any]:
    return action_view(_service(request).action_detail(who, ident, request_id), _service(request).shows_host(who),
                       with_events=True)


# -- rebuild, commit, resize_container (Zun's container actions) ---------------------------

@router.post("/{ident}/rebuild", status_code=202, dependencies=[allow("container:rebuild")])
def rebuild(request: Request, ident: str, body: BodyDep, who: PrincipalDep) -> Response:
    """A new Docker container from `image` (default: the same image); same uuid, name,
    volumes and network identity. Status Rebuilding until the agent has made it."""
    _service(request).rebuild(who, ident, given(body.get("image")),
                              given(body.get("image_driver")), _request_id(request))
    return Response(status_code=202)


@router.post("/{ident}/commit", status_code=202, dependencies=[allow("container:commit")])
async def commit(request: Request, ident: str, body: BodyDep, who: PrincipalDep) -> dict[str, Any]:
    """An image of the container in its host's engine as `repository:tag`, this project's
    alone; its uuid is the one /v1/images lists it under."""
    # docker commit of a large container takes a while: on the waits' own threads.
    host, info = await _streams(request).run_wait(partial(
        _service(request).commit, who, ident, given(body.get("repository")),
        given(body.get("tag")), _request_id(request)))
    return {"uuid": image_uuid(host, info.repo, info.tag), "image_id": info.id,
            "repository": info.repo, "tag": info.tag}


@router.post("/{ident}/resize_container", status_code=202,
             dependencies=[allow("container:resize_container")])
def resize_container(request: Request, ident: str, body: BodyDep, who: PrincipalDep,
                     version: VersionDep, base: BaseUrlDep) -> dict[str, Any]:
    """cpu and/or memory, as PATCH changes them (quota and host room checked)."""
    if not version.at_least((1, 19)):
        raise VersionNotAcceptable("resize_container needs API version 1.19 or later")
    row = _service(request).resize_container(who, ident, dict(body))
    return any_container_view(row, _service(request).shows_host(who), base)


# -- networks (issue 11): network_list, network_attach, network_detach ---------------------
NETWORK_LIST = (1, 13)
NETWORK_LIST_GROUPED = (1, 18)
NETWORK_DETACH = (1, 6)
NETWORK_ATTACH = (1, 8)


def _needs(version: ApiVersion, least: tuple[int, int], what: str) -> None:
    if not version.at_least(least):
        raise VersionNotAcceptable(f"{what} needs API version {least[0]}.{least[1]} or later "
                                   f"(this request asked for {version})")


@router.get("/{ident}/network_list", dependencies=[allow("container:network_list")])
def network_list(request: Request, ident: str, who: PrincipalDep, version: VersionDep,
                 capsule: str | None = None) -> dict[str, Any]:
    """The container's networks: per port with fixed_ips (≥1.18), or one entry per address."""
    _needs(version, NETWORK_LIST, "network_list")
    found, owner = container_networks.addresses(_service(request).get(who, ident, given(capsule)))
    return {"networks": zun_network_list(found, owner, version.at_least(NETWORK_LIST_GROUPED))}


@router.post("/{ident}/network_attach", dependencies=[allow("container:network_attach")])
def network_attach(request: Request, ident: str, who: PrincipalDep, version: VersionDep,
                   network: str | None = None, port: str | None = None,
                   fixed_ip: str | None = None, capsule: str | None = None) -> Response:
    """Query parameters, as zunclient sends them (it posts no body)."""
    _needs(version, NETWORK_ATTACH, "network_attach")
    container_networks.attach(_service(request).get, who, ident, {
        "network": network, "port": port, "fixed_ip": fixed_ip, "capsule": capsule})
    return Response(status_code=200)


@router.post("/{ident}/network_detach", status_code=202,
             dependencies=[allow("container:network_detach")])
def network_detach(request: Request, ident: str, who: PrincipalDep, version: VersionDep,
                   network: str | None = None, port: str | None = None,
                   capsule: str | None = None) -> Response:
    _needs(version, NETWORK_DETACH, "network_detach")
    container_networks.detach(_service(request).get, who, ident, {
        "network": network, "port": port, "capsule": capsule}, version)
    return Response(status_code=202)
