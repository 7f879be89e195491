"""/v1/events (extension): the outbox's change records, as pages or as a watch stream.

GET /v1/events?since=SEQ&limit=N            a page of records after SEQ (JSON)
GET /v1/events?watch=true[&since=SEQ]       a stream: one JSON object a line, or server-
                                            sent events with Accept: text/event-stream
Either takes capsule=NAME|UUID, labels=k=v[,k=v] and all_projects=true (admins).

A watch without `since` starts at the newest record (only what happens next); with it,
it resumes after that seq, so a client that reconnects with the last seq it saw misses
nothing. Idle streams get a heartbeat every api.watch_heartbeat seconds. Streams are
counted with follow-logs and terminals (api/streams.py) and read on their thread pool.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from capsuled.api.deps import PrincipalDep, allow, flag, given
from capsuled.api.relay.worker import change_of
from capsuled.api.routers.capsules import _labels, _limit, sequence_number
from capsuled.api.services.events import EventService, OutboxHub, Selector
from capsuled.api.state import app_state
from capsuled.api.streams import StreamLease, Streams
from capsuled.api.views import change_view
from capsuled.domain.template import short
from capsuled.errors import InvalidInput
from capsuled.store.capsules import storable_ident
from capsuled.store.tables import OutboxRecord

router = APIRouter(prefix="/v1/events")
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
_WATCH_BATCH = 500


def _service(request: Request) -> EventService:
    return app_state(request, "events", EventService)


def record_view(r: OutboxRecord) -> dict[str, Any]:
    """A record as watch streams and pages show it (and webhooks POST it)."""
    return change_view(change_of(r))


@router.get("", dependencies=[allow("event:get_all")])
async def events(request: Request, who: PrincipalDep, watch: str | None = None,
                 since: str | None = None, limit: str | None = None, capsule: str | None = None,
                 all_projects: str | None = None) -> Response:
    """Change records after `since` (extension); with watch=true a stream of them."""
    svc = _service(request)
    streams = app_state(request, "streams", Streams)
    selector = Selector(svc.scope(who, flag(all_projects, "all_projects")), _capsule(capsule),
                        tuple(sorted(_labels(request.query_params.getlist("labels")).items())))
    after = _since(since)
    if not flag(watch, "watch"):
        batch = await run_in_threadpool(
            svc.read, selector, after, _limit(limit, request.app.state.settings.api.max_limit))
        return Response(json.dumps({"events": [record_view(r) for r in batch.records],
                                    "last_seq": batch.through, "head": batch.head}), media_type="application/json")
    if limit is not None:
        raise InvalidInput("limit: not with watch=true (a watch sends every record)")
    request.app.state.policy.enforce("event:watch", who)
    sse = SSE in request.headers.get("accept", "")
    lease = streams.open_stream(who.project_id)
    try:
        if after is None:
            after = await streams.run_stream(svc.head)
        else:  # refuse a pruned `since` with a 410 now, before the stream starts
            await streams.run_stream(svc.read, selector, after, 1)
    except BaseException:
        lease.release()
        raise
    api = request.app.state.settings.api
    lines = _watch(svc, app_state(request, "outbox_hub", OutboxHub), streams, selector, after,
                   sse, api.watch_heartbeat, api.watch_poll)
    return _Watch(lines, lease, SSE if sse else NDJSON)


class _Watch(StreamingResponse):
    """Counted as an open stream until it ends, however it ends (the client hangs up:
    Starlette cancels the generator)."""

    def __init__(self, lines: AsyncIterator[bytes], lease: StreamLease, media_type: str) -> None:
        self._lease = lease
        super().__init__(lines, media_type=media_type,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._lease.release()


async def _watch(svc: EventService, hub: OutboxHub, streams: Streams, selector: Selector,
                 after: int, sse: bool, heartbeat: float, poll: float) -> AsyncIterator[bytes]:
    last_sent = time.monotonic()
    if sse:  # reconnecting EventSource clients send the last id back as Last-Event-ID
        yield b"retry: 2000\n\n"
    while True:
        batch = await streams.run_stream(svc.read, selector, after, _WATCH_BATCH)
        after = batch.through
        if batch.records:
            yield b"".join(_frame(record_view(r), sse) for r in batch.records)
            last_sent = time.monotonic()
            continue  # a full batch may have more behind it
        idle = time.monotonic() - last_sent
        if idle >= heartbeat:
            yield (f": heartbeat {after}\n\n" if sse else
                   json.dumps({"heartbeat": True, "seq": after}) + "\n").encode()
            last_sent = time.monotonic()
            continue
        await hub.wait(after, min(poll, heartbeat - idle))


def _frame(view: dict[str, Any], sse: bool) -> bytes:
    data = json.dumps(view)
    if sse:
        return f"id: {view['seq']}\nevent: {view['event_type']}\ndata: {data}\n\n".encode()
    return (data + "\n").encode()


def _since(raw: str | None) -> int | None:
    return sequence_number(given(raw), "since", "a sequence number (a whole number >= 0)")


def _capsule(raw: str | None) -> str | None:
    raw = given(raw)
    if raw is None:
        return None
    if not raw or not storable_ident(raw):
        raise InvalidInput(f"capsule: {short(raw)} is not a capsule name or uuid")
    return raw
