"""The change records of GET /v1/events (a capsuled extension): pages, and the watch
stream, resumed after the last record seen whenever the connection drops."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import typer

from capsuled.cli.capsule.client import ApiError, CliError, ConnectionFailed, _Api, error_from
from capsuled.cli.capsule.output import Format, echo_record

RECONNECTS = 5  # in a row, without a record between them, before giving up


@dataclass(frozen=True)
class Query:
    """Which records: one capsule (name or uuid), some labels, every project (admins)."""

    capsule: str | None = None
    labels: Mapping[str, str] | None = None
    all_projects: bool = False

    def params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.capsule:
            out["capsule"] = self.capsule
        if self.labels:
            out["labels"] = ",".join(f"{k}={v}" for k, v in self.labels.items())
        if self.all_projects:
            out["all_projects"] = "true"
        return out


class EventClient(_Api):
    def head(self) -> int:
        """The newest seq: watching from here shows only what happens next."""
        return int(self._json("GET", "/v1/events", params={"limit": 1}).get("head") or 0)

    def since(self, query: Query, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Every record after `since`, and the seq to resume a watch from."""
        found: list[dict[str, Any]] = []
        while True:
            page = self._json("GET", "/v1/events", params={**query.params(), "since": since})
            found += page.get("events") or []
            last, head = int(page.get("last_seq") or since), int(page.get("head") or 0)
            if last <= since or last >= head:
                return found, max(last, since)
            since = last

    def watch(self, query: Query, since: int,
              sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
        """Records after `since` as they happen, forever; a dropped connection is resumed
        after the last record seen, so none is missed or repeated."""
        failures = 0
        while True:
            try:
                for record in self._stream(query, since):
                    since, failures = int(record["seq"]), 0
                    yield record
            except ConnectionFailed:
                failures += 1
                if failures > RECONNECTS:
                    raise
                sleep(min(2.0 ** failures / 4, 5.0))

    def _stream(self, query: Query, since: int) -> Iterator[dict[str, Any]]:
        params = {**query.params(), "watch": "true", "since": str(since)}
        try:
            with self._http.stream("GET", "/v1/events", params=params,
                                   timeout=httpx.Timeout(self.timeout, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except ValueError:
                        raise CliError(f"unexpected line in the event stream: {line[:200]}") from None
                    if isinstance(item, dict) and not item.get("heartbeat"):
                        yield item
        except httpx.TimeoutException:
            raise ConnectionFailed(f"capsuled at {self.url} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"lost the event stream from capsuled at {self.url} "
                                   f"({type(exc).__name__})") from None
        # The server ended the stream (it is stopping): resume elsewhere or again.
        raise ConnectionFailed(f"capsuled at {self.url} ended the event stream")


class Waker:
    """Wakes a waiting loop as soon as the watch stream records a change to one of `uuids`
    (a capsule's record also stands for its containers' changes), so that a wait shows
    each step as it happens rather than at the next poll. A thread reads the stream; the
    caller still reads the objects themselves (GET) when woken, and after `wait` times
    out. `alive` turns False when the server has no stream or it broke for good: then
    the caller falls back to polling."""

    def __init__(self, client: EventClient, uuids: Collection[str]) -> None:
        self._client = client
        self._uuids = frozenset(uuids)
        self._changed = threading.Event()
        self.alive = True
        try:
            # Taken before the caller's first read: nothing after it is missed.
            self._since = client.head()
        except CliError:
            self.alive = False
            return
        threading.Thread(target=self._read, name="capsule-waker", daemon=True).start()

    def _read(self) -> None:
        try:
            for record in self._client.watch(Query(), self._since):
                if record.get("uuid") in self._uuids:
                    self._changed.set()
        except Exception:  # noqa: BLE001 - any end of the stream only means: poll instead
            pass
        finally:
            self.alive = False
            self._changed.set()  # a waiter wakes, and polls from then on

    def wait(self, seconds: float) -> None:
        """Until something changed or `seconds` passed."""
        self._changed.wait(seconds)
        self._changed.clear()

    def close(self) -> None:
        self._client.close()  # ends the thread's read


def echo_event(output: Format, record: Mapping[str, Any]) -> None:
    """One record of a watch: a line for people, a JSON line or YAML document for programs."""
    if output.machine:
        echo_record(output, record)
    else:
        typer.echo(event_line(record))


def event_line(r: Mapping[str, Any]) -> str:
    """One record for people: seq, time, object, what happened, its status and why."""
    what = f"{r.get('kind')}/{r.get('name') or r.get('uuid')}"
    text = f"{r.get('reason')}: {r.get('message')}" if r.get("message") else str(r.get("reason"))
    stamp = str(r.get("created_at") or "")[:19]
    return f"{r.get('seq'):>8}  {stamp}  {what:<32}  {r.get('event_type'):<22}  " \
           f"{r.get('status') or '-':<9}  {text}"


__all__ = ["ApiError", "EventClient", "Query", "event_line"]
